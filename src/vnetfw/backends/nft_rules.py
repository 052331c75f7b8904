"""``Rule`` <-> nftables: the rule text we load, and the ``nft -j`` JSON we read back.

Pure functions. ``render_rule`` writes one rule of a per-network chain; ``parse_rule`` maps
the JSON of a live rule back to the same ``Rule`` (or to ``Foreign`` when it is anything we
would not have written), so ``parse(load(render(r))) == r``.

nft facts these functions rely on (nftables 1.0.6, kernel 6.x):
- In an ``inet`` table, ``udp dport 67`` carries an implicit ``meta l4proto udp`` dependency
  and ``ip saddr X`` an implicit ``meta nfproto ipv4`` one; ``nft -j`` shows neither, so the
  JSON of a rule is exactly the matches we wrote.
- ``reject`` with no argument in an inet chain is stored as ``reject with icmpx
  port-unreachable`` (JSON ``{"type": "icmpx", "expr": "port-unreachable"}``): ICMP port
  unreachable for IPv4 and ICMPv6 port unreachable for IPv6, which is exactly iptables'
  default ``REJECT --reject-with icmp-port-unreachable`` / ``icmp6-port-unreachable``.
- ``masquerade to :A-B`` and ``snat ip to ...:A-B`` need a transport-protocol match earlier
  in the rule (``meta l4proto tcp``), or nft refuses the rule.
- In an inet table ``snat`` must name its address family: ``snat ip to A-B``.
- ``ip daddr 255.255.255.255/32`` is listed as a plain address (JSON ``"255.255.255.255"``);
  a prefix comes back as ``{"prefix": {"addr": ..., "len": ...}}``.
- ``ct state established,related`` comes back as ``{"op": "in", "right": [...]}`` (a single
  state as ``"=="`` and a string).
- A trailing ``*`` in an interface name is a wildcard (``iifname "br*"`` matches br0, br1...);
  a literal one must be written ``"br\\*"`` and is listed that way. The model refuses ``*``
  in interface names, but Linux allows it, so a name ending in one is still escaped here: a
  name must never silently become a wildcard. A ``*`` elsewhere in the string is literal
  (and ``"b\\*r"`` would store the backslash), so only the trailing one is escaped.
"""

from __future__ import annotations

import functools
import ipaddress
import json
from typing import Any

from ..errors import BackendError
from ..ruleset import (ACCEPT, CT_REPLY, DNAT, MASQUERADE, REJECT, RETURN, SNAT, Family,
                       Foreign, Rule)


_IP = {4: "ip", 6: "ip6"}
_L4 = {"tcp": "tcp", "udp": "udp", 6: "tcp", 17: "udp"}
_REJECTS = ({"type": "icmpx", "expr": "port-unreachable"},)
_REJECT_FAMILY = {4: {"type": "icmp", "expr": "port-unreachable"},
                  6: {"type": "icmpv6", "expr": "port-unreachable"}}


def ifname_text(name: str) -> str:
    """An interface name as an nft string literal, matching that exact name."""
    if name.endswith("*"):
        name = name[:-1] + "\\*"
    return f'"{name}"'


def _ifname_from_json(value: Any) -> str | None:
    """Rule JSON string -> the exact interface name it matches; None for a wildcard."""
    if not isinstance(value, str) or not value:
        return None
    if value.endswith("\\*"):
        return value[:-2] + "*"
    if value.endswith("*"):
        return None
    return value


