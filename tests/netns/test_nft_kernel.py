"""nftables backend on the real kernel: round trip, idempotence, O(changed), atomicity, and
never touching anything but vnetfw's own table.

Each test gets a fresh network namespace (tests/conftest.py). The backend is driven directly
(read -> changes -> commit); the kernel's state is checked with the system's own ``nft``
and ``iptables-nft-save``, so nothing here trusts vnetfw's parser alone.
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
from pathlib import Path

import pytest

from tests.conftest import nsrun, save
from vnetfw.backends.nftables import NftablesBackend
from vnetfw.backends.runner import FEED_PATH, Runner
from vnetfw.errors import BackendError
from vnetfw.model import IPBlock, Mode, Nat, Network
from vnetfw.plan import PROFILES, plan
from vnetfw.ruleset import Ruleset
from vnetfw.sources import load_paths

pytestmark = pytest.mark.netns

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "nft"
XML_CASES = sorted(p.stem for p in (FIX / "xml").glob("*.xml"))
MIXED = load_paths([FIX / "mixed.toml"])


def nft(ns: str, *args: str, stdin: str | None = None) -> str:
    return nsrun(ns, "nft", *args, stdin=stdin)


def ruleset(ns: str) -> str:
    return nft(ns, "list", "ruleset")


def sync(b: NftablesBackend, rs: Ruleset, scope: str = "full"):
    live = b.read()
    cs = b.changes(live, rs, scope)
    b.commit(live, cs)
    return cs


def teardown(b: NftablesBackend, prefix: str):
    live = b.read()
    cs = b.changes(live, None, "teardown", prefix=prefix)
    b.commit(live, cs)
    return cs


def assert_in_sync(b: NftablesBackend, rs: Ruleset) -> None:
    live = b.read()
    assert b.live_ruleset(live, rs.prefix) == b.effective(rs)
    again = b.changes(live, rs, "full")
    assert again.empty, [str(c) for c in again.items]


def chain_handles(ns: str, table: str = "vnetfw") -> dict[str, list[int]]:
    """chain name -> its handle followed by its rules' handles (unchanged = not rewritten)."""
    items = json.loads(nft(ns, "-j", "list", "table", "inet", table))["nftables"]
    out: dict[str, list[int]] = {}
    for o in items:
        if "chain" in o:
            out[o["chain"]["name"]] = [o["chain"]["handle"]]
        elif "rule" in o:
            out[o["rule"]["chain"]].append(o["rule"]["handle"])
    return out


@pytest.fixture
def b(netns) -> NftablesBackend:
    return NftablesBackend(Runner(netns=netns))


# ---------------------------------------------------------------------------------------------

def test_available_probe_creates_nothing(netns, b):
    assert b.available() is None
    assert ruleset(netns) == ""
    assert "not found" in NftablesBackend(Runner(netns=netns), nft="nft-missing").available()


@pytest.mark.parametrize("profile", ["default", "libvirt"])
@pytest.mark.parametrize("case", XML_CASES)
def test_reference_case_round_trip(netns, b, case, profile):
    """Load the plan of each libvirt reference XML; nft -j readback parses back to it."""
    rs = plan(load_paths([FIX / "xml" / f"{case}.xml"]), PROFILES[profile])
    cs = sync(b, rs)
    assert cs.payload == b.render(rs)
    assert_in_sync(b, rs)
    # the kernel's own listing: numeric ports, only our table
    text = ruleset(netns)
    assert re.findall(r"^table (\S+ \S+)", text, re.M) == [
        f"inet {'vnetfw' if profile == 'default' else 'vnetfw_libvirt'}"]
    assert not re.search(r"dport (domain|bootps|bootpc|tftp)", text)
    teardown(b, rs.prefix)
    assert ruleset(netns) == ""


