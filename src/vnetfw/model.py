"""The network model: frozen, validated definitions every source is loaded into.

Contract: a ``Network`` that exists is valid on its own (names, ports, addresses); a list of
networks is valid together once ``validate_together`` accepted it (unique names and bridges,
no overlapping subnets). Everything downstream (planner, backends) trusts these invariants and
never re-validates. Values that reach a command line (interface names, network names) are
restricted here to characters that are safe there, so no later layer needs quoting tricks.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Iterable, NamedTuple

from .errors import DefinitionError, shown

IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_ip(text: str) -> IPAddr:
    """``ipaddress.ip_address(text)``, four times faster (1,000 networks: a few ms on every
    apply and state load). The C ``inet_pton`` parses what it can; it accepts no string
    that ipaddress refuses (leading zeros, short forms, stray spaces: checked against
    500,000 random strings when this was written, and by a property test since) and gives
    the same value; anything else, scoped IPv6 addresses among them, goes to ipaddress,
    which words the error (a ValueError; for a NUL or a lone surrogate in the text it is
    ``inet_pton``'s)."""
    try:
        return ipaddress.IPv4Address(int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big"))
    except (OSError, TypeError):
        pass
    try:
        return ipaddress.IPv6Address(int.from_bytes(socket.inet_pton(socket.AF_INET6, text),
                                                    "big"))
    except (OSError, TypeError):
        return ipaddress.ip_address(text)


class Mode(str, Enum):
    """Forward mode of a network (libvirt's names)."""

    NAT = "nat"
    ROUTE = "route"
    OPEN = "open"
    ISOLATED = "isolated"
    # Modes vnetfw accepts but does not firewall: the guest sits on a host bridge or device.
    BRIDGE = "bridge"
    PRIVATE = "private"
    VEPA = "vepa"
    PASSTHROUGH = "passthrough"
    HOSTDEV = "hostdev"

    @property
    def firewalled(self) -> bool:
        """True for the modes that get private-chain rules (all but open and the bridge modes)."""
        return self in (Mode.NAT, Mode.ROUTE, Mode.ISOLATED)

    @property
    def needs_bridge(self) -> bool:
        return self in (Mode.NAT, Mode.ROUTE, Mode.ISOLATED, Mode.OPEN)


# Linux: IFNAMSIZ is 16 including the NUL, so 15 bytes (not characters: "мост-сети" is 9
# characters and 17 bytes of UTF-8, which the kernel refuses); dev_valid_name() refuses "/",
# ":" and whitespace, and "." / "..". Quotes are refused too so a name is always a plain token
# in iptables-restore and nft scripts. "+" is legal for Linux but a trailing "+" is a
# wildcard to iptables ("-i virbr+" matches every virbr*), and "*" is nft's: a bridge named
# that way would open the firewall for every interface sharing the prefix.
_IFNAME_BAD = re.compile(r"[/:\s\"'\\+*]")
# Network names end up in rule comments and nft chain names: keep them to a safe alphabet.
_NETNAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}$")
_CHAIN_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,19}$")


