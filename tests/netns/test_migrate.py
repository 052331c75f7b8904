"""``vnetfw migrate`` on a real kernel: old interleaved rules go, admin rules stay byte for byte,
and ``--adopt`` takes networks over from libvirt's LIBVIRT_* chains without a gap.

The old layout is replayed the way libvirt before 5.1 wrote it: for each network, in its
order, every rule ``--insert``ed at the top of INPUT/OUTPUT/FORWARD and nat/mangle
POSTROUTING. Two NAT networks started one after the other interleave (the second network's
block sits above the first's), with an admin's rules added before, between and after them.
The expected result is computed independently: the same sequence *without* the product
rules is replayed into a second namespace, and the migrated namespace must equal it once
vnetfw's own chains and jumps are left out. Everything is compared with the system's
``iptables-save``, never vnetfw's parser.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import nsrun, save
from vnetfw.engine import Engine
from vnetfw.errors import GuardError
from vnetfw.lab import matrix
from vnetfw.lab.topology import Lab
from vnetfw.migrate_run import migrate
from vnetfw.plan import PROFILES, plan
from vnetfw.backends.iptables import IptablesBackend
from vnetfw.backends.runner import Runner
from vnetfw.sources.toml import parse_toml

pytestmark = pytest.mark.netns
FLAVOURS = ["iptables-nft", "iptables-legacy"]

NETS_TOML = """
[[network]]
name = "default"
bridge = "virbr0"
mode = "nat"
ip = [{ address = "192.168.122.1", prefix = 24, dhcp = true }]

[[network]]
name = "second"
bridge = "virbr1"
mode = "nat"
ip = [{ address = "192.168.100.1", prefix = 24, dhcp = true },
      { address = "2001:db8:ca2:2::1", prefix = 64 }]
