"""Property tests (hypothesis): random valid sets of networks through the planner and renderer.

Checked for every generated set and both profiles:
- the plan is deterministic and does not depend on the order the networks are given in;
- every planned rule survives ``parse_rule(render_rule(r)) == r``, and the whole rendered
  ruleset reads back as the plan;
- the invariants documented in vnetfw/ruleset.py hold (iif/oif == bridge per chain, nat PRT
  source in the network's subnets), and each network's rules are one contiguous block per
  chain, blocks in name order; a network's rules do not depend on the other networks;
- the state-file form (to_dict/network_from_dict) round-trips;
- the overlap check (a sorted sweep) agrees with comparing every pair, and names the later
  definition;
- the fast address parser (``parse_ip``) accepts exactly the strings ipaddress accepts,
  with the same value (and refuses every string holding a NUL, which ipaddress takes
  inside an IPv6 scope).
"""

from __future__ import annotations

import ipaddress
import itertools
import string

import pytest
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from vnetfw.backends.iptables import IptablesBackend, IptLive, parse_rule, parse_save, render_rule
from vnetfw.backends.runner import Runner
from vnetfw.errors import DefinitionError
from vnetfw.model import IPBlock, Mode, Nat, Network, network_from_dict, validate_together
from vnetfw.plan import PROFILES, plan
from vnetfw.ruleset import Ruleset

SETTINGS = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

_NAME_FIRST = string.ascii_letters + string.digits + "_"
_NAME_REST = _NAME_FIRST + ".+-"
_IF_CHARS = string.ascii_lowercase + string.digits + "_.-"   # no '+': see test_sources (bug)

names = st.builds(lambda a, b: a + b, st.sampled_from(_NAME_FIRST),
                  st.text(_NAME_REST, max_size=20))
ifnames = st.builds(lambda a, b: a + b, st.sampled_from(string.ascii_lowercase),
                    st.text(_IF_CHARS, max_size=14))
MODES = [Mode.NAT, Mode.NAT, Mode.ROUTE, Mode.ISOLATED, Mode.OPEN, Mode.BRIDGE]


@st.composite
def nats(draw) -> Nat:
    lo, hi = sorted(draw(st.tuples(st.integers(1, 65535), st.integers(1, 65535))))
    addr = draw(st.none() | st.tuples(st.integers(1, 2**32 - 2), st.integers(0, 300)))
    a_start = a_end = None
    if addr is not None:
        a_start = ipaddress.IPv4Address(addr[0])
        a_end = ipaddress.IPv4Address(min(addr[0] + addr[1], 2**32 - 1))
    return Nat(port_start=lo, port_end=hi, address_start=a_start, address_end=a_end,
               ipv6=draw(st.booleans()))


@st.composite
def network_sets(draw, max_networks: int = 5) -> list[Network]:
    """1..max_networks valid networks with unique names and bridges and no overlapping
    subnets: each subnet lives in its own 10.a.b.0/24 (IPv4) or fd00:0:0:X::/64 (IPv6)
    slot, with a random prefix no shorter than the slot."""
    n = draw(st.integers(1, max_networks))
    net_names = draw(st.lists(names, min_size=n, max_size=n, unique=True))
    bridges = draw(st.lists(ifnames, min_size=n, max_size=n, unique=True))
    v4_slots = iter(draw(st.lists(st.integers(0, 2**16 - 1), min_size=3 * n, max_size=3 * n,
                                  unique=True)))
    v6_slots = iter(draw(st.lists(st.integers(0, 2**16 - 1), min_size=2 * n, max_size=2 * n,
                                  unique=True)))
    nets = []
    for name, bridge in zip(net_names, bridges):
        ips = []
        for _ in range(draw(st.integers(0, 3))):
            slot = next(v4_slots)
            host = ipaddress.IPv4Address((10 << 24) | (slot << 8) | 1)
            tftp = draw(st.none() | st.just("/srv/tftp"))
            ips.append(IPBlock(host, draw(st.integers(24, 30)), draw(st.booleans()), tftp))
        for _ in range(draw(st.integers(0, 2))):
            slot = next(v6_slots)
            host = ipaddress.IPv6Address(f"fd00:0:0:{slot:x}::1")
            ips.append(IPBlock(host, draw(st.integers(64, 120)), draw(st.booleans())))
        ips = draw(st.permutations(ips))      # families interleaved in any order
        dev = draw(st.none() | ifnames)
        nets.append(Network(
            name=name, mode=draw(st.sampled_from(MODES)), bridge=bridge,
            forward_dev=None if dev == bridge else dev, ips=tuple(ips), nat=draw(nats()),
            ipv6_nogw=draw(st.booleans()), source=f"{name}.toml",
        ).validated())
    return nets


