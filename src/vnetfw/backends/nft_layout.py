"""The nftables layout: vnetfw's table, its base chains, dispatch maps and per-network chains.

Pure data and naming; no I/O. The nftables backend (``nftables.py``) renders this layout and
checks the live table against it.

One ``inet`` table per chain prefix (``table_name``), holding both families::

    table inet vnetfw {
        map inp  { type nf_proto . ifname : verdict; }   # meta nfproto . iifname -> jump inp4-NET
        map out  { type nf_proto . ifname : verdict; }   # meta nfproto . oifname -> jump out4-NET
        map fwx  { type nf_proto . ifname : verdict; }   # cross stage,    keyed by iifname
        map fwi  { type nf_proto . ifname : verdict; }   # incoming stage, keyed by oifname
        map fwo  { type nf_proto . ifname : verdict; }   # outgoing stage, keyed by iifname
        map nat4 { type ipv4_addr : verdict; flags interval; }   # ip saddr  -> jump nat4-NET
        map nat6 { type ipv6_addr : verdict; flags interval; }   # ip6 saddr -> jump nat6-NET
        chain input       { type filter hook input priority filter; ...  vmap @inp }
        chain output      { type filter hook output priority filter; ... vmap @out }
        chain forward     { type filter hook forward priority filter;
                            meta nfproto . iifname vmap @fwx
                            meta nfproto . oifname vmap @fwi
                            meta nfproto . iifname vmap @fwo }
        chain postrouting { type nat hook postrouting priority srcnat;
                            ip saddr vmap @nat4
                            ip6 saddr vmap @nat6 }
        chain fwx4-default { iifname "virbr0" oifname "virbr0" accept }
        ...
    }

Each stage of docs/design.md §2 is one map lookup; the per-network chain holds exactly the
rules the planner put in that private chain for that network and family, in order. A packet's
cost is therefore a fixed number of hash lookups plus one network's rules, whatever the number
of networks. The map key includes ``meta nfproto`` so each network's IPv4 and IPv6 rules live
in separate chains (``fwo4-NET``, ``fwo6-NET``) and never see the other family's packets: one
table, no ``meta nfproto`` guard needed in any rule, and the family of a rule read back is the
family in its chain's name.

The stage order in ``forward`` (cross, then incoming, then outgoing) carries the guarantee of
docs/design.md §2: every network's incoming verdict (FWI, keyed by the output bridge) is taken
before any network's outgoing accept (FWO, keyed by the input bridge), so no network's "allow
out" can let a packet into another network.

The planner's invariants make the keys well defined: every FWX/FWO/INP rule matches
``iif == bridge``, every FWI/OUT rule ``oif == bridge``, every nat PRT rule ``src`` = one of
the network's subnets (subnets of different networks never overlap, so the interval map is
unambiguous). Interfaces are matched by name (``iifname``/``oifname``, ``ifname`` keys), so a
network whose bridge does not exist yet can be applied.
"""

from __future__ import annotations

import functools

import re
from dataclasses import dataclass
from string import ascii_letters, digits
from typing import Any

from ..ruleset import Family

NFT_FAMILY = "inet"


def table_name(prefix: str) -> str:
    """The nft table for a chain prefix; one table per profile, so profiles never collide.

    ``VNETFW`` (the default profile) -> ``vnetfw``; any other all-uppercase prefix ``P`` ->
    ``vnetfw_<p>`` (``LIBVIRT`` -> ``vnetfw_libvirt``); a prefix with lowercase letters keeps
    its case behind a different separator (``Lab`` -> ``vnetfw-Lab``), so two prefixes never
    map to the same table. Prefixes are ``[A-Za-z][A-Za-z0-9_]*`` (model.chain_prefix_problem),
    all valid in an unquoted nft identifier.
    """
    if prefix == "VNETFW":
        return "vnetfw"
    if prefix == prefix.upper():
        return "vnetfw_" + prefix.lower()
    return "vnetfw-" + prefix


def is_vnetfw_table(name: str) -> bool:
    """True for a name ``table_name`` can produce (read() lists only these tables)."""
    return name == "vnetfw" or name.startswith(("vnetfw_", "vnetfw-"))