"""
NETS = parse_toml(NETS_TOML, "nets.toml")
DEFAULT, SECOND = NETS


def old_libvirt_commands(br: str, net4: str, net6: str | None) -> list[tuple[int, str, str, list[str]]]:
    """(family, table, chain, rule) in the order libvirt < 5.1 inserted them (each at the
    top of the chain) for a NAT network with DHCP; IPv6 subnets of a NAT network are
    routed."""
    ins = [
        (4, "filter", "INPUT", ["-i", br, "-p", "tcp", "--dport", "67", "-j", "ACCEPT"]),
        (4, "filter", "INPUT", ["-i", br, "-p", "udp", "--dport", "67", "-j", "ACCEPT"]),
        (4, "filter", "OUTPUT", ["-o", br, "-p", "udp", "--dport", "68", "-j", "ACCEPT"]),
        (4, "filter", "INPUT", ["-i", br, "-p", "tcp", "--dport", "53", "-j", "ACCEPT"]),
        (4, "filter", "INPUT", ["-i", br, "-p", "udp", "--dport", "53", "-j", "ACCEPT"]),
        (4, "filter", "FORWARD", ["-i", br, "-j", "REJECT"]),
        (4, "filter", "FORWARD", ["-o", br, "-j", "REJECT"]),
        (4, "filter", "FORWARD", ["-i", br, "-o", br, "-j", "ACCEPT"]),
    ]
    if net6:
        ins += [
            (6, "filter", "FORWARD", ["-i", br, "-j", "REJECT"]),
            (6, "filter", "FORWARD", ["-o", br, "-j", "REJECT"]),
            (6, "filter", "FORWARD", ["-i", br, "-o", br, "-j", "ACCEPT"]),
            (6, "filter", "INPUT", ["-i", br, "-p", "tcp", "--dport", "53", "-j", "ACCEPT"]),
            (6, "filter", "INPUT", ["-i", br, "-p", "udp", "--dport", "53", "-j", "ACCEPT"]),
            (6, "filter", "INPUT", ["-i", br, "-p", "udp", "--dport", "547", "-j", "ACCEPT"]),
        ]
    ins += [
        (4, "filter", "FORWARD", ["-s", net4, "-i", br, "-j", "ACCEPT"]),
        (4, "filter", "FORWARD", ["-d", net4, "-o", br, "-m", "conntrack", "--ctstate",
                                  "ESTABLISHED,RELATED", "-j", "ACCEPT"]),
        (4, "nat", "POSTROUTING", ["-s", net4, "!", "-d", net4, "-j", "MASQUERADE"]),
        (4, "nat", "POSTROUTING", ["-s", net4, "-p", "udp", "!", "-d", net4, "-j", "MASQUERADE",
                                   "--to-ports", "1024-65535"]),
        (4, "nat", "POSTROUTING", ["-s", net4, "-p", "tcp", "!", "-d", net4, "-j", "MASQUERADE",
                                   "--to-ports", "1024-65535"]),
        (4, "nat", "POSTROUTING", ["-s", net4, "-d", "255.255.255.255/32", "-j", "RETURN"]),
        (4, "nat", "POSTROUTING", ["-s", net4, "-d", "224.0.0.0/24", "-j", "RETURN"]),
    ]
    if net6:
        ins += [
            (6, "filter", "FORWARD", ["-s", net6, "-i", br, "-j", "ACCEPT"]),
            (6, "filter", "FORWARD", ["-d", net6, "-o", br, "-j", "ACCEPT"]),
        ]
    ins.append((4, "mangle", "POSTROUTING", ["-o", br, "-p", "udp", "--dport", "68", "-j",
                                             "CHECKSUM", "--checksum-fill"]))
    return ins


# An admin's rules; "I" = inserted at the top, "A" = appended. Some name virbr0/virbr1 or a
# managed subnet on purpose: none of them is exactly a rule libvirt wrote.
ADMIN_BEFORE = [
    (4, "filter", "A", "INPUT", ["-p", "tcp", "--dport", "22", "-j", "ACCEPT"]),
    (4, "filter", "A", "FORWARD", ["-i", "eth9", "-o", "eth8", "-j", "ACCEPT"]),
    (4, "nat", "A", "POSTROUTING", ["-o", "eth9", "-j", "MASQUERADE"]),
    (6, "filter", "A", "INPUT", ["-i", "virbr1", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"]),
]
ADMIN_BETWEEN = [
    # same bridge, different port
    (4, "filter", "I", "FORWARD", ["-i", "virbr0", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"]),
    # exactly a product rule's matches, but the admin's own comment
    (4, "filter", "I", "INPUT", ["-i", "virbr0", "-p", "udp", "--dport", "53", "-m", "comment",
                                 "--comment", "admin dns", "-j", "ACCEPT"]),
    # a product rule's matches with a different reject type
    (4, "filter", "A", "FORWARD", ["-o", "virbr0", "-j", "REJECT", "--reject-with",
                                   "icmp-host-prohibited"]),
    # the very old masquerade shape, also every how-to's NAT rule: stays
    (4, "nat", "A", "POSTROUTING", ["-s", "192.168.122.0/24", "-j", "MASQUERADE"]),
    # an old product rule of a network that is not being migrated
    (4, "filter", "I", "FORWARD", ["-i", "virbr9", "-j", "REJECT"]),
    # physdev: more matches than the product rule
    (4, "filter", "I", "FORWARD", ["-i", "virbr0", "-o", "virbr0", "-m", "physdev",
                                   "--physdev-is-bridged", "-j", "ACCEPT"]),
]
ADMIN_AFTER = [
    (4, "mangle", "A", "POSTROUTING", ["-o", "virbr0", "-p", "udp", "--dport", "67", "-j",
                                      "CHECKSUM", "--checksum-fill"]),
    (6, "filter", "I", "FORWARD", ["-s", "2001:db8:ca2:2::/64", "-i", "virbr1", "-p", "tcp",
                                   "-j", "ACCEPT"]),
]


def ipt(flavour: str, family: int) -> str:
    return ("iptables" if family == 4 else "ip6tables") + flavour.removeprefix("iptables")


def _run_admin(ns: str, flavour: str, rules) -> None:
    for fam, table, op, chain, args in rules:
        nsrun(ns, ipt(flavour, fam), "-t", table, f"-{op}", chain, *args)


def _run_old(ns: str, flavour: str, br: str, net4: str, net6: str | None) -> None:
    for fam, table, chain, args in old_libvirt_commands(br, net4, net6):
        nsrun(ns, ipt(flavour, fam), "-w", "-t", table, "-I", chain, *args)


def build_old_host(ns: str, flavour: str, products: bool = True) -> None:
    """The old interleaved layout of DEFAULT and SECOND (DEFAULT started twice, as after a
    libvirtd crash: its rules are there two times), with the admin's rules around them.
    ``products=False`` replays only the admin's rules, in the same order."""
    _run_admin(ns, flavour, ADMIN_BEFORE)
    if products:
        _run_old(ns, flavour, "virbr0", "192.168.122.0/24", None)
    _run_admin(ns, flavour, ADMIN_BETWEEN)
    if products:
        _run_old(ns, flavour, "virbr1", "192.168.100.0/24", "2001:db8:ca2:2::/64")
        _run_old(ns, flavour, "virbr0", "192.168.122.0/24", None)
    _run_admin(ns, flavour, ADMIN_AFTER)