def ifname_problem(name: object) -> str | None:
    """Why ``name`` is not a valid Linux interface name, or None if it is."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty interface name"
    if len(name) > 15 or len(name.encode("utf-8", "surrogatepass")) > 15:
        return f"interface name {shown(name)} is longer than 15 bytes (Linux's limit)"
    if name in (".", ".."):
        return f"interface name {shown(name)} is reserved"
    if _IFNAME_BAD.search(name) or not name.isprintable():
        return (f"interface name {shown(name)} may not contain '/', ':', quotes, backslashes, "
                "whitespace, or the wildcards '+' and '*'")
    return None


_DIGITS = re.compile(r"[0-9]+")
_DOTTED_QUAD = re.compile(r"(?:[0-9]{1,3}\.){3}[0-9]{1,3}")


def parse_number(text: str) -> int | None:
    """A plain decimal number, or None ("1_000", " 5", "+5" and non-ASCII digits are not)."""
    return int(text) if _DIGITS.fullmatch(text) else None


def netmask_prefix(mask: object) -> int | None:
    """Prefix length of a dotted-quad netmask with contiguous ones (255.255.255.0 -> 24), or
    None. ipaddress would also take a hostmask (0.0.0.255) or a bare "24"; libvirt does not."""
    if not isinstance(mask, str) or not _DOTTED_QUAD.fullmatch(mask):
        return None
    try:
        bits = int(ipaddress.IPv4Address(mask))
    except ValueError:
        return None
    inverted = ~bits & 0xFFFFFFFF
    if inverted & (inverted + 1):           # ones must be contiguous from the top
        return None
    return 32 - inverted.bit_length()


def classful_prefix(addr: "IPAddr") -> int:
    """libvirt's default for an address without netmask or prefix: IPv6 /64, IPv4 its
    historic class (A /8, B /16, C /24)."""
    if addr.version == 6:
        return 64
    first = int(addr) >> 24
    return 8 if first < 128 else 16 if first < 192 else 24


def netname_problem(name: object) -> str | None:
    if not isinstance(name, str) or not _NETNAME.match(name):
        return (f"network name {shown(name)} must be 1-64 characters of letters, digits "
                "and _ . + -, not starting with . + or -")
    return None


def chain_prefix_problem(prefix: object) -> str | None:
    if not isinstance(prefix, str) or not _CHAIN_PREFIX.match(prefix):
        return (f"chain prefix {prefix!r} must be 1-20 letters, digits or '_' starting with a "
                "letter (iptables chain names are at most 28 characters)")
    return None


@dataclass(frozen=True, slots=True)
class DhcpHost:
    """A static DHCP host entry (``<host name ip/>``): a name a port forward's ``to`` may use."""

    name: str
    ip: IPAddr


@dataclass(frozen=True, slots=True)
class IPBlock:
    """One ``<ip>`` element: the host's address on the bridge and the subnet it implies."""

    address: IPAddr
    prefix: int
    dhcp: bool = False
    tftp_root: str | None = None
    hosts: tuple[DhcpHost, ...] = ()
    # Derived once: the planner reads them many times per network (1,000 networks: ~50 ms).
    subnet: IPNet = field(init=False, compare=False, repr=False)
    cidr: str = field(init=False, compare=False, repr=False)     # str(subnet)
    family: int = field(init=False, compare=False, repr=False)   # 4 or 6

    def __post_init__(self) -> None:
        try:
            # from (int, prefix): no text to parse again
            cls = ipaddress.IPv4Network if self.address.version == 4 else ipaddress.IPv6Network
            net = cls((int(self.address), self.prefix), strict=False)
        except ValueError:
            net = None      # an out-of-range prefix: Network.validated() names the field
        object.__setattr__(self, "subnet", net)
        object.__setattr__(self, "cidr", str(net) if net is not None else "")
        object.__setattr__(self, "family", self.address.version)


@dataclass(frozen=True, slots=True)
class Nat:
    """NAT options: masquerade port range, optional SNAT address range, IPv6 NAT."""

    port_start: int = 1024
    port_end: int = 65535
    address_start: ipaddress.IPv4Address | None = None
    address_end: ipaddress.IPv4Address | None = None
    ipv6: bool = False


PROTOS = ("tcp", "udp")
PortRange = tuple[int, int]
Fail = Callable[[str, str], DefinitionError]


