"""Native TOML definitions -> ``Network``.

A file holds one network as top-level keys, or several as ``[[network]]`` tables::

    [[network]]
    name = "default"
    bridge = "virbr0"
    mode = "nat"                 # nat | route | open | isolated | bridge | private | ...
    forward_dev = "eth0"         # optional
    ipv6 = false                 # like <network ipv6='yes'>
    nat = { ports = [1024, 65535], address = ["203.0.113.10", "203.0.113.20"], ipv6 = true }
    [[network.ip]]
    address = "192.168.122.1"
    prefix = 24                  # or netmask = "255.255.255.0"; default as libvirt: classful /64
    dhcp = true
    tftp_root = "/srv/tftp"      # optional, IPv4 only
    hosts = [{ name = "web", ip = "192.168.122.10" }]   # static DHCP hosts (optional)

    [[network.port_forward]]     # publish a guest port on the host (nat and route networks)
    proto = "tcp"                # "tcp" or "udp"
    port = 8080                  # the host's port, or a range "2200-2201"
    to = "192.168.122.10"        # a guest address in one of the subnets, or a DHCP host name
    to_port = 80                 # optional, default = port; a range maps one to one
    host_address = "203.0.113.5" # optional: only connections to this host address
    source = ["198.51.100.0/24"] # optional: only from these sources

    [[network.allow]]            # this network's guests may open connections into "db"
    to = "db"
    ports = ["tcp/5432", "udp/53"]   # optional, default: everything
    source = ["10.1.0.0/28"]     # optional: part of this network

Unknown keys are errors, so a typo never silently changes what is firewalled.
"""

from __future__ import annotations

import ipaddress
import tomllib
from typing import Any

from ..errors import DefinitionError
from ..model import (Allow, DhcpHost, IPBlock, Mode, Nat, Network, PortForward, classful_prefix,
                     make_allow, make_port_forward, netmask_prefix, parse_ip)

_NET_KEYS = {"name", "bridge", "mode", "forward_dev", "ipv6", "nat", "ip", "port_forward",
             "allow"}
_NAT_KEYS = {"ports", "address", "ipv6"}
_IP_KEYS = {"address", "prefix", "netmask", "dhcp", "tftp_root", "hosts"}
_FORWARD_KEYS = {"proto", "port", "to", "to_port", "host_address", "source"}
_ALLOW_KEYS = {"to", "ports", "source"}


def parse_toml(data: bytes | str, source: str = "<string>") -> list[Network]:
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        doc = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise DefinitionError(source, f"malformed TOML: {e}") from None
    if "network" in doc:
        extra = set(doc) - {"network"}
        if extra:
            raise DefinitionError(source, f"unknown top-level key(s) {sorted(extra)} beside "
                                          "[[network]]")
        tables = doc["network"]
        if not isinstance(tables, list):
            raise DefinitionError(source, "'network' must be an array of tables ([[network]])")
    else:
        tables = [doc]
    return [_network(t, source) for t in tables]


def _network(t: Any, source: str) -> Network:
    if not isinstance(t, dict):
        raise DefinitionError(source, "each [[network]] must be a table")
    name = t.get("name")

    def fail(field: str, problem: str) -> DefinitionError:
        return DefinitionError(source, problem, network=name if isinstance(name, str) else None,
                               field=field)

    unknown = set(t) - _NET_KEYS
    if unknown:
        raise fail(sorted(unknown)[0], f"unknown key (known: {', '.join(sorted(_NET_KEYS))})")
    if not isinstance(name, str):
        raise fail("name", "missing or not a string")
    mode_s = t.get("mode", "nat")
    try:
        mode = Mode(mode_s)
    except ValueError:
        raise fail("mode", f"unknown mode {mode_s!r} (expected one of "
                           f"{', '.join(m.value for m in Mode)})") from None
    for key in ("bridge", "forward_dev"):
        if key in t and not isinstance(t[key], str):
            raise fail(key, "must be a string")
    if not isinstance(t.get("ipv6", False), bool):
        raise fail("ipv6", "must be true or false")
    nat = _nat(t.get("nat", {}), fail)
    ips_raw = t.get("ip", [])
    if not isinstance(ips_raw, list):
        raise fail("ip", "must be an array of tables ([[network.ip]])")
    ips = tuple(_ip(i, fail) for i in ips_raw)
    forwards = tuple(_port_forward(f, i, fail)
                     for i, f in enumerate(_tables(t, "port_forward", fail)))
    allows = tuple(_allow(a, i, fail) for i, a in enumerate(_tables(t, "allow", fail)))
    return Network(name=name, mode=mode, bridge=t.get("bridge"), forward_dev=t.get("forward_dev"),
                   ips=ips, nat=nat, ipv6_nogw=t.get("ipv6", False), source=source,
                   port_forwards=forwards, allows=allows).validated()


