"""iptables backend (iptables-nft, iptables-legacy, or whichever ``iptables`` is).

Reads with one ``iptables-save -c`` per family, writes with one ``iptables-restore --noflush``
per family, so a change of any size is two processes, not one per rule. Into a firewall
holding none of vnetfw's chains (``vacant``, iptables-nft only), ``load_fresh`` has two IPv4
restores, side by side, read the filter and the nat table while the engine plans the
networks (``_Fresh``).

Netfilter facts this module is built around:
- iptables-restore is atomic per table (each ``COMMIT``), not per file: a failure in the
  second table leaves the first committed (the error names the line it failed at, so which
  tables did is known). So on any failure ``commit`` reads the tables again and reverses
  what its edit wrote in those (``ipt_undo``), deleting its rules by their text.
  (Restoring the tables whole from the text it diffed against would also undo what others
  wrote since, and reset counters.)
- With --noflush, declaring an *existing* user chain (``:CHAIN - [0:0]``) flushes it. Chains
  are therefore declared only when missing; rules in our chains change by index (``-D CHAIN
  n``, ``-I CHAIN n rule``), so an update costs what changed, not what exists.
- A position is resolved when the restore commits (iptables-nft: to a rule handle), not
  when vnetfw read the chain. Only vnetfw writes its own chains; in the builtin chains,
  which others write too, our jumps are deleted by their text (``_jump_edits``) and go in at
  position 1 wherever they can.
- iptables-save prints rules canonically (``-m udp`` added, ``RELATED,ESTABLISHED``, default
  ``--reject-with``, ``/32`` kept on -s/-d); the parser maps that back to ``Rule`` exactly,
  and anything it does not recognise becomes ``Foreign`` (so it is reported and replaced,
  never silently kept inside a vnetfw chain).
- Every rule carries ``-m comment --comment vnetfw:<network>`` so an admin can see who made
  it, and so readback knows the owner.
- Port forwards and allows (docs/port-forwards.md) get chains of their own (``FEATURE_SPECS``)
  once a definition uses them. ``-m conntrack --ctstate DNAT`` (conntrack's virtual state of
  a translated connection) is the ``ct status dnat`` of the nftables backend: the hairpin
  masquerade and the forwards' accepts match nothing else. A DNAT target with a port range
  picks any port of it per connection (no one-to-one mapping), so a forwarded range is one
  rule per port.
- iptables-nft-restore fetches a chain's rules from the kernel to resolve ``-I CHAIN n`` or
  ``-D CHAIN n`` (~130 ms for a chain of 1,000 networks), but not for ``-A``: network blocks
  therefore stay where they stand and new networks are appended (``_in_live_order``), and
  while vnetfw's last commit is provably live, appending needs no readback either
  (``assumed_live``; a failed restore is then undone by deleting exactly what it appended).
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from ..errors import BackendError, RollbackIncomplete
from ..ruleset import (CHECKSUM, DNAT, LAYOUT, MASQUERADE, REJECT, SNAT, TABLES, ChainSpec,
                       Family, Foreign, Rule, Ruleset, chains_of)
from . import Backend, Change, ChangeSet, Scope, sequence_edits
from .nfgen import Generation
from .registry import iptables_tool
from .runner import CommandFailed, Feed, NotStarted, Runner

COMMENT_PREFIX = "vnetfw:"
JUMP_COMMENT = "vnetfw"
BUILTINS = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
}
_DEFAULT_REJECT = {4: "icmp-port-unreachable", 6: "icmp6-port-unreachable"}
# Port forwards and allows (docs/port-forwards.md): private chains of their own, created the
# first time a definition uses them (so a firewall without any keeps libvirt's exact layout)
# and kept, empty or not, until teardown. The DNAT chain is jumped from PREROUTING (what
# arrives) and nat OUTPUT (the host's own connections to its addresses).
FEATURE_SPECS: tuple[ChainSpec, ...] = (
    ChainSpec("nat", "DNAT", "PREROUTING"),
    ChainSpec("nat", "DNAT", "OUTPUT"),
    ChainSpec("filter", "ALW", "FORWARD"),
    ChainSpec("filter", "FWD", "FORWARD"),
)
# The FORWARD jumps' stages, in evaluation order. An allow (ALW) comes before the cross stage,
# so an isolated network's allow gets past that network's own rejects and nothing else does;
# a forward's accept of what it translated (FWD) after every cross stage (an isolated guest
# never reaches a forward) and before every incoming stage (the target network's rejects).
# Another layout's staged jumps (libvirt's FWX/FWI/FWO) have the stages 0, 1, 2.
FORWARD_STAGES = {"ALW": -0.5, "FWX": 0, "FWD": 0.5, "FWI": 1, "FWO": 2}
# A forward without a host address matches every local address (``-m addrtype --dst-type
# LOCAL``) except loopback: in nat OUTPUT, a forward must never capture a service the host
# offers on 127.0.0.1 or ::1 (and in PREROUTING nothing legitimate arrives for loopback).
_LOOPBACK = {4: "127.0.0.0/8", 6: "::1/128"}
_UNKNOWN = object()
# How iptables (1.8.9 on) says the kernel lacks a target: parsing ``-j CHECKSUM`` asks the
# kernel for the target's revision (x_tables: IPT_SO_GET_REVISION_TARGET; nf_tables:
# NFT_COMPAT_GET; either loads the module if it can), and without an answer it warns and
# cannot load the target. "Couldn't load target" is what it says when even the extension
# is not installed. Either names the target.
_TARGET_MISSING = re.compile(r"Extension (\w+) (?:revision \d+ |is )?not supported[^;]*"
                             r"|Couldn't load target `(\w+)'[^;]*")


@dataclass
class TableDump:
    """One table of ``iptables-save -c``: its exact text and its chains' rules (arg strings)."""

    text: str = ""
    policies: dict[str, str] = field(default_factory=dict)
    chains: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class IptLive:
    tables: dict[Family, dict[str, TableDump]]
    # Not read but assumed (``assumed_live``): no table text to roll back to.
    assumed: bool = False

    @classmethod
    def empty(cls) -> "IptLive":
        return cls({4: {}, 6: {}})


def parse_save(text: str) -> dict[str, TableDump]:
    """Split ``iptables-save [-c]`` output into tables; counters and comments-lines dropped."""
    tables: dict[str, TableDump] = {}
    cur: TableDump | None = None
    lines: list[str] = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            cur = TableDump()
            tables[line[1:].strip()] = cur
            lines = [line]
            continue
        if cur is None:
            continue
        lines.append(line)
        if line == "COMMIT":
            cur.text = "\n".join(lines) + "\n"
            cur = None
        elif line.startswith(":"):
            name, policy = line[1:].split()[:2]
            cur.policies[name] = policy
            cur.chains.setdefault(name, [])
        else:
            if line.startswith("["):          # -c counters: "[pkts:bytes] -A CHAIN ..."
                line = line.split("] ", 1)[1]
            if line.startswith("-A "):
                chain, _, args = line[3:].partition(" ")
                cur.chains.setdefault(chain, []).append(args)
    return tables