@dataclass(frozen=True, slots=True)
class PortForward:
    """Publish a guest's port (or a range, one to one) on the host's addresses.

    ``port`` and ``to_port`` are inclusive ranges ``(start, end)``, a single port being
    ``(p, p)``; ``to_port`` is the same length as ``port`` (checked when built). ``to`` is
    as written: an address or the name of a static DHCP host, resolved by
    ``Network.forward_address``. ``host_address`` (or None: every host address of the
    family) and ``source`` (or (): everyone) narrow who may use it.
    """

    proto: str
    port: PortRange
    to: str
    to_port: PortRange
    host_address: IPAddr | None = None
    source: tuple[IPNet, ...] = ()

    def describe(self) -> str:
        host = str(self.host_address) if self.host_address is not None else "*"
        if ":" in host:
            host = f"[{host}]"
        to = f"[{self.to}]" if ":" in self.to else self.to
        text = f"{self.proto} {host}:{port_text(self.port)} -> {to}:{port_text(self.to_port)}"
        if self.source:
            text += " from " + ",".join(map(str, self.source))
        return text

    def to_dict(self) -> dict:
        return {"proto": self.proto, "port": port_text(self.port), "to": self.to,
                "to_port": port_text(self.to_port),
                "host_address": None if self.host_address is None else str(self.host_address),
                "source": [str(s) for s in self.source]}


class Ports(NamedTuple):
    """One entry of an allow's ``ports``: a protocol and an inclusive port range."""

    proto: str
    start: int = 1
    end: int = 65535

    def text(self) -> str:
        if (self.start, self.end) == (1, 65535):
            return self.proto
        return f"{self.proto}/{port_text((self.start, self.end))}"


@dataclass(frozen=True, slots=True)
class Allow:
    """This network's guests may open connections into network ``to`` (one way).

    ``ports`` () means every protocol and port; ``source`` () means the whole network,
    otherwise parts of its subnets.
    """

    to: str
    ports: tuple[Ports, ...] = ()
    source: tuple[IPNet, ...] = ()

    def describe(self) -> str:
        text = f"to {self.to}"
        text += " " + (",".join(p.text() for p in self.ports) if self.ports else "all ports")
        if self.source:
            text += " from " + ",".join(map(str, self.source))
        return text

    def to_dict(self) -> dict:
        return {"to": self.to, "ports": [p.text() for p in self.ports],
                "source": [str(s) for s in self.source]}


def port_text(r: PortRange) -> str:
    return str(r[0]) if r[0] == r[1] else f"{r[0]}-{r[1]}"


def parse_port_range(value: object) -> PortRange:
    """``8080``, ``"8080"`` or ``"2200-2201"`` -> (start, end); ValueError says why not."""
    if type(value) is int:
        start = end = value
    elif isinstance(value, str):
        a, sep, b = value.partition("-")
        start, end = parse_number(a.strip()), parse_number(b.strip()) if sep else None
        if not sep:
            end = start
        if start is None or end is None:
            raise ValueError(f"{value!r} is not a port or a range such as \"2200-2201\"")
    else:
        raise ValueError(f"{value!r} is not a port number or a range string")
    if not 1 <= start <= end <= 65535:
        raise ValueError(f"{port_text((start, end))} must satisfy 1 <= start <= end <= 65535")
    return start, end


