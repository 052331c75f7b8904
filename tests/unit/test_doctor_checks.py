"""doctor's checks on hand-made facts: the cases a namespace cannot easily reproduce
(firewalld zones, the nftables backend, open networks under a DROP policy, catch-all rules),
and the wording each finding must carry."""

from __future__ import annotations

import pytest

from vnetfw.backends.iptables import IptLive, parse_save
from vnetfw.doctor import DoctorReport, print_human
from vnetfw.doctor_checks import (check_bridges, check_firewalld, check_forward_policy,
                                  check_forwarding, check_mixed_iptables,
                                  check_other_managers, names_bridge, run_checks)
from vnetfw.doctor_facts import Facts, Firewalld, Link
from vnetfw.sources.toml import parse_toml

NETS = parse_toml("""
[[network]]
name = "nat"
bridge = "virbr0"
mode = "nat"
ip = [{ address = "192.168.122.1", prefix = 24 }]
[[network]]
name = "op"
bridge = "virbr5"
mode = "open"
ip = [{ address = "192.168.50.1", prefix = 24 }]
""", "n.toml")
NAT = NETS[0]


def filt(policy="ACCEPT", *rules, chains=""):
    return IptLive({4: parse_save(f"*filter\n:INPUT ACCEPT [0:0]\n:FORWARD {policy} [0:0]\n"
                                  f":OUTPUT ACCEPT [0:0]\n{chains}"
                                  + "".join(r + "\n" for r in rules) + "COMMIT\n"), 6: {}})


OURS = ('-A FORWARD -m comment --comment vnetfw -j VNETFW_FWX',
        '-A FORWARD -m comment --comment vnetfw -j VNETFW_FWI',
        '-A FORWARD -m comment --comment vnetfw -j VNETFW_FWO')
OUR_CHAINS = ":VNETFW_FWX - [0:0]\n:VNETFW_FWI - [0:0]\n:VNETFW_FWO - [0:0]\n"


def facts(**kw) -> Facts:
    f = Facts(networks=[NAT], backend="iptables-nft", flavour="iptables-nft", prefix="VNETFW",
              sysctl={"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "0",
                      "net.bridge.bridge-nf-call-iptables": "0"},
              links={"virbr0": Link("virbr0", "bridge", True)})
    for k, v in kw.items():
        setattr(f, k, v)
    return f


def one(findings, code):
    got = [f for f in findings if f.code == code]
    assert len(got) == 1, [f.code for f in findings]
    return got[0]


def test_forwarding_off_only_matters_for_networks_that_route_that_family():
    f = facts(sysctl={"net.ipv4.ip_forward": "0", "net.ipv6.conf.all.forwarding": "0"})
    found = check_forwarding(f)
    assert [x.code for x in found] == ["forwarding-off-ipv4"]     # nat has no IPv6
    assert check_forwarding(facts(sysctl={"net.ipv4.ip_forward": "0"}, networks=[])) == []


def test_drop_policy_with_our_jumps_first_is_a_note():
    f = facts(iptables={"iptables-nft": filt("DROP", *OURS, chains=OUR_CHAINS)})
    x = one(check_forward_policy(f), "forward-drop-iptables-nft-ipv4")
    assert x.severity == "note" and "still win" in x.why and "rules 1, 2, 3" in x.why


def test_drop_policy_breaks_open_networks_even_with_our_jumps():
    f = facts(networks=list(NETS), iptables={"iptables-nft": filt("DROP", *OURS,
                                                                  chains=OUR_CHAINS)})
    x = one(check_forward_policy(f), "forward-drop-iptables-nft-ipv4")
    assert x.severity == "problem" and x.networks == ("op",) and "mode open" in x.why


def test_drop_rule_above_our_jumps_that_matches_a_managed_bridge():
    f = facts(iptables={"iptables-nft": filt("DROP", "-A FORWARD -o virbr0 -j DROP", *OURS,
                                             chains=OUR_CHAINS)})
    x = one(check_forward_policy(f), "forward-drop-iptables-nft-ipv4")
    assert x.severity == "problem" and "-o virbr0 -j DROP" in x.why