# ---------------------------------------------------------------------------------------
# Rule <-> iptables arguments


def specs_of(table: str, features: bool) -> tuple[ChainSpec, ...]:
    """The private chains of ``table`` and the builtin chains that jump to them (a chain
    jumped from two builtins is listed twice); with ``features``, the forwards' and allows'
    too."""
    return chains_of(table) + (tuple(c for c in FEATURE_SPECS if c.table == table)
                               if features else ())


def suffixes_of(table: str, features: bool) -> list[str]:
    """The private chains of ``table``, each once, in layout order."""
    return list(dict.fromkeys(c.suffix for c in specs_of(table, features)))


def _all_chains() -> list[tuple[str, str]]:
    """(table, suffix) of every chain vnetfw may hold, each once: what readback reads."""
    return list(dict.fromkeys((c.table, c.suffix) for c in LAYOUT + FEATURE_SPECS))


def _comment(text: str) -> str:
    return f'-m comment --comment "{text}"'


def render_rule(r: Rule) -> str:
    """``Rule`` -> iptables arguments (what follows ``-A CHAIN``), in exactly the form
    ``iptables-save`` prints them back (option order, ``-m udp``, the default
    ``--reject-with``, a single port as ``1024`` not ``1024-1024``, the comment quoted because
    it holds a ``:``). So the live ruleset is compared with the desired one as plain strings,
    and only the rules that differ are ever parsed."""
    a: list[str] = []
    local = r.chain == "DNAT" and r.dst is None
    if r.src:
        a += ["-s", r.src]
    if r.dst:
        a += (["!"] if r.dst_neg else []) + ["-d", r.dst]
    elif local:
        a += ["!", "-d", _LOOPBACK[r.family]]
    if r.iif:
        a += ["-i", r.iif]
    if r.oif:
        a += (["!"] if r.oif_neg else []) + ["-o", r.oif]
    if r.proto:
        a += ["-p", r.proto]
    if local:
        a += ["-m", "addrtype", "--dst-type", "LOCAL"]
    if r.proto and r.dport is not None:
        a += ["-m", r.proto, "--dport", str(r.dport) if r.dport_end is None
              else f"{r.dport}:{r.dport_end}"]
    if r.ctstate or r.ctstatus:
        # iptables has no "ct status dnat" match, but conntrack's virtual state DNAT is the
        # same test: the connection's reply tuple differs from its original destination.
        a += ["-m", "conntrack", "--ctstate", ",".join(r.ctstate) or r.ctstatus]
        if r.ctdir:
            a += ["--ctdir", r.ctdir]
    a += [_comment(COMMENT_PREFIX + r.network)]
    a += ["-j", r.verdict]
    if r.verdict == REJECT:
        a += ["--reject-with", _DEFAULT_REJECT[r.family]]
    elif r.verdict == MASQUERADE and r.to_ports:
        a += ["--to-ports", _port_range(r.to_ports)]
    elif r.verdict == SNAT:
        tgt = r.to_source or ""
        if r.to_ports:
            tgt += ":" + _port_range(r.to_ports)
        a += ["--to-source", tgt]
    elif r.verdict == CHECKSUM:
        a += ["--checksum-fill"]
    elif r.verdict == DNAT:
        to = f"[{r.to_addr}]" if r.family == 6 else r.to_addr
        a += ["--to-destination", f"{to}:{r.to_port}"]
    return " ".join(a)


def _port_range(ports: tuple[int, int]) -> str:
    return str(ports[0]) if ports[0] == ports[1] else f"{ports[0]}-{ports[1]}"


def _cidr(text: str) -> str:
    return str(ipaddress.ip_network(text, strict=False))


