"""migrate, pure parts: which live rules are old product rules, and the edits that remove them.

No kernel: live rulesets are iptables-save text, parsed with the backend's own ``parse_save``.
"""

from __future__ import annotations

import pytest

from vnetfw.backends.iptables import parse_save, IptLive
from vnetfw.errors import GuardError
from vnetfw.migrate import (candidates, deletion_edits, drop_libvirt_chains, find,
                            plan_flavour, semantics)
from vnetfw.sources.toml import parse_toml

NETS = parse_toml("""
[[network]]
name = "default"
bridge = "virbr0"
mode = "nat"
ip = [{ address = "192.168.122.1", prefix = 24, dhcp = true }]
[[network]]
name = "iso"
bridge = "virbr2"
mode = "isolated"
ip = [{ address = "10.9.0.1", prefix = 24 }, { address = "fd00:9::1", prefix = 64 }]
""", "n.toml")


def live(v4: str, v6: str = "") -> IptLive:
    return IptLive({4: parse_save(v4), 6: parse_save(v6)})


def filt(*rules: str, chains: str = "") -> str:
    return "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n" + \
        chains + "".join(r + "\n" for r in rules) + "COMMIT\n"


def nat(*rules: str) -> str:
    return "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n" \
           ":POSTROUTING ACCEPT [0:0]\n" + "".join(r + "\n" for r in rules) + "COMMIT\n"


def deleted(found) -> list[str]:
    return [d.text for d in found.deleted]


# ---------------------------------------------------------------------------------------------
# semantics


def test_semantics_reads_state_as_conntrack_and_separates_the_comment():
    a = semantics("-d 192.168.122.0/24 -o virbr0 -m state --state RELATED,ESTABLISHED -j ACCEPT",
                  4, "filter")
    b = semantics("-d 192.168.122.0/24 -o virbr0 -m conntrack --ctstate RELATED,ESTABLISHED "
                  '-m comment --comment "x y" -j ACCEPT', 4, "filter")
    assert a is not None and b is not None
    assert a[0] == b[0] and a[1] is None and b[1] == "x y"


@pytest.mark.parametrize("args", [
    "-i virbr0 -m physdev --physdev-is-bridged -j ACCEPT",          # an extra match
    "-o virbr0 -j REJECT --reject-with icmp-host-prohibited",       # not the default reject
    "-i virbr0 -p tcp -m tcp --sport 53 -j ACCEPT",                 # a source port
    '-i virbr0 -m comment --comment a -m comment --comment b -j ACCEPT',
    "! -i virbr0 -j ACCEPT",                                        # negated interface
])
def test_semantics_refuses_what_the_parser_does_not_fully_understand(args):
    assert semantics(args, 4, "filter") is None


# ---------------------------------------------------------------------------------------------
# find


