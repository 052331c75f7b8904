"""The planner: golden files, libvirt's rule order, and the assertions that matter most.

Golden files (tests/fixtures/golden/<profile>/<case>.v4|.v6) hold what the iptables backend
renders for each reference XML and each profile; they are reviewed expected outputs, rewritten
only by tests/tools/regen_golden.py. The other tests state, independently of any golden file,
the properties a reviewer would otherwise have to spot in them.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import itertools
import re
from pathlib import Path

import pytest

from vnetfw.backends.iptables import parse_save, render_rule
from vnetfw.errors import DefinitionError
from vnetfw.model import IPBlock, Mode, Network
from vnetfw.plan import PROFILES, plan
from vnetfw.ruleset import LAYOUT, Rule, Ruleset
from vnetfw.sources import load_paths

TESTS = Path(__file__).resolve().parent.parent
LIBVIRT = TESTS / "fixtures" / "libvirt"
CASES = sorted(p.stem for p in LIBVIRT.glob("*.xml"))

_spec = importlib.util.spec_from_file_location("regen_golden", TESTS / "tools" / "regen_golden.py")
regen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(regen)


def plan_case(case: str, profile: str) -> Ruleset:
    return plan(load_paths([LIBVIRT / f"{case}.xml"]), PROFILES[profile])


def _ip(text: str):
    return ipaddress.ip_address(text)


def summary(rules) -> list[tuple]:
    """Rules as short tuples, for readable order assertions."""
    return [(r.network, r.verdict, r.iif, r.oif, r.src, r.dst, r.proto, r.dport, r.ctstate)
            for r in rules]


# ---------------------------------------------------------------------------------------------
# Golden files

GOLDEN = [(case, profile, fam) for case in regen.cases()
          for profile in regen.PROFILE_NAMES for fam in regen.FAMILIES]


def test_golden_covers_every_reference_case_and_the_extra_inputs():
    assert set(CASES) | {"mixed", "edges"} == set(regen.cases())


@pytest.mark.parametrize("case, profile, family", GOLDEN,
                         ids=[f"{p}-{c}-v{f}" for c, p, f in GOLDEN])
def test_golden(case, profile, family):
    path = regen.golden_path(case, profile, family)
    assert path.exists(), f"{path} missing: run tests/tools/regen_golden.py and review the diff"
    got = regen.render(regen.cases()[case], profile, family)
    assert got == path.read_text(), (
        f"rendered plan differs from {path}; if the change is intended, run "
        "tests/tools/regen_golden.py and review `git diff tests/fixtures/golden`")


def test_no_stale_golden_files():
    assert regen.main(["--check"]) == 0


# ---------------------------------------------------------------------------------------------
# libvirt profile: same rules, same order within each chain as libvirt's reference.

_COMMENT = re.compile(r' -m comment --comment (?:"[^"]*"|\S+)')


def _as_saved(r: Rule) -> str:
    """A planned rule as iptables-save prints it once our ownership comment is stripped
    (render_rule writes iptables-save's own canonical form)."""
    return _COMMENT.sub("", render_rule(r))


@pytest.mark.parametrize("case", CASES)
def test_libvirt_profile_rules_equal_reference_chain_by_chain(case):
    rs = plan_case(case, "libvirt")
    for fam in (4, 6):
        ref = parse_save((LIBVIRT / f"{case}.iptables-save.v{fam}").read_text())
        for spec in LAYOUT:
            chain = rs.chain_name(spec.suffix)
            want = ref[spec.table].chains[chain]
            got = [_as_saved(r) for r in rs.chain(fam, spec.table, spec.suffix)]
            assert got == want, f"ipv{fam} {spec.table} {chain}"


# ---------------------------------------------------------------------------------------------
# Targeted planner assertions

def test_profiles_use_their_own_chain_prefix():
    assert plan_case("nat-default", "default").prefix == "VNETFW"
    assert plan_case("nat-default", "libvirt").prefix == "LIBVIRT"
    with pytest.raises(ValueError):
        PROFILES["default"].with_prefix("1BAD-PREFIX")
    assert PROFILES["default"].with_prefix("LAB").prefix == "LAB"


@pytest.mark.parametrize("fam", [4, 6])
def test_default_isolated_rejects_at_its_own_bridge_after_the_cross_accept(fam):
    fwx = plan_case("isolated", "default").chain(fam, "filter", "FWX")
    assert [(r.verdict, r.iif, r.oif) for r in fwx] == [
        ("ACCEPT", "virbr0", "virbr0"),      # guests of the same network still talk
        ("REJECT", "virbr0", None),          # everything else stops at the bridge
    ]


@pytest.mark.parametrize("case", ["nat-default", "route-default", "isolated"])
def test_only_the_default_profile_guards_egress_in_fwx(case):
    fwx_default = plan_case(case, "default").chain(4, "filter", "FWX")
    fwx_libvirt = plan_case(case, "libvirt").chain(4, "filter", "FWX")
    assert [r.verdict for r in fwx_libvirt] == ["ACCEPT"]
    if case == "isolated":
        assert [r.verdict for r in fwx_default] == ["ACCEPT", "REJECT"]
    else:   # own subnet goes on to FWI/FWO; any other source stops at the bridge
        assert [(r.verdict, r.src) for r in fwx_default] == [
            ("ACCEPT", None), ("RETURN", "192.168.122.0/24"), ("REJECT", None)]


def test_default_profile_keeps_a_forward_dev_network_off_other_interfaces():
    fwx = plan_case("forward-dev", "default").chain(4, "filter", "FWX")
    assert [(r.verdict, r.iif, r.oif, r.oif_neg, r.src) for r in fwx] == [
        ("ACCEPT", "virbr0", "virbr0", False, None),
        ("REJECT", "virbr0", "enp0s7", True, None),      # anything not leaving by enp0s7
        ("RETURN", "virbr0", None, False, "192.168.122.0/24"),
        ("REJECT", "virbr0", None, False, None)]


def test_default_profile_guards_every_subnet_in_fwx():
    fwx = plan_case("nat-many-ips", "default").chain(4, "filter", "FWX")
    assert [r.src for r in fwx if r.verdict == "RETURN"] == [
        "192.168.150.0/24", "192.168.128.0/24", "192.168.122.0/24"]


def test_default_profile_firewalls_ipv6_forwarding_of_an_ipv4_only_network():
    v6 = [r for r in plan_case("nat-default", "default").rules if r.family == 6]
    assert summary(v6) == [
        ("default", "ACCEPT", "virbr0", "virbr0", None, None, None, None, ()),   # FWX
        ("default", "REJECT", "virbr0", None, None, None, None, None, ()),       # FWX: no v6 subnet
        ("default", "REJECT", None, "virbr0", None, None, None, None, ()),       # FWI
        ("default", "REJECT", "virbr0", None, None, None, None, None, ()),       # FWO
    ]
    assert [r.chain for r in v6] == ["FWX", "FWX", "FWI", "FWO"]


def test_libvirt_profile_has_no_ipv6_rules_for_an_ipv4_only_network():
    assert [r for r in plan_case("nat-default", "libvirt").rules if r.family == 6] == []


def test_libvirt_profile_firewalls_ipv6_when_the_network_says_ipv6_yes():
    # <network ipv6='yes'>: guests may use IPv6 without a host address; libvirt then adds
    # its IPv6 forward rules too.
    net = Network("v6nogw", Mode.NAT, "virbr3", ips=(IPBlock(_ip("10.3.0.1"), 24),),
                  ipv6_nogw=True).validated()
    v6 = [r for r in plan([net], PROFILES["libvirt"]).rules if r.family == 6]
    assert [(r.chain, r.verdict) for r in v6] == [("FWX", "ACCEPT"), ("FWI", "REJECT"),
                                                  ("FWO", "REJECT")]


def test_rule_order_with_many_subnets():
    # libvirt inserts each rule at the top of its chain: the last <ip> comes first.
    rs = plan_case("nat-many-ips", "libvirt")
    nets = ["192.168.150.0/24", "192.168.128.0/24", "192.168.122.0/24"]
    assert [(r.verdict, r.dst, r.ctstate) for r in rs.chain(4, "filter", "FWI")] == \
        [("ACCEPT", n, ("RELATED", "ESTABLISHED")) for n in nets] + [("REJECT", None, ())]
    assert [(r.verdict, r.src) for r in rs.chain(4, "filter", "FWO")] == \
        [("ACCEPT", n) for n in nets] + [("REJECT", None)]
    prt = rs.chain(4, "nat", "PRT")
    assert [r.src for r in prt] == [n for n in nets for _ in range(5)]
    for block in (prt[i:i + 5] for i in range(0, 15, 5)):
        s = block[0].src
        assert [(r.verdict, r.dst, r.dst_neg, r.proto, r.to_ports) for r in block] == [
            ("RETURN", "224.0.0.0/24", False, None, None),
            ("RETURN", "255.255.255.255/32", False, None, None),
            ("MASQUERADE", s, True, "tcp", (1024, 65535)),
            ("MASQUERADE", s, True, "udp", (1024, 65535)),
            ("MASQUERADE", s, True, None, None),
        ]


def test_rule_order_of_host_services_with_tftp():
    rs = plan_case("nat-tftp", "libvirt")
    assert [(r.proto, r.dport) for r in rs.chain(4, "filter", "INP")] == \
        [("udp", 69), ("udp", 53), ("tcp", 53), ("udp", 67), ("tcp", 67)]
    assert [(r.proto, r.dport) for r in rs.chain(4, "filter", "OUT")] == \
        [("udp", 69), ("udp", 53), ("tcp", 53), ("udp", 68), ("tcp", 68)]
    assert all(r.iif == "virbr0" and r.oif is None for r in rs.chain(4, "filter", "INP"))
    assert all(r.oif == "virbr0" and r.iif is None for r in rs.chain(4, "filter", "OUT"))


def test_tftp_rules_follow_libvirts_choice_of_the_dhcp_address():
    # libvirt (network_iptables.c, iptablesAddGeneralIPv4FirewallRules) takes the first IPv4
    # address that has DHCP ranges/hosts or a TFTP root, and opens udp/69 only if *that*
    # address has a TFTP root (dnsmasq serves DHCP/TFTP on one IPv4 address only).
    net = Network("t", Mode.NAT, "virbr4", ips=(
        IPBlock(_ip("10.4.0.1"), 24, dhcp=True),
        IPBlock(_ip("10.5.0.1"), 24, tftp_root="/srv/tftp"),
    )).validated()
    ports = [r.dport for r in plan([net], PROFILES["libvirt"]).chain(4, "filter", "INP")]
    assert 69 not in ports


def test_ipv6_host_services():
    rs = plan_case("nat-ipv6", "libvirt")
    assert [(r.proto, r.dport) for r in rs.chain(6, "filter", "INP")] == \
        [("udp", 547), ("udp", 53), ("tcp", 53)]
    assert [(r.proto, r.dport) for r in rs.chain(6, "filter", "OUT")] == \
        [("udp", 546), ("udp", 53), ("tcp", 53)]


@pytest.mark.parametrize("profile", ["default", "libvirt"])
def test_ipv6_subnet_of_a_nat_network_without_ipv6_nat_is_routed(profile):
    rs = plan_case("nat-ipv6", profile)
    v6net = "2001:db8:ca2:2::/64"
    fwi = rs.chain(6, "filter", "FWI")
    assert summary(fwi) == [
        ("default", "ACCEPT", None, "virbr0", None, v6net, None, None, ()),  # no ctstate
        ("default", "REJECT", None, "virbr0", None, None, None, None, ()),
    ]
    assert [(r.verdict, r.src) for r in rs.chain(6, "filter", "FWO")] == \
        [("ACCEPT", v6net), ("REJECT", None)]
    assert rs.chain(6, "nat", "PRT") == ()                                   # no masquerade
    # ...while its IPv4 subnet is NATed.
    assert rs.chain(4, "filter", "FWI")[0].ctstate == ("RELATED", "ESTABLISHED")
    assert "MASQUERADE" in {r.verdict for r in rs.chain(4, "nat", "PRT")}


def test_ipv6_nat_masquerades_ipv6_and_accepts_replies_only():
    rs = plan_case("nat-ipv6-masquerade", "libvirt")
    v6net = "2001:db8:ca2:2::/64"
    assert rs.chain(6, "filter", "FWI")[0].ctstate == ("RELATED", "ESTABLISHED")
    assert [(r.verdict, r.dst, r.dst_neg, r.proto) for r in rs.chain(6, "nat", "PRT")] == [
        ("RETURN", "ff02::/16", False, None),          # no broadcast rule in IPv6
        ("MASQUERADE", v6net, True, "tcp"),
        ("MASQUERADE", v6net, True, "udp"),
        ("MASQUERADE", v6net, True, None),
    ]


def test_nat_port_range_applies_to_both_families_with_ipv6_nat():
    rs = plan_case("nat-port-range-ipv6", "libvirt")
    for fam in (4, 6):
        ports = {r.to_ports for r in rs.chain(fam, "nat", "PRT") if r.proto}
        assert ports == {(500, 1000)}


def test_forward_device_restricts_forwarding_and_nat():
    rs = plan_case("forward-dev", "libvirt")
    fwi, fwo = rs.chain(4, "filter", "FWI"), rs.chain(4, "filter", "FWO")
    assert (fwi[0].iif, fwi[0].oif) == ("enp0s7", "virbr0")
    assert (fwo[0].iif, fwo[0].oif) == ("virbr0", "enp0s7")
    assert (fwi[-1].iif, fwo[-1].oif) == (None, None)      # the rejects cover every device
    assert {r.oif for r in rs.chain(4, "nat", "PRT")} == {"enp0s7"}


def test_route_network_accepts_new_inbound_connections_and_is_not_natted():
    rs = plan_case("route-default", "libvirt")
    assert [(r.verdict, r.ctstate) for r in rs.chain(4, "filter", "FWI")] == \
        [("ACCEPT", ()), ("REJECT", ())]
    assert rs.chain(4, "nat", "PRT") == ()


def test_checksum_fix_only_with_ipv4_dhcp():
    with_dhcp = plan_case("nat-default", "libvirt").chain(4, "mangle", "PRT")
    assert [(r.verdict, r.oif, r.proto, r.dport, r.optional) for r in with_dhcp] == \
        [("CHECKSUM", "virbr0", "udp", 68, True)]
    assert plan_case("nat-no-dhcp", "libvirt").chain(4, "mangle", "PRT") == ()
    assert plan_case("nat-ipv6", "libvirt").chain(6, "mangle", "PRT") == ()


def test_snat_address_range():
    rs = plan(load_paths([regen.INPUTS / "mixed.toml"]), PROFILES["libvirt"])
    build = [r for r in rs.chain(4, "nat", "PRT") if r.network == "build"]
    assert [(r.verdict, r.proto, r.to_source, r.to_ports, r.oif) for r in build[2:]] == [
        ("SNAT", "tcp", "203.0.113.10-203.0.113.20", (2000, 3000), "eth0"),
        ("SNAT", "udp", "203.0.113.10-203.0.113.20", (2000, 3000), "eth0"),
        ("SNAT", None, "203.0.113.10-203.0.113.20", None, "eth0"),
    ]
    single = {r.to_source for r in rs.chain(4, "nat", "PRT") if r.network == "nat6"
              and r.verdict == "SNAT"}
    assert single == {"198.51.100.7"}


@pytest.mark.parametrize("mode", [Mode.OPEN, Mode.BRIDGE, Mode.PRIVATE, Mode.VEPA,
                                  Mode.PASSTHROUGH, Mode.HOSTDEV])
@pytest.mark.parametrize("profile", ["default", "libvirt"])
def test_unfirewalled_modes_have_no_rules(mode, profile):
    net = Network("host", mode, "br0", ips=(IPBlock(_ip("10.9.0.1"), 24, dhcp=True),)).validated()
    assert plan([net], PROFILES[profile]).rules == ()


def test_networks_are_laid_out_by_name_whatever_the_input_order():
    nets = load_paths([regen.INPUTS / "mixed.toml"])
    expected = plan(nets, PROFILES["default"])
    for perm in itertools.islice(itertools.permutations(nets), 0, None, 97):
        assert plan(perm, PROFILES["default"]) == expected
    for key, rules in expected.by_chain().items():
        names = [r.network for r in rules]
        blocks = [n for n, _ in itertools.groupby(names)]
        assert blocks == sorted(set(names)), f"{key}: {blocks}"


def test_plan_refuses_clashing_networks():
    a = Network("a", Mode.NAT, "virbr1", ips=(IPBlock(_ip("10.1.0.1"), 16),)).validated()
    b = Network("b", Mode.ROUTE, "virbr1", ips=(IPBlock(_ip("10.2.0.1"), 24),)).validated()
    c = Network("c", Mode.ROUTE, "virbr3", ips=(IPBlock(_ip("10.1.7.1"), 24),)).validated()
    with pytest.raises(DefinitionError, match="bridge"):
        plan([a, b], PROFILES["default"])
    with pytest.raises(DefinitionError, match="overlaps"):
        plan([a, c], PROFILES["default"])


def test_empty_plan():
    rs = plan([], PROFILES["libvirt"])
    assert rs.rules == () and rs.families == (4, 6) and rs.prefix == "LIBVIRT"