def test_both_profiles_coexist_and_tear_down_separately(netns, b):
    default, libvirt = plan(MIXED, PROFILES["default"]), plan(MIXED, PROFILES["libvirt"])
    sync(b, default)
    sync(b, libvirt)
    assert_in_sync(b, default)
    assert_in_sync(b, libvirt)
    before = nft(netns, "list", "table", "inet", "vnetfw")
    cs = teardown(b, "LIBVIRT")
    assert cs.payload == "delete table inet vnetfw_libvirt\n"
    assert nft(netns, "list", "table", "inet", "vnetfw") == before
    assert_in_sync(b, default)


def three_nets() -> tuple[Network, ...]:
    def net(name, br, third, mode=Mode.NAT, v6=False):
        ips = (IPBlock(ipaddress.ip_address(f"10.20.{third}.1"), 24, dhcp=True),)
        if v6:
            ips += (IPBlock(ipaddress.ip_address(f"fd20:{third}::1"), 64),)
        return Network(name, mode, br, ips=ips, nat=Nat(ipv6=v6)).validated()
    return (net("alpha", "vb-a", 1, v6=True), net("beta.2", "vb-b", 2, Mode.ROUTE, v6=True),
            net("gam+ma", "vb-c", 3))


@pytest.mark.parametrize("victim", ["alpha", "beta.2", "gam+ma"])
def test_remove_one_of_three_touches_only_its_chains_and_elements(netns, b, victim):
    nets = three_nets()
    full = plan(nets, PROFILES["default"])
    sync(b, full)
    handles = chain_handles(netns)
    rest = plan([n for n in nets if n.name != victim], PROFILES["default"])

    live = b.read()
    cs = b.changes(live, rest, "full")
    enc = {"alpha": "alpha", "beta.2": "beta.2", "gam+ma": "gam_2bma"}[victim]
    bridge = next(n.bridge for n in nets if n.name == victim)
    subnets = [str(ip.subnet) for n in nets if n.name == victim for ip in n.ips]
    victim_chains = {c for c in handles if c.endswith(f"-{enc}")}
    for line in cs.payload.splitlines():
        if line.startswith(("flush chain", "delete chain")):
            assert line.split()[-1] in victim_chains, line
        elif line.startswith("\t") or line.startswith("delete element") and "{ " in line:
            assert f'"{bridge}"' in line or any(s in line for s in subnets), line
        else:
            assert line.startswith(("delete element", "}")), line
    b.commit(live, cs)
    assert_in_sync(b, rest)
    after = chain_handles(netns)
    assert set(after) == set(handles) - victim_chains
    assert all(after[c] == handles[c] for c in after), "another network's chain was rewritten"

    # putting it back only adds
    live = b.read()
    cs = b.changes(live, full, "full")
    assert not re.search(r"^(flush|delete)", cs.payload, re.M)
    b.commit(live, cs)
    assert_in_sync(b, full)
    assert all(chain_handles(netns)[c] == handles[c] for c in after)


ADMIN_NFT = """\
table inet admin {
\tset blocked { type ipv4_addr; elements = { 203.0.113.7 } }
\tchain input { type filter hook input priority -10; policy accept; ip saddr @blocked drop; }
\tchain forward { type filter hook forward priority 10; policy accept; iifname "eth9" counter accept; }
\tchain post { type nat hook postrouting priority 110; policy accept; oifname "eth9" masquerade; }
}
"""


def tables(text: str) -> dict[str, str]:
    """``nft list ruleset`` text -> {"family name": that table's exact text}."""
    blocks = re.split(r"^(?=table )", text, flags=re.M)
    return {" ".join(b.split()[1:3]): b for b in blocks if b.startswith("table ")}


def admin_firewall(ns: str) -> None:
    nft(ns, "-f", "-", stdin=ADMIN_NFT)
    for cmd in ("iptables-nft", "ip6tables-nft"):
        nsrun(ns, cmd, "-N", "ADMIN")
        nsrun(ns, cmd, "-A", "ADMIN", "-i", "eth7", "-j", "DROP")
        nsrun(ns, cmd, "-A", "FORWARD", "-i", "eth9", "-o", "eth8", "-j", "ACCEPT")
        nsrun(ns, cmd, "-A", "FORWARD", "-j", "ADMIN")
        nsrun(ns, cmd, "-t", "nat", "-A", "POSTROUTING", "-o", "eth9", "-j", "MASQUERADE")