# ---------------------------------------------------------------------------------------
# Per-network chain names
#
# nft 1.0.6 accepts no quoted chain names ("add chain inet t \"a+b\"" is a syntax error), so
# names are encoded into the unquoted identifier alphabet. Network names are
# [A-Za-z0-9_][A-Za-z0-9_.+-]* (model.netname_problem); letters, digits, '.' and '-' are kept,
# '_' becomes '__' and anything else '_xx' (hex), so "my_net+1" -> "my__net_2b1": readable in
# the common case and reversible (decode_name).

_KEEP = frozenset(ascii_letters + digits + ".-")


@functools.lru_cache(maxsize=65536)
def encode_name(name: str) -> str:
    out = []
    for c in name:
        if c in _KEEP:
            out.append(c)
        elif c == "_":
            out.append("__")
        else:
            out.append(f"_{ord(c):02x}")
    return "".join(out)


@functools.lru_cache(maxsize=65536)
def decode_name(text: str) -> str | None:
    """Inverse of ``encode_name``; None if ``text`` is not an encoding we produce."""
    out = []
    i = 0
    while i < len(text):
        c = text[i]
        if c in _KEEP:
            out.append(c)
            i += 1
        elif c == "_" and text[i + 1:i + 2] == "_":
            out.append("_")
            i += 2
        elif c == "_" and re.fullmatch(r"[0-9a-f]{2}", text[i + 1:i + 3]):
            ch = chr(int(text[i + 1:i + 3], 16))
            if ch in _KEEP or ch == "_":
                return None          # not canonical: we would have written it plainly
            out.append(ch)
            i += 3
        else:
            return None
    return "".join(out)


# ---------------------------------------------------------------------------------------
# Stages


@dataclass(frozen=True, slots=True)
class Stage:
    """One private chain of docs/design.md §2 as an nft dispatch stage.

    ``name`` names the per-network chains (``<name><family>-<network>``) and, for interface
    stages, the dispatch map; ``key`` is the Rule field the map is keyed on (``iif``, ``oif``
    or ``src``); ``base`` the base chain holding the lookup.
    """

    name: str
    table: str       # Rule.table
    suffix: str      # Rule.chain
    base: str
    key: str

    def map_name(self, family: Family) -> str:
        return f"{self.name}{family}" if self.key == "src" else self.name

    def chain_name(self, family: Family, network: str) -> str:
        return f"{self.name}{family}-{encode_name(network)}"


# In base-chain evaluation order (forward: cross, incoming, outgoing).
STAGES: tuple[Stage, ...] = (
    Stage("inp", "filter", "INP", "input", "iif"),
    Stage("out", "filter", "OUT", "output", "oif"),
    Stage("fwx", "filter", "FWX", "forward", "iif"),
    Stage("fwi", "filter", "FWI", "forward", "oif"),
    Stage("fwo", "filter", "FWO", "forward", "iif"),
    Stage("nat", "nat", "PRT", "postrouting", "src"),
)
STAGE_BY_SUFFIX = {(s.table, s.suffix): s for s in STAGES}
STAGE_BY_NAME = {s.name: s for s in STAGES}

_NET_CHAIN = re.compile(r"^(inp|out|fwx|fwi|fwo|nat)([46])-(.+)$")


@functools.lru_cache(maxsize=65536)
def parse_chain_name(name: str) -> tuple[Stage, Family, str] | None:
    """``fwo4-my.net`` -> (fwo stage, 4, "my.net"); None for any other name."""
    m = _NET_CHAIN.match(name)
    if m is None:
        return None
    net = decode_name(m.group(3))
    if net is None:
        return None
    return STAGE_BY_NAME[m.group(1)], int(m.group(2)), net  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------
# Base chains and maps: the text we load and the JSON shape ``nft -j`` shows for it.


@dataclass(frozen=True, slots=True)
class BaseChain:
    name: str
    decl: str                        # "type filter hook forward priority filter; policy accept;"
    spec: dict[str, Any]             # what nft -j shows besides family/table/name/handle
    rules: tuple[tuple[str, Any], ...]   # (nft text, expected JSON "expr" list)


