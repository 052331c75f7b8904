"""The lab's pure traffic policy against docs/design.md §4, written out as tables here.

The expected values below are transcribed from the design (not computed), so a policy
that drifts from the design fails here before any packet is sent.
"""

from __future__ import annotations

import ipaddress
import itertools

import pytest

from vnetfw.lab.policy import GATEWAY, GUEST, UPLINK, Expectation, Host, Policy, expect
from vnetfw.model import IPBlock, Mode, Nat, Network

UP0 = Host("up:uplink0", UPLINK, ("198.51.100.2", "2001:db8:ffff::2"), dev="uplink0",
           hv_addrs=("198.51.100.1", "2001:db8:ffff::1"))
UP1 = Host("up:uplink1", UPLINK, ("203.0.113.2", "2001:db8:fffe::2"), dev="uplink1",
           hv_addrs=("203.0.113.1", "2001:db8:fffe::1"))


def net(name: str, mode: str, k: int, *, v6: bool = True, nat6: bool = False,
        dev: str | None = None, snat: tuple[str, str] | None = None) -> Network:
    ips = [IPBlock(ipaddress.ip_address(f"10.0.{k}.1"), 24)]
    if v6:
        ips.append(IPBlock(ipaddress.ip_address(f"fd00:{k}::1"), 64))
    nat = Nat(ipv6=nat6)
    if snat:
        nat = Nat(address_start=ipaddress.IPv4Address(snat[0]),
                  address_end=ipaddress.IPv4Address(snat[1]))
    return Network(name, Mode(mode), bridge=f"br{k}", forward_dev=dev, ips=tuple(ips),
                   nat=nat).validated()


def guest(n: Network, i: int = 0, extra: tuple[str, ...] = ()) -> Host:
    addrs = tuple(str(ip.subnet.network_address + (10 if ip.family == 4 else 0x10) + i)
                  for ip in n.ips)
    return Host(f"{n.name}/g{i}", GUEST, addrs + extra, network=n.name)


def gateway(n: Network) -> Host:
    return Host(f"{n.name}/gw", GATEWAY, tuple(str(ip.address) for ip in n.ips),
                network=n.name)


def outcome(pol: Policy, s: Host, d: Host, fam: int = 4) -> tuple[bool, bool]:
    return (pol.expect(s, d, fam, "tcp").reach, pol.expect(s, d, fam, "udp").reach)


YES, NO, ONE_WAY = (True, True), (False, False), (False, True)

# docs/design.md §4, "guest of X -> guest of another network Y" (plus open networks: no rules
# of their own, the others' rules still apply to them), per profile.
CROSS = {
    ("nat", "nat"): NO, ("nat", "route"): YES, ("nat", "isolated"): NO, ("nat", "open"): YES,
    ("route", "nat"): NO, ("route", "route"): YES, ("route", "isolated"): NO,
    ("route", "open"): YES,
    ("isolated", "nat"): NO, ("isolated", "route"): NO, ("isolated", "isolated"): NO,
    ("isolated", "open"): NO,
    ("open", "nat"): NO, ("open", "route"): YES, ("open", "isolated"): NO, ("open", "open"): YES,
}
UPLINK_FROM = {"nat": YES, "route": YES, "isolated": NO, "open": YES}     # guest -> uplink
UPLINK_TO = {"nat": NO, "route": YES, "isolated": NO, "open": YES}       # uplink -> guest


@pytest.mark.parametrize("profile", ["default", "libvirt"])
@pytest.mark.parametrize("fam", [4, 6])
@pytest.mark.parametrize("a,b", list(CROSS))
def test_cross_network_table(profile, fam, a, b):
    x, y = net("x", a, 1, nat6=True), net("y", b, 2, nat6=True)
    pol = Policy([x, y], profile)
    want = CROSS[a, b]
    if profile == "libvirt" and (a, b) == ("isolated", "route"):
        want = ONE_WAY          # libvirt's leak, kept on purpose by that profile
    assert outcome(pol, guest(x), guest(y), fam) == want


@pytest.mark.parametrize("profile", ["default", "libvirt"])
@pytest.mark.parametrize("mode", ["nat", "route", "isolated", "open"])
def test_own_network_and_uplink(profile, mode):
    x = net("x", mode, 1, nat6=True)
    pol = Policy([x, net("other", "nat", 2)], profile)
    for fam in (4, 6):
        assert outcome(pol, guest(x), gateway(x), fam) == YES
        assert outcome(pol, guest(x), guest(x, 1), fam) == YES
        assert outcome(pol, guest(x), UP0, fam) == UPLINK_FROM[mode]
        assert outcome(pol, UP0, guest(x), fam) == UPLINK_TO[mode]


def test_source_addresses():
    nat, route, opn = net("nat", "nat", 1, nat6=True), net("r", "route", 2), net("o", "open", 3)
    pol = Policy([nat, route, opn], "default")
    g = guest(nat)
    assert pol.expect(g, UP0, 4, "tcp").seen == ("198.51.100.1",) * 2       # masqueraded
    assert pol.expect(g, UP0, 6, "udp").seen == ("2001:db8:ffff::1",) * 2
    assert pol.expect(g, guest(route), 4, "tcp").seen == ("10.0.2.1",) * 2  # Y's gateway
    assert pol.expect(g, guest(opn), 6, "udp").seen == ("fd00:3::1",) * 2
    assert pol.expect(g, guest(nat, 1), 4, "tcp").seen == ("10.0.1.10",) * 2  # same bridge
    assert pol.expect(g, gateway(nat), 4, "tcp").seen == ("10.0.1.10",) * 2
    assert pol.expect(guest(route), UP0, 4, "tcp").seen == ("10.0.2.10",) * 2  # kept
    assert pol.expect(UP0, guest(route), 6, "tcp").seen == ("2001:db8:ffff::2",) * 2