def test_foreign_tables_and_rules_are_untouched(netns, b):
    admin_firewall(netns)
    whole_before = ruleset(netns)
    admin_before = nft(netns, "list", "table", "inet", "admin")
    ipt_before = save(netns, "iptables-nft")
    default, libvirt = plan(MIXED, PROFILES["default"]), plan(MIXED, PROFILES["libvirt"])

    def untouched():
        assert nft(netns, "list", "table", "inet", "admin") == admin_before
        assert save(netns, "iptables-nft") == ipt_before
        now = tables(ruleset(netns))
        assert set(now) == set(tables(whole_before)) | {"inet vnetfw", "inet vnetfw_libvirt"}
        assert {k: v for k, v in now.items() if "vnetfw" not in k} == tables(whole_before)

    sync(b, default)
    sync(b, libvirt)
    untouched()
    sync(b, plan(MIXED[:2], PROFILES["default"]))        # an update that removes networks
    untouched()
    teardown(b, "VNETFW")
    teardown(b, "LIBVIRT")
    assert ruleset(netns) == whole_before
    assert save(netns, "iptables-nft") == ipt_before


INVALID = 'add element inet vnetfw fwx { ipv4 . "zz0" : jump no-such-chain }\n'


@pytest.mark.parametrize("start", ["empty", "applied"])
def test_failing_transaction_changes_nothing(netns, b, start):
    admin_firewall(netns)
    nets = three_nets()
    if start == "applied":
        sync(b, plan(nets[:2], PROFILES["default"]))
    before = ruleset(netns)
    live = b.read()
    # add one network, remove another, change nothing else; then a bad element at the end,
    # which only the kernel refuses (the chain does not exist)
    cs = b.changes(live, plan(nets[1:], PROFILES["default"]), "full")
    assert re.search(r"^(add |\t)chain inet vnetfw |^\tchain \w+4-", cs.payload, re.M)
    cs.payload += INVALID
    with pytest.raises(BackendError, match="nothing was changed"):
        b.commit(live, cs)
    assert ruleset(netns) == before


# ---------------------------------------------------------------------------------------------
# A vacant firewall: the table is written into nft while the networks are still planned



def test_load_fresh_is_one_transaction_of_the_whole_plan(netns, b):
    admin_firewall(netns)
    rs = plan(MIXED, PROFILES["default"])
    live = b.read()
    assert b.vacant(live, rs.prefix)
    g0 = b.generation()
    cs = b.load_fresh(live, rs.prefix, iter(rs.by_network()))
    assert b.generation_after(cs, g0) is not None      # exactly one transaction, ours
    assert cs.items == b.changes(live, rs, "full").items
    assert_in_sync(b, rs)
    assert not b.vacant(b.read(), rs.prefix)


def test_load_fresh_that_fails_while_planning_loads_nothing(netns, b):
    """The planner (or a definition) fails after nft has read half the networks: nft is
    killed before its input ends, and nothing is loaded."""
    admin_firewall(netns)
    before = ruleset(netns)
    rs = plan(MIXED, PROFILES["default"])
    nets = rs.by_network()

    def planned():
        yield from nets[:3]
        time.sleep(0.2)                 # nft has parsed what it got by now
        raise RuntimeError("planning failed")
    with pytest.raises(RuntimeError, match="planning failed"):
        b.load_fresh(b.read(), rs.prefix, planned())
    assert ruleset(netns) == before