def rule_lines(ns: str, flavour: str) -> collections.Counter:
    """Multiset of (family, table, '-A CHAIN ...') over both families."""
    out: collections.Counter = collections.Counter()
    for fam in (4, 6):
        table = None
        for line in nsrun(ns, f"{ipt(flavour, fam)}-save").splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith("-A "):
                out[(fam, table, line)] += 1
    return out


def without_ours(text: str) -> str:
    """``save`` output without vnetfw's chains and jumps, and without tables that hold no
    rule at all (vnetfw's setup instantiates e.g. ip6tables' mangle table; an empty table
    with ACCEPT policies is no rule of anyone's)."""
    out: list[str] = []
    block: list[str] = []
    for line in text.splitlines():
        if "VNETFW_" in line:
            continue
        if line.startswith("*"):
            block = [line]
            continue
        if block:
            block.append(line)
            if line == "COMMIT":
                if any(l.startswith("-A ") or (l.startswith(":") and " ACCEPT " not in l)
                       for l in block):
                    out += block
                block = []
            continue
        out.append(line)
    return "".join(l + "\n" for l in out)


def vnetfw(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VNETFW_")}
    p = subprocess.run([sys.executable, "-m", "vnetfw", *args], capture_output=True, text=True,
                       env=env)
    if check and p.returncode != 0:
        raise AssertionError(f"vnetfw {' '.join(args)} -> {p.returncode}: {p.stderr}")
    return p


@pytest.fixture
def nets_file(tmp_path):
    p = tmp_path / "nets.toml"
    p.write_text(NETS_TOML)
    return str(p)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_dry_run_lists_exactly_the_old_rules_and_changes_nothing(make_netns, flavour, tmp_path,
                                                                 nets_file):
    ns, ref = make_netns("m"), make_netns("ref")
    build_old_host(ns, flavour)
    build_old_host(ref, flavour, products=False)
    product = rule_lines(ns, flavour) - rule_lines(ref, flavour)
    assert sum(product.values()) == 2 * 16 + 16 + 8      # default twice, second v4 + v6
    before = save(ns, flavour)
    common = ["--backend", flavour, "--netns", ns, "--state-dir", str(tmp_path / "st")]
    out = json.loads(vnetfw("migrate", "--dry-run", "--json", nets_file, *common).stdout)
    got = collections.Counter((int(d["family"][3]), d["table"], d["rule"])
                              for d in out["deleted"])
    assert got == product
    assert all(d["flavour"] == flavour and d["origin"] == "libvirt" for d in out["deleted"])
    # the rules that name a managed bridge or subnet but stay are shown as kept
    kept = {k["rule"] for k in out["kept"]}
    assert "-A INPUT -i virbr0 -p udp -m udp --dport 53 -m comment --comment \"admin dns\" " \
           "-j ACCEPT" in kept
    assert "-A POSTROUTING -s 192.168.122.0/24 -j MASQUERADE" in kept
    assert out["dry_run"] and not out["applied"]
    assert save(ns, flavour) == before, "--dry-run changed the firewall"
    assert not (tmp_path / "st" / "state.json").exists()
    # the human form prints each rule to delete, exactly as iptables-save does
    text = vnetfw("migrate", "--dry-run", nets_file, *common).stdout
    for (_fam, _table, line) in product:
        assert line in text
    assert "dry run: nothing was changed" in text
    assert save(ns, flavour) == before


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_migrate_removes_only_old_product_rules(make_netns, flavour, tmp_path):
    ns, ref = make_netns("m"), make_netns("ref")
    build_old_host(ns, flavour)
    build_old_host(ref, flavour, products=False)
    admin_only = save(ref, flavour)
    rep = migrate(NETS, backend=flavour, netns=ns, state_dir=tmp_path / "st")
    assert not rep.dry_run and len(rep.deleted) == 56
    assert [fr.flavour for fr in rep.flavours if fr.atomic] == [flavour]
    after = save(ns, flavour)
    # every admin rule is there, byte for byte and in the same order; nothing else but ours
    assert without_ours(after) == admin_only
    # vnetfw's chains hold exactly the planned rules of both networks
    eng = Engine(backend=flavour, netns=ns, state_dir=tmp_path / "st")
    assert eng.check() == []
    live = IptablesBackend(Runner(ns), flavour)
    assert live.live_ruleset(live.read(), "VNETFW") == plan(NETS, PROFILES["default"])
    # a second migrate finds nothing and changes nothing
    rep2 = migrate(NETS, backend=flavour, netns=ns, state_dir=tmp_path / "st")
    assert rep2.deleted == [] and rep2.apply.changes == []
    assert save(ns, flavour) == after


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_migrate_is_one_restore_per_family(netns, flavour, tmp_path, monkeypatch):
    """No window without filtering: vnetfw's chains, jumps and rules and the deletion of the
    old rules load in a single iptables-restore per family (each table one COMMIT)."""
    build_old_host(netns, flavour)
    calls: list[list[str]] = []
    real = Runner.run

    def spy(self, argv, stdin=None, **kw):
        calls.append(list(argv))
        return real(self, argv, stdin, **kw)

    monkeypatch.setattr(Runner, "run", spy)
    migrate(NETS, backend=flavour, netns=netns, state_dir=tmp_path / "st")
    writes = [c[0] for c in calls if "restore" in c[0]]
    mid = flavour.removeprefix("iptables")
    assert writes == [f"iptables{mid}-restore", f"ip6tables{mid}-restore"]


def test_an_incomplete_undo_in_the_other_flavour_is_not_called_nothing(make_netns, tmp_path,
                                                                        monkeypatch):
    """The second step (old rules in the other flavour) fails and its undo is incomplete:
    the error says so, and does not claim that nothing was removed or invite a retry."""
    from vnetfw.errors import RollbackIncomplete
    ns = make_netns("m")
    build_old_host(ns, "iptables-legacy")
    real = IptablesBackend.commit

    def commit(self, live, changes):
        if self.name == "iptables-legacy":
            raise RollbackIncomplete("iptables-legacy: change failed and was rolled back: "
                                     "x; ROLLBACK INCOMPLETE: ipv4 filter: y")
        return real(self, live, changes)
    monkeypatch.setattr(IptablesBackend, "commit", commit)
    with pytest.raises(RollbackIncomplete) as e:
        migrate(NETS, backend="iptables-nft", netns=ns, state_dir=tmp_path / "st")
    assert "Nothing of them was removed" not in str(e.value)


def test_a_ctrl_c_during_the_first_step_lets_the_second_run(make_netns, tmp_path,
                                                              monkeypatch):
    """migrate onto nftables with old rules in iptables-nft: a Ctrl-C while the first step
    (vnetfw's own table) commits is held back until the second step (deleting the old
    rules) is done too; then the interrupt."""
    import signal
    from vnetfw.backends.nftables import NftablesBackend
    ns = make_netns("m")
    build_old_host(ns, "iptables-nft")
    before = save(ns, "iptables-nft")
    real = NftablesBackend.generation_after

    def pressed(self, *a):
        os.kill(os.getpid(), signal.SIGINT)
        return real(self, *a)
    monkeypatch.setattr(NftablesBackend, "generation_after", pressed)
    steps = []
    real_commit = IptablesBackend.commit

    def second(self, live, cs):
        steps.append(self.name)
        return real_commit(self, live, cs)
    monkeypatch.setattr(IptablesBackend, "commit", second)
    with pytest.raises(KeyboardInterrupt):
        migrate(NETS, backend="nftables", netns=ns, state_dir=tmp_path / "st")
    assert steps == ["iptables-nft"] and save(ns, "iptables-nft") != before


def test_old_rules_in_the_other_flavour_go_after_the_new_rules(make_netns, tmp_path):
    """vnetfw writes with iptables-nft, the old rules live in iptables-legacy: they are
    removed in a second step, after vnetfw's rules are in place."""
    ns, ref = make_netns("m"), make_netns("ref")
    build_old_host(ns, "iptables-legacy")
    build_old_host(ref, "iptables-legacy", products=False)
    rep = migrate(NETS, backend="iptables-nft", netns=ns, state_dir=tmp_path / "st")
    by = {fr.flavour: fr for fr in rep.flavours}
    assert not by["iptables-legacy"].atomic and len(by["iptables-legacy"].findings.deleted) == 56
    assert by["iptables-nft"].findings.deleted == []
    assert save(ns, "iptables-legacy") == save(ref, "iptables-legacy")
    assert "VNETFW_FWI" in save(ns, "iptables-nft")


def test_failed_migrate_leaves_everything_as_it_was(netns, tmp_path, monkeypatch):
    flavour = "iptables-nft"
    build_old_host(netns, flavour)
    before = save(netns, flavour)
    real = IptablesBackend.script

    def broken(self, changes, family):
        text = real(self, changes, family)
        if family == 6:             # ipv4 has committed by then; it must be rolled back
            text = text.replace("COMMIT\n", "-A VNETFW_FWO -j NO_SUCH_TARGET\nCOMMIT\n", 1)
        return text

    monkeypatch.setattr(IptablesBackend, "script", broken)
    from vnetfw.errors import BackendError
    with pytest.raises(BackendError, match="rolled back"):
        migrate(NETS, backend=flavour, netns=netns, state_dir=tmp_path / "st")
    monkeypatch.undo()
    after = save(netns, flavour)
    # byte-identical, except that a table the restore created stays, empty (the backend's
    # documented rollback: iptables-legacy cannot unload a table)
    assert "VNETFW" not in after
    assert without_ours(after) == without_ours(before)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_migrate_closes_the_old_layouts_cross_network_leak(flavour, tmp_path):
    """Traffic, not just rules: in the old interleaved layout the network started last has
    its "allow out" above the other network's "reject in", so its guests open connections
    into the other network. After migrate the whole policy matrix holds."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with Lab(NETS, guests=1) as lab:
        hv = lab.require_hv().name
        build_old_host(hv, flavour)
        before = matrix.run(lab, "default")
        leak = [r for r in before.mismatches if r.src.startswith("default/")
                and r.dst.startswith("second/") and r.observed.reached]
        assert leak, "expected the old interleaved layout to leak default -> second\n" + \
            before.explain()
        migrate(NETS, backend=flavour, netns=hv, state_dir=tmp_path / "st")
        after = matrix.run(lab, "default")
        assert after.ok, after.explain()


# ---------------------------------------------------------------------------------------
# --adopt: from libvirt's LIBVIRT_* layout (libvirt >= 5.1)


def libvirt_layout(ns: str, flavour: str, nets) -> None:
    """What libvirt >= 5.1 leaves: its chains and rules (the libvirt profile's, which the
    conformance tests hold to libvirt's reference output), without vnetfw's comments."""
    b = IptablesBackend(Runner(ns), flavour)
    text4 = b.render(plan(nets, PROFILES["libvirt"]), 4)
    text6 = b.render(plan(nets, PROFILES["libvirt"]), 6)
    import re
    strip = re.compile(r' -m comment --comment (?:"[^"]*"|\S+)')
    for fam, text in ((4, text4), (6, text6)):
        nsrun(ns, f"{ipt(flavour, fam)}-restore", "--noflush", stdin=strip.sub("", text))


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_adopt_one_of_two_libvirt_networks(make_netns, flavour, tmp_path):
    ns, ref = make_netns("a"), make_netns("ref")
    libvirt_layout(ns, flavour, NETS)
    _run_admin(ns, flavour, ADMIN_BEFORE)
    libvirt_layout(ref, flavour, [SECOND])      # what libvirt has left after the adopt
    _run_admin(ref, flavour, ADMIN_BEFORE)
    dry = migrate([DEFAULT], adopt=True, dry_run=True, backend=flavour, netns=ns,
                  state_dir=tmp_path / "st")
    assert {d.chain for d in dry.deleted} >= {"LIBVIRT_FWI", "LIBVIRT_PRT", "LIBVIRT_INP"}
    assert {d.network for d in dry.deleted} == {"default"}
    assert len(dry.deleted) == len([r for r in plan([DEFAULT], PROFILES["libvirt"]).rules])
    rep = migrate([DEFAULT], adopt=True, backend=flavour, netns=ns, state_dir=tmp_path / "st")
    assert len(rep.deleted) == len(dry.deleted)
    after = save(ns, flavour)
    # libvirt's rules for 'second' are untouched, in their chains, in their order; only the
    # FORWARD jumps differ (vnetfw's FWO now sits after libvirt's FWX and FWI)
    want = save(ref, flavour)
    strip = lambda t: [l for l in without_ours(t).splitlines()]  # noqa: E731
    assert strip(after) == strip(want)
    # the FORWARD order: every cross jump, then every incoming one, then every outgoing one
    fwd = [l.split()[-1] for l in after.splitlines() if l.startswith("-A FORWARD")]
    assert fwd[:6] == ["VNETFW_FWX", "LIBVIRT_FWX", "VNETFW_FWI", "LIBVIRT_FWI", "VNETFW_FWO",
                       "LIBVIRT_FWO"], fwd
    eng = Engine(backend=flavour, netns=ns, state_dir=tmp_path / "st")
    assert eng.check() == []
    # idempotent: nothing left to take over, nothing to move
    rep2 = migrate([DEFAULT], adopt=True, backend=flavour, netns=ns, state_dir=tmp_path / "st")
    assert rep2.deleted == [] and rep2.apply.changes == []
    assert save(ns, flavour) == after


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_adopt_everything_keeps_or_drops_libvirt_chains(make_netns, flavour, tmp_path):
    a, b = make_netns("keep"), make_netns("drop")
    for ns in (a, b):
        libvirt_layout(ns, flavour, NETS)
    rep = migrate(NETS, adopt=True, backend=flavour, netns=a, state_dir=tmp_path / "a")
    assert any("kept with their jumps" in n for n in rep.notes)
    sa = save(a, flavour)
    assert ":LIBVIRT_FWI" in sa and "-A LIBVIRT_" not in sa and "-j LIBVIRT_FWI" in sa
    rep = migrate(NETS, adopt=True, drop_libvirt_chains=True, backend=flavour, netns=b,
                  state_dir=tmp_path / "b")
    sb = save(b, flavour)
    assert "LIBVIRT" not in sb
    assert without_ours(sb).count("-A ") == 0


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_adopt_with_profile_libvirt(make_netns, flavour, tmp_path):
    ns = make_netns("lv")
    libvirt_layout(ns, flavour, NETS)
    # only one of two: vnetfw would own LIBVIRT_* and delete 'second's rules -> refused
    before = save(ns, flavour)
    with pytest.raises(GuardError, match="LIBVIRT"):
        migrate([DEFAULT], adopt=True, profile="libvirt", backend=flavour, netns=ns,
                state_dir=tmp_path / "st")
    assert save(ns, flavour) == before
    # both: libvirt's rules become vnetfw's, same chains, same order, one restore per family
    rep = migrate(NETS, adopt=True, profile="libvirt", backend=flavour, netns=ns,
                  state_dir=tmp_path / "st")
    assert len(rep.deleted) == len(plan(NETS, PROFILES["libvirt"]).rules)
    import re
    strip = re.compile(r' -m comment --comment (?:"[^"]*"|\S+)')
    assert strip.sub("", save(ns, flavour)) == strip.sub("", before)
    assert '--comment "vnetfw:default"' in save(ns, flavour)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_adopt_keeps_the_policy_for_both_networks_with_real_traffic(flavour, tmp_path):
    """libvirt runs both networks; vnetfw adopts one (in one restore per family, so there
    is no moment in between). Before and after, the full policy matrix holds -- including
    both directions between the adopted network and the one libvirt still runs, which
    needs vnetfw's FORWARD jumps placed around libvirt's (without that, the adopted nat
    network's guests reach the other network's guests)."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with Lab(NETS, guests=1) as lab:
        hv = lab.require_hv().name
        libvirt_layout(hv, flavour, NETS)
        assert matrix.run(lab, "libvirt").ok
        migrate([DEFAULT], adopt=True, backend=flavour, netns=hv, state_dir=tmp_path / "st")
        res = matrix.run(lab, "default")
        assert res.ok, res.explain()