PROFILE = st.sampled_from(sorted(PROFILES))


@SETTINGS
@given(nets=network_sets(), profile=PROFILE, data=st.data())
def test_plan_is_deterministic_and_order_independent(nets, profile, data):
    first = plan(nets, PROFILES[profile])
    assert plan(nets, PROFILES[profile]) == first
    shuffled = data.draw(st.permutations(nets))
    assert plan(shuffled, PROFILES[profile]) == first    # (rendering is a function of the plan)


@SETTINGS
@given(nets=network_sets(), profile=PROFILE)
def test_every_planned_rule_round_trips_through_iptables_text(nets, profile):
    rs = plan(nets, PROFILES[profile])
    for r in rs.rules:
        assert parse_rule(render_rule(r), r.family, r.table, r.chain) == r, render_rule(r)
    be = IptablesBackend(Runner())
    live = IptLive({fam: parse_save(be.render(rs, fam)) for fam in (4, 6)})
    assert be.live_ruleset(live, rs.prefix) == rs


def _subnets(net: Network) -> set[str]:
    return {str(ip.subnet) for ip in net.ips}


def check_invariants(rs: Ruleset, nets: list[Network]) -> None:
    """The invariants of vnetfw/ruleset.py: who matches which interface, and nat sources."""
    by_name = {n.name: n for n in nets}
    for r in rs.rules:
        net = by_name[r.network]
        assert net.mode.firewalled, f"{net.mode} network {net.name} got a rule"
        if (r.table, r.chain) in (("filter", "FWX"), ("filter", "FWO"), ("filter", "INP")):
            assert r.iif == net.bridge, r
        elif (r.table, r.chain) in (("filter", "FWI"), ("filter", "OUT"), ("mangle", "PRT")):
            assert r.oif == net.bridge, r
        else:
            assert (r.table, r.chain) == ("nat", "PRT"), r
            assert r.src in _subnets(net), r
            assert net.mode is Mode.NAT
            assert r.family == 4 or net.nat.ipv6, "IPv6 NAT without <nat ipv6='yes'>"


def check_blocks(rs: Ruleset) -> None:
    """Each network's rules are one contiguous block per chain; blocks in name order."""
    for key, rules in rs.by_chain().items():
        blocks = [name for name, _ in itertools.groupby(r.network for r in rules)]
        assert blocks == sorted(set(blocks)), f"{key}: {blocks}"


def check_rejects_close_forwarding(rs: Ruleset, nets: list[Network]) -> None:
    """Every firewalled network's FWI/FWO block is its accepts then one reject; an isolated
    network accepts nothing there; unfirewalled networks have no rules at all."""
    for net in nets:
        fams = {r.family for r in rs.of_network(net.name)}
        if not net.mode.firewalled:
            assert fams == set()
            continue
        assert 4 in fams
        for fam in fams:
            fwi = [r for r in rs.chain(fam, "filter", "FWI") if r.network == net.name]
            fwo = [r for r in rs.chain(fam, "filter", "FWO") if r.network == net.name]
            assert (fwi[-1].verdict, fwi[-1].oif, fwi[-1].iif) == ("REJECT", net.bridge, None)
            assert (fwo[-1].verdict, fwo[-1].iif, fwo[-1].oif) == ("REJECT", net.bridge, None)
            assert all(r.verdict == "ACCEPT" for r in fwi[:-1] + fwo[:-1])
            if net.mode is Mode.ISOLATED:
                assert fwi[:-1] == [] and fwo[:-1] == []


def check_union_of_single_plans(rs: Ruleset, nets: list[Network], profile: str) -> None:
    """Adding a network never changes another network's rules (only where its block sits)."""
    for net in nets:
        assert list(plan([net], PROFILES[profile]).rules) == list(rs.of_network(net.name))


@SETTINGS
@given(nets=network_sets(), profile=PROFILE)
def test_ruleset_structure(nets, profile):
    rs = plan(nets, PROFILES[profile])
    check_invariants(rs, nets)
    check_blocks(rs)
    check_rejects_close_forwarding(rs, nets)
    check_union_of_single_plans(rs, nets, profile)


@settings(SETTINGS, max_examples=50)
@given(nets=network_sets())
def test_state_file_form_round_trips(nets):
    # The engine keeps active definitions as Network.to_dict(); reading them back must give
    # the very same networks.
    for net in nets:
        assert network_from_dict(net.to_dict()) == net