def test_nat_network_ipv6_without_nat_is_routed():
    x = net("x", "nat", 1, nat6=False)
    pol = Policy([x, net("n", "nat", 2, nat6=True)], "default")
    assert outcome(pol, UP0, guest(x), 6) == YES              # new inbound: routed
    assert outcome(pol, UP0, guest(x), 4) == NO               # IPv4 is still NAT
    assert pol.expect(guest(x), UP0, 6, "tcp").seen == ("fd00:1::10",) * 2
    assert outcome(pol, guest(net("n", "nat", 2, nat6=True)), guest(x), 6) == YES


@pytest.mark.parametrize("profile", ["default", "libvirt"])
def test_forward_dev_restricts_both_directions(profile):
    x = net("x", "nat", 1, dev="uplink0")
    r = net("r", "route", 2)
    pol = Policy([x, r], profile)
    assert outcome(pol, guest(x), UP0) == YES
    assert pol.expect(guest(x), UP0, 4, "udp").seen == ("198.51.100.1",) * 2
    assert outcome(pol, guest(x), UP1) == NO
    assert outcome(pol, UP0, guest(x), 6) == YES              # routed IPv6, via its dev
    assert outcome(pol, UP1, guest(x), 6) == NO               # ... and only via its dev
    if profile == "default":
        # x may only leave by uplink0: stopped in the cross stage, before r's incoming accept.
        assert outcome(pol, guest(x), guest(r)) == NO
    else:
        # libvirt: r's incoming accept comes first, the reply is refused by x's incoming
        # stage (not from uplink0): one-way, unmasqueraded.
        assert outcome(pol, guest(x), guest(r)) == ONE_WAY
        assert pol.expect(guest(x), guest(r), 4, "udp").seen == ("10.0.1.10",) * 2


@pytest.mark.parametrize("first,second", [("a", "b"), ("b", "a")])
def test_two_nat_networks_blocked_whatever_the_order(first, second):
    nets = {n.name: n for n in (net("a", "nat", 1), net("b", "nat", 2))}
    pol = Policy([nets[first], nets[second]], "default")
    for s, d in itertools.permutations(nets.values()):
        assert outcome(pol, guest(s), guest(d)) == NO


def test_inactive_network_has_no_rules():
    x, y = net("x", "nat", 1), net("y", "isolated", 2)
    pol = Policy([x, y], "default", active=["x"])
    assert outcome(pol, UP0, guest(y)) == YES                 # y's rules are not loaded
    assert outcome(pol, guest(y), guest(x)) == NO             # x's still are
    assert outcome(Policy([x, y], "default", active=[]), UP0, guest(x)) == YES


@pytest.mark.parametrize("profile,want", [("default", NO), ("libvirt", ONE_WAY)])
def test_rogue_ipv6_guest_of_ipv4_only_network(profile, want):
    """The default profile firewalls IPv6 for networks with no IPv6 address; libvirt does
    not, so a guest's self-assigned address gets packets out (no route back: one-way)."""
    x = net("x", "nat", 1, v6=False)
    rogue = guest(x, extra=("2001:db8:bad::10",))
    pol = Policy([x], profile)
    assert outcome(pol, rogue, UP0, 6) == want
    if want[1]:
        assert pol.expect(rogue, UP0, 6, "udp").seen == ("2001:db8:bad::10",) * 2
    assert outcome(pol, rogue, UP0, 4) == YES


def test_snat_range_and_matching():
    x = net("x", "nat", 1, snat=("198.51.100.100", "198.51.100.110"))
    e = Policy([x], "default").expect(guest(x), UP0, 4, "udp")
    assert e.seen == ("198.51.100.100", "198.51.100.110")
    assert e.matches(True, "198.51.100.105")
    assert not e.matches(True, "198.51.100.111")
    assert not e.matches(True, None)
    assert not e.matches(False, None)
    assert Expectation(False).matches(False, None)
    assert not Expectation(False).matches(True, "10.0.0.1")


def test_functional_form_and_errors():
    x = net("x", "route", 1, v6=False)
    assert expect([x], "default", guest(x), UP0, 4, "tcp").reach
    with pytest.raises(ValueError):
        expect([x], "default", guest(x), UP0, 6, "tcp")       # no IPv6 on x's guest
    with pytest.raises(ValueError):
        expect([x, net("y", "route", 2)], "default", guest(x), gateway(net("y", "route", 2)),
               4, "tcp")                                      # someone else's gateway


@pytest.mark.parametrize("profile,want", [("default", NO), ("libvirt", ONE_WAY)])
def test_source_outside_every_subnet_cannot_slip_into_a_routed_network(profile, want):
    """A self-assigned (or spoofed) source meets the routed network's incoming accept in FWI
    before its own network's outgoing reject in FWO; the default profile stops it in FWX."""
    x = net("x", "nat", 1, v6=False)
    r = net("r", "route", 2)
    rogue = guest(x, extra=("2001:db8:bad::10",))
    pol = Policy([x, r], profile)
    assert outcome(pol, rogue, guest(r), 6) == want
    assert outcome(pol, guest(x), guest(r), 4) == YES        # its own subnet still may