def test_catch_all_reject_before_our_jumps():
    f = facts(iptables={"iptables-nft": filt("ACCEPT", "-A FORWARD -j REJECT --reject-with "
                                             "icmp-host-prohibited", *OURS, chains=OUR_CHAINS)})
    x = one(check_forward_policy(f), "forward-drop-iptables-nft-ipv4")
    assert x.severity == "problem" and "come after that catch-all" in x.why
    # a catch-all *after* our jumps is what RHEL-style configs do: fine
    f = facts(iptables={"iptables-nft": filt("ACCEPT", *OURS, "-A FORWARD -j REJECT "
                                             "--reject-with icmp-host-prohibited",
                                             chains=OUR_CHAINS)})
    assert one(check_forward_policy(f), "forward-drop-iptables-nft-ipv4").severity == "note"


def test_drop_policy_with_the_nftables_backend_explains_the_netfilter_fact():
    f = facts(backend="nftables", flavour=None,
              iptables={"iptables-nft": filt("DROP", chains=":DOCKER-USER - [0:0]\n")})
    x = one(check_forward_policy(f), "forward-drop-iptables-nft-ipv4")
    assert x.severity == "problem"
    assert "own nftables table" in x.why and "accept verdict only ends the base chain" in x.why
    assert "Docker sets it" in x.what
    assert "-I DOCKER-USER -i virbr0 -j ACCEPT" in x.fix and "ip-forward-no-drop" in x.fix


def test_nft_chain_ending_in_a_catch_all_reject():
    nft = [{"table": {"family": "inet", "name": "firewalld"}},
           {"chain": {"family": "inet", "table": "firewalld", "name": "filter_FORWARD",
                      "hook": "forward", "policy": "accept"}},
           {"rule": {"family": "inet", "table": "firewalld", "chain": "filter_FORWARD",
                     "expr": [{"reject": {"type": "icmpx", "expr": "admin-prohibited"}}]}},
           # vnetfw's own table and iptables-nft's are not "another table"
           {"chain": {"family": "inet", "table": "vnetfw", "name": "forward",
                      "hook": "forward", "policy": "drop"}},
           {"chain": {"family": "ip", "table": "filter", "name": "FORWARD",
                      "hook": "forward", "policy": "drop"}}]
    found = check_forward_policy(facts(nft=nft))
    assert [x.code for x in found] == ["nft-forward-drop-inet-firewalld"]
    assert "catch-all" in found[0].what


@pytest.mark.parametrize("zone, target, bad", [("libvirt", "ACCEPT", False),
                                               (None, "default", True),
                                               ("public", "%%REJECT%%", True)])
def test_firewalld_zone(zone, target, bad):
    fw = Firewalld(running=True, backend="nftables", default_zone="public",
                   zone_of={"virbr0": zone}, target={zone or "public": target},
                   zones=["public", "libvirt", "trusted"])
    found = check_firewalld(facts(firewalld=fw))
    assert bool(found) == bad
    if bad:
        assert "--zone=libvirt --change-interface=virbr0" in found[0].fix
        assert ("default zone" in found[0].what) == (zone is None)
    assert check_firewalld(facts(firewalld=Firewalld(running=False))) == []


def test_other_managers_accept_rules_for_our_bridge_are_fine_drops_are_not():
    ok = filt("ACCEPT", "-A DOCKER-USER -i virbr0 -j ACCEPT", chains=":DOCKER-USER - [0:0]\n")
    assert one(check_other_managers(facts(iptables={"iptables-nft": ok})),
               "other-manager-docker").severity == "note"
    bad = filt("ACCEPT", "-A DOCKER-USER -o virbr+ -j DROP", chains=":DOCKER-USER - [0:0]\n")
    x = one(check_other_managers(facts(iptables={"iptables-nft": bad})), "other-manager-docker")
    assert x.severity == "problem" and x.networks == ("nat",)


def test_our_own_libvirt_prefix_is_not_another_manager():
    lv = filt("ACCEPT", "-A LIBVIRT_FWX -i virbr0 -o virbr0 -m comment --comment "
              '"vnetfw:nat" -j ACCEPT', chains=":LIBVIRT_FWX - [0:0]\n")
    assert check_other_managers(facts(prefix="LIBVIRT", iptables={"iptables-nft": lv})) == []
    x = one(check_other_managers(facts(iptables={"iptables-nft": lv})), "other-manager-libvirt")
    assert x.severity == "problem"