@dataclass(frozen=True, slots=True)
class MapSpec:
    name: str
    decl: str                        # "type nf_proto . ifname : verdict;"
    spec: dict[str, Any]


def _meta(key: str) -> dict:
    return {"meta": {"key": key}}


def _iface_vmap(stage: Stage) -> tuple[str, Any]:
    side = "iifname" if stage.key == "iif" else "oifname"
    return (f"meta nfproto . {side} vmap @{stage.name}",
            [{"vmap": {"key": {"concat": [_meta("nfproto"), _meta(side)]},
                       "data": f"@{stage.name}"}}])


def _saddr_vmap(family: Family) -> tuple[str, Any]:
    proto = "ip" if family == 4 else "ip6"
    return (f"{proto} saddr vmap @nat{family}",
            [{"vmap": {"key": {"payload": {"protocol": proto, "field": "saddr"}},
                       "data": f"@nat{family}"}}])


def _filter(hook: str) -> tuple[str, dict]:
    return (f"type filter hook {hook} priority filter; policy accept;",
            {"type": "filter", "hook": hook, "prio": 0, "policy": "accept"})


# Admins first: every base chain jumps to an admin chain before any vnetfw rule. vnetfw
# creates these chains but never flushes, rewrites or reads their rules as drift: they are
# the nftables equivalent of an admin's rules above vnetfw's jumps in iptables. An "accept"
# there ends evaluation of this base chain (vnetfw's rejects are skipped), a "drop" drops,
# and a plain fall-through continues with vnetfw's rules.
def admin_chain(base: str) -> str:
    return f"admin_{base}"


def _admin_jump(base: str) -> tuple[str, Any]:
    return (f"jump {admin_chain(base)}", [{"jump": {"target": admin_chain(base)}}])


# ---------------------------------------------------------------------------------------
# Port forwards and allows: elements of shared sets and maps (docs/port-forwards.md)
#
# A forward or allow is a handful of elements, never a rule: a packet costs one hash (or
# pipapo interval) lookup per set whatever their number, and adding or removing one is
# adding or deleting its elements. Each element carries its network's name as comment, so
# readback knows whose it is. Facts of nftables 1.0.6 / Linux 6.x these rely on:
# - A concatenated type is at most 5 fields when declared with ``type`` (each field takes
#   6 bits of a 32-bit key type; 6 fields list back as garbage). That is why allows key on
#   the input interface and the addresses, not the output interface too: the destination
#   address decides the output interface anyway.
# - Interval sets of concatenations (pipapo) refuse overlapping elements ("File exists"):
#   the planner splits allows' sources into disjoint blocks and merges their port ranges.
# - ``dnat ip to <concat> map @m`` with an ``addr . port`` value needs a transport protocol
#   match before it (``meta l4proto { tcp, udp }``), or nft refuses the rule.
# - ``fib daddr type local``: only connections to the host's own addresses are forwarded,
#   never traffic the host routes through to the same port elsewhere.
# - A set declared with ``counter`` gives every element its own counter: per forward, the
#   connections it translated (NAT hooks see a connection's first packet only).


@dataclass(frozen=True, slots=True)
class ElementSet:
    """A set or map of forward/allow elements: ``kind`` says which rules it holds."""

    name: str
    kind: str            # "dnat", "dnath", "dnats", "fwd", "alw", "alwr"
    family: Family
    decl: str
    spec: dict[str, Any]
    is_map: bool


def _addr_type(family: Family) -> str:
    return "ipv4_addr" if family == 4 else "ipv6_addr"