def test_old_libvirt_rules_are_found_and_everything_else_is_kept():
    v4 = filt(
        "-A INPUT -i virbr0 -p udp -m udp --dport 53 -j ACCEPT",
        "-A INPUT -i virbr0 -p udp -m udp --dport 53 -j ACCEPT",              # duplicate
        '-A INPUT -i virbr0 -p udp -m udp --dport 53 -m comment --comment "admin" -j ACCEPT',
        "-A INPUT -i virbr0 -p tcp -m tcp --dport 22 -j ACCEPT",
        "-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT",
        "-A FORWARD -d 192.168.122.0/24 -o virbr0 -m state --state RELATED,ESTABLISHED "
        "-j ACCEPT",
        "-A FORWARD -s 192.168.122.0/24 -i virbr0 -j ACCEPT",
        "-A FORWARD -i virbr9 -j REJECT --reject-with icmp-port-unreachable",   # unmanaged
        "-A FORWARD -o virbr0 -j REJECT --reject-with icmp-host-prohibited",
        "-A FORWARD -i virbr0 -o virbr0 -j ACCEPT",
        "-A OUTPUT -o virbr0 -p udp -m udp --dport 68 -j ACCEPT",
    ) + nat(
        "-A POSTROUTING -s 192.168.122.0/24 -d 224.0.0.0/24 -j RETURN",
        "-A POSTROUTING -s 192.168.122.0/24 ! -d 192.168.122.0/24 -p tcp -j MASQUERADE "
        "--to-ports 1024-65535",
        "-A POSTROUTING -s 192.168.122.0/24 -j MASQUERADE",                  # very old / admin
        "-A POSTROUTING -s 192.168.122.0/24 ! -d 192.168.122.0/24 -p tcp -j MASQUERADE "
        "--to-ports 2000-3000",                                              # other port range
    )
    f = find(live(v4), "iptables-nft", NETS)
    assert deleted(f) == [
        "-A INPUT -i virbr0 -p udp -m udp --dport 53 -j ACCEPT",
        "-A INPUT -i virbr0 -p udp -m udp --dport 53 -j ACCEPT",
        "-A OUTPUT -o virbr0 -p udp -m udp --dport 68 -j ACCEPT",
        "-A FORWARD -d 192.168.122.0/24 -o virbr0 -m state --state RELATED,ESTABLISHED -j ACCEPT",
        "-A FORWARD -s 192.168.122.0/24 -i virbr0 -j ACCEPT",
        "-A FORWARD -i virbr0 -o virbr0 -j ACCEPT",
        "-A POSTROUTING -s 192.168.122.0/24 -d 224.0.0.0/24 -j RETURN",
        "-A POSTROUTING -s 192.168.122.0/24 ! -d 192.168.122.0/24 -p tcp -j MASQUERADE "
        "--to-ports 1024-65535",
    ]
    assert {d.network for d in f.deleted} == {"default"}
    assert [d.index for d in f.deleted][:2] == [1, 2]
    kept = {k.text for k in f.kept}
    assert '-A INPUT -i virbr0 -p udp -m udp --dport 53 -m comment --comment "admin" -j ACCEPT' \
        in kept
    assert "-A INPUT -i virbr0 -p tcp -m tcp --dport 22 -j ACCEPT" in kept
    assert "-A POSTROUTING -s 192.168.122.0/24 -j MASQUERADE" in kept
    assert "-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT" not in kept     # names nothing of ours
    assert not any("virbr9" in k for k in kept)


def test_older_vnetfw_rules_need_their_own_networks_comment():
    v4 = filt(
        '-A FORWARD -i virbr0 -o virbr0 -m comment --comment "vnetfw:default" -j ACCEPT',
        '-A FORWARD -i virbr0 -o virbr0 -m comment --comment "vnetfw:iso" -j ACCEPT',
        # the default profile's isolated-network hardening, written by an older vnetfw
        '-A FORWARD -i virbr2 -m comment --comment "vnetfw:iso" -j REJECT '
        "--reject-with icmp-port-unreachable",
    )
    # IPv6 of a network without IPv6: only the default profile firewalls it; libvirt never
    # wrote it, so without a comment it is not an old product rule
    v6 = filt('-A FORWARD -i virbr0 -m comment --comment "vnetfw:default" -j REJECT '
              "--reject-with icmp6-port-unreachable",
              "-A FORWARD -i virbr0 -j REJECT --reject-with icmp6-port-unreachable")
    f = find(live(v4, v6), "iptables-legacy", NETS)
    assert [(d.family, d.text, d.origin) for d in f.deleted] == [
        (4, '-A FORWARD -i virbr0 -o virbr0 -m comment --comment "vnetfw:default" -j ACCEPT',
         "vnetfw"),
        (4, '-A FORWARD -i virbr2 -m comment --comment "vnetfw:iso" -j REJECT '
            "--reject-with icmp-port-unreachable", "vnetfw"),
        (6, '-A FORWARD -i virbr0 -m comment --comment "vnetfw:default" -j REJECT '
            "--reject-with icmp6-port-unreachable", "vnetfw"),
    ]


def test_families_and_tables_do_not_mix():
    # an IPv4 rule shape in ip6tables' FORWARD and a filter rule in nat: not candidates
    v6 = filt("-A FORWARD -s 192.168.122.0/24 -i virbr0 -j ACCEPT")
    v4 = nat("-A POSTROUTING -i virbr0 -o virbr0 -j ACCEPT")
    assert find(live(v4, v6), "iptables-nft", NETS).deleted == []


def test_candidates_are_the_plans_rules_in_builtin_chains():
    c = candidates(NETS[:1], "old")
    assert set(c) == {(4, "filter", "INPUT"), (4, "filter", "OUTPUT"), (4, "filter", "FORWARD"),
                      (4, "nat", "POSTROUTING"), (4, "mangle", "POSTROUTING"),
                      (6, "filter", "FORWARD")}   # the default profile's IPv6 hardening
    c = candidates(NETS[:1], "libvirt")
    assert (4, "filter", "LIBVIRT_FWI") in c and (6, "filter", "LIBVIRT_FWX") not in c