def test_a_cut_off_fresh_table_is_refused_whole(netns, b):
    """vnetfw killed while nft reads: the input ends inside the table block, which nft
    refuses as a syntax error, so nothing lands (the same happens at every cut point)."""
    admin_firewall(netns)
    before = ruleset(netns)
    rs = plan(MIXED, PROFILES["default"])
    pieces = [text for text, _ in b.fresh(rs.prefix, rs.by_network())]
    for cut in (1, len(pieces) // 2, len(pieces) - 1):
        feed = b.runner.feed(["nft", "-f", FEED_PATH])
        for text in pieces[:cut]:
            feed.write(text)
        with pytest.raises(BackendError, match="syntax error|end of file"):
            feed.finish()
        assert ruleset(netns) == before


def test_load_fresh_refused_by_the_kernel_changes_nothing(netns, b):
    """A rule the kernel refuses (masquerade outside a nat chain) in one network's piece:
    the whole table is refused, the networks before it included."""
    admin_firewall(netns)
    before = ruleset(netns)
    rs = plan(MIXED, PROFILES["default"])
    nets = rs.by_network()
    name, rules = nets[1]
    bad = [r._replace(verdict="MASQUERADE") if r.chain == "FWO" else r for r in rules]
    with pytest.raises(BackendError, match="nothing was changed"):
        b.load_fresh(b.read(), rs.prefix, [nets[0], (name, bad)] + nets[2:])
    assert ruleset(netns) == before


def test_failing_rule_in_the_middle_changes_nothing(netns, b, monkeypatch):
    """A rule the kernel refuses (masquerade in a filter-hook chain) in the middle of the
    script: everything before it is rolled back with it."""
    sync(b, plan(three_nets()[:1], PROFILES["default"]))
    before = ruleset(netns)
    live = b.read()
    cs = b.changes(live, plan(three_nets(), PROFILES["default"]), "full")
    lines = cs.payload.splitlines()
    k = next(i for i, l in enumerate(lines) if l.startswith("add rule inet vnetfw fwo4-"))
    lines.insert(k + 1, lines[k].split(" iifname")[0] + " masquerade")
    cs.payload = "\n".join(lines) + "\n"
    with pytest.raises(BackendError):
        b.commit(live, cs)
    assert ruleset(netns) == before


def test_foreign_things_inside_our_table_are_reported_and_removed(netns, b, make_netns):
    rs = plan(MIXED, PROFILES["default"])
    sync(b, rs)
    clean = nft(netns, "list", "table", "inet", "vnetfw")
    nft(netns, "insert", "rule", "inet", "vnetfw", "fwo4-route-a", "counter", "accept")
    nft(netns, "add", "element", "inet", "vnetfw", "fwx", '{ ipv4 . "eth9" : jump fwx4-iso }')
    live = b.read()
    cs = b.changes(live, rs, "full")
    assert sorted(str(c) for c in cs.items) == [
        'ipv4 inet vnetfw fwo4-route-a: delete rule \'counter accept\' (not written by vnetfw)  [route-a]',
        'ipv4 inet vnetfw map fwx: delete element ipv4 . "eth9" : jump fwx4-iso  [iso]']
    b.commit(live, cs)
    assert_in_sync(b, rs)
    assert nft(netns, "list", "table", "inet", "vnetfw") == clean

    # objects vnetfw never makes: the table is rebuilt, in one transaction
    nft(netns, "-f", "-", stdin="add chain inet vnetfw admin\n"
                                "add rule inet vnetfw admin counter accept\n"
                                "add set inet vnetfw s { type ipv4_addr; }\n"
                                "add counter inet vnetfw c\n"
                                "insert rule inet vnetfw forward jump admin\n")
    live = b.read()
    cs = b.changes(live, rs, "full")
    assert cs.payload.startswith("delete table inet vnetfw\n")
    shown = "\n".join(str(c) for c in cs.items)
    for what in ("foreign chain admin", "foreign set s", "foreign counter c",
                 "inet vnetfw forward: delete rule 'jump admin'"):
        assert what in shown
    b.commit(live, cs)
    assert_in_sync(b, rs)
    assert nft(netns, "list", "table", "inet", "vnetfw") == clean


def test_setup_creates_and_repairs_the_layout(netns, b):
    cs = sync(b, Ruleset("VNETFW"), "setup")
    assert not cs.empty
    text = ruleset(netns)
    assert set(re.findall(r"^\tchain (\S+)", text, re.M)) == {
        "input", "output", "forward", "postrouting", "prerouting", "natoutput",
        "admin_input", "admin_output", "admin_forward", "admin_postrouting",
        "admin_prerouting", "admin_natoutput"}
    assert sync(b, Ruleset("VNETFW"), "setup").empty
    rs = plan(MIXED, PROFILES["default"])
    sync(b, rs)
    # an admin edits our base chains
    nft(netns, "insert", "rule", "inet", "vnetfw", "forward", "iifname", "eth0", "accept")
    nft(netns, "add", "chain", "inet", "vnetfw", "input",
        "{ type filter hook input priority filter; policy drop; }")
    live = b.read()
    assert b.live_ruleset(live, "VNETFW") != b.effective(rs)   # drift is visible
    cs = b.changes(live, None, "setup", prefix="VNETFW")
    assert {c.what for c in cs.items} == {"delete", "add", "replace"}
    b.commit(live, cs)
    assert_in_sync(b, rs)          # base chains repaired; networks kept their chains/elements


def test_dormant_table_is_reactivated(netns, b):
    rs = plan(MIXED, PROFILES["default"])
    sync(b, rs)
    nft(netns, "add", "table", "inet", "vnetfw", "{ flags dormant; }")
    live = b.read()
    assert b.live_ruleset(live, "VNETFW").rules == ()
    b.commit(live, b.changes(live, rs, "full"))
    assert "dormant" not in nft(netns, "list", "table", "inet", "vnetfw")
    assert_in_sync(b, rs)


def thousand_nets(n: int = 1000) -> list[Network]:
    modes = (Mode.NAT, Mode.NAT, Mode.ROUTE, Mode.ISOLATED)
    nets = []
    for i in range(n):
        ips = (IPBlock(ipaddress.ip_address(f"10.{100 + i // 250}.{i % 250}.1"), 24, dhcp=True),
               IPBlock(ipaddress.ip_address(f"fd30:{i:x}::1"), 64))
        nets.append(Network(f"net-{i:04d}", modes[i % 4], f"vb{i}", ips=ips,
                            nat=Nat(ipv6=i % 8 == 0)).validated())
    return nets


def test_thousand_networks_in_one_transaction(netns, b):
    nets = thousand_nets()
    t0 = time.perf_counter()
    rs = plan(nets, PROFILES["default"])
    t1 = time.perf_counter()
    live = b.read()
    cs = b.changes(live, rs, "full")
    t2 = time.perf_counter()
    b.commit(live, cs)
    t3 = time.perf_counter()
    live = b.read()
    t4 = time.perf_counter()
    assert b.live_ruleset(live, "VNETFW") == b.effective(rs)
    assert b.changes(live, rs, "full").empty
    t5 = time.perf_counter()
    rest = plan(nets[:500] + nets[501:], PROFILES["default"])
    cs1 = b.changes(live, rest, "full")
    b.commit(live, cs1)
    t6 = time.perf_counter()
    n_chains = cs.payload.count("\n\tchain ")
    print(f"\n1000 networks: {len(rs.rules)} rules, {n_chains} chains, script "
          f"{len(cs.payload.splitlines())} lines; plan {t1 - t0:.2f}s, diff+render "
          f"{t2 - t1:.2f}s, nft -f (one transaction) {t3 - t2:.2f}s, read back "
          f"{t4 - t3:.2f}s, compare {t5 - t4:.2f}s; remove one: "
          f"{len(cs1.payload.splitlines())} lines, {t6 - t5:.2f}s incl. diff")
    assert cs.payload.count("table inet vnetfw {") == 1
    assert len(cs1.payload.splitlines()) < 60       # 11 chains flushed+deleted, 11 elements
    assert "net-0500" in cs1.payload and "net-0499" not in cs1.payload