def _element_sets() -> tuple[ElementSet, ...]:
    out = []
    for f in (4, 6):
        a = _addr_type(f)
        counter = {"stmt": [{"counter": None}]}
        for kind, key, interval in (("dnat", ["inet_proto", "inet_service"], False),
                                    ("dnath", [a, "inet_proto", "inet_service"], False),
                                    ("dnats", [a, a, "inet_proto", "inet_service"], True)):
            flags = " flags interval;" if interval else ""
            spec: dict[str, Any] = {"type": key, "map": f"{a} . inet_service"}
            if interval:
                spec["flags"] = ["interval"]
            out.append(ElementSet(f"{kind}{f}", kind, f,
                                  f"type {' . '.join(key)} : {a} . inet_service;{flags} counter;",
                                  {**spec, **counter}, True))
        out.append(ElementSet(f"fwd{f}", "fwd", f,
                              f"type ifname . {a} . inet_proto . inet_service; counter;",
                              {"type": ["ifname", a, "inet_proto", "inet_service"], **counter},
                              False))
        out.append(ElementSet(f"alw{f}", "alw", f,
                              f"type ifname . {a} . {a} . inet_proto . inet_service; "
                              "flags interval;",
                              {"type": ["ifname", a, a, "inet_proto", "inet_service"],
                               "flags": ["interval"]}, False))
        out.append(ElementSet(f"alwr{f}", "alwr", f,
                              f"type ifname . {a} . {a}; flags interval;",
                              {"type": ["ifname", a, a], "flags": ["interval"]}, False))
    return tuple(out)


ELEMENT_SETS: tuple[ElementSet, ...] = _element_sets()
ELEMENT_SET_BY_NAME = {e.name: e for e in ELEMENT_SETS}


def _pl(proto: str, field: str) -> dict:
    return {"payload": {"protocol": proto, "field": field}}


_L4 = {"match": {"op": "==", "left": _meta("l4proto"), "right": {"set": ["tcp", "udp"]}}}
_LOCAL = {"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}},
                    "right": "local"}}
_NOT_LOOPBACK = {4: ("ip daddr != 127.0.0.0/8",
                     {"match": {"op": "!=", "left": _pl("ip", "daddr"),
                                "right": {"prefix": {"addr": "127.0.0.0", "len": 8}}}}),
                 6: ("ip6 daddr != ::1",
                     {"match": {"op": "!=", "left": _pl("ip6", "daddr"), "right": "::1"}})}


def _dnat_rules(output: bool) -> tuple[tuple[str, Any], ...]:
    """The lookups of the forwards' maps: every host address, one host address, with
    sources. At nat output (the host's own connections) loopback destinations are left
    alone: a forward must not capture a service the host offers on 127.0.0.1."""
    out = []
    for f in (4, 6):
        ip = "ip" if f == 4 else "ip6"
        keys = {"dnat": ("meta l4proto . th dport", [_meta("l4proto"), _pl("th", "dport")]),
                "dnath": (f"{ip} daddr . meta l4proto . th dport",
                          [_pl(ip, "daddr"), _meta("l4proto"), _pl("th", "dport")]),
                "dnats": (f"{ip} saddr . {ip} daddr . meta l4proto . th dport",
                          [_pl(ip, "saddr"), _pl(ip, "daddr"), _meta("l4proto"),
                           _pl("th", "dport")])}
        for kind, (text, key) in keys.items():
            pre_t, pre_j = ("", [])
            if output:
                pre_t, pre_j = _NOT_LOOPBACK[f][0] + " ", [_NOT_LOOPBACK[f][1]]
            out.append((f"meta l4proto {{ tcp, udp }} {pre_t}fib daddr type local "
                        f"dnat {ip} to {text} map @{kind}{f}",
                        [_L4] + pre_j + [_LOCAL, {"dnat": {"family": ip, "addr": {"map": {
                            "key": {"concat": key}, "data": f"@{kind}{f}"}}}}]))
    return tuple(out)


def _allow_rules() -> tuple[tuple[str, Any], ...]:
    out = []
    for f in (4, 6):
        ip = "ip" if f == 4 else "ip6"
        out.append((f"iifname . {ip} saddr . {ip} daddr . meta l4proto . th dport @alw{f} accept",
                    [{"match": {"op": "==", "left": {"concat": [
                        _meta("iifname"), _pl(ip, "saddr"), _pl(ip, "daddr"), _meta("l4proto"),
                        _pl("th", "dport")]}, "right": f"@alw{f}"}}, {"accept": None}]))
    for f in (4, 6):
        ip = "ip" if f == 4 else "ip6"
        out.append((f"ct direction reply ct state established,related "
                    f"iifname . {ip} saddr . {ip} daddr @alwr{f} accept",
                    [{"match": {"op": "==", "left": {"ct": {"key": "direction"}},
                                "right": "reply"}},
                     {"match": {"op": "in", "left": {"ct": {"key": "state"}},
                                "right": ["established", "related"]}},
                     {"match": {"op": "==", "left": {"concat": [
                         _meta("iifname"), _pl(ip, "saddr"), _pl(ip, "daddr")]},
                         "right": f"@alwr{f}"}}, {"accept": None}]))
    return tuple(out)


