"""Adopting from libvirt's nftables backend, pure part: for every libvirt reference case the
rules vnetfw expects libvirt to have written are exactly the rules libvirt's own commands
left in ``ip/ip6 libvirt_network`` (tests/fixtures/libvirt/nftables/), and a rule that
differs in anything stays. (Against the real libvirt 11.3: tests/netns/test_libvirt.py.)"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pytest

from vnetfw.migrate_nft import delete_script, expected, find, left_over, parse_listing
from vnetfw.sources import load_file

LIBVIRT = Path(__file__).resolve().parent.parent / "fixtures" / "libvirt"
CASES = sorted(p.stem for p in LIBVIRT.glob("*.xml"))


def listings(case: str) -> dict[int, str]:
    """The reference ruleset per family, with handles as ``nft -a`` prints them."""
    text = (LIBVIRT / "nftables" / f"{case}.nftables-ruleset").read_text()
    handles = itertools.count(1)
    out: dict[int, list[str]] = {}
    fam = None
    for line in text.splitlines():
        if line.startswith("table "):
            fam = 6 if line.startswith("table ip6 ") else 4
        elif line.startswith("\t\t") and not line.strip().startswith("type "):
            line += f" # handle {next(handles)}"
        out.setdefault(fam, []).append(line)
    return {f: "\n".join(lines) for f, lines in out.items()}


@pytest.mark.parametrize("case", CASES)
def test_expected_rules_are_exactly_libvirts(case):
    (net,) = load_file(LIBVIRT / f"{case}.xml")
    ls = listings(case)
    found = find(ls, [net])
    want = sorted((fam, chain, r) for (fam, chain), rules in expected(net).items()
                  for r in rules)
    assert sorted((r.family, r.chain, r.text) for r in found) == want
    assert left_over(ls, found) == 0            # nothing of the network's is left
    assert all(r.network == "default" for r in found)


def test_other_networks_and_changed_rules_stay():
    (net,) = load_file(LIBVIRT / "nat-default.xml")
    ls = listings("nat-default")
    (other,) = load_file(LIBVIRT / "route-default.xml")
    other = dataclasses.replace(other, name="o", bridge="virbr9")
    assert find(ls, [other]) == []      # the same subnet would match libvirt's NAT rules: as
                                        # with iptables, those name only the subnet
    changed = {4: ls[4].replace('iif "virbr0" counter reject', 'iif "virbr0" tcp dport 22 '
                                                                 "counter reject")}
    texts = [r.text for r in find(changed, [net])]
    assert 'iif "virbr0" reject' not in texts and len(texts) == len(find(ls, [net])) - 1


def test_delete_script_names_each_rule_by_handle():
    (net,) = load_file(LIBVIRT / "isolated.xml")
    script = delete_script(find(listings("isolated"), [net]))
    assert script.count("\n") == 6
    assert script.splitlines()[0].startswith("delete rule ip libvirt_network guest_output handle ")


def test_parse_listing_reads_handles_and_drops_counters():
    text = ("table ip libvirt_network { # handle 3\n\tchain guest_output { # handle 2\n"
            '\t\tiif "vb" counter packets 5 bytes 300 reject # handle 9\n\t}\n}\n')
    assert parse_listing(text) == [("guest_output", 9, 'iif "vb" reject')]
