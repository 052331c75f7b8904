"""The traffic policy (docs/design.md §4) proved with real packets, per backend.

One lab per backend (module-scoped): a hypervisor namespace with seven networks -- nat
(IPv4 only, its guests giving themselves rogue IPv6 addresses), nat with IPv6 NAT, nat
with a routed IPv6 subnet, nat through a forward device, routed, isolated, open -- two
guests each, and two upstream hosts. Each test loads rules with the engine, runs the whole
matrix (every pair, TCP and UDP, IPv4 and IPv6) and compares it with the pure policy;
the scenarios the design singles out are also asserted cell by cell, so a wrong policy
cannot make them pass. Rules are torn down after every test.
"""

from __future__ import annotations

import os

import pytest

from vnetfw.backends import registry
from vnetfw.engine import Engine
from vnetfw.lab import matrix
from vnetfw.lab.topology import UPLINK0, UPLINK1, Lab
from vnetfw.sources.toml import parse_toml

pytestmark = pytest.mark.netns

BACKENDS = list(registry.FLAVOURS) + [registry.NFTABLES]

NETWORKS = parse_toml("""
[[network]]
name = "nat4"
bridge = "br-nat4"
mode = "nat"
ip = [{ address = "10.20.1.1", prefix = 24 }]
[[network]]
name = "nat46"
bridge = "br-nat46"
mode = "nat"
nat = { ipv6 = true }
ip = [{ address = "10.20.2.1", prefix = 24 }, { address = "fd20:2::1", prefix = 64 }]
[[network]]
name = "nat6r"
bridge = "br-nat6r"
mode = "nat"
ip = [{ address = "10.20.3.1", prefix = 24 }, { address = "fd20:3::1", prefix = 64 }]
[[network]]
name = "natdev"
bridge = "br-natdev"
mode = "nat"
forward_dev = "uplink0"
nat = { ports = [20000, 20999] }
ip = [{ address = "10.20.4.1", prefix = 24 }, { address = "fd20:4::1", prefix = 64 }]
[[network]]
name = "routed"
bridge = "br-routed"
mode = "route"
ip = [{ address = "10.20.5.1", prefix = 24 }, { address = "fd20:5::1", prefix = 64 }]
[[network]]
name = "isolated"
bridge = "br-iso"
mode = "isolated"
ip = [{ address = "10.20.6.1", prefix = 24 }, { address = "fd20:6::1", prefix = 64 }]
[[network]]
name = "open"
bridge = "br-open"
mode = "open"
ip = [{ address = "10.20.7.1", prefix = 24 }, { address = "fd20:7::1", prefix = 64 }]
""", "test_traffic.py")
BY_NAME = {n.name: n for n in NETWORKS}
NAMES = [n.name for n in NETWORKS]
ROGUE = {"nat4": "2001:db8:bad::/64"}


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def lab(backend):
    if os.geteuid() != 0:
        pytest.skip("real-kernel tests need root")
    with Lab(NETWORKS, uplinks=(UPLINK0, UPLINK1), rogue_ipv6=ROGUE) as lab:
        yield lab


@pytest.fixture
def engines(lab, backend, tmp_path):
    """``engines(profile)`` -> an Engine in the lab's hypervisor; all torn down after."""
    made: list[Engine] = []

    def make(profile: str = "default") -> Engine:
        eng = Engine(backend=backend, profile=profile, netns=lab.hv.name,
                     state_dir=tmp_path / f"state-{profile}-{len(made)}")
        made.append(eng)
        return eng

    yield make
    for eng in made:
        eng.teardown()


def check(lab: Lab, profile: str, active) -> matrix.MatrixResult:
    res = matrix.run(lab, profile, active=active)
    assert res.ok, f"{len(res.mismatches)} probes differ:\n{res.explain()}"
    return res


def reach(res: matrix.MatrixResult, src: str, dst: str, family: int) -> dict[str, bool]:
    return {p: res.row(src, dst, family, p).observed.reached for p in ("tcp", "udp")}


NONE = {"tcp": False, "udp": False}
BOTH = {"tcp": True, "udp": True}
ONE_WAY = {"tcp": False, "udp": True}