def render_rule(r: Rule) -> str:
    """``Rule`` -> the nft rule text that follows ``add rule inet T CHAIN``."""
    ip = _IP[r.family]
    a: list[str] = []
    if r.iif:
        a.append(f"iifname {ifname_text(r.iif)}")
    if r.oif:
        a.append(f"oifname {'!= ' if r.oif_neg else ''}{ifname_text(r.oif)}")
    if r.proto and r.dport is None:
        a.append(f"meta l4proto {r.proto}")
    if r.src:
        a.append(f"{ip} saddr {r.src}")
    if r.dst:
        a.append(f"{ip} daddr {'!= ' if r.dst_neg else ''}{r.dst}")
    if r.proto and r.dport is not None:
        a.append(f"{r.proto} dport {r.dport}")
    if r.ctstate:
        # nft lists states in this order; using it keeps our text and nft's listing alike.
        order = ("invalid", "established", "related", "new", "untracked")
        states = sorted((s.lower() for s in r.ctstate),
                        key=lambda s: order.index(s) if s in order else len(order))
        a.append("ct state " + ",".join(states))
    if r.ctstatus == "DNAT":
        a.append("ct status dnat")
    elif r.ctstatus is not None or r.ctdir is not None or r.dport_end is not None \
            or r.to_addr is not None:
        raise BackendError(f"nftables: cannot express rule {r.describe()!r} in a chain "
                           f"(network {r.network})")
    if r.verdict == ACCEPT:
        a.append("accept")
    elif r.verdict == RETURN:
        a.append("return")
    elif r.verdict == REJECT:
        a.append("reject")
    elif r.verdict == MASQUERADE:
        a.append("masquerade" + (f" to :{r.to_ports[0]}-{r.to_ports[1]}" if r.to_ports else ""))
    elif r.verdict == SNAT and r.family == 4 and r.to_source:
        ports = f":{r.to_ports[0]}-{r.to_ports[1]}" if r.to_ports else ""
        a.append(f"snat ip to {r.to_source}{ports}")
    else:
        raise BackendError(f"nftables: cannot express rule {r.describe()!r} "
                           f"(ipv{r.family} {r.table} {r.chain}, network {r.network})")
    if (r.to_ports and r.verdict in (MASQUERADE, SNAT)) and not r.proto:
        raise BackendError(f"nftables: a port range needs a protocol: {r.describe()!r}")
    return " ".join(a)


# ---------------------------------------------------------------------------------------
# JSON -> Rule


def _cidr(value: Any, family: Family) -> str:
    if isinstance(value, dict) and set(value) == {"prefix"}:
        p = value["prefix"]
        net = ipaddress.ip_network(f"{p['addr']}/{p['len']}", strict=True)
    elif isinstance(value, str):
        net = ipaddress.ip_network(value, strict=True)
    else:
        raise ValueError(value)
    if net.version != family:
        raise ValueError(value)
    return str(net)