def test_mixed_needs_rules_in_both():
    empty = filt("ACCEPT")
    some = filt("ACCEPT", "-A INPUT -j ACCEPT")
    assert check_mixed_iptables(facts(iptables={"iptables-nft": some,
                                                "iptables-legacy": empty})) == []
    assert check_mixed_iptables(facts(iptables={"iptables-nft": some,
                                                "iptables-legacy": filt("DROP")}))


def test_bridges():
    f = facts(networks=list(NETS), links={"virbr0": Link("virbr0", "bridge", False)})
    assert {x.code: x.severity for x in check_bridges(f)} == {
        "bridge-down-virbr0": "note", "bridge-missing-virbr5": "problem"}


def test_names_bridge_knows_the_wildcard_and_nothing_looser():
    assert names_bridge("-o virbr+ -j DROP", {"virbr0"}) == "virbr0"
    assert names_bridge("-o virbr0x -j DROP", {"virbr0"}) is None
    assert names_bridge("-s 10.0.0.0/8 -m comment --comment virbr0 -j DROP", {"virbr0"}) is None


def test_report_orders_problems_first_and_prints_every_block(capsys):
    f = facts(networks=list(NETS), sysctl={"net.ipv4.ip_forward": "0"},
              links={"virbr0": Link("virbr0", "bridge", False)})
    rep = DoctorReport(f, run_checks(f))
    sev = [x.severity for x in rep.findings]
    assert sev == sorted(sev, key=lambda s: s != "problem") and not rep.ok
    print_human(rep)
    out = capsys.readouterr().out
    assert out.count("PROBLEM: ") == len(rep.problems)
    assert out.count("  why   ") == out.count("  fix   ") == len(rep.findings)
    assert rep.to_json()["problems"] == len(rep.problems)


def test_libvirt_hook_findings():
    from vnetfw.doctor_checks import check_libvirt_hook
    from vnetfw.doctor_libvirt import LibvirtView as V

    def codes(*views, active=()):
        f = Facts(libvirt=list(views), active=set(active))
        return [x.code for x in check_libvirt_hook(f)]
    assert codes(V("d", 100.0, "missing")) == []            # no network with metadata
    assert codes(V("d", 100.0, "missing", with_metadata=["web"])) == ["libvirt-hook-missing"]
    assert codes(V("d", None, "foreign", with_metadata=["web"])) == ["libvirt-hook-missing"]
    assert codes(V("d", 100.0, "ours", 50.0, with_metadata=["web"])) == []
    assert codes(V("d", 100.0, "ours", 150.0, with_metadata=["web"])) == ["libvirt-hook-unseen"]
    # another hook was there at the daemon's start: libvirt looks into the folder each time
    assert codes(V("d", 100.0, "ours", 150.0, True, with_metadata=["web"])) == []
    assert codes(V("d", 100.0, "ours", 150.0, running_with_metadata=["web"])) == \
        ["libvirt-hook-unseen", "libvirt-network-unfirewalled"]
    assert codes(V("d", 100.0, "ours", 50.0, running_with_metadata=["web"]),
                 active=["web"]) == []
    x = check_libvirt_hook(Facts(libvirt=[V("d", 1.0, "missing", with_metadata=["web"])]))[0]
    assert "vnetfw libvirt-hook install" in x.fix and "restart libvirtd" in x.fix


def test_forward_and_allow_jumps_between_the_stages_are_ours():
    # with port forwards or allows FORWARD holds ALW, FWX, FWD, FWI, FWO: the ALW jump
    # first is vnetfw's own, not "a rule before vnetfw's jumps"
    staged = ('-A FORWARD -m comment --comment vnetfw -j VNETFW_ALW', OURS[0],
              '-A FORWARD -m comment --comment vnetfw -j VNETFW_FWD', *OURS[1:])
    chains = OUR_CHAINS + ":VNETFW_ALW - [0:0]\n:VNETFW_FWD - [0:0]\n"
    f = facts(iptables={"iptables-nft": filt("DROP", *staged, chains=chains)})
    x = one(check_forward_policy(f), "forward-drop-iptables-nft-ipv4")
    assert x.severity == "note" and "rules 1, 2, 3, 4, 5" in x.why