# ---------------------------------------------------------------------------------------------
# edits


def test_deletion_edits_delete_by_spec_and_simulate_the_result():
    v4 = filt("-A INPUT -i virbr0 -p udp -m udp --dport 53 -j ACCEPT",
              "-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT",
              "-A INPUT -i virbr0 -p udp -m udp --dport 53 -j ACCEPT")
    lv = live(v4)
    f = find(lv, "iptables-nft", NETS)
    ed = deletion_edits(lv, f.deleted)
    assert ed.lines == {(4, "filter"): ["-D INPUT -i virbr0 -p udp -m udp --dport 53 -j ACCEPT"] * 2}
    assert ed.after.tables[4]["filter"].chains["INPUT"] == ["-p tcp -m tcp --dport 22 -j ACCEPT"]
    assert len(lv.tables[4]["filter"].chains["INPUT"]) == 3       # the snapshot is untouched


LIBVIRT_CHAINS = ":LIBVIRT_INP - [0:0]\n:LIBVIRT_OUT - [0:0]\n:LIBVIRT_FWX - [0:0]\n" \
                 ":LIBVIRT_FWI - [0:0]\n:LIBVIRT_FWO - [0:0]\n"
JUMPS = ("-A INPUT -j LIBVIRT_INP", "-A FORWARD -j LIBVIRT_FWX", "-A FORWARD -j LIBVIRT_FWI",
         "-A FORWARD -j LIBVIRT_FWO", "-A OUTPUT -j LIBVIRT_OUT")


def test_profile_libvirt_refuses_to_take_chains_that_hold_other_networks_rules():
    v4 = filt(*JUMPS, "-A LIBVIRT_FWX -i virbr0 -o virbr0 -j ACCEPT",
              "-A LIBVIRT_FWX -i virbr5 -o virbr5 -j ACCEPT", chains=LIBVIRT_CHAINS)
    with pytest.raises(GuardError, match="LIBVIRT_FWX -i virbr5"):
        plan_flavour(live(v4), "iptables-nft", NETS[:1], ("old", "libvirt"), "LIBVIRT")
    # with only the adopted network's rules there, it is allowed
    v4 = filt(*JUMPS, "-A LIBVIRT_FWX -i virbr0 -o virbr0 -j ACCEPT", chains=LIBVIRT_CHAINS)
    f, ed = plan_flavour(live(v4), "iptables-nft", NETS[:1], ("old", "libvirt"), "LIBVIRT")
    assert deleted(f) == ["-A LIBVIRT_FWX -i virbr0 -o virbr0 -j ACCEPT"]


def test_empty_libvirt_chains_are_kept_unless_asked_and_only_if_plainly_referenced():
    v4 = filt(*JUMPS, "-A LIBVIRT_FWX -i virbr0 -o virbr0 -j ACCEPT", chains=LIBVIRT_CHAINS)
    f, ed = plan_flavour(live(v4), "iptables-nft", NETS[:1], ("old", "libvirt"), "VNETFW")
    assert any("kept with their jumps" in n for n in ed.notes)
    assert not any("-X" in l for ls in ed.lines.values() for l in ls)
    f, ed = plan_flavour(live(v4), "iptables-nft", NETS[:1], ("old", "libvirt"), "VNETFW",
                         drop_libvirt=True)
    lines = ed.lines[(4, "filter")]
    assert lines[0] == "-D LIBVIRT_FWX -i virbr0 -o virbr0 -j ACCEPT"
    assert "-D FORWARD -j LIBVIRT_FWI" in lines and lines[-5:] == [
        f"-X LIBVIRT_{c}" for c in ("INP", "OUT", "FWX", "FWI", "FWO")]
    assert not any(c.startswith("LIBVIRT") for c in ed.after.tables[4]["filter"].chains)
    # an admin's own jump into a libvirt chain: -X would fail, so nothing is dropped
    v4 = filt(*JUMPS, "-A FORWARD -i eth0 -j LIBVIRT_FWI",
              "-A LIBVIRT_FWX -i virbr0 -o virbr0 -j ACCEPT", chains=LIBVIRT_CHAINS)
    ed = drop_libvirt_chains(deletion_edits(live(v4), find(live(v4), "x", NETS[:1],
                                                           ("libvirt",)).deleted))
    assert ed is False
