"""The traffic policy (docs/design.md §4) as a pure function: what the kernel must do per pair.

Contract: ``expect(networks, profile, src, dst, family, proto, active=None)`` says whether a
new TCP connection / one UDP datagram from host ``src`` to host ``dst`` gets through on the
hypervisor described by ``networks``, and which source address the receiver sees. No I/O.
``active`` names the networks whose rules are loaded (default: all); the others have no
rules, exactly like an ``open`` network.

It is written from the design's *semantics*, not from the planner's rules, so the two can
disagree and the lab will show it. A forwarded packet meets three stages, in this order
(docs/design.md §2: FWX, FWI, FWO, then the FORWARD policy, ACCEPT):

1. cross (FWX): traffic that stays on one bridge is accepted; in a profile that guards
   egress (``default``), a packet leaving a network's bridge is rejected right here if its
   own network would not let it out: the network is isolated, or the packet goes elsewhere
   than the network's forward device, or its source is in none of the network's subnets.
2. incoming (FWI), decided by the network that owns the *outgoing* bridge: a routed subnet
   accepts what is addressed to it (from its forward device only, if it has one); a NAT
   subnet accepts only replies; then everything else into that bridge is rejected.
3. outgoing (FWO), decided by the network that owns the *incoming* bridge: a NAT or routed
   subnet lets its own addresses out (to its forward device only, if it has one); then
   everything else from that bridge is rejected.

A network without rules in a family (open, inactive, or -- profile ``libvirt`` only -- a
network with no IPv6 address, for IPv6) takes no part in any stage. NAT subnets are
masqueraded to the hypervisor's address on the outgoing interface (or SNATed into their
address range) when they leave to a destination outside the subnet through their forward
device, or any interface if they have none. An IPv6 subnet of a nat network without
``<nat ipv6='yes'>`` is a routed subnet. A TCP connection needs the reply to pass the same
stages the other way round (as an established packet) and the hypervisor to have a route
back to the client; UDP only needs the one datagram through. That is how the libvirt leak
shows: isolated -> routed delivers UDP, but the SYN-ACK is rejected by the isolated
network's incoming stage.

Hosts that are not forwarded through the hypervisor: a guest talking to another guest on
the same bridge (bridged; FWX accepts it when bridge netfilter is on) and any guest talking
to its own gateway (INPUT, assumed ACCEPT) always get through with their own address.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Collection, Iterable

from ..model import IPBlock, Mode, Network
from ..plan import PROFILES, Profile

GUEST, GATEWAY, UPLINK = "guest", "gateway", "uplink"


@dataclass(frozen=True)
class Host:
    """An endpoint of the lab, described without any namespace detail.

    ``network``: the network whose bridge a guest sits on, or whose gateway this is.
    ``dev``: for uplink hosts, the hypervisor's interface towards them; ``hv_addrs`` the
    hypervisor's own addresses on it (what masquerading towards them picks).
    """

    name: str
    role: str
    addrs: tuple[str, ...]
    network: str | None = None
    dev: str | None = None
    hv_addrs: tuple[str, ...] = ()

    def addr(self, family: int) -> str | None:
        return next((a for a in self.addrs if ipaddress.ip_address(a).version == family), None)


@dataclass(frozen=True)
class Expectation:
    reach: bool
    seen: tuple[str, str] | None = None     # inclusive range of acceptable source addresses
    why: str = ""                           # short reason, for tables and failures

    def seen_text(self) -> str:
        if self.seen is None:
            return ""
        lo, hi = self.seen
        return lo if lo == hi else f"{lo}-{hi}"

    def matches(self, reached: bool, seen: str | None) -> bool:
        if reached != self.reach:
            return False
        if not reached or self.seen is None:
            return True
        if seen is None:
            return False
        lo, hi, s = (ipaddress.ip_address(x) for x in (*self.seen, seen))
        return lo.version == s.version and lo <= s <= hi


def _one(addr: str) -> tuple[str, str]:
    return (addr, addr)


@dataclass(frozen=True)
class _End:
    """One side of a forwarded packet as the hypervisor sees it."""

    iface: str                  # hypervisor interface it comes in by / goes out by
    addr: str
    net: Network | None         # network owning that interface, if any


class Policy:
    """The policy for one set of networks and one profile (``active``: rules loaded)."""

    def __init__(self, networks: Iterable[Network], profile: Profile | str,
                 active: Collection[str] | None = None) -> None:
        self.networks = {n.name: n for n in networks}
        self.profile = PROFILES[profile] if isinstance(profile, str) else profile
        self.active = set(self.networks) if active is None else set(active)

    # -- facts about networks ------------------------------------------------------------
    def firewalled(self, net: Network | None, family: int) -> bool:
        """Does ``net`` have rules for ``family`` loaded?"""
        if net is None or net.name not in self.active or not net.mode.firewalled:
            return False
        return family == 4 or bool(net.ips_of(6)) or net.ipv6_nogw or self.profile.always_ipv6

    @staticmethod
    def block_of(net: Network, addr: str) -> IPBlock | None:
        a = ipaddress.ip_address(addr)
        return next((ip for ip in net.ips if ip.family == a.version and a in ip.subnet), None)

    @staticmethod
    def nat_applies(net: Network, block: IPBlock) -> bool:
        return net.mode is Mode.NAT and (block.family == 4 or net.nat.ipv6)

    def hv_routes_to(self, addr: str) -> bool:
        """The hypervisor has a connected route to guests only inside some subnet."""
        return any(self.block_of(n, addr) is not None for n in self.networks.values())

    # -- the three stages ------------------------------------------------------------------
    def forward(self, a: _End, b: _End, family: int, reply: bool) -> tuple[bool, str]:
        """Verdict for a packet from ``a`` to ``b`` through the FORWARD chain."""
        src, dst = a.net, b.net
        if a.iface == b.iface:
            return True, "same bridge"
        # 1. cross: with guard_egress, the source network's own egress limits come first
        if self.profile.guard_egress and self.firewalled(src, family):
            if src.mode is Mode.ISOLATED:
                return False, f"{src.name} is isolated"
            if src.forward_dev is not None and b.iface != src.forward_dev:
                return False, f"{src.name} forwards only via {src.forward_dev}"
            if self.block_of(src, a.addr) is None:
                return False, f"{src.name}: source outside its subnets"
        # 2. incoming, by the destination bridge's network
        if self.firewalled(dst, family):
            blk = self.block_of(dst, b.addr)
            if blk is not None and dst.mode in (Mode.NAT, Mode.ROUTE) \
                    and (dst.forward_dev is None or a.iface == dst.forward_dev):
                if not self.nat_applies(dst, blk):
                    return True, f"{dst.name} accepts routed traffic"
                if reply:
                    return True, f"{dst.name} accepts replies"
            return False, f"{dst.name} rejects incoming"
        # 3. outgoing, by the source bridge's network
        if self.firewalled(src, family):
            blk = self.block_of(src, a.addr)
            if blk is not None and src.mode in (Mode.NAT, Mode.ROUTE) \
                    and (src.forward_dev is None or b.iface == src.forward_dev):
                return True, f"{src.name} lets its subnet out"
            return False, f"{src.name} rejects outgoing"
        return True, "no rule applies"

    def source_seen(self, a: _End, b: _End, family: int, hv_out: str | None
                    ) -> tuple[str, str]:
        """Source address after POSTROUTING for a packet leaving by ``b.iface``, where the
        hypervisor's own address (what MASQUERADE picks) is ``hv_out``."""
        src = a.net
        if src is not None and src.name in self.active and src.mode.firewalled:
            blk = self.block_of(src, a.addr)
            if blk is not None and self.nat_applies(src, blk) \
                    and ipaddress.ip_address(b.addr) not in blk.subnet \
                    and (src.forward_dev is None or b.iface == src.forward_dev):
                n = src.nat
                if family == 4 and n.address_start is not None:
                    return (str(n.address_start), str(n.address_end))
                if hv_out is not None:
                    return _one(hv_out)
        return _one(a.addr)

    # -- public ----------------------------------------------------------------------------
    def _end(self, h: Host, family: int) -> _End:
        addr = h.addr(family)
        assert addr is not None
        if h.role == UPLINK:
            return _End(h.dev or "?", addr, None)
        net = self.networks[h.network]
        return _End(net.bridge or "?", addr, net)

    def _hv_addr_towards(self, h: Host, addr: str) -> str | None:
        """The hypervisor's address on the interface leading to ``h`` (at ``addr``): what
        MASQUERADE picks, the outgoing interface's address in the next hop's subnet."""
        fam = ipaddress.ip_address(addr).version
        if h.role == UPLINK:
            return next((x for x in h.hv_addrs if ipaddress.ip_address(x).version == fam),
                        None)
        blk = self.block_of(self.networks[h.network], addr)
        return str(blk.address) if blk is not None else None

    def expect(self, src: Host, dst: Host, family: int, proto: str) -> Expectation:
        """A new ``proto`` ("tcp"/"udp") exchange from ``src`` to ``dst`` over ``family``:
        does it get through, and with which source address at the receiver?"""
        sa, da = src.addr(family), dst.addr(family)
        if sa is None or da is None:
            raise ValueError(f"{src.name} -> {dst.name}: no IPv{family} address on both ends")
        if dst.role == GATEWAY:
            if src.network != dst.network:
                raise ValueError("only a guest's own gateway is part of the policy")
            return Expectation(True, _one(sa), "own gateway (INPUT)")
        if src.role == GUEST and dst.role == GUEST and src.network == dst.network:
            return Expectation(True, _one(sa), "same bridge")
        a, b = self._end(src, family), self._end(dst, family)
        if dst.role == GUEST and not self.hv_routes_to(da):
            return Expectation(False, None, "no route to destination")
        ok, why = self.forward(a, b, family, reply=False)
        if not ok:
            return Expectation(False, None, why)
        seen = self.source_seen(a, b, family, self._hv_addr_towards(dst, da))
        if proto == "udp":
            return Expectation(True, seen, why)
        if src.role == GUEST and not self.hv_routes_to(sa):
            return Expectation(False, None, "one-way: no route back to the source")
        back_ok, back_why = self.forward(b, a, family, reply=True)
        if not back_ok:
            return Expectation(False, None, f"one-way: reply dropped ({back_why})")
        return Expectation(True, seen, why)


def expect(networks: Iterable[Network], profile: Profile | str, src: Host, dst: Host,
           family: int, proto: str, active: Collection[str] | None = None) -> Expectation:
    """Functional form of ``Policy(networks, profile, active).expect(...)``."""
    return Policy(networks, profile, active).expect(src, dst, family, proto)
