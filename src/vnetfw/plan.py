"""The planner: networks + profile -> Ruleset. Pure: no I/O, no clock, no randomness.

Contract: ``plan(networks, profile)`` is deterministic and independent of the order the
networks are given in (they are laid out sorted by name, each network's rules forming one
contiguous block per chain). The order of the blocks means nothing to a packet: each
matches only its own bridge or subnets, which no other network shares; so the iptables
backend keeps blocks where they stand and appends new ones, and reads them back by name. Within a network the rules follow libvirt's evaluation order
exactly (libvirt inserts every rule at the top of its chain, so its final order is the reverse
of its command order; the reference data in tests/fixtures/libvirt pins that order).

Profiles:
- ``libvirt``: prefix LIBVIRT, libvirt's rules and nothing else (exact compatibility,
  including its one-way leak from an isolated network into a routed one).
- ``default``: prefix VNETFW, libvirt's rules plus two hardenings:
  * egress is guarded in the *cross* stage (FWX), before any other network's incoming
    accept in FWI can let a packet through. libvirt enforces what may leave a network only
    in FWO, which comes after every network's FWI: so a routed network's "accept what is
    for my subnet" in FWI takes packets that their own network would have rejected — from
    an isolated network, from a network whose forward device is elsewhere, or with a source
    address outside the network's subnets (spoofed, or a self-assigned IPv6 address). In
    FWX each network therefore rejects, right after its same-bridge accept, packets leaving
    through another device than its forward device, and packets whose source is none of
    its subnets (RETURN for its subnets, then REJECT); an isolated network rejects all;
  * IPv6 forwarding is firewalled for every firewalled network, even one with no IPv6
    address (libvirt skips ip6tables then, so a guest that configures its own global IPv6
    address could forward freely).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterable, Iterator

import ipaddress

from .model import IPBlock, IPNet, Mode, Network, chain_prefix_problem, validate_together
from .ruleset import (ACCEPT, CHECKSUM, CT_REPLY, DNAT, MASQUERADE, REJECT, RETURN, SNAT,
                      Family, Rule, Ruleset)


@dataclass(frozen=True)
class Profile:
    name: str
    prefix: str
    guard_egress: bool          # each network's egress limits enforced in FWX (before FWI)
    always_ipv6: bool           # firewall IPv6 forwarding even without an IPv6 address

    def with_prefix(self, prefix: str) -> "Profile":
        if (p := chain_prefix_problem(prefix)) is not None:
            raise ValueError(p)
        return Profile(self.name, prefix, self.guard_egress, self.always_ipv6)


PROFILES: dict[str, Profile] = {
    "default": Profile("default", "VNETFW", guard_egress=True, always_ipv6=True),
    "libvirt": Profile("libvirt", "LIBVIRT", guard_egress=False, always_ipv6=False),
}

_MCAST = {4: "224.0.0.0/24", 6: "ff02::/16"}
_BCAST = "255.255.255.255/32"


def plan(networks: Iterable[Network], profile: Profile) -> Ruleset:
    """Every rule for ``networks`` under ``profile``, in evaluation order per chain."""
    nets = validate_together(networks)        # sorted by name; rejects clashes
    by_name = {n.name: n for n in nets}
    rules: list[Rule] = []
    for net in nets:
        rules.extend(network_rules(net, profile, peers_of(net, by_name)))
    return Ruleset.canonical(profile.prefix, rules)


def plan_networks(networks: Iterable[Network], profile: Profile
                  ) -> Iterator[tuple[str, tuple[Rule, ...]]]:
    """``plan`` network by network: (name, its rules) in name order, each network planned
    only when the consumer asks for it, so a backend can load one network while the next
    is planned (``Backend.load_fresh``). The networks are checked together first."""
    nets = validate_together(networks)
    by_name = {n.name: n for n in nets}
    for net in nets:
        yield net.name, network_rules(net, profile, peers_of(net, by_name))


def plan_some(names: Iterable[str], networks: dict[str, Network], profile: Profile) -> Ruleset:
    """The rules of the networks ``names`` (those of them in ``networks``), each planned
    against all of ``networks`` (its allows' peers): what ``plan(networks)`` holds of them.
    ``networks`` must be valid together."""
    rules: list[Rule] = []
    for name in sorted(set(names)):
        if (net := networks.get(name)) is not None:
            rules.extend(network_rules(net, profile, peers_of(net, networks)))
    return Ruleset.canonical(profile.prefix, rules)


def allowing(names: Iterable[str], *networks: dict[str, Network]) -> set[str]:
    """Networks (of any of ``networks``) with an allow naming one of ``names``: their rules
    change when those networks come, go or change."""
    wanted = set(names)
    return {n.name for nets in networks for n in nets.values()
            if any(a.to in wanted for a in n.allows)}


def peers_of(net: Network, by_name: dict[str, Network]) -> tuple[Network, ...]:
    """The networks ``net``'s allows name that are active (in ``by_name``): what its allow
    rules depend on besides itself. An allow naming a network not active waits for it."""
    return tuple(dict.fromkeys(by_name[a.to] for a in net.allows if a.to in by_name))


def waiting_allows(net: Network, by_name: dict[str, Network]) -> list[str]:
    """Names of the networks ``net`` allows into that are not active (or not firewalled):
    their allows take effect once those are applied."""
    return [a.to for a in net.allows
            if a.to not in by_name or not by_name[a.to].mode.firewalled
            or by_name[a.to].bridge is None]


@functools.lru_cache(maxsize=16384)
def network_rules(net: Network, profile: Profile,
                  peers: tuple[Network, ...] = ()) -> tuple[Rule, ...]:
    """The rules of one network, in libvirt's order within each chain; ``peers`` are the
    active networks its allows name (``peers_of``). Pure, so cached: an apply plans the
    networks before and after the change, and all but the changed ones are the same
    objects."""
    return tuple(_network_rules(net, profile, peers))


def _network_rules(net: Network, profile: Profile, peers: tuple[Network, ...]) -> list[Rule]:
    if not net.mode.firewalled:
        return []       # open and the host-bridge modes: no rules at all
    out: list[Rule] = []
    out += _general_v4(net, profile)
    if net.ips_of(6) or net.ipv6_nogw or profile.always_ipv6:
        out += _general_v6(net, profile)
    if not net.port_forwards and not net.allows:
        return out
    extra = _forward_rules(net) + _allow_rules(net, peers)
    if extra:
        # Hairpin masquerades and allow exemptions go first in the network's nat PRT
        # block: before its RETURNs and MASQUERADEs, which they must pre-empt.
        for fam in (4, 6):
            first = [r for r in extra if r.chain == "PRT" and r.family == fam]
            at = next((i for i, r in enumerate(out) if r.table == "nat" and r.chain == "PRT"
                       and r.family == fam), len(out))
            out[at:at] = first
        out += [r for r in extra if r.chain != "PRT"]
    return out


def _host_cidr(addr) -> str:
    return f"{addr}/{addr.max_prefixlen}"


def _forward_rules(net: Network) -> list[Rule]:
    """A forward, port by port (a range maps one to one): its DNAT (nat DNAT, one rule per
    source), the accept of what it translated (filter FWD), and once per subnet holding a
    target, the hairpin masquerade (nat PRT): a guest reaching a forward into its own
    subnet gets the reply from the host, not straight from the other guest, whose reply
    would otherwise bypass the translation and be refused by the client."""
    rules: list[Rule] = []
    seen_ok: set[Rule] = set()
    hairpin: dict[str, Family] = {}
    subnet_of: dict[object, str] = {}
    for fw in net.port_forwards:
        addr = net.forward_address(fw)
        fam: Family = addr.version  # type: ignore[assignment]
        dnat, accepts = _one_forward(net.name, net.bridge, fw, addr)
        rules += dnat
        for r in accepts:
            if r not in seen_ok:            # two forwards to one guest port: one accept
                seen_ok.add(r)
                rules.append(r)
        if (cidr := subnet_of.get(addr)) is None:
            cidr = subnet_of[addr] = next(ip.cidr for ip in net.ips
                                          if ip.family == fam and addr in ip.subnet)
        hairpin.setdefault(cidr, fam)
    for cidr, fam in hairpin.items():
        rules.append(_r(net, fam, "nat", "PRT", MASQUERADE, src=cidr, dst=cidr,
                        ctstatus="DNAT"))
    return rules


@functools.lru_cache(maxsize=1 << 15)
def _one_forward(network: str, bridge: str | None, fw, addr) -> tuple[tuple[Rule, ...],
                                                                     tuple[Rule, ...]]:
    """One forward's DNAT and accept rules. Cached: adding one forward to a network of
    10,000 plans the 10,000 others again (the network changed), and they are the same."""
    fam: Family = addr.version
    to = str(addr)
    host = _host_cidr(fw.host_address) if fw.host_address is not None else None
    dnat: list[Rule] = []
    accepts: list[Rule] = []
    for i in range(fw.port[1] - fw.port[0] + 1):
        port, to_port = fw.port[0] + i, fw.to_port[0] + i
        for src in fw.source or (None,):
            dnat.append(Rule(fam, "nat", "DNAT", network, DNAT, proto=fw.proto, dport=port,
                             dst=host, src=str(src) if src is not None else None,
                             to_addr=to, to_port=to_port))
        accepts.append(Rule(fam, "filter", "FWD", network, ACCEPT, oif=bridge,
                            dst=f"{to}/{addr.max_prefixlen}", proto=fw.proto, dport=to_port,
                            ctstatus="DNAT"))
    return tuple(dnat), tuple(accepts)


def _partition(nets: list[IPNet]) -> list[IPNet]:
    """Disjoint blocks covering ``nets``, split where one contains another (CIDR blocks
    nest or are disjoint), so that each block is covered by the same allows throughout:
    nftables' interval sets refuse overlapping elements."""
    pieces = set(nets)
    while True:
        split = next(((a, b) for a in pieces for b in pieces
                      if a != b and b.subnet_of(a)), None)  # type: ignore[arg-type]
        if split is None:
            return sorted(pieces, key=lambda n: (int(n.network_address), n.prefixlen))
        a, b = split
        pieces.remove(a)
        pieces.update(a.address_exclude(b))  # type: ignore[arg-type]


def _merge_ports(specs: list[tuple[str, int, int] | None]) -> list[tuple[str, int, int] | None]:
    """Port specs of several allows as disjoint ranges per protocol; None (everything)
    swallows the rest."""
    if None in specs:
        return [None]
    out: list[tuple[str, int, int] | None] = []
    for proto in ("tcp", "udp"):
        ranges = sorted((s[1], s[2]) for s in specs if s is not None and s[0] == proto)
        merged: list[list[int]] = []
        for lo, hi in ranges:
            if merged and lo <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        out += [(proto, lo, hi) for lo, hi in merged]
    return out


def _allow_rules(net: Network, peers: tuple[Network, ...]) -> list[Rule]:
    """Allows into active peers: per family, new connections from the allowed part of this
    network to the peer's subnets on the listed ports (filter ALW), the replies (filter
    ALW, reply direction of an established connection only), and for a nat network the
    exemption from masquerading (nat PRT RETURN: the peer sees the real address)."""
    by_name = {p.name: p for p in peers}
    rules: list[Rule] = []
    for fam in (4, 6):
        own = [ip.subnet for ip in net.ips_of(fam)]
        targets: dict[str, list] = {}
        for al in net.allows:
            peer = by_name.get(al.to)
            if peer is None or not peer.mode.firewalled or peer.bridge is None \
                    or not peer.ips_of(fam) or not own:
                continue
            srcs = [s for s in al.source if s.version == fam] if al.source else own
            if al.source and not srcs:
                continue
            specs = [(p.proto, p.start, p.end) for p in al.ports] if al.ports else [None]
            targets.setdefault(peer.name, []).append((srcs, specs))
        for name, grants in targets.items():
            peer = by_name[name]
            pieces = _partition([s for srcs, _ in grants for s in srcs])
            for dst_ip in peer.ips_of(fam):
                dst = dst_ip.cidr
                for piece in pieces:
                    specs = [sp for srcs, sps in grants
                             if any(piece.subnet_of(s) for s in srcs) for sp in sps]
                    for spec in _merge_ports(specs):
                        kw = {} if spec is None else {
                            "proto": spec[0], "dport": spec[1],
                            "dport_end": spec[2] if spec[2] != spec[1] else None}
                        # No output interface: the destination address decides it.
                        rules.append(_r(net, fam, "filter", "ALW", ACCEPT, iif=net.bridge,
                                        src=str(piece), dst=dst, **kw))
                    rules.append(_r(net, fam, "filter", "ALW", ACCEPT, iif=peer.bridge,
                                    src=dst, dst=str(piece), ctstate=CT_REPLY, ctdir="REPLY"))
                for ip in net.ips_of(fam):
                    if _nat_applies(net, ip):
                        rules.append(_r(net, fam, "nat", "PRT", RETURN, src=ip.cidr, dst=dst,
                                        oif=peer.bridge))
    return rules


def _r(net: Network, family: Family, table: str, chain: str, verdict: str, **kw) -> Rule:
    return Rule(family=family, table=table, chain=chain, network=net.name, verdict=verdict, **kw)


def _service(net: Network, family: Family, chain: str, proto: str, port: int) -> Rule:
    side = {"iif": net.bridge} if chain == "INP" else {"oif": net.bridge}
    return _r(net, family, "filter", chain, ACCEPT, proto=proto, dport=port, **side)


def _general_v4(net: Network, profile: Profile) -> list[Rule]:
    v4 = net.ips_of(4)
    # dnsmasq serves DHCP/TFTP on one IPv4 address: like libvirt, take the first one with
    # DHCP or a TFTP root, and open TFTP only if that one has the root.
    first = next((ip for ip in v4 if ip.dhcp or ip.tftp_root is not None), None)
    tftp = first if first is not None and first.tftp_root is not None else None
    dhcp = any(ip.dhcp for ip in v4)
    inp: list[Rule] = []
    outp: list[Rule] = []
    if tftp is not None:
        inp.append(_service(net, 4, "INP", "udp", 69))
        outp.append(_service(net, 4, "OUT", "udp", 69))
    for proto in ("udp", "tcp"):
        inp.append(_service(net, 4, "INP", proto, 53))
        outp.append(_service(net, 4, "OUT", proto, 53))
    for proto in ("udp", "tcp"):
        inp.append(_service(net, 4, "INP", proto, 67))
        outp.append(_service(net, 4, "OUT", proto, 68))
    rules = inp + outp + _forward(net, 4, profile)
    rules += _postrouting(net, 4)
    if dhcp:
        # Old dhclient drops DHCP replies with a bad (offloaded, never filled) checksum.
        # CHECKSUM only exists in iptables' mangle table; failing to add it is not fatal.
        rules.append(_r(net, 4, "mangle", "PRT", CHECKSUM, oif=net.bridge, proto="udp",
                        dport=68))
    return rules


def _general_v6(net: Network, profile: Profile) -> list[Rule]:
    rules: list[Rule] = []
    if net.ips_of(6):
        rules += [_service(net, 6, "INP", "udp", 547),
                  _service(net, 6, "INP", "udp", 53), _service(net, 6, "INP", "tcp", 53),
                  _service(net, 6, "OUT", "udp", 546),
                  _service(net, 6, "OUT", "udp", 53), _service(net, 6, "OUT", "tcp", 53)]
    return rules + _forward(net, 6, profile) + _postrouting(net, 6)


def _nat_applies(net: Network, ip: IPBlock) -> bool:
    return net.mode is Mode.NAT and (ip.family == 4 or net.nat.ipv6)


def _forward(net: Network, family: Family, profile: Profile) -> list[Rule]:
    br, dev = net.bridge, net.forward_dev
    fwx = [_r(net, family, "filter", "FWX", ACCEPT, iif=br, oif=br)]
    if profile.guard_egress:
        if net.mode is not Mode.ISOLATED:
            if dev is not None:
                fwx.append(_r(net, family, "filter", "FWX", REJECT, iif=br, oif=dev,
                              oif_neg=True))
            # RETURN goes on to FWI/FWO; a packet RETURNed here meets every other
            # network's FWX rules only if they match its in-interface, which they do not.
            for ip in reversed(net.ips_of(family)):
                fwx.append(_r(net, family, "filter", "FWX", RETURN, iif=br, src=ip.cidr))
        fwx.append(_r(net, family, "filter", "FWX", REJECT, iif=br))
    fwi: list[Rule] = []
    fwo: list[Rule] = []
    if net.mode in (Mode.NAT, Mode.ROUTE):
        # libvirt adds the per-address rules in definition order, each at the top: reversed.
        for ip in reversed(net.ips_of(family)):
            subnet = ip.cidr
            fwo.append(_r(net, family, "filter", "FWO", ACCEPT, src=subnet, iif=br, oif=dev))
            if _nat_applies(net, ip):
                fwi.append(_r(net, family, "filter", "FWI", ACCEPT, dst=subnet, iif=dev, oif=br,
                              ctstate=CT_REPLY))
            else:
                fwi.append(_r(net, family, "filter", "FWI", ACCEPT, dst=subnet, iif=dev, oif=br))
    fwi.append(_r(net, family, "filter", "FWI", REJECT, oif=br))
    fwo.append(_r(net, family, "filter", "FWO", REJECT, iif=br))
    return fwx + fwi + fwo


def _postrouting(net: Network, family: Family) -> list[Rule]:
    rules: list[Rule] = []
    nat = net.nat
    for ip in reversed(net.ips_of(family)):
        if not _nat_applies(net, ip):
            continue
        s = ip.cidr
        dev = net.forward_dev
        # Multicast and broadcast must leave unmasqueraded (DHCP, mDNS on the local link).
        rules.append(_r(net, family, "nat", "PRT", RETURN, src=s, dst=_MCAST[family], oif=dev))
        if family == 4:
            rules.append(_r(net, family, "nat", "PRT", RETURN, src=s, dst=_BCAST, oif=dev))
        ports = (nat.port_start, nat.port_end)
        if nat.address_start is not None and family == 4:
            rng = str(nat.address_start) if nat.address_start == nat.address_end \
                else f"{nat.address_start}-{nat.address_end}"
            for proto in ("tcp", "udp"):
                rules.append(_r(net, family, "nat", "PRT", SNAT, src=s, dst=s, dst_neg=True,
                                oif=dev, proto=proto, to_source=rng, to_ports=ports))
            rules.append(_r(net, family, "nat", "PRT", SNAT, src=s, dst=s, dst_neg=True, oif=dev,
                            to_source=rng))
        else:
            for proto in ("tcp", "udp"):
                rules.append(_r(net, family, "nat", "PRT", MASQUERADE, src=s, dst=s, dst_neg=True,
                                oif=dev, proto=proto, to_ports=ports))
            rules.append(_r(net, family, "nat", "PRT", MASQUERADE, src=s, dst=s, dst_neg=True,
                            oif=dev))
    return rules
