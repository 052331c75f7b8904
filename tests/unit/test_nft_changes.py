"""nftables backend, pure diffing: what ``changes()`` loads for a given live table.

The live state is the stored ``nft -j list ruleset`` of the mixed networks
(tests/fixtures/nft/live/), optionally altered the way an admin or a crash could alter it.
The properties checked: no change when nothing differs; adding, changing or removing one
network touches only that network's chains and map elements; anything vnetfw did not write
is reported and removed; setup/teardown scopes do only their part.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from vnetfw.backends.nftables import NftablesBackend, NftLive, parse_listing
from vnetfw.backends.runner import Runner
from vnetfw.plan import PROFILES, plan
from vnetfw.ruleset import CHECKSUM
from vnetfw.sources import load_paths
from vnetfw.sources.toml import parse_toml

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "nft"
NETS = load_paths([FIX / "mixed.toml"])
RAW = {p: json.loads((FIX / "live" / f"mixed.{p}.json").read_text())["nftables"]
       for p in ("default", "libvirt")}

b = NftablesBackend(Runner())


def live_of(*mutations, profile="default", extra_profiles=()) -> NftLive:
    items = copy.deepcopy(RAW[profile])
    for p in extra_profiles:
        items += copy.deepcopy(RAW[p])
    for m in mutations:
        m(items)
    return NftLive(parse_listing(json.dumps({"nftables": items})))


def desired(nets=NETS, profile="default"):
    return plan(nets, PROFILES[profile])


def obj(items, kind, name):
    return next(o[kind] for o in items if kind in o and o[kind].get("name") == name)


def lines(payload: str) -> list[str]:
    return [l for l in payload.splitlines() if l.strip()]


def without(name):
    return tuple(n for n in NETS if n.name != name)


# ---------------------------------------------------------------------------------------------

def test_nothing_to_do_when_live_is_desired():
    rs = desired()
    assert any(r.verdict == CHECKSUM for r in rs.rules)     # planned, but not for nftables
    cs = b.changes(live_of(), rs, "full")
    assert cs.empty and cs.payload == ""
    assert b.changes(live_of(), rs, "setup").empty
    assert b.live_ruleset(live_of(), "VNETFW") == b.effective(rs)


def test_remove_one_network_touches_only_its_chains_and_elements():
    cs = b.changes(live_of(), desired(without("route-a")), "full")
    text = lines(cs.payload)
    route_chains = {n for n in (o["chain"]["name"] for o in RAW["default"] if "chain" in o)
                    if n.endswith("-route-a")}
    # inp, out, fwx, fwi, fwo per family, and nat4 for its forward's hairpin masquerade
    assert len(route_chains) == 11
    assert {l.split()[-1] for l in text if l.startswith("delete chain")} == route_chains
    assert {l.split()[-1] for l in text if l.startswith("flush chain")} == route_chains
    assert not any(l.startswith("add ") for l in text)
    assert all(c.what == "delete" for c in cs.items)
    # Its own chains, map elements and forward/allow elements; and the elements of iso's
    # allow into route-a, which waits for route-a again.
    assert {c.network for c in cs.items} == {"route-a", "iso"}
    assert all(c.rule is not None and c.rule.chain == "ALW" and c.rule.iif in ("vb.iso", "vb-route")
               for c in cs.items if c.network == "iso")
    # inp, out, fwx, fwi, fwo: ipv4 and ipv6 keys of its bridge; nat4: its subnet
    assert sum(1 for c in cs.items if " map " in c.where + " " and c.rule is None) == 11


def test_add_one_network_touches_only_its_chains_and_elements():
    new = parse_toml('name = "newnet"\nbridge = "vb-new"\nmode = "nat"\n'
                     '[[ip]]\naddress = "10.10.9.1"\nprefix = 24\n', "new.toml")
    cs = b.changes(live_of(), desired(NETS + tuple(new)), "full")
    text = lines(cs.payload)
    assert not any(l.startswith(("delete", "flush")) for l in text)
    for l in text:
        if l.startswith("add chain") or l.startswith("add rule"):
            assert re.search(r" (inp|out|fwx|fwi|fwo|nat)[46]-newnet ", l + " "), l
        elif not l.startswith(("add element", "}", "# network newnet")):
            assert "vb-new" in l or "10.10.9.0/24" in l, l
    assert {c.network for c in cs.items} == {"newnet"}
    assert "add element inet vnetfw nat4 { 10.10.9.0/24 : jump nat4-newnet }" in text


def test_changed_network_refills_only_the_chains_that_changed():
    nets = tuple(replace(n, nat=replace(n.nat, port_start=4000, port_end=5000))
                 if n.name == "nat.1+x" else n for n in NETS)
    cs = b.changes(live_of(), desired(nets), "full")
    text = lines(cs.payload)
    assert [l for l in text if l.startswith("flush")] == [
        "flush chain inet vnetfw nat4-nat.1_2bx", "flush chain inet vnetfw nat6-nat.1_2bx"]
    assert all(l.startswith(("flush chain", "add rule", "#")) for l in text)
    # the report lists only what differs: the two port-range rules per family, old and new
    assert len(cs.items) == 8
    assert all("ports" in c.detail and c.network == "nat.1+x" for c in cs.items)


def test_foreign_rule_in_a_network_chain_is_reported_and_replaced():
    def sneak(items):
        first = next(i for i, o in enumerate(items)
                     if "rule" in o and o["rule"]["chain"] == "fwo4-route-a")
        rule = copy.deepcopy(items[first])
        rule["rule"]["expr"] = [{"counter": {"packets": 0, "bytes": 0}}, {"accept": None}]
        items.insert(first, rule)
    cs = b.changes(live_of(sneak), desired(), "full")
    text = lines(cs.payload)
    assert text[0] == "flush chain inet vnetfw fwo4-route-a"
    assert len(text) == 1 + 1 + 2      # flush, "# network", the chain's two rules
    assert [str(c) for c in cs.items] == [
        "ipv4 inet vnetfw fwo4-route-a: delete rule 'counter accept' (not written by vnetfw)  [route-a]"]
    # live_ruleset still shows only vnetfw's own rules
    assert b.live_ruleset(live_of(sneak), "VNETFW") == b.effective(desired())


def test_extra_and_wrong_elements_are_deleted_or_replaced():
    def extra(items):
        obj(items, "map", "fwx")["elem"].append(
            [{"concat": ["ipv4", "eth9"]}, {"jump": {"target": "fwx4-route-a"}}])
        for e in obj(items, "map", "fwi")["elem"]:
            if e[0]["concat"] == ["ipv4", "vb-route"]:
                e[1] = {"jump": {"target": "fwi4-iso"}}
    cs = b.changes(live_of(extra), desired(), "full")
    assert lines(cs.payload) == [
        'delete element inet vnetfw fwx { ipv4 . "eth9" }',
        'delete element inet vnetfw fwi { ipv4 . "vb-route" }',
        'add element inet vnetfw fwi { ipv4 . "vb-route" : jump fwi4-route-a }']


def test_undispatched_chain_does_not_count_as_live():
    def drop(items):
        m = obj(items, "map", "fwo")
        m["elem"] = [e for e in m["elem"] if e[0]["concat"] != ["ipv4", "vb-route"]]
    live = live_of(drop)
    got = b.live_ruleset(live, "VNETFW")
    missing = [r for r in b.effective(desired()).rules if r not in got.rules]
    assert missing and all(r.network == "route-a" and r.chain == "FWO" and r.family == 4
                           for r in missing)
    assert lines(b.changes(live, desired(), "full").payload) == [
        'add element inet vnetfw fwo { ipv4 . "vb-route" : jump fwo4-route-a }']


@pytest.mark.parametrize("what, mutate", [
    ("foreign chain admin", lambda items: items.append(
        {"chain": {"family": "inet", "table": "vnetfw", "name": "admin", "handle": 999}})),
    ("foreign set s", lambda items: items.append(
        {"set": {"family": "inet", "table": "vnetfw", "name": "s", "handle": 998,
                 "type": "ipv4_addr"}})),
    ("foreign counter c", lambda items: items.append(
        {"counter": {"family": "inet", "table": "vnetfw", "name": "c", "handle": 997,
                     "packets": 0, "bytes": 0}})),
    ("foreign chain fwo4-x", lambda items: items.append(     # our naming, but a base chain
        {"chain": {"family": "inet", "table": "vnetfw", "name": "fwo4-x", "handle": 996,
                   "type": "filter", "hook": "forward", "prio": -5, "policy": "drop"}})),
    ("unreadable element(s) in map fwx", lambda items: obj(items, "map", "fwx")["elem"].append(
        [{"concat": ["ipv4", "a", "b"]}, {"accept": None}])),
])
def test_unknown_objects_make_the_table_be_rebuilt_in_one_transaction(what, mutate):
    rs = desired()
    cs = b.changes(live_of(mutate), rs, "full")
    assert cs.payload == "delete table inet vnetfw\n" + b.render(rs)
    assert any(what in str(c) for c in cs.items)


def test_admin_rule_in_a_base_chain_is_replaced():
    def admin(items):
        first = next(i for i, o in enumerate(items)
                     if "rule" in o and o["rule"]["chain"] == "forward")
        rule = copy.deepcopy(items[first])
        rule["rule"]["expr"] = [{"drop": None}]
        items.insert(first, rule)
    cs = b.changes(live_of(admin), desired(), "full")
    assert lines(cs.payload) == [
        "flush chain inet vnetfw forward",
        "add rule inet vnetfw forward jump admin_forward",
        "add rule inet vnetfw forward iifname . ip saddr . ip daddr . meta l4proto . th dport "
        "@alw4 accept",
        "add rule inet vnetfw forward iifname . ip6 saddr . ip6 daddr . meta l4proto . th dport "
        "@alw6 accept",
        "add rule inet vnetfw forward ct direction reply ct state established,related "
        "iifname . ip saddr . ip daddr @alwr4 accept",
        "add rule inet vnetfw forward ct direction reply ct state established,related "
        "iifname . ip6 saddr . ip6 daddr @alwr6 accept",
        "add rule inet vnetfw forward meta nfproto . iifname vmap @fwx",
        "add rule inet vnetfw forward ct status dnat oifname . ip daddr . meta l4proto . "
        "th dport @fwd4 accept",
        "add rule inet vnetfw forward ct status dnat oifname . ip6 daddr . meta l4proto . "
        "th dport @fwd6 accept",
        "add rule inet vnetfw forward meta nfproto . oifname vmap @fwi",
        "add rule inet vnetfw forward meta nfproto . iifname vmap @fwo"]
    assert str(cs.items[0]) == "inet vnetfw forward: delete rule 'drop'"


def test_wrong_base_chain_policy_recreates_the_chain():
    def drop_policy(items):
        obj(items, "chain", "forward")["policy"] = "drop"
    text = lines(b.changes(live_of(drop_policy), desired(), "setup").payload)
    assert text[:3] == ["flush chain inet vnetfw forward", "delete chain inet vnetfw forward",
                        "add chain inet vnetfw forward { type filter hook forward priority "
                        "filter; policy accept; }"]
    assert len(text) == 13      # + jump admin_forward, the three vmaps and six set lookups


def test_map_of_wrong_type_is_recreated_with_all_its_elements():
    def retype(items):
        obj(items, "map", "fwx")["type"] = ["nf_proto", "ipv4_addr"]
    cs = b.changes(live_of(retype), desired(), "full")
    text = cs.payload
    assert "delete map inet vnetfw fwx\n" in text
    assert "add map inet vnetfw fwx { type nf_proto . ifname : verdict; }\n" in text
    assert "flush chain inet vnetfw forward\n" in text
    assert text.count(": jump fwx") == 10 and ": jump fwi" not in text
    # the same repair under scope setup leaves the elements to the next full sync
    setup = b.changes(live_of(retype), None, "setup", prefix="VNETFW").payload
    assert "delete map inet vnetfw fwx\n" in setup and ": jump" not in setup


def test_setup_scope_creates_only_the_layout():
    cs = b.changes(NftLive.empty(), desired(), "setup")
    text = cs.payload
    assert re.findall(r"^\tchain (\S+) \{", text, re.M) == [
        "admin_input", "admin_output", "admin_forward", "admin_postrouting",
        "admin_prerouting", "admin_natoutput",
        "input", "output", "forward", "postrouting", "prerouting", "natoutput"]
    # 7 dispatch maps, 6 forward maps; 6 sets (forwarded, allows, allows' replies)
    assert len(re.findall(r"^\tmap ", text, re.M)) == 13
    assert len(re.findall(r"^\tset ", text, re.M)) == 6
    assert "element" not in text and not re.search(r"\b(inp|out|fwx|fwi|fwo|nat)[46]-", text)
    assert b.changes(NftLive.empty(), None, "setup", prefix="VNETFW").payload == text


def test_teardown_deletes_only_the_prefix_table():
    live = live_of(extra_profiles=("libvirt",))
    assert set(live.tables) == {"vnetfw", "vnetfw_libvirt"}
    cs = b.changes(live, None, "teardown", prefix="LIBVIRT")
    assert cs.payload == "delete table inet vnetfw_libvirt\n"
    assert len(cs.items) == 1 and "delete" in str(cs.items[0])
    assert b.changes(NftLive.empty(), None, "teardown", prefix="VNETFW").empty
    # and each profile sees only its own table
    assert b.changes(live, desired(profile="libvirt"), "full").empty
    assert b.changes(live, desired(), "full").empty


def test_table_flags_are_reset_and_a_dormant_table_is_not_live():
    def dormant(items):
        obj(items, "table", "vnetfw")["flags"] = "dormant"
    live = live_of(dormant)
    assert b.live_ruleset(live, "VNETFW").rules == ()
    cs = b.changes(live, desired(), "full")
    assert lines(cs.payload) == ["add table inet vnetfw"]


def test_change_items_read_well():
    cs = b.changes(NftLive.empty(), desired(without("route-a")[:1]), "full")
    shown = [str(c) for c in cs.items]
    assert shown[0] == "inet: create table vnetfw"
    assert "ipv4 inet vnetfw fwx4-iso: add rule in vb.iso out vb.iso -> accept  [iso]" in shown
    assert 'ipv4 inet vnetfw map fwx: add element ipv4 . "vb.iso" : jump fwx4-iso  [iso]' in shown


def test_a_refused_commit_says_what_the_kernel_lacks():
    """A backend named explicitly is not probed up front (one process less on every first
    apply); when the kernel refuses the transaction, the probe explains why."""
    from vnetfw.backends.runner import CommandFailed
    from vnetfw.errors import BackendError

    class OldKernel(Runner):
        calls: list = []

        def which(self, prog):
            return "/usr/sbin/nft"

        def run(self, argv, stdin=None, *, check=True):
            self.calls.append(argv)
            raise CommandFailed(argv, 1, "Error: Could not process rule: Operation not supported")

    b = NftablesBackend(OldKernel())
    assert b.available(probe=False) is None and OldKernel.calls == []
    cs = b.changes(NftLive.empty(), desired(), "full")
    with pytest.raises(BackendError, match="nothing was changed.*not usable here: the kernel "
                                           "refused an nftables probe table"):
        b.commit(NftLive.empty(), cs)
    assert [c[:3] for c in OldKernel.calls] == [["nft", "-f", "-"], ["nft", "-c", "-f"]]
    with pytest.raises(BackendError, match="nftables is not usable here: the kernel refused"):
        b.read()                # check/status read first: the same explanation


# ---------------------------------------------------------------------------------------------
# A table that does not exist yet: one block, written piece by piece (load_fresh)


@pytest.mark.parametrize("profile", ["default", "libvirt"])
def test_fresh_table_reports_what_a_diff_against_an_empty_table_does(profile):
    """The block a vacant firewall gets reports exactly what the line-by-line diff against
    an existing but empty table reports, plus the table itself."""
    from vnetfw.backends import Change
    from vnetfw.backends.nftables import LiveTable, table_name
    rs = desired(profile=profile)
    t = table_name(rs.prefix)
    fresh = b.changes(NftLive.empty(), rs, "full")
    diffed = b.changes(NftLive({t: LiveTable(t)}), rs, "full")
    assert fresh.items == [Change(None, "create", "inet", f"table {t}")] + diffed.items
    assert any(c.network for c in fresh.items)


def test_fresh_table_is_one_block_so_a_cut_off_input_cannot_parse():
    """Every network is inside ``table inet T { ... }``: nothing outside the block but the
    closing brace, so input cut off before the end leaves a block open (nft: syntax error,
    nothing loaded; the kernel test proves the refusal)."""
    text = b.changes(NftLive.empty(), desired(), "full").payload
    body = text.splitlines()
    assert body[0] == "table inet vnetfw {" and body[-1] == "}"
    assert all(l.startswith("\t") for l in body[1:-1])


def test_fresh_pieces_come_network_by_network_in_the_order_given():
    rs = desired()
    nets = rs.by_network()[::-1]
    pieces = list(b.fresh(rs.prefix, nets))
    assert len(pieces) == len(nets) + 2                 # head, one per network, tail
    for (name, _), (text, items) in zip(nets, pieces[1:-1]):
        assert text.startswith(f"\t# network {name}\n")
        assert {c.network for c in items()} == {name}


def test_fresh_refuses_two_networks_dispatched_by_one_key():
    rs = desired()
    (n1, r1), (n2, r2) = rs.by_network()[:2]
    clash = [r._replace(network=n2) for r in r1]     # n1's bridge under n2's name
    from vnetfw.errors import BackendError
    with pytest.raises(BackendError, match="would dispatch to both|is claimed by networks"):
        list(b.fresh(rs.prefix, [(n1, r1), (n2, clash)]))
    plain = [r for r in clash if not r.feature]
    with pytest.raises(BackendError, match="would dispatch to both"):
        list(b.fresh(rs.prefix, [(n1, r1), (n2, plain)]))