def _addresses(value: object, what: str) -> tuple[IPNet, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
        raise ValueError(f"must be a list of {what} (strings)")
    out = []
    for v in items:
        try:
            out.append(ipaddress.ip_network(v.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{v!r} is not an address or subnet") from None
    return tuple(dict.fromkeys(out))


def make_port_forward(fail: Fail, *, proto: object = None, port: object = None,
                      to: object = None,
                      to_port: object = None, host_address: object = None,
                      source: object = None) -> PortForward:
    """A ``PortForward`` from values as a definition file gives them (TOML values or XML
    attribute strings); ``fail(field, problem)`` builds the error (field: proto, port, to,
    to_port, host_address, source). Checks what the forward can get wrong on its own;
    ``Network.validated`` checks it against its network."""
    if proto not in PROTOS:
        raise fail("proto", f"{proto!r} must be \"tcp\" or \"udp\"")
    if port is None:
        raise fail("port", "missing (the host's port, or a range \"2200-2201\")")
    try:
        p = parse_port_range(port)
    except ValueError as e:
        raise fail("port", str(e)) from None
    tp = p
    if to_port is not None:
        try:
            tp = parse_port_range(to_port)
        except ValueError as e:
            raise fail("to_port", str(e)) from None
        if tp[1] - tp[0] != p[1] - p[0]:
            raise fail("to_port", f"range {port_text(tp)} is {tp[1] - tp[0] + 1} ports long, "
                                  f"port {port_text(p)} is {p[1] - p[0] + 1}: a range maps one "
                                  "to one")
    if not isinstance(to, str) or not to.strip():
        raise fail("to", "missing (a guest address, or a static DHCP host's name)")
    to = to.strip()
    try:
        to_ip: IPAddr | None = parse_ip(to)
    except ValueError:
        to_ip = None
        if not _HOSTNAME.match(to):
            raise fail("to", f"{to!r} is neither an IP address nor a DHCP host name") from None
    if to_ip is not None:
        to = str(to_ip)             # canonical, so the same forward always compares equal
    host = None
    if host_address is not None:
        try:
            if not isinstance(host_address, str):
                raise ValueError
            host = parse_ip(host_address.strip())
        except ValueError:
            raise fail("host_address", f"{host_address!r} is not an IP address") from None
        if to_ip is not None and host.version != to_ip.version:
            raise fail("host_address", f"{host} and {to} are of different IP versions")
    src: tuple[IPNet, ...] = ()
    if source is not None:
        try:
            src = _addresses(source, "addresses or subnets")
        except ValueError as e:
            raise fail("source", str(e)) from None
    return PortForward(proto, p, to, tp, host, src)


def make_allow(fail: Fail, *, to: object = None, ports: object = None,
               source: object = None) -> Allow:
    """An ``Allow`` from definition values; ``fail(field, problem)`` as for
    ``make_port_forward`` (fields: to, ports, source). ``ports`` entries are ``"tcp/5432"``,
    ``"udp/60000-60010"`` or a bare ``"tcp"`` (every port of that protocol)."""
    if (p := netname_problem(to)) is not None:
        raise fail("to", p)
    out: list[Ports] = []
    if ports is not None:
        items = [ports] if isinstance(ports, str) else ports
        if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
            raise fail("ports", "must be a list of strings such as \"tcp/5432\"")
        for item in items:
            proto, sep, rng = item.strip().partition("/")
            if proto not in PROTOS:
                raise fail("ports", f"{item!r}: protocol must be tcp or udp "
                                    "(as in \"tcp/5432\" or \"udp\")")
            try:
                start, end = parse_port_range(rng) if sep else (1, 65535)
            except ValueError as e:
                raise fail("ports", f"{item!r}: {e}") from None
            out.append(Ports(proto, start, end))
    src: tuple[IPNet, ...] = ()
    if source is not None:
        try:
            src = _addresses(source, "subnets")
        except ValueError as e:
            raise fail("source", str(e)) from None
    return Allow(to, tuple(dict.fromkeys(out)), src)


# A DHCP host name as dnsmasq takes it: a DNS label, letters, digits and hyphens.
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62})$")


@dataclass(frozen=True, slots=True)
class Network:
    name: str
    mode: Mode
    bridge: str | None = None
    forward_dev: str | None = None
    ips: tuple[IPBlock, ...] = ()
    nat: Nat = field(default_factory=Nat)
    ipv6_nogw: bool = False          # <network ipv6='yes'>: guest IPv6 without a host address
    source: str = "<string>"         # where it was defined, for error messages
    port_forwards: tuple[PortForward, ...] = ()
    allows: tuple[Allow, ...] = ()

    def forward_address(self, fw: PortForward) -> IPAddr:
        """The guest address a forward goes to: ``to`` itself, or the address of the static
        DHCP host of that name (validated: it exists and lies in one of the subnets)."""
        try:
            return parse_ip(fw.to)
        except ValueError:
            pass
        for ip in self.ips:
            for h in ip.hosts:
                if h.name == fw.to:
                    return h.ip
        raise KeyError(fw.to)

    def ips_of(self, family: int) -> tuple[IPBlock, ...]:
        return tuple(ip for ip in self.ips if ip.family == family) if self.ips else ()

    def validated(self) -> "Network":
        """Return self after checking every field on its own; raise DefinitionError otherwise."""

        def fail(fieldname: str, problem: str) -> DefinitionError:
            return DefinitionError(self.source, problem, network=self.name, field=fieldname)

        if (p := netname_problem(self.name)) is not None:
            raise DefinitionError(self.source, p, field="name")
        if self.mode.needs_bridge and self.bridge is None:
            raise fail("bridge", f"a {self.mode.value} network needs a bridge name")
        if self.bridge is not None and (p := ifname_problem(self.bridge)) is not None:
            raise fail("bridge", p)
        if self.forward_dev is not None and (p := ifname_problem(self.forward_dev)) is not None:
            raise fail("forward dev", p)
        if self.forward_dev is not None and self.forward_dev == self.bridge:
            raise fail("forward dev", "the forward device cannot be the network's own bridge")
        n = self.nat
        if not (1 <= n.port_start <= n.port_end <= 65535):
            raise fail("nat port", f"port range {n.port_start}-{n.port_end} must satisfy "
                                   "1 <= start <= end <= 65535")
        if (n.address_start is None) != (n.address_end is None):
            raise fail("nat address", "needs both start and end")
        if n.address_start is not None and n.address_end is not None \
                and n.address_start > n.address_end:
            raise fail("nat address", f"start {n.address_start} is after end {n.address_end}")
        seen: list[IPNet] = []
        for ip in self.ips:
            if getattr(ip.address, "scope_id", None):
                raise fail("ip address", f"{ip.address} has a zone (%{ip.address.scope_id}): "
                                         "a bridge's address and its subnet have none")
            maxp = 32 if ip.family == 4 else 128
            if not 0 < ip.prefix <= maxp:
                raise fail("ip prefix", f"prefix {ip.prefix} of {ip.address} is out of range")
            if ip.tftp_root is not None and ip.family != 4:
                raise fail("ip tftp", "TFTP is only supported on IPv4 addresses")
            for other in seen:
                if other.version == ip.subnet.version and other.overlaps(ip.subnet):
                    raise fail("ip", f"subnet {ip.subnet} overlaps {other} of the same network")
            seen.append(ip.subnet)
        self._validate_forwards(fail)
        self._validate_allows(fail)
        return self

    def _validate_forwards(self, fail: Callable[[str, str], DefinitionError]) -> None:
        for i, fw in enumerate(self.port_forwards):
            where = f"port_forward[{i}]"
            if self.mode not in (Mode.NAT, Mode.ROUTE):
                raise fail(f"{where}", f"a {self.mode.value} network cannot have port "
                                       "forwards (only nat and route networks)")
            try:
                addr = self.forward_address(fw)
            except KeyError:
                raise fail(f"{where}.to", f"{fw.to!r} is not an address, nor the name of a "
                                          "static DHCP host of this network") from None
            if not any(ip.family == addr.version and addr in ip.subnet for ip in self.ips):
                raise fail(f"{where}.to", f"{addr} is outside the network's subnets "
                                          f"({', '.join(ip.cidr for ip in self.ips) or 'none'})")
            if any(addr == ip.address for ip in self.ips):
                raise fail(f"{where}.to", f"{addr} is the host's own address on the bridge, "
                                          "not a guest")
            if fw.host_address is not None and fw.host_address.version != addr.version:
                raise fail(f"{where}.host_address", f"{fw.host_address} and {addr} are of "
                                                    "different IP versions")
            for s in fw.source:
                if s.version != addr.version:
                    raise fail(f"{where}.source", f"{s} and {addr} are of different IP "
                                                  "versions")

    def _validate_allows(self, fail: Callable[[str, str], DefinitionError]) -> None:
        for i, al in enumerate(self.allows):
            where = f"allow[{i}]"
            if not self.mode.firewalled:
                raise fail(where, f"a {self.mode.value} network is not firewalled: an allow "
                                  "from it means nothing")
            if al.to == self.name:
                raise fail(f"{where}.to", "a network's guests already reach each other")
            for s in al.source:
                if not any(ip.family == s.version and s.subnet_of(ip.subnet)  # type: ignore
                           for ip in self.ips):
                    raise fail(f"{where}.source", f"{s} is not part of the network's subnets "
                                                  f"({', '.join(ip.cidr for ip in self.ips) or 'none'})")

    def to_dict(self) -> dict:
        """A JSON-able form, the inverse of ``network_from_dict`` (used by the state file)."""
        return {
            "name": self.name,
            "mode": self.mode.value,
            "bridge": self.bridge,
            "forward_dev": self.forward_dev,
            "ipv6": self.ipv6_nogw,
            "nat": {
                "ports": [self.nat.port_start, self.nat.port_end],
                "address": None if self.nat.address_start is None
                else [str(self.nat.address_start), str(self.nat.address_end)],
                "ipv6": self.nat.ipv6,
            },
            "ip": [
                {"address": str(ip.address), "prefix": ip.prefix, "dhcp": ip.dhcp,
                 **({"tftp_root": ip.tftp_root} if ip.tftp_root is not None else {}),
                 **({"hosts": [{"name": h.name, "ip": str(h.ip)} for h in ip.hosts]}
                    if ip.hosts else {})}
                for ip in self.ips
            ],
            "source": self.source,
            **({"port_forward": [f.to_dict() for f in self.port_forwards]}
               if self.port_forwards else {}),
            **({"allow": [a.to_dict() for a in self.allows]} if self.allows else {}),
        }


_MODE_OF = {m.value: m for m in Mode}


@functools.lru_cache(maxsize=256)
def _nat(ports: tuple, address: tuple | None, ipv6: bool) -> Nat:
    """One ``Nat`` per distinct setting (it is immutable): a state of 1,000 networks holds
    a handful, and building each again cost ~1.5 us a network on every command."""
    return Nat(port_start=ports[0], port_end=ports[1],
               address_start=ipaddress.IPv4Address(address[0]) if address else None,
               address_end=ipaddress.IPv4Address(address[1]) if address else None,
               ipv6=ipv6)


def network_from_dict(d: dict) -> Network:
    """Inverse of ``Network.to_dict`` (trusted input: our own state file; validated all
    the same, since its values reach commands)."""
    nat = d.get("nat") or {}
    addr = nat.get("address")
    source = d.get("source", "<state>")

    def fail(field: str, problem: str) -> DefinitionError:
        return DefinitionError(source, problem, network=d.get("name"), field=field)

    return Network(
        name=d["name"],
        mode=_MODE_OF[d["mode"]],
        bridge=d.get("bridge"),
        forward_dev=d.get("forward_dev"),
        ipv6_nogw=bool(d.get("ipv6", False)),
        nat=_nat(tuple(nat.get("ports", (1024, 65535)))[:2],
                 tuple(addr) if addr else None, bool(nat.get("ipv6", False))),
        ips=tuple(IPBlock(parse_ip(i["address"]), int(i["prefix"]),
                          bool(i.get("dhcp", False)), i.get("tftp_root"),
                          tuple(DhcpHost(h["name"], parse_ip(h["ip"]))
                                for h in i.get("hosts", ())))
                  for i in d.get("ip", [])),
        source=source,
        port_forwards=tuple(make_port_forward(fail, **f) for f in d.get("port_forward", ())),
        allows=tuple(make_allow(fail, **a) for a in d.get("allow", ())),
    ).validated()


def validate_together(networks: Iterable[Network]) -> tuple[Network, ...]:
    """Check what only a set of networks can get wrong; return them sorted by name.

    Unique names, unique bridges, and no subnet overlapping another network's subnet.
    The error names the file and network of the later definition and the earlier one it
    conflicts with.
    """
    nets = tuple(networks)
    by_name: dict[str, Network] = {}
    by_bridge: dict[str, Network] = {}
    subnets: list[tuple[IPNet, Network]] = []
    for net in nets:
        if net.name in by_name:
            other = by_name[net.name]
            raise DefinitionError(net.source, f"network name is already defined in {other.source}",
                                  network=net.name, field="name")
        by_name[net.name] = net
        if net.bridge is not None and net.mode.needs_bridge:
            if net.bridge in by_bridge:
                other = by_bridge[net.bridge]
                raise DefinitionError(
                    net.source, f"bridge {net.bridge!r} is already used by network "
                                f"{other.name!r} ({other.source})",
                    network=net.name, field="bridge")
            by_bridge[net.bridge] = net
        subnets.extend((ip.subnet, net) for ip in net.ips)
    _check_overlaps(subnets, {id(n): i for i, n in enumerate(nets)})
    _check_forward_claims(nets)
    return tuple(sorted(nets, key=lambda n: n.name))


def _check_forward_claims(nets: tuple[Network, ...]) -> None:
    """No two forwards may claim the same host address, protocol and port, in one network or
    across networks and files: the kernel could send the connection to only one of them.
    A forward without ``host_address`` claims every host address of its IP version.

    Per (version, proto) the claims are swept in order of first port, keeping the ranges
    still open: O(n log n) for 10,000 forwards unless many ranges overlap on different
    host addresses (which is allowed, and then each is compared with the open ones)."""
    groups: dict[tuple[int, str], list[tuple[int, int, IPAddr | None, int, Network, int]]] = {}
    seq = 0
    for net in nets:
        for i, fw in enumerate(net.port_forwards):
            version = net.forward_address(fw).version
            groups.setdefault((version, fw.proto), []).append(
                (fw.port[0], fw.port[1], fw.host_address, seq, net, i))
            seq += 1
    for claims in groups.values():
        claims.sort(key=lambda c: (c[0], c[3]))
        open_: list[tuple[int, int, IPAddr | None, int, Network, int]] = []
        for c in claims:
            open_ = [o for o in open_ if o[1] >= c[0]]
            for o in open_:
                if o[2] is None or c[2] is None or o[2] == c[2]:
                    later, earlier = (c, o) if c[3] > o[3] else (o, c)
                    fw = later[4].port_forwards[later[5]]
                    other = earlier[4].port_forwards[earlier[5]]
                    raise DefinitionError(
                        later[4].source,
                        f"{fw.proto} port {port_text(fw.port)} on "
                        f"{fw.host_address or 'every host address'} is already forwarded by "
                        f"network {earlier[4].name!r} ({earlier[4].source}: "
                        f"{other.describe()})",
                        network=later[4].name, field=f"port_forward[{later[5]}].port")
            open_.append(c)


def _check_overlaps(subnets: list[tuple[IPNet, Network]], order: dict[int, int]) -> None:
    """Sweep subnets sorted by start address: two CIDR blocks overlap only if one contains
    the other, so each block need only be compared with the widest block still open.
    O(n log n) instead of comparing every pair (a 1,000-network host took seconds)."""
    subnets = sorted(subnets, key=lambda s: (s[0].version, int(s[0].network_address),
                                             s[0].prefixlen))
    open_: tuple[IPNet, Network] | None = None
    for subnet, net in subnets:
        if open_ is not None and open_[0].version == subnet.version \
                and int(subnet.network_address) <= int(open_[0].broadcast_address):
            other_subnet, other = open_
            if other is not net:
                # Name the definition that came later; it is the one to fix.
                if order[id(other)] > order[id(net)]:
                    (subnet, net), (other_subnet, other) = (other_subnet, other), (subnet, net)
                raise DefinitionError(
                    net.source, f"subnet {subnet} overlaps {other_subnet} of network "
                                f"{other.name!r} ({other.source})",
                    network=net.name, field="ip")
            continue        # same network: Network.validated() already refused it
        if open_ is None or open_[0].version != subnet.version \
                or int(subnet.broadcast_address) > int(open_[0].broadcast_address):
            open_ = (subnet, net)