@pytest.mark.parametrize("profile", ["default", "libvirt"])
def test_all_at_once(lab, engines, profile):
    engines(profile).apply(NETWORKS)
    res = check(lab, profile, NAMES)
    # Spot checks straight from docs/design.md §4, independent of the policy module.
    for fam in (4, 6):
        assert reach(res, "nat46/g0", "up:uplink0", fam) == BOTH
        assert res.row("nat46/g0", "up:uplink0", fam, "udp").observed.seen == \
            {4: "198.51.100.1", 6: "2001:db8:ffff::1"}[fam]
        assert reach(res, "up:uplink0", "nat46/g0", fam) == NONE
        assert reach(res, "up:uplink0", "routed/g1", fam) == BOTH
        assert reach(res, "isolated/g0", "up:uplink0", fam) == NONE
        assert reach(res, "isolated/g0", "isolated/g1", fam) == BOTH
        assert reach(res, "routed/g0", "nat46/g0", fam) == NONE
        assert reach(res, "natdev/g0", "up:uplink1", fam) == NONE     # forward dev only
    # nat with a routed IPv6 subnet: IPv6 is reachable from upstream, IPv4 is not.
    assert reach(res, "up:uplink0", "nat6r/g0", 6) == BOTH
    assert reach(res, "up:uplink0", "nat6r/g0", 4) == NONE
    assert res.row("nat6r/g0", "up:uplink0", 6, "tcp").observed.seen == "fd20:3::10"
    # A rogue IPv6 guest of an IPv4-only network: the default profile firewalls IPv6 for
    # every network; libvirt (no ip6tables rules for it) lets its packets out one-way.
    assert reach(res, "nat4/g0", "up:uplink0", 6) == (ONE_WAY if profile == "libvirt" else NONE)


def test_one_by_one_in_any_order(lab, engines):
    """Each network applied alone, in three orders: every intermediate state matches the
    policy for the networks applied so far (first order), and the end state of every order
    is what applying them all at once gives. Removing networks is checked on the way."""
    eng = engines("default")
    eng.apply(NETWORKS)
    baseline = check(lab, "default", NAMES).observed()
    eng.teardown()
    orders = [NAMES, NAMES[::-1], NAMES[1::2] + NAMES[0::2]]
    for k, order in enumerate(orders):
        active: list[str] = []
        for name in order:
            eng.apply([BY_NAME[name]])
            active.append(name)
            if k == 0:
                check(lab, "default", active)
        assert check(lab, "default", NAMES).observed() == baseline, f"order {order}"
        if k == 0:
            eng.remove(["routed", "nat46"])
            check(lab, "default", [n for n in NAMES if n not in ("routed", "nat46")])
        eng.teardown()


@pytest.mark.parametrize("first,second", [("nat4", "nat46"), ("nat46", "nat4")])
def test_two_nat_networks_blocked_both_ways(lab, engines, first, second):
    eng = engines("default")
    eng.apply([BY_NAME[first]])
    eng.apply([BY_NAME[second]])
    res = check(lab, "default", [first, second])
    for a, b in ((first, second), (second, first)):
        for g in ("g0", "g1"):
            assert reach(res, f"{a}/{g}", f"{b}/g0", 4) == NONE
        assert reach(res, f"{a}/g0", "up:uplink0", 4) == BOTH


@pytest.mark.parametrize("profile", ["default", "libvirt"])
def test_isolated_to_routed(lab, engines, profile):
    """libvirt's one-way leak: its routed network's incoming accept (FWI) runs before the
    isolated network's reject (FWO), so UDP and the SYN get through and only the reply is
    rejected. The default profile stops them at the isolated network's bridge."""
    engines(profile).apply([BY_NAME["isolated"], BY_NAME["routed"]])
    res = check(lab, profile, ["isolated", "routed"])
    for fam in (4, 6):
        want = ONE_WAY if profile == "libvirt" else NONE
        assert reach(res, "isolated/g0", "routed/g0", fam) == want
        assert reach(res, "routed/g0", "isolated/g0", fam) == NONE
        if profile == "libvirt":
            # what got through kept the isolated guest's own address
            assert res.row("isolated/g0", "routed/g0", fam, "udp").observed.seen == \
                {4: "10.20.6.10", 6: "fd20:6::10"}[fam]


def test_matrix_detects_missing_rules(lab, engines):
    """Control: with no rules loaded, judging against the full policy must fail -- on
    reachability (isolation missing) and on the source address alone (masquerade
    missing). A matrix that cannot fail would prove nothing."""
    engines("default").teardown()
    res = matrix.run(lab, "default", active=NAMES)
    bad = {(r.src, r.dst, r.family, r.proto): r for r in res.mismatches}
    assert ("nat4/g0", "nat46/g0", 4, "tcp") in bad                 # not isolated
    masq = bad[("nat46/g0", "up:uplink0", 4, "udp")]                # reached, wrong source
    assert masq.observed.reached and masq.observed.seen == "10.20.2.10"
    # and against an empty policy the same kernel state is judged correct
    check(lab, "default", [])