def _port_range(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if isinstance(value, dict) and set(value) == {"range"}:
        lo, hi = value["range"]
        if isinstance(lo, int) and isinstance(hi, int):
            return lo, hi
    raise ValueError(value)


def _snat_addr(value: Any) -> str:
    if isinstance(value, str):
        return str(ipaddress.IPv4Address(value))
    if isinstance(value, dict) and set(value) == {"range"}:
        lo, hi = (str(ipaddress.IPv4Address(v)) for v in value["range"])
        return lo if lo == hi else f"{lo}-{hi}"
    raise ValueError(value)


def parse_rule(rule: dict, family: Family, table: str, suffix: str,
               network: str) -> Rule | Foreign:
    """The JSON of one live rule in a per-network chain -> ``Rule``, or ``Foreign``.

    Order of the matches does not matter (``render_rule``'s order is one of many that mean
    the same); any expression, flag, comment or value we never write makes it ``Foreign``.
    """
    if isinstance(rule, Rule):
        return rule      # NftablesBackend.assumed_live: a rule vnetfw itself committed
    if set(rule) - {"family", "table", "chain", "handle", "expr"}:
        return Foreign(rule_text(rule))          # a comment, say: not ours
    exprs = rule.get("expr") or []
    kw: dict[str, Any] = {}
    verdict: str | None = None
    try:
        for k, e in enumerate(exprs):
            if verdict is not None:
                raise ValueError("statement after the verdict")
            if not isinstance(e, dict) or len(e) != 1:
                raise ValueError(e)
            (kind, body), = e.items()
            if kind == "match":
                _match(body, family, kw)
            elif kind in ("accept", "return") and body is None:
                verdict = ACCEPT if kind == "accept" else RETURN
            elif kind == "reject" and (body is None or body in _REJECTS
                                        or body == _REJECT_FAMILY[family]):
                verdict = REJECT
            elif kind == "masquerade" and (body is None or set(body) == {"port"}):
                verdict = MASQUERADE
                if body is not None:
                    kw["to_ports"] = _port_range(body["port"])
            elif kind == "snat" and family == 4 and isinstance(body, dict) \
                    and body.get("family") == "ip" and set(body) <= {"family", "addr", "port"}:
                verdict = SNAT
                kw["to_source"] = _snat_addr(body["addr"])
                if "port" in body:
                    kw["to_ports"] = _port_range(body["port"])
            else:
                raise ValueError(kind)
    except (ValueError, KeyError, TypeError):
        return Foreign(rule_text(rule))
    if verdict is None:
        return Foreign(rule_text(rule))
    return Rule(family=family, table=table, chain=suffix, network=network, verdict=verdict, **kw)


def _set_once(kw: dict, key: str, value: Any) -> None:
    if key in kw and kw[key] != value:
        raise ValueError(f"conflicting {key}")
    if key in kw and key not in ("proto",):
        raise ValueError(f"duplicate {key}")
    kw[key] = value


def _match(m: dict, family: Family, kw: dict) -> None:
    op, left, right = m["op"], m["left"], m["right"]
    if left == {"meta": {"key": "iifname"}} or left == {"meta": {"key": "oifname"}}:
        name = _ifname_from_json(right)
        key = left["meta"]["key"]
        if name is None or not (op == "==" or (op == "!=" and key == "oifname")):
            raise ValueError(m)
        _set_once(kw, "iif" if key == "iifname" else "oif", name)
        if op == "!=":
            kw["oif_neg"] = True
    elif left == {"meta": {"key": "l4proto"}}:
        if op != "==" or right not in _L4:
            raise ValueError(m)
        _set_once(kw, "proto", _L4[right])
    elif isinstance(left, dict) and "payload" in left:
        p = left["payload"]
        proto, field = p.get("protocol"), p.get("field")
        if set(p) != {"protocol", "field"}:
            raise ValueError(m)
        if proto == _IP[family] and field == "saddr" and op == "==":
            _set_once(kw, "src", _cidr(right, family))
        elif proto == _IP[family] and field == "daddr" and op in ("==", "!="):
            _set_once(kw, "dst", _cidr(right, family))
            if op == "!=":
                kw["dst_neg"] = True
        elif proto in ("tcp", "udp") and field == "dport" and op == "==" \
                and isinstance(right, int):
            _set_once(kw, "proto", proto)
            _set_once(kw, "dport", right)
        else:
            raise ValueError(m)
    elif left == {"ct": {"key": "status"}}:
        if op not in ("==", "in") or right != "dnat":
            raise ValueError(m)
        _set_once(kw, "ctstatus", "DNAT")
    elif left == {"ct": {"key": "state"}}:
        states = [right] if isinstance(right, str) else right
        if op not in ("==", "in") or not isinstance(states, list) \
                or not all(isinstance(s, str) for s in states):
            raise ValueError(m)
        upper = {s.upper() for s in states}
        _set_once(kw, "ctstate", CT_REPLY if upper == set(CT_REPLY) else tuple(sorted(upper)))
    else:
        raise ValueError(m)


# ---------------------------------------------------------------------------------------
# JSON -> readable text (for describing foreign rules; best effort, never parsed back)


def _val(v: Any) -> str:
    if isinstance(v, dict):
        if "prefix" in v:
            return f"{v['prefix']['addr']}/{v['prefix']['len']}"
        if "range" in v:
            return "-".join(_val(x) for x in v["range"])
        if "set" in v:
            return "{ " + ", ".join(_val(x) for x in v["set"]) + " }"
        if "meta" in v:
            return f"meta {v['meta']['key']}"
        if "payload" in v:
            return f"{v['payload'].get('protocol')} {v['payload'].get('field')}"
        if "ct" in v:
            return f"ct {v['ct']['key']}"
        if "concat" in v:
            return " . ".join(_val(x) for x in v["concat"])
    if isinstance(v, list):
        return ",".join(_val(x) for x in v)
    if isinstance(v, str):
        return v
    return json.dumps(v, separators=(",", ":"))


def _expr_text(e: Any) -> str:
    if isinstance(e, dict) and len(e) == 1:
        (kind, body), = e.items()
        if kind == "match" and isinstance(body, dict):
            op = "" if body.get("op") in ("==", "in") else f"{body.get('op')} "
            return f"{_val(body.get('left'))} {op}{_val(body.get('right'))}"
        if body is None:
            return kind
        if kind in ("jump", "goto") and isinstance(body, dict):
            return f"{kind} {body.get('target')}"
        if kind == "vmap" and isinstance(body, dict):
            return f"{_val(body.get('key'))} vmap {_val(body.get('data'))}"
        if kind == "counter":
            return "counter"
    return json.dumps(e, separators=(",", ":"))


def rule_text(rule: dict) -> str:
    """A readable rendering of a rule's JSON (``iifname virbr0 counter accept``)."""
    text = " ".join(_expr_text(e) for e in rule.get("expr") or [])
    if "comment" in rule:
        text += f' comment "{rule["comment"]}"'
    return text


# ---------------------------------------------------------------------------------------
# Forward and allow rules <-> set elements (nft_layout.ELEMENT_SETS)


def _bare(cidr: str) -> str:
    """``10.1.0.10/32`` -> ``10.1.0.10`` (an element key holds the address itself). Rule
    addresses are canonical CIDR text already (the planner's), so this is text work: 10,000
    forwards would spend a third of a second in ipaddress."""
    addr, _, plen = cidr.partition("/")
    if plen == ("128" if ":" in addr else "32"):
        return addr
    if not plen:
        raise ValueError(cidr)
    return cidr


_ANY = {4: "0.0.0.0/0", 6: "::/0"}


@functools.lru_cache(maxsize=1 << 17)
def element_of(r: Rule) -> tuple[str, str, str | None]:
    """A forward's or allow's rule -> (set name, element key text, map value text or None).
    Raises BackendError for a rule the sets cannot hold (planner invariant broken)."""
    f = r.family
    try:
        if r.chain == "DNAT":
            value = f"{r.to_addr} . {r.to_port}"
            if r.src is not None:
                dst = _bare(r.dst) if r.dst is not None else _ANY[f]
                return f"dnats{f}", f"{_bare(r.src)} . {dst} . {r.proto} . {r.dport}", value
            if r.dst is not None:
                return f"dnath{f}", f"{_bare(r.dst)} . {r.proto} . {r.dport}", value
            return f"dnat{f}", f"{r.proto} . {r.dport}", value
        if r.chain == "FWD" and r.oif and r.dst and r.proto and r.dport:
            return (f"fwd{f}", f"{ifname_text(r.oif)} . {_bare(r.dst)} . {r.proto} . {r.dport}",
                    None)
        if r.chain == "ALW" and r.iif and r.src and r.dst:
            head = f"{ifname_text(r.iif)} . {_bare(r.src)} . {_bare(r.dst)}"
            if r.ctdir == "REPLY":
                return f"alwr{f}", head, None
            if r.proto is None:
                return f"alw{f}", f"{head} . 0-255 . 0-65535", None
            ports = f"{r.dport}" if r.dport_end is None else f"{r.dport}-{r.dport_end}"
            return f"alw{f}", f"{head} . {r.proto} . {ports}", None
    except (ValueError, TypeError):
        pass
    raise BackendError(f"nftables: cannot hold rule {r.describe()!r} of network {r.network!r} "
                       f"in a set (ipv{f} {r.table} {r.chain})")


def _elem_addr(v: Any, family: Family, *, single: bool = False) -> str:
    """An address field of an element -> CIDR text (``/32`` for a plain address)."""
    if isinstance(v, dict) and set(v) == {"prefix"} and not single:
        p = v["prefix"]
        net = ipaddress.ip_network(f"{p['addr']}/{p['len']}", strict=True)
    elif isinstance(v, str):
        net = ipaddress.ip_network(v)
    else:
        raise ValueError(v)
    if net.version != family:
        raise ValueError(v)
    return str(net)


def parse_element(set_name: str, kind: str, family: Family, raw: Any) -> Rule | None:
    """One live element of an ELEMENT_SETS set -> the Rule it holds; None when it is
    nothing vnetfw writes (no network comment, a value or key of another shape, a counter
    on it is fine). ``raw`` may be a Rule (``assumed_live``)."""
    if isinstance(raw, Rule):
        return raw
    try:
        if kind in ("dnat", "dnath", "dnats"):
            k, v = raw
        else:
            k, v = raw, None
        if not (isinstance(k, dict) and isinstance(k.get("elem"), dict)):
            return None
        e = k["elem"]
        if set(e) - {"val", "comment", "counter"} or not isinstance(e.get("comment"), str):
            return None
        net = e["comment"]
        val = e["val"]
        fields = val["concat"] if isinstance(val, dict) and "concat" in val else None
        if not isinstance(fields, list):
            return None
        base = dict(family=family, network=net, verdict=ACCEPT)
        if kind.startswith("dnat"):
            if not (isinstance(v, dict) and isinstance(v.get("concat"), list)
                    and len(v["concat"]) == 2):
                return None
            to_addr, to_port = v["concat"]
            to_addr = str(ipaddress.ip_address(to_addr))
            if ipaddress.ip_address(to_addr).version != family or not isinstance(to_port, int):
                return None
            *addrs, proto, port = fields
            if proto not in ("tcp", "udp") or not isinstance(port, int):
                return None
            kw: dict[str, Any] = {}
            if kind == "dnath" and len(addrs) == 1:
                kw["dst"] = _elem_addr(addrs[0], family, single=True)
            elif kind == "dnats" and len(addrs) == 2:
                kw["src"] = _elem_addr(addrs[0], family)
                dst = _elem_addr(addrs[1], family)
                if dst != _ANY[family]:
                    if not dst.endswith(("/32", "/128")):
                        return None
                    kw["dst"] = dst
            elif not (kind == "dnat" and not addrs):
                return None
            return Rule(**{**base, "verdict": DNAT}, table="nat", chain="DNAT", proto=proto,
                        dport=port, to_addr=to_addr, to_port=to_port, **kw)
        if kind == "fwd":
            iface, addr, proto, port = fields
            if not isinstance(iface, str) or proto not in ("tcp", "udp") \
                    or not isinstance(port, int):
                return None
            return Rule(**base, table="filter", chain="FWD", oif=_ifname_from_json(iface),
                        dst=_elem_addr(addr, family, single=True), proto=proto, dport=port,
                        ctstatus="DNAT")
        if kind == "alwr":
            iface, src, dst = fields
            return Rule(**base, table="filter", chain="ALW", iif=_ifname_from_json(iface),
                        src=_elem_addr(src, family), dst=_elem_addr(dst, family),
                        ctstate=CT_REPLY, ctdir="REPLY")
        if kind == "alw":
            iface, src, dst, proto, port = fields
            kw = {}
            if proto == {"range": [0, 255]} and port == {"range": [0, 65535]}:
                pass
            elif proto in ("tcp", "udp"):
                lo, hi = _port_range(port)
                kw = {"proto": proto, "dport": lo, "dport_end": hi if hi != lo else None}
            else:
                return None
            return Rule(**base, table="filter", chain="ALW", iif=_ifname_from_json(iface),
                        src=_elem_addr(src, family), dst=_elem_addr(dst, family), **kw)
    except (ValueError, KeyError, TypeError):
        return None
    return None


def element_counter(raw: Any) -> tuple[int, int] | None:
    """(packets, bytes) of a live element with a counter, else None."""
    try:
        k = raw[0] if isinstance(raw, list) else raw
        c = k["elem"]["counter"]
        return int(c["packets"]), int(c["bytes"])
    except (KeyError, TypeError, ValueError, IndexError):
        return None
