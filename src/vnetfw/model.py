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
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Iterable

from .errors import DefinitionError

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


UNMANAGED_MODES = frozenset({Mode.BRIDGE, Mode.PRIVATE, Mode.VEPA, Mode.PASSTHROUGH, Mode.HOSTDEV})

# Linux: IFNAMSIZ is 16 including the NUL, so 15 characters; dev_valid_name() refuses "/",
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
    if len(name) > 15:
        return f"interface name {name!r} is longer than 15 characters"
    if name in (".", ".."):
        return f"interface name {name!r} is reserved"
    if _IFNAME_BAD.search(name) or not name.isprintable():
        return (f"interface name {name!r} may not contain '/', ':', quotes, backslashes, "
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
        return (f"network name {name!r} must be 1-64 characters of letters, digits and _ . + -, "
                "not starting with . + or -")
    return None


def chain_prefix_problem(prefix: object) -> str | None:
    if not isinstance(prefix, str) or not _CHAIN_PREFIX.match(prefix):
        return (f"chain prefix {prefix!r} must be 1-20 letters, digits or '_' starting with a "
                "letter (iptables chain names are at most 28 characters)")
    return None


@dataclass(frozen=True, slots=True)
class IPBlock:
    """One ``<ip>`` element: the host's address on the bridge and the subnet it implies."""

    address: IPAddr
    prefix: int
    dhcp: bool = False
    tftp_root: str | None = None
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
        return self

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
                 **({"tftp_root": ip.tftp_root} if ip.tftp_root is not None else {})}
                for ip in self.ips
            ],
            "source": self.source,
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
    return Network(
        name=d["name"],
        mode=_MODE_OF[d["mode"]],
        bridge=d.get("bridge"),
        forward_dev=d.get("forward_dev"),
        ipv6_nogw=bool(d.get("ipv6", False)),
        nat=_nat(tuple(nat.get("ports", (1024, 65535)))[:2],
                 tuple(addr) if addr else None, bool(nat.get("ipv6", False))),
        ips=tuple(IPBlock(parse_ip(i["address"]), int(i["prefix"]),
                          bool(i.get("dhcp", False)), i.get("tftp_root")) for i in d.get("ip", [])),
        source=d.get("source", "<state>"),
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
    return tuple(sorted(nets, key=lambda n: n.name))


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


def with_source(net: Network, source: str) -> Network:
    return replace(net, source=source)