def _tables(t: dict, key: str, fail) -> list:
    raw = t.get(key, [])
    if not isinstance(raw, list) or not all(isinstance(x, dict) for x in raw):
        raise fail(key, f"must be an array of tables ([[network.{key}]])")
    return raw


def _entry(where: str, raw: dict, known: set[str], make, fail):
    """One [[network.port_forward]] or [[network.allow]] table, built by ``make`` with
    every problem worded as ``where.field``."""
    unknown = set(raw) - known
    if unknown:
        raise fail(f"{where}.{sorted(unknown)[0]}",
                   f"unknown key (known: {', '.join(sorted(known))})")
    return make(lambda field, problem: fail(f"{where}.{field}", problem), **raw)


def _port_forward(f: dict, i: int, fail) -> PortForward:
    return _entry(f"port_forward[{i}]", f, _FORWARD_KEYS, make_port_forward, fail)


def _allow(a: dict, i: int, fail) -> Allow:
    return _entry(f"allow[{i}]", a, _ALLOW_KEYS, make_allow, fail)


def _nat(n: Any, fail) -> Nat:
    if not isinstance(n, dict):
        raise fail("nat", "must be a table")
    unknown = set(n) - _NAT_KEYS
    if unknown:
        raise fail(f"nat.{sorted(unknown)[0]}", f"unknown key (known: {', '.join(sorted(_NAT_KEYS))})")
    ports = n.get("ports", [1024, 65535])
    if not (isinstance(ports, list) and len(ports) == 2 and all(type(p) is int for p in ports)):
        raise fail("nat.ports", "must be [start, end] port numbers")
    addr = n.get("address")
    a_start = a_end = None
    if addr is not None:
        if not (isinstance(addr, list) and 1 <= len(addr) <= 2 and all(isinstance(a, str) for a in addr)):
            raise fail("nat.address", "must be [start, end] IPv4 addresses")
        try:
            a_start = ipaddress.IPv4Address(addr[0])
            a_end = ipaddress.IPv4Address(addr[-1])
        except ValueError as e:
            raise fail("nat.address", str(e)) from None
    if not isinstance(n.get("ipv6", False), bool):
        raise fail("nat.ipv6", "must be true or false")
    return Nat(port_start=ports[0], port_end=ports[1], address_start=a_start, address_end=a_end,
               ipv6=n.get("ipv6", False))


def _ip(i: Any, fail) -> IPBlock:
    if not isinstance(i, dict):
        raise fail("ip", "each [[network.ip]] must be a table")
    unknown = set(i) - _IP_KEYS
    if unknown:
        raise fail(f"ip.{sorted(unknown)[0]}", f"unknown key (known: {', '.join(sorted(_IP_KEYS))})")
    raw = i.get("address")
    try:
        if not isinstance(raw, str):
            raise ValueError
        addr = parse_ip(raw)
    except ValueError:
        raise fail("ip.address", f"{raw!r} is not an IP address (a string such as "
                                 "\"192.168.122.1\")") from None
    if "prefix" in i and "netmask" in i:
        raise fail("ip.prefix", "give either prefix or netmask, not both")
    if "netmask" in i:
        prefix = netmask_prefix(i["netmask"])
        if prefix is None or addr.version != 4:
            raise fail("ip.netmask", f"{i['netmask']!r} is not an IPv4 netmask (dotted quad of "
                                     "contiguous ones, e.g. 255.255.255.0)")
    else:
        prefix = i.get("prefix", classful_prefix(addr))
        if type(prefix) is not int:
            raise fail("ip.prefix", "must be a number")
    if not isinstance(i.get("dhcp", False), bool):
        raise fail("ip.dhcp", "must be true or false")
    tftp = i.get("tftp_root")
    if tftp is not None and not isinstance(tftp, str):
        raise fail("ip.tftp_root", "must be a string")
    return IPBlock(addr, prefix, i.get("dhcp", False), tftp, _hosts(i.get("hosts", []), fail))


def _hosts(raw: Any, fail) -> tuple[DhcpHost, ...]:
    if not isinstance(raw, list):
        raise fail("ip.hosts", "must be a list of { name = ..., ip = ... } tables")
    out = []
    for h in raw:
        if not (isinstance(h, dict) and set(h) <= {"name", "ip", "mac"}
                and isinstance(h.get("name"), str) and isinstance(h.get("ip"), str)):
            raise fail("ip.hosts", "each host is { name = \"web\", ip = \"192.168.122.10\" }")
        try:
            out.append(DhcpHost(h["name"], parse_ip(h["ip"])))
        except ValueError:
            raise fail("ip.hosts", f"{h['ip']!r} is not an IP address") from None
    return tuple(out)