@st.composite
def maybe_overlapping(draw) -> list[Network]:
    """2..5 networks, each valid on its own, with subnets drawn from a small space so that
    networks often overlap (nested or equal blocks), IPv4 and IPv6 alike."""
    nets = []
    for i in range(draw(st.integers(2, 5))):
        ips = []
        for _ in range(draw(st.integers(0, 3))):
            if draw(st.booleans()):
                addr = ipaddress.IPv4Address((10 << 24) | draw(st.integers(0, 2**12 - 1)) << 8)
                ips.append(IPBlock(addr, draw(st.integers(14, 26))))
            else:
                addr = ipaddress.IPv6Address((0xfd << 120) | draw(st.integers(0, 255)) << 72)
                ips.append(IPBlock(addr, draw(st.integers(52, 72))))
        try:
            nets.append(Network(f"n{i}", Mode.ROUTE, f"br{i}", ips=tuple(ips),
                                source=f"f{i}.xml").validated())
        except DefinitionError:
            assume(False)            # overlapping inside one network: not what is tested here
    return nets


@settings(max_examples=300, deadline=None)
@given(nets=maybe_overlapping())
def test_overlap_check_agrees_with_comparing_every_pair(nets):
    # validate_together uses a sorted sweep; the oracle compares every pair of networks.
    clashes = [(a, b) for a, b in itertools.combinations(range(len(nets)), 2)
               if any(x.subnet.version == y.subnet.version and x.subnet.overlaps(y.subnet)
                      for x in nets[a].ips for y in nets[b].ips)]
    event("overlap" if clashes else "no overlap")
    if not clashes:
        assert validate_together(nets) == tuple(sorted(nets, key=lambda n: n.name))
        return
    with pytest.raises(DefinitionError) as info:
        validate_together(nets)
    e = info.value
    later = int(e.network[1:])
    # The error names the later definition of a clashing pair, and the earlier one.
    assert e.field == "ip" and e.source == f"f{later}.xml"
    assert any(b == later and f"'n{a}' (f{a}.xml)" in e.problem for a, b in clashes), e


def test_generator_produces_every_mode_and_family():
    # Guard against a strategy that silently stops generating interesting input.
    seen: set = set()

    @settings(max_examples=60, deadline=None)
    @given(nets=network_sets())
    def collect(nets):
        for n in nets:
            seen.add(n.mode)
            seen.update(ip.family for ip in n.ips)
            if n.forward_dev:
                seen.add("dev")
            if n.nat.address_start:
                seen.add("snat")

    collect()
    assert {Mode.NAT, Mode.ROUTE, Mode.ISOLATED, Mode.OPEN, 4, 6, "dev", "snat"} <= seen


# ---------------------------------------------------------------------------------------------
# parse_ip: the fast address parser accepts exactly what ipaddress accepts, with its value

def _ip_or_error(parse, text):
    try:
        return parse(text)
    except ValueError:
        return "refused"


_IP_TEXT = st.one_of(
    st.text(alphabet="0123456789abcdefABCDEF.:%x -+_\n\0é١", max_size=45),
    st.lists(st.sampled_from(["0", "1", "01", "00", "9", "255", "256", "1000", "-1", ""]),
             min_size=1, max_size=6).map(".".join),
    st.lists(st.sampled_from(["", "0", "1", "ffff", "FFFF", "10000", "g", "1.2.3.4", "eth0"]),
             min_size=1, max_size=10).map(":".join),
    st.ip_addresses().map(str),
)


@settings(max_examples=3000, deadline=None)
@given(_IP_TEXT)
@example("::%\0")  # found by this test on 2026-12-08: ipaddress takes it, parse_ip must not
def test_parse_ip_is_ipaddress(text):
    from vnetfw.model import parse_ip
    got = _ip_or_error(parse_ip, text)
    if "\0" in text:
        # Deliberately stricter: ipaddress takes a NUL inside an IPv6 scope ("::%\0");
        # inet_pton refuses any NUL, and no address in a firewall rule may hold one.
        assert got == "refused", (text, got)
        return
    want = _ip_or_error(ipaddress.ip_address, text)
    assert got == want and type(got) is type(want), (text, got, want)


@pytest.mark.parametrize("text", ["1.2.3.4", "01.2.3.4", "1.2.3", " 1.2.3.4", "1.2.3.4\n",
                                  "::", "::ffff:1.2.3.4", "fe80::1%eth0", "1::2::3",
                                  "2001:DB8::1", "1.2.3.4/24", ""])
def test_parse_ip_known_cases(text):
    from vnetfw.model import parse_ip
    assert _ip_or_error(parse_ip, text) == _ip_or_error(ipaddress.ip_address, text)