def _ports(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    return int(lo), int(hi or lo)


def tokens(args: str) -> list[str] | None:
    """iptables-save arguments split as iptables reads them: quotes are spelling, not content
    (vnetfw writes ``--comment "vnetfw"``, iptables-save prints ``--comment vnetfw``). None
    when the quotes do not pair, which iptables-save never prints."""
    if '"' not in args and "'" not in args and "\\" not in args:
        return args.split()          # what shlex would say, 30 times faster
    try:
        return shlex.split(args)
    except ValueError:
        return None


def parse_rule(args: str, family: Family, table: str, suffix: str) -> Rule | Foreign:
    """iptables-save arguments of a rule in a vnetfw chain -> ``Rule`` (or ``Foreign``)."""
    tok = tokens(args)
    if tok is None:
        return Foreign(args)
    kw: dict = {}
    network = ""
    verdict = None
    neg = False
    local = False
    i = 0
    try:
        while i < len(tok):
            t = tok[i]
            nxt = tok[i + 1] if i + 1 < len(tok) else None
            if t == "!":
                neg = True
                i += 1
                continue
            if neg and t not in ("-d", "-o"):
                return Foreign(args)
            if t in ("-s", "-d"):
                kw["src" if t == "-s" else "dst"] = _cidr(nxt)
                if neg:
                    kw["dst_neg"], neg = True, False
            elif t in ("-i", "-o"):
                kw["iif" if t == "-i" else "oif"] = nxt
                if neg:
                    kw["oif_neg"], neg = True, False
            elif t == "-p":
                kw["proto"] = nxt
            elif t == "-m":
                if nxt not in ("tcp", "udp", "conntrack", "comment", "addrtype"):
                    return Foreign(args)
            elif t == "--dst-type":
                if nxt != "LOCAL":
                    return Foreign(args)
                local = True
            elif t == "--dport":
                lo, _, hi = nxt.partition(":")
                kw["dport"] = int(lo)
                if hi:
                    kw["dport_end"] = int(hi)
            elif t == "--ctstate":
                states = set(nxt.split(","))
                if states == {"DNAT"}:
                    kw["ctstatus"] = "DNAT"
                elif "DNAT" in states or "SNAT" in states:
                    return Foreign(args)
                else:
                    kw["ctstate"] = ("RELATED", "ESTABLISHED") \
                        if states == {"RELATED", "ESTABLISHED"} else tuple(sorted(states))
            elif t == "--ctdir":
                kw["ctdir"] = nxt
            elif t == "--to-destination":
                addr, _, port = nxt.rpartition(":")
                kw["to_addr"] = str(ipaddress.ip_address(addr.strip("[]")))
                kw["to_port"] = int(port)
            elif t == "--comment":
                if nxt.startswith(COMMENT_PREFIX):
                    network = nxt[len(COMMENT_PREFIX):]
                else:
                    return Foreign(args)
            elif t == "-j":
                verdict = nxt
            elif t == "--reject-with":
                if nxt != _DEFAULT_REJECT[family]:
                    return Foreign(args)
            elif t == "--to-ports":
                kw["to_ports"] = _ports(nxt)
            elif t == "--to-source":
                addr, _, ports = nxt.partition(":")
                kw["to_source"] = addr
                if ports:
                    kw["to_ports"] = _ports(ports)
            elif t == "--checksum-fill":
                i += 1
                continue
            else:
                return Foreign(args)
            i += 2
    except (TypeError, ValueError, AttributeError):
        return Foreign(args)
    if verdict is None or not network:
        return Foreign(args)
    if suffix == "DNAT":
        # every local address but loopback (render_rule), or one host address
        if local != (kw.get("dst_neg", False) and kw.get("dst") == _LOOPBACK[family]):
            return Foreign(args)
        if local:
            del kw["dst"], kw["dst_neg"]
    elif local:
        return Foreign(args)
    r = Rule(family=family, table=table, chain=suffix, network=network, verdict=verdict, **kw)
    # What the parser accepts must be what render_rule writes: anything else (a DNAT with
    # another spelling) is no rule of ours.
    if suffix in ("DNAT", "ALW", "FWD") and tokens(render_rule(r)) != tok:
        return Foreign(args)
    return r


def jump_args(target: str) -> str:
    """How vnetfw writes a jump to one of its chains (``our_jump_target`` reads it back)."""
    return f"{_comment(JUMP_COMMENT)} -j {target}"


# ---------------------------------------------------------------------------------------
# Diffing


@dataclass
class TableEdit:
    new_chains: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.new_chains and not self.lines

    def script(self, table: str) -> str:
        head = [f"*{table}"] + [f":{c} - [0:0]" for c in self.new_chains]
        return "\n".join(head + self.lines + ["COMMIT"]) + "\n"


# The FORWARD stages, in the order they must be evaluated: cross, incoming, outgoing.
_STAGE_OF = {"FWX": 0, "FWI": 1, "FWO": 2}
_STAGED_CHAIN = re.compile(r"^[A-Za-z][A-Za-z0-9_]*_(FWX|FWI|FWO)$")


def plain_jump_target(args: str) -> str | None:
    """The target of a jump with no match but an optional comment (how vnetfw and libvirt
    link their private chains), else None."""
    if "-j " not in args:
        return None
    tok = tokens(args) or []
    if len(tok) == 2 and tok[0] == "-j":
        return tok[1]
    if len(tok) == 6 and tok[:3] == ["-m", "comment", "--comment"] and tok[4] == "-j":
        return tok[5]
    return None


def our_jump_target(args: str) -> str | None:
    """The target of a jump this backend treats as vnetfw's own: plain, or with exactly
    vnetfw's jump comment (an admin's commented jump is the admin's)."""
    tok = tokens(args) or []
    if len(tok) == 2 and tok[0] == "-j":
        return tok[1]
    if tok[:4] == ["-m", "comment", "--comment", JUMP_COMMENT] and len(tok) == 6 \
            and tok[4] == "-j":
        return tok[5]
    return None


def _jump_edits(live_rules: list[str], builtin: str, targets: list[str],
                fam: Family, table: str, items: list[Change]) -> list[str]:
    """Restore lines that make ``builtin`` hold plain jumps to ``targets`` in stage order.

    Existing jumps stay where they are (an admin may have put rules above them on purpose);
    duplicates and jumps out of order are deleted (by their text: see below), missing ones
    inserted right after the last jump of an earlier stage (or at the top). Rules that are
    not our jumps are never touched. (A kept jump with a duplicate of the very same text is
    deleted with it and put back at its place in the same transaction.)

    Another layout's staged jumps in the same chain (libvirt's ``LIBVIRT_FWX/FWI/FWO``, or
    vnetfw with another prefix) take part in the order: every cross jump must come before
    every incoming jump, and every incoming before every outgoing, across layouts. Were our
    FWO (each network's "allow out") before libvirt's FWI (its "reject in"), our guests
    could open connections into libvirt's networks, and the other way round.

    ``targets`` are in stage order; a target's stage is its FORWARD stage
    (``FORWARD_STAGES``, by its suffix) in FORWARD, its index elsewhere.
    """
    if builtin == "FORWARD":
        ours = {t: FORWARD_STAGES[t.rsplit("_", 1)[1]] for t in targets}
    else:
        ours = {t: i for i, t in enumerate(targets)}
    # (kind, target, stage) per rule: "ours", "peer" (another layout's staged jump) or None.
    entries: list[tuple[str | None, str | None, int]] = []
    for args in live_rules:
        t = plain_jump_target(args)
        if t in ours:
            entries.append(("ours", t, ours[t]))
        elif len(targets) > 1 and t is not None and (m := _STAGED_CHAIN.match(t)):
            entries.append(("peer", t, _STAGE_OF[m.group(1)]))
        else:
            entries.append((None, None, -1))
    first = {t: next(i for i, e in enumerate(entries) if e[1] == t)
             for t in targets if any(e[1] == t for e in entries)}
    peers = [(i, e[2]) for i, e in enumerate(entries) if e[0] == "peer"]
    if [st for _, st in peers] != sorted(st for _, st in peers):
        # The other layout is out of order itself: no place for ours can fix that, and
        # chasing it would move our jumps on every run. Keep our own order only (vnetfw
        # doctor reports the other layout's order).
        peers = []
        entries = [e if e[0] != "peer" else (None, None, -1) for e in entries]

    def consistent(pick: list[str]) -> bool:
        staged = sorted([(first[t], ours[t]) for t in pick] + peers)
        mine = {first[t] for t in pick}
        # every kept jump of ours must sit between the earlier and the later stages
        return all(all(st <= s for _, st in staged[:k]) and all(st >= s for _, st in staged[k:])
                   for k, (i, s) in enumerate(staged) if i in mine)

    best: list[str] = []
    present = [t for t in targets if t in first]
    for mask in range(1, 1 << len(present)):
        pick = [t for k, t in enumerate(present) if mask >> k & 1]
        if len(pick) > len(best) and consistent(pick):
            best = pick
    keep = {first[t] for t in best}
    lines: list[str] = []
    where = f"{table} {builtin}"
    # Our jumps are deleted by their text, never by position: "-D FORWARD 3" is resolved
    # when the restore commits, and a rule someone inserted above it since vnetfw read the
    # chain would make it theirs. "-D CHAIN rule" deletes the first rule with that text, and
    # the copy kept of a target is always its first: so where a copy to go has the kept
    # copy's very text, every copy with that text goes and the kept one is put back where
    # it stood, in the same restore (one transaction: no moment without it). Copies of
    # another text (plain "-j X" against the commented form) go without touching it.
    gone: set[int] = set()
    put_back: set[int] = set()
    for idx, (kind, t, _) in enumerate(entries):
        if kind == "ours" and idx not in keep:
            gone.add(idx)
            # the same rule to iptables (its quotes are spelling, not content)
            if first[t] in keep and tokens(live_rules[idx]) == tokens(
                    live_rules[first[t]]):
                put_back.add(first[t])
    for idx in sorted(gone, reverse=True):
        t = entries[idx][1]
        why = "duplicate" if idx != first[t] else "out-of-order"
        items.append(Change(fam, "delete", where, f"{why} jump to {t}"))
    lines += [f"-D {builtin} {live_rules[idx]}" for idx in sorted(gone | put_back)]
    after: list[tuple[str | None, str | None, int]] = []
    for idx, e in enumerate(entries):
        if idx in put_back:
            lines.append(f"-I {builtin} {len(after) + 1} {live_rules[idx]}")
        if idx not in gone:
            after.append(e)
    entries = after
    inserts: list[tuple[int, str]] = []     # (index, target) in the order they are made
    for t in targets:
        if any(e[1] == t for e in entries):
            continue
        s = ours[t]
        pos = max((i + 1 for i, e in enumerate(entries) if e[0] and e[2] < s), default=0)
        entries.insert(pos, ("ours", t, s))
        inserts.append((pos, t))
        items.append(Change(fam, "insert", where, f"jump to {t} at position {pos + 1}"))
    # A run of jumps that go one right after another is inserted backwards at the run's
    # first position. At the top of a chain (any firewall without our jumps yet) that is
    # "-I CHAIN 1" each time, which refers to no rule; "-I CHAIN 2" refers to the rule now
    # second, which iptables-nft turns into its handle at commit time - and if someone
    # deleted that rule meanwhile, the commit fails ("RULE_INSERT failed (No such file or
    # directory)", seen with another writer busy in FORWARD during a load of 1,000).
    k = 0
    while k < len(inserts):
        j = k
        while j + 1 < len(inserts) and inserts[j + 1][0] == inserts[j][0] + 1:
            j += 1
        lines += [f"-I {builtin} {inserts[k][0] + 1} {jump_args(t)}"
                  for _, t in reversed(inserts[k:j + 1])]
        k = j + 1
    return lines


def _table_jumps(dump: "TableDump", prefix: str, fam: Family, table: str,
                 items: list[Change], features: bool = False) -> list[str]:
    """``_jump_edits`` for every builtin chain of ``table`` that links our chains."""
    specs = specs_of(table, features)
    lines: list[str] = []
    for builtin in dict.fromkeys(c.builtin for c in specs):
        targets = [c.suffix for c in specs if c.builtin == builtin]
        if builtin == "FORWARD":
            targets.sort(key=FORWARD_STAGES.__getitem__)
        lines += _jump_edits(dump.chains.get(builtin, []), builtin,
                             [f"{prefix}_{t}" for t in targets], fam, table, items)
    return lines


def uses_features(live: "IptLive", desired: Ruleset | None, prefix: str) -> bool:
    """Does the layout hold the forwards' and allows' chains: the desired rules use them,
    or they are live already (kept once made, so that removing the last forward is a
    change of rules, not of chains and jumps)."""
    if desired is not None and any(r.feature for r in desired.rules):
        return True
    return any(f"{prefix}_{c.suffix}" in live.tables[fam].get(c.table, TableDump()).chains
               for fam in live.tables for c in FEATURE_SPECS)


def forward_jumps_in_order(forward_rules: list[str], prefix: str) -> bool:
    """Would setup leave FORWARD as it is? (Our three jumps once each, in stage order,
    also across another layout's staged jumps.) For vnetfw doctor."""
    return not _jump_edits(forward_rules, "FORWARD",
                           [f"{prefix}_{s}" for s in ("FWX", "FWI", "FWO")], 4, "filter", [])


_OWNER = re.compile(r'--comment "?' + re.escape(COMMENT_PREFIX) + r'([^" ]+)')


def _owner(args: str) -> str | None:
    """The network named in a rule's ``vnetfw:<network>`` comment, if any."""
    m = _OWNER.search(args)
    return m.group(1) if m else None


def _in_live_order(live: list[str], want: list[Rule],
                   want_text: list[str]) -> tuple[list[Rule], list[str]]:
    """``want`` with its network blocks in the order they already stand in ``live``, and
    networks not live yet after them (in ``want``'s order).

    The order of network blocks within a chain has no effect on any packet: each block
    matches only its own bridge (``-i``/``-o``) or, in nat PRT, its own subnets, and no two
    networks share a bridge or overlap a subnet (``validate_together``). So vnetfw keeps the
    order it finds and appends new networks: adding a network is ``-A`` only, which
    iptables-nft commits without fetching the chain's rules (``-I n`` makes it fetch them
    all: ~130 ms instead of ~16 ms at 1,000 networks)."""
    blocks: dict[str, list[int]] = {}
    for i, r in enumerate(want):
        blocks.setdefault(r.network, []).append(i)
    if len(blocks) < 2:
        return want, want_text
    order = [n for n in dict.fromkeys(map(_owner, live)) if n in blocks]
    placed = set(order)
    order += [n for n in blocks if n not in placed]
    idx = [i for n in order for i in blocks[n]]
    return [want[i] for i in idx], [want_text[i] for i in idx]


def _rule_edits(live: list[str], want: list[Rule], chain: str, fam: Family, table: str,
                suffix: str, items: list[Change]) -> list[str]:
    """Index-based edits turning the ``live`` rules (iptables-save arguments) into ``want``
    (network blocks in the order they stand live, see ``_in_live_order``).

    Compared as strings in iptables-save form, so an unchanged chain costs one list
    comparison and a changed one costs what differs."""
    want_text = [render_rule(r) for r in want]
    if live == want_text:
        return []
    if live:
        want, want_text = _in_live_order(live, want, want_text)
        if live == want_text:
            return []
    lines: list[str] = []
    where = f"{table} {chain}"
    if not live:        # an empty chain: append everything, no diff to compute
        for r, text in zip(want, want_text):
            lines.append(f"-A {chain} {text}")
            items.append(Change(fam, "add", where, "", r.network, r))
        return lines
    for what, k, pos, at_end in sequence_edits(live, want_text):
        if what == "delete":
            lines.append(f"-D {chain} {pos + 1}")
            old = parse_rule(live[k], fam, table, suffix)
            items.append(Change(fam, "delete", where, "", getattr(old, "network", None) or None,
                                old))
        else:
            # At the end, append: iptables-nft then need not fetch the chain's rules.
            op = f"-A {chain}" if at_end else f"-I {chain} {pos + 1}"
            lines.append(f"{op} {want_text[k]}")
            items.append(Change(fam, "add", where, "", want[k].network, want[k]))
    return lines


# How ``load_fresh`` spreads a family's tables over restore processes that run side by
# side: the first table of each group streams while the networks are planned, the rest of
# the group follows from memory after its ``COMMIT``. iptables-nft-restore commits each
# table at its own ``COMMIT``, as its own transaction, so two processes lose no atomicity
# that one had; but one process parses and commits its tables one after the other, and two
# let the nat table parse and commit while the filter table (two thirds of the rules) is
# still parsing (1,000 NAT networks, raw: one process 480-550 ms, two 380-430 ms). The nat
# table may commit first: masquerade only rewrites what the filter lets through, so that
# allows nothing that was not allowed before the load.
_STREAMS: tuple[tuple[str, ...], ...] = (("filter",), ("nat", "mangle"))


class _Fresh:
    """The restore scripts that load the layout and networks into a vacant firewall, built
    network by network (``IptablesBackend.load_fresh``). Pure.

    One script per family and group of tables (``_STREAMS``): the group's first table
    (``*filter`` or ``*nat``), its new chains, every network's rules in that table as they
    come, the table's jumps, ``COMMIT``, then the group's other tables whole. Until that
    ``COMMIT`` a restore has committed nothing: input cut off there (vnetfw killed) ends
    with "COMMIT expected" and no table changes. The report and the payload hold what
    ``changes`` computes against the same live state; networks in the order they came."""

    def __init__(self, live: IptLive, prefix: str) -> None:
        self.prefix = prefix
        self.rules: dict[tuple[Family, str, str], list[Rule]] = {
            (f, c.table, c.suffix): [] for f in (4, 6) for c in LAYOUT + FEATURE_SPECS}
        # Set by the first network with a forward or an allow: the streams then declare
        # the features' chains right there (iptables-restore takes a chain's declaration
        # anywhere in its table) and every table gets their jumps.
        self.features = False
        self.lines: dict[tuple[Family, str], list[str]] = {
            (f, t): [] for f in (4, 6) for t in TABLES}
        # Our jumps go among whatever the builtin chains hold now (an admin's rules).
        self._jumps: dict[tuple[Family, str, bool], tuple[list[str], list[Change]]] = {}
        for fam in (4, 6):
            for table in TABLES:
                for feat in (False, True):
                    items: list[Change] = []
                    lines = _table_jumps(live.tables[fam].get(table, TableDump()), prefix,
                                         fam, table, items, feat)
                    self._jumps[fam, table, feat] = (lines, items)

    def jumps(self, fam: Family, table: str) -> tuple[list[str], list[Change]]:
        return self._jumps[fam, table, self.features]

    def _chains(self, table: str) -> list[str]:
        return [f"{self.prefix}_{s}" for s in suffixes_of(table, self.features)]

    def head(self, group: tuple[str, ...]) -> str:
        """The start of a group's script: its first table and that table's new chains."""
        return f"*{group[0]}\n" + "".join(f":{self.prefix}_{c.suffix} - [0:0]\n"
                                          for c in chains_of(group[0]))

    def network(self, rules: Sequence[Rule]) -> dict[str, str]:
        """One network's IPv4 lines of each streamed table (the first of each group), by
        table, to stream; everything is also kept for ``tail`` and ``script``."""
        out: dict[str, list[str]] = {group[0]: [] for group in _STREAMS}
        if not self.features and any(r.feature for r in rules):
            self.features = True
            for table in out:
                out[table] += [f":{self.prefix}_{c.suffix} - [0:0]\n" for c in FEATURE_SPECS
                               if c.table == table and c.builtin != "OUTPUT"]
        # A forwards' or allows' chain holds each network's rules sorted (Ruleset.canonical):
        # loaded so, so that the next diff finds them in place. (Stable: every other
        # chain keeps the planner's order.)
        for r in sorted(rules, key=lambda r: repr(r) if r.feature else ""):
            line = f"-A {self.prefix}_{r.chain} {render_rule(r)}\n"
            self.rules[r.key].append(r)
            self.lines[r.family, r.table].append(line)
            if r.family == 4 and r.table in out:
                out[r.table].append(line)
        return {table: "".join(lines) for table, lines in out.items() if lines}

    def tail(self, fam: Family, group: tuple[str, ...]) -> str:
        """The group's first table's jumps and ``COMMIT``, then its other tables whole."""
        first, *rest = group
        return ("".join(line + "\n" for line in self.jumps(fam, first)[0]) + "COMMIT\n"
                + "".join(self._edit(fam, t).script(t) for t in rest))

    def script(self, fam: Family) -> str:
        """The family's whole script, every table, for a family that is not streamed."""
        return "".join(self._edit(fam, t).script(t) for t in TABLES)

    def _edit(self, fam: Family, table: str) -> TableEdit:
        return TableEdit(self._chains(table),
                         [line.rstrip("\n") for line in self.lines[fam, table]]
                         + self.jumps(fam, table)[0])

    def changeset(self) -> ChangeSet:
        items: list[Change] = []
        payload: dict[Family, dict[str, TableEdit]] = {4: {}, 6: {}}
        for fam in (4, 6):
            for table in TABLES:
                items += [Change(fam, "create", table, f"chain {c}")
                          for c in self._chains(table)]
                for suffix in suffixes_of(table, self.features):
                    where = f"{table} {self.prefix}_{suffix}"
                    items += [Change(fam, "add", where, "", r.network, r)
                              for r in self.rules[fam, table, suffix]]
                items += self.jumps(fam, table)[1]
                payload[fam][table] = self._edit(fam, table)
        return ChangeSet(items, payload)


def _families(started: Sequence[tuple[str, Family, Any]]) -> list[Family]:
    """The families of the restores that may have committed something, each once."""
    return sorted({fam for _, fam, _ in started})


def flavour_of(runner: Runner, backend: str | None) -> str | None:
    """The iptables flavour a backend writes to: ``iptables-nft``, ``iptables-legacy``, or
    None (not an iptables backend, or no telling). For ``iptables``, whichever the system's
    ``iptables`` is, by what ``iptables --version`` says, not by its path (distros and
    Kubernetes put wrapper scripts there): ``(nf_tables)``, ``(legacy)``, or a version
    before 1.8 (legacy: the nf_tables variant came with 1.8)."""
    if backend in ("iptables-nft", "iptables-legacy"):
        return backend
    if backend != "iptables":
        return None
    try:
        out = runner.answer(["iptables", "--version"])
    except BackendError:
        return None
    if "nf_tables" in out:
        return "iptables-nft"
    m = re.match(r"iptables v1\.(\d+)", out)
    return "iptables-legacy" if "legacy" in out or (m and int(m.group(1)) < 8) else None


class IptablesBackend(Backend):
    """iptables-save/iptables-restore for one flavour (nft, legacy, or the system default)."""

    shares_chains = True        # our jumps live among others' rules in the builtin chains

    def __init__(self, runner: Runner, flavour: str = "iptables") -> None:
        super().__init__(runner)
        self.name = flavour
        self._cmd = {f: (iptables_tool(flavour, f, "save"), iptables_tool(flavour, f, "restore"))
                     for f in (4, 6)}
        self._flavour: object = _UNKNOWN     # flavour_of(), asked once
        self._pre_commit: Generation | None = None     # x_tables: see generation_after

    @property
    def nf_tables(self) -> bool | None:
        """Does this flavour write through nf_tables (and so move its generation id)?
        None if the system's ``iptables`` does not say (``flavour_of``)."""
        if self._flavour is _UNKNOWN:
            self._flavour = flavour_of(self.runner, self.name)
        return None if self._flavour is None else self._flavour == "iptables-nft"

    def generation(self):
        nft = self.nf_tables
        if nft:
            return self._nf_generation()
        if nft is None:
            return None
        return self._fingerprint()

    def _fingerprint(self):
        from .xtfp import fingerprint
        try:
            return fingerprint(self._netns_path())
        except OSError:
            return None

    def generation_after(self, changes, before):
        if self.nf_tables:
            return super().generation_after(changes, before)
        # x_tables: a fingerprint, not a counter. ``commit`` took one right before its
        # restore: if it differs from ``before`` (the one the change was computed from),
        # someone wrote in between and the result is unknown. If the restore did not change
        # it, the restore did not write these tables at all. Left open: a write by someone
        # else in the milliseconds between the restore and the read below (every legacy
        # writer holds the xtables lock while it writes); it would go unnoticed until the
        # tables change again, when vnetfw reads them in full.
        pre = self._pre_commit
        if before is None or pre != before:
            return None
        after = self.generation()
        return after if after is not None and after != pre else None

    def transactions(self, changes: ChangeSet) -> int | None:
        # iptables-nft-restore commits one nf_tables transaction per table (per COMMIT).
        if not self.nf_tables:
            return None
        return sum(len(eds) for eds in changes.payload.values())

    def lacks_optional(self, refused: BackendError | None, desired: Ruleset) -> str | None:
        """The refusal's own words if they name the optional rules' target, else a probe:
        ``iptables -j TARGET -h`` asks the kernel for the target (see ``_TARGET_MISSING``)
        and touches no table; if it answers with no help for the target, the target cannot
        be loaded here. A probe that fails to run is no evidence. (iptables before 1.8.9
        does not ask the kernel when it parses, so there a kernel without the target shows
        as an ordinary failed change.)"""
        optional = [r for r in desired.rules if r.optional]
        targets = {r.verdict for r in optional}
        if refused is not None:
            for m in _TARGET_MISSING.finditer(str(refused)):
                if (m[1] or m[2]) in targets:
                    return m[0].strip()
        for fam in sorted({r.family for r in optional}):
            tool = self._cmd[fam][0].removesuffix("-save")
            for target in sorted(targets):
                try:
                    out = self.runner.run([tool, "-j", target, "-h"])
                except BackendError:
                    continue
                if f"{target} target options" not in out:
                    return (f"{tool} cannot load the {target} target here (the kernel has "
                            f"no xt_{target})")
        return None

    def available(self, probe: bool = True) -> str | None:
        for save, restore in self._cmd.values():
            for prog in (save, restore):
                if self.runner.which(prog) is None:
                    return f"{prog} not found (apt-get install iptables)"
        return None

    def writes_nf_table(self, family: str, table: str) -> bool:
        # iptables-nft writes nf_tables tables of family ip/ip6 named as its own tables;
        # iptables-legacy writes x_tables, which send no nf_tables notifications. The
        # system's "iptables" is taken as nft here: legacy's silence makes that harmless.
        return self.name != "iptables-legacy" and family in ("ip", "ip6") and table in TABLES

    # -- reading ----------------------------------------------------------------------
    def read(self) -> IptLive:
        if (why := self.available()) is not None:
            raise BackendError(why)
        out: dict[Family, dict[str, TableDump]] = {}
        for fam in (4, 6):
            # No "-t": listing a table that does not exist yet would create it (legacy).
            out[fam] = parse_save(self.runner.run([self._cmd[fam][0], "-c"]))
        return IptLive(out)

    def live_ruleset(self, live: IptLive, prefix: str) -> Ruleset:
        rules: list[Rule] = []
        for fam in (4, 6):
            for table, suffix in _all_chains():
                dump = live.tables[fam].get(table)
                if dump is None:
                    continue
                chain = [r for args in dump.chains.get(f"{prefix}_{suffix}", [])
                         if isinstance(r := parse_rule(args, fam, table, suffix), Rule)]
                # Network blocks stand in the order they were applied; the planner's order
                # is by name. Neither order means anything to a packet (see _in_live_order).
                chain.sort(key=lambda r: r.network)
                rules += chain
        return Ruleset.canonical(prefix, rules)

    def counters(self, live: IptLive, prefix: str) -> dict[Rule, tuple[int, int]]:
        """From the ``[packets:bytes]`` that ``iptables-save -c`` puts before each rule."""
        out: dict[Rule, tuple[int, int]] = {}
        chains = {f"-A {prefix}_{suffix} ": ChainSpec(table, suffix, "")
                  for table, suffix in _all_chains()}
        for fam in (4, 6):
            for table, dump in live.tables[fam].items():
                for line in dump.text.splitlines():
                    if not line.startswith("["):
                        continue
                    count, _, rest = line[1:].partition("] ")
                    for head, spec in chains.items():
                        if spec.table == table and rest.startswith(head):
                            r = parse_rule(rest[len(head):], fam, table, spec.suffix)
                            if isinstance(r, Rule):
                                pk, _, by = count.partition(":")
                                out[r] = (int(pk), int(by))
                            break
        return out

    def forward_counters(self, live: IptLive, prefix: str) -> dict[Rule, tuple[int, int]]:
        """What each port forward's DNAT rule counted: the first packet of every connection
        it translated (the nat hooks see no other)."""
        return {r: c for r, c in self.counters(live, prefix).items() if r.chain == "DNAT"}

    def assumed_live(self, committed: Ruleset) -> IptLive | None:
        """The layout as vnetfw committed it (private chains, one jump each, in order), when
        none of the networks about to change has rules yet: they are then appended to each
        chain (``-A``), which needs no position and so no readback. Other networks' rules
        stay unread and untouched. None if ``committed`` holds rules: deleting or editing
        them needs their positions, which depend on every network before them.

        On a failed commit there is no ``iptables-save`` text to restore: ``commit`` then
        deletes exactly the rules it appended (``_undo_appends``)."""
        if committed.rules:
            return None
        tables: dict[Family, dict[str, TableDump]] = {}
        for fam in committed.families:
            tables[fam] = {}
            for table in TABLES:
                specs = chains_of(table)
                dump = TableDump()
                for spec in specs:
                    dump.chains[f"{committed.prefix}_{spec.suffix}"] = []
                    dump.chains.setdefault(spec.builtin, []).append(
                        jump_args(f"{committed.prefix}_{spec.suffix}"))
                tables[fam][table] = dump
        return IptLive(tables, assumed=True)

    # -- diffing (pure) -----------------------------------------------------------------
    def changes(self, live: IptLive, desired: Ruleset | None, scope: Scope,
                prefix: str | None = None) -> ChangeSet:
        """What to run to get from ``live`` to ``desired`` (``scope``: setup/full/teardown)."""
        prefix = desired.prefix if desired is not None else prefix
        assert prefix is not None
        features = scope == "teardown" or uses_features(live, desired, prefix)
        if live.assumed and scope != "teardown" and features:
            # The assumed layout has no features' chains (it cannot know whether they are
            # live): declaring them would flush them, and their jumps would be doubled.
            raise BackendError(f"{self.name}: forwards and allows need the live firewall read")
        items: list[Change] = []
        edits: dict[Family, dict[str, TableEdit]] = {}
        want = desired.by_chain() if desired is not None else {}
        for fam in (4, 6):
            edits[fam] = {}
            for table in TABLES:
                dump = live.tables[fam].get(table, TableDump())
                if scope == "teardown":
                    ed = self._teardown_table(dump, prefix, fam, table, items)
                else:
                    ed = self._sync_table(dump, prefix, fam, table, want, scope, items,
                                          features)
                if not ed.empty:
                    edits[fam][table] = ed
        return ChangeSet(items, edits)

    def _sync_table(self, dump: TableDump, prefix: str, fam: Family, table: str,
                    want: dict, scope: Scope, items: list[Change],
                    features: bool = False) -> TableEdit:
        ed = TableEdit()
        suffixes = suffixes_of(table, features)
        for suffix in suffixes:
            name = f"{prefix}_{suffix}"
            if name not in dump.chains:
                ed.new_chains.append(name)
                items.append(Change(fam, "create", f"{table}", f"chain {name}"))
        if scope == "full":
            for suffix in suffixes:
                name = f"{prefix}_{suffix}"
                ed.lines += _rule_edits(dump.chains.get(name, []),
                                        want.get((fam, table, suffix), []), name, fam,
                                        table, suffix, items)
        ed.lines += _table_jumps(dump, prefix, fam, table, items, features)
        return ed

    def _teardown_table(self, dump: TableDump, prefix: str, fam: Family, table: str,
                        items: list[Change]) -> TableEdit:
        """Every plain jump to one of our chains, deleted by its text (``-D CHAIN rule``,
        never by a position that someone's insert could shift onto their own rule), then
        our chains flushed and deleted."""
        ed = TableEdit()
        ours = [f"{prefix}_{s}" for s in suffixes_of(table, True)]
        for builtin in BUILTINS[table]:
            for rule in dump.chains.get(builtin, []):
                tgt = plain_jump_target(rule)
                if tgt in ours:
                    ed.lines.append(f"-D {builtin} {rule}")
                    items.append(Change(fam, "delete", f"{table} {builtin}", f"jump to {tgt}"))
        existing = [c for c in ours if c in dump.chains]
        for c in existing:
            ed.lines.append(f"-F {c}")
        for c in existing:
            ed.lines.append(f"-X {c}")
            items.append(Change(fam, "delete", table, f"chain {c} "
                                f"({len(dump.chains[c])} rules)"))
        return ed

    # -- rendering (pure) ----------------------------------------------------------------
    def script(self, changes: ChangeSet, family: Family) -> str:
        eds: dict[str, TableEdit] = changes.payload.get(family, {})
        return "".join(eds[t].script(t) for t in TABLES if t in eds)

    def render(self, desired: Ruleset, family: Family | None = None) -> str:
        cs = self.changes(IptLive.empty(), desired, "full")
        if family is not None:
            return self.script(cs, family)
        return "".join(f"# ipv{f}: {self._cmd[f][1]} --noflush\n" + self.script(cs, f)
                       for f in (4, 6))

    # -- writing ------------------------------------------------------------------------
    def commit(self, live: IptLive, changes: ChangeSet) -> None:
        """Load each family's script in one restore; on any failure, an interrupt included,
        undo what it committed (``_rollback``) and raise."""
        done: list[Family] = []
        # Which tables committed, per family: all (True), those the error says, or unknown
        known: dict[Family, bool | dict[str, bool] | None] = {}
        if self.nf_tables is False:     # x_tables: see generation_after
            self._pre_commit = self._fingerprint()
        try:
            for fam in (4, 6):
                text = self.script(changes, fam)
                if not text:
                    continue
                done.append(fam)
                known[fam] = None
                try:
                    self.runner.run([self._cmd[fam][1], "-w", "--noflush"], stdin=text)
                except NotStarted:
                    known[fam] = False
                    raise
                except CommandFailed as e:
                    from .ipt_undo import committed_tables
                    known[fam] = committed_tables(text, e.stderr)
                    raise
                known[fam] = True
        except BackendError as e:
            problems = self._rollback(live, changes, done, known)
            raise RollbackIncomplete.unless(
                problems, f"{self.name}: change failed and was rolled back: {e}") from e
        except BaseException as e:
            # A second Ctrl-C: the restore (killed by the runner when the interrupt reached
            # it) may have committed its first tables.
            problems = self._rollback(live, changes, done, known)
            if problems:
                raise RollbackIncomplete.unless(
                    problems, f"{self.name}: interrupted and rolled back") from e
            raise

    def vacant(self, live: IptLive, prefix: str) -> bool:
        """No chain of ours (so no jump to one either: iptables refuses a jump to a chain
        that does not exist). False on x_tables, whose restore holds the global xtables
        lock from ``*filter`` to ``COMMIT``: streaming would hold it while vnetfw reads
        definition files and plans, keeping every other iptables user on the host (libvirt,
        Docker, firewalld) waiting or failing. Those get the ordinary one-shot restore."""
        if self.nf_tables is not True:
            return False
        return not self._holds(live, prefix)

    @staticmethod
    def _holds(live: IptLive, prefix: str) -> bool:
        return any(f"{prefix}_{c.suffix}" in live.tables[fam].get(c.table, TableDump()).chains
                   for fam in (4, 6) for c in LAYOUT + FEATURE_SPECS)

    def holds(self, prefix: str) -> bool:
        """A chain of ours in any table (a jump needs its chain). On x_tables, where no
        table of vnetfw's is loaded in the namespace (most hosts today), nothing is run:
        the kernel's list of loaded tables says there is nothing to read."""
        if self.available() is not None:
            return False
        if self.nf_tables is False:
            from .xtfp import loaded_tables
            try:
                if not any(set(TABLES) & t for t in loaded_tables(self._netns_path()).values()):
                    return False
            except OSError:
                pass
        return self._holds(self.read(), prefix)

    def load_fresh(self, live: IptLive, prefix: str,
                   networks: Iterable[tuple[str, Sequence[Rule]]]) -> ChangeSet:
        """Two IPv4 restores run side by side (``_STREAMS``): one reads the filter table,
        the other the nat table, while the networks are planned; each then gets its jumps,
        ``COMMIT`` and (nat's) the mangle table. IPv6's (a third of the rules) is written
        whole once they are, and runs while IPv4's commit (rules in the order the networks
        come; the blocks' order means nothing). A failure before the first ``COMMIT`` is
        written kills every restore: nothing is committed. Any failure after it, an
        interrupt included, is undone in every family whose restores started by taking out
        vnetfw's chains and jumps again (``_undo_fresh``). Errors name the restore."""
        fresh = _Fresh(live, prefix)
        # All started now, so that one that cannot start (FeedUnavailable) stops the load
        # before anything is written; IPv6's waits for its input (iptables-nft takes no
        # lock for that).
        restores: list[tuple[str, Family, tuple[str, ...], Feed]] = []
        try:
            for fam, groups in ((4, _STREAMS), (6, (TABLES,))):
                for group in groups:
                    label = f"ipv{fam}" if fam == 6 else f"ipv{fam} {'+'.join(group)}"
                    restores.append((label, fam, group,
                                     self.runner.feed([self._cmd[fam][1], "-w", "--noflush"])))
        except BaseException:
            for *_, feed in restores:
                feed.abort()
            raise
        streams = {group[0]: (label, feed) for label, fam, group, feed in restores if fam == 4}
        started: list[tuple[str, Family, Feed]] = []     # may have committed something
        failed: dict[str, str] = {}
        label = ""
        try:
            for table, (label, feed) in streams.items():
                feed.write(fresh.head((table,)))
            for _, rules in networks:
                for table, text in fresh.network(rules).items():
                    label, feed = streams[table]
                    feed.write(text)
            # The last moment at which a refusal changes nothing: a restore that already
            # exited (it refused a line near the end of its input) committed nothing.
            for label, _, _, feed in restores:
                if feed.exited():
                    feed.finish()       # raises its error: it cannot succeed before EOF
                    raise BackendError(f"{feed.argv[0]} ended before its input did")
        except BaseException as e:
            for *_, feed in restores:   # no COMMIT sent: nothing was committed
                feed.abort()
            if isinstance(e, BackendError):
                raise BackendError(f"{self.name}: change refused, nothing was changed: "
                                   f"{label}: {e}") from e
            raise
        # From here a table may be committed: whatever fails, undo.
        try:
            try:
                for label, fam, group, feed in restores:
                    started.append((label, fam, feed))
                    # IPv4's tables commit while the next script is written
                    feed.write(fresh.tail(4, group) if fam == 4 else fresh.script(6))
                    feed.end()
            except BackendError as e:
                failed[started[-1][0]] = str(e)
            for *_, feed in restores[len(started):]:
                feed.abort()                # never got a COMMIT: it did nothing
            cs = fresh.changeset()          # the report, made while the restores commit
            for label, _, feed in started:
                try:
                    feed.finish()
                except BackendError as e:
                    failed.setdefault(label, str(e))
        except BaseException as e:          # interrupted: stop, put back, re-raise
            for *_, feed in restores:
                feed.abort()
            problems = self._undo_fresh(prefix, _families(started))
            if problems:
                raise RollbackIncomplete.unless(
                    problems, f"{self.name}: interrupted and rolled back") from e
            raise
        if failed:
            problems = self._undo_fresh(prefix, _families(started))
            raise RollbackIncomplete.unless(
                problems, f"{self.name}: change failed and was rolled back: "
                + "; ".join(f"{label}: {e}" for label, e in failed.items()))
        return cs

    def _rollback(self, live: IptLive, changes: ChangeSet, families: list[Family],
                  known: dict[Family, bool | dict[str, bool] | None]) -> list[str]:
        """Undo a failed ``commit`` in ``families`` (those whose restore started; ``known``:
        which of their tables committed, where the restore said). Reads each family again
        and reverses exactly what the change wrote in the tables that committed
        (``ipt_undo``): a rule someone else added or deleted since ``live`` was read stays
        so, and the rules the change did not touch keep their counters. One restore per
        table, so that a table that cannot be put back leaves the others put back.
        Returns the problems (empty: all undone)."""
        if live.assumed:
            return self._undo_appends(changes, families)
        from .ipt_undo import undo_table
        problems = []
        try:
            for fam in families:
                try:
                    now = parse_save(self.runner.run([self._cmd[fam][0], "-c"]))
                except BackendError as e:
                    problems.append(f"ipv{fam}: {e}")
                    continue
                said = known.get(fam)
                for table, ed in changes.payload.get(fam, {}).items():
                    committed = said if not isinstance(said, dict) else said.get(table, False)
                    undo = undo_table(live.tables[fam].get(table, TableDump()),
                                      now.get(table, TableDump()), ed, committed)
                    if undo.empty:
                        continue        # not committed (or nothing of it is left)
                    try:
                        self.runner.run([self._cmd[fam][1], "-w", "-c", "--noflush"],
                                        stdin=undo.script(table))
                    except BackendError as e:
                        problems.append(f"ipv{fam} {table}: {e}")
        except BaseException as e:      # Ctrl-C while undoing: say what it means
            problems.append(f"undo interrupted ({type(e).__name__}): the firewall may hold "
                            "part of the change; 'vnetfw check' shows it, 'vnetfw reload' "
                            "repairs it")
        return problems

    def _undo_fresh(self, prefix: str, families: list[Family]) -> list[str]:
        """Take out what a failed load into a vacant firewall left: the firewall held no
        chain of ours (``vacant``), so our chains and every plain jump to them are the
        load's (a plain jump to one from someone else could only have come during the load;
        it has to go for the chain to go). Like an ordinary change's undo (``ipt_undo``),
        this leaves every other rule as it is now, one that someone added while vnetfw planned
        included, counters too. Reads each family afresh; a jump is deleted by its text
        (``-D CHAIN rule``), not by a position that a concurrent insert would shift; one
        restore per table, so that a table that cannot be cleaned leaves the others clean.
        Returns the problems (empty: all gone). Tables and builtin chains that the load
        created stay, empty (as with iptables-legacy, which cannot unload them)."""
        problems = []
        try:
            for fam in families:
                try:
                    dumps = parse_save(self.runner.run([self._cmd[fam][0]]))
                except BackendError as e:
                    problems.append(f"ipv{fam}: {e}")
                    continue
                for table in TABLES:
                    ed = self._teardown_table(dumps.get(table, TableDump()), prefix, fam,
                                              table, [])
                    if ed.empty:
                        continue
                    try:
                        self.runner.run([self._cmd[fam][1], "-w", "--noflush"],
                                        stdin=ed.script(table))
                    except BackendError as e:
                        problems.append(f"ipv{fam} {table}: {e}")
        except BaseException as e:      # Ctrl-C again while undoing: say what it means
            problems.append(f"undo interrupted ({type(e).__name__}): vnetfw's chains may "
                            "be left; 'vnetfw teardown' takes them out")
        return problems

    def _undo_appends(self, changes: ChangeSet, families: list[Family]) -> list[str]:
        """Delete the rules a failed commit from ``assumed_live`` appended, wherever they
        landed: each restore commits table by table, so a table holds all of its appended
        rules or none. They belong to networks that had no rules before, so they are
        deleted by rule spec (``-D CHAIN rule``: the first match, which is ours whatever
        moved meanwhile). A table holding only some of them is reported."""
        problems = []
        for fam in families:
            try:
                dumps = parse_save(self.runner.run([self._cmd[fam][0]]))
                undo = []
                for table, ed in changes.payload.get(fam, {}).items():
                    chains = dumps.get(table, TableDump()).chains
                    appended = [line.split(" ", 2) for line in ed.lines]
                    assert all(op == "-A" for op, _, _ in appended), "assumed_live only appends"
                    there = [(c, a) for _, c, a in appended if a in chains.get(c, ())]
                    if there and len(there) != len(appended):
                        problems.append(f"ipv{fam} {table}: {len(there)} of {len(appended)} "
                                        "appended rules found")
                    if there:
                        undo.append(TableEdit(lines=[f"-D {c} {a}" for c, a in reversed(there)])
                                    .script(table))
                if undo:
                    self.runner.run([self._cmd[fam][1], "-w", "--noflush"], stdin="".join(undo))
            except BackendError as e:
                problems.append(f"ipv{fam}: {e}")
        return problems