def _forwarded_rules() -> tuple[tuple[str, Any], ...]:
    out = []
    for f in (4, 6):
        ip = "ip" if f == 4 else "ip6"
        out.append((f"ct status dnat oifname . {ip} daddr . meta l4proto . th dport @fwd{f} accept",
                    [{"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
                     {"match": {"op": "==", "left": {"concat": [
                         _meta("oifname"), _pl(ip, "daddr"), _meta("l4proto"),
                         _pl("th", "dport")]}, "right": f"@fwd{f}"}}, {"accept": None}]))
    return tuple(out)


def _nat(hook: str, prio: int) -> tuple[str, dict]:
    return (f"type nat hook {hook} priority {prio}; policy accept;",
            {"type": "nat", "hook": hook, "prio": prio, "policy": "accept"})


BASE_CHAINS: tuple[BaseChain, ...] = (
    BaseChain("input", *_filter("input"),
              (_admin_jump("input"), _iface_vmap(STAGE_BY_NAME["inp"]))),
    BaseChain("output", *_filter("output"),
              (_admin_jump("output"), _iface_vmap(STAGE_BY_NAME["out"]))),
    # Allows first (an isolated network's allow must pass its own FWX rejects), then the
    # cross stage, then what a forward translated (after FWX: isolated guests never reach
    # a forward; before FWI: the target network's rejects), then incoming and outgoing.
    BaseChain("forward", *_filter("forward"),
              (_admin_jump("forward"),) + _allow_rules()
              + (_iface_vmap(STAGE_BY_NAME["fwx"]),) + _forwarded_rules()
              + tuple(_iface_vmap(STAGE_BY_NAME[n]) for n in ("fwi", "fwo"))),
    # srcnat = 100. inet nat chains need kernel >= 5.2; available() probes for it.
    BaseChain("postrouting", "type nat hook postrouting priority srcnat; policy accept;",
              {"type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"},
              (_admin_jump("postrouting"), _saddr_vmap(4), _saddr_vmap(6))),
    # dstnat = -100: port forwards, for connections arriving and the host's own.
    BaseChain("prerouting", *_nat("prerouting", -100),
              (_admin_jump("prerouting"),) + _dnat_rules(False)),
    BaseChain("natoutput", *_nat("output", -100),
              (_admin_jump("natoutput"),) + _dnat_rules(True)),
)
ADMIN_CHAINS = tuple(admin_chain(b.name) for b in BASE_CHAINS)
BASE_BY_NAME = {b.name: b for b in BASE_CHAINS}

_IFACE_MAP = ("type nf_proto . ifname : verdict;",
              {"type": ["nf_proto", "ifname"], "map": "verdict"})
MAPS: tuple[MapSpec, ...] = tuple(
    MapSpec(s.name, *_IFACE_MAP) for s in STAGES if s.key != "src") + (
    # Interval maps: "flags interval" is what lets a prefix (a subnet) be a key.
    MapSpec("nat4", "type ipv4_addr : verdict; flags interval;",
            {"type": "ipv4_addr", "map": "verdict", "flags": ["interval"]}),
    MapSpec("nat6", "type ipv6_addr : verdict; flags interval;",
            {"type": "ipv6_addr", "map": "verdict", "flags": ["interval"]}),
)
MAP_BY_NAME = {m.name: m for m in MAPS}

# Which base chain (and so which maps) each map feeds: recreating a map means re-adding the
# base-chain rule that looks it up.
MAP_BASE = {s.map_name(f): s.base for s in STAGES for f in (4, 6)}
MAP_BASE.update({e.name: ("prerouting" if e.kind.startswith("dnat") else "forward")
                 for e in ELEMENT_SETS})
# The dnat maps are looked up from nat output too.
SET_BASES = {e.name: (("prerouting", "natoutput") if e.kind.startswith("dnat")
                      else ("forward",)) for e in ELEMENT_SETS}
