"""Engine behaviour on the real kernel: ownership, atomicity, setup repair, idempotence.

Each test gets a fresh network namespace; the firewall is read back with the system's own
``iptables-save``/``nft`` so nothing here trusts vnetfw's own parser.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import time

import pytest

from tests.conftest import blocks_by_name, nsrun, save
from vnetfw.backends.iptables import IptablesBackend, flavour_of
from vnetfw.engine import Engine
from vnetfw.errors import BackendError, RollbackIncomplete
from vnetfw.plan import PROFILES, plan
from vnetfw.sources.toml import parse_toml

FLAVOURS = ["iptables-nft", "iptables-legacy"]
ALL = FLAVOURS + ["nftables"]

NETS = parse_toml("""
[[network]]
name = "nat1"
bridge = "vbr-nat1"
mode = "nat"
nat = { ipv6 = true }
ip = [{ address = "10.10.1.1", prefix = 24, dhcp = true },
      { address = "fd00:10:1::1", prefix = 64 }]
[[network]]
name = "routed"
bridge = "vbr-route"
mode = "route"
ip = [{ address = "10.10.2.1", prefix = 24 }]
[[network]]
name = "iso"
bridge = "vbr-iso"
mode = "isolated"
ip = [{ address = "10.10.3.1", prefix = 24 }]
""", "nets.toml")


def admin_rules(ns: str, flavour: str) -> None:
    """An admin's own firewall, in every table vnetfw touches, in both families."""
    mid = flavour.removeprefix("iptables")
    for fam, net in (("iptables", "203.0.113.0/24"), ("ip6tables", "2001:db8:99::/48")):
        cmd = f"{fam}{mid}"
        nsrun(ns, cmd, "-N", "ADMIN")
        nsrun(ns, cmd, "-A", "ADMIN", "-s", net, "-j", "DROP")
        nsrun(ns, cmd, "-A", "INPUT", "-j", "ADMIN")
        nsrun(ns, cmd, "-A", "FORWARD", "-i", "eth9", "-o", "eth8", "-j", "ACCEPT")
        nsrun(ns, cmd, "-t", "nat", "-A", "POSTROUTING", "-o", "eth9", "-j", "MASQUERADE")
        nsrun(ns, cmd, "-t", "mangle", "-A", "POSTROUTING", "-o", "eth9", "-j", "RETURN")


def admin_everywhere(ns: str, backend: str) -> None:
    """Admin rules for ``backend``; for nftables both an admin nft table and iptables-nft
    rules (a FORWARD rule and an ADMIN chain), as on a host where Docker or an admin uses
    iptables-nft next to vnetfw's own table."""
    if backend != "nftables":
        admin_rules(ns, backend)
        return
    admin_rules(ns, "iptables-nft")
    nsrun(ns, "nft", "-f", "-", stdin="\n".join([
        "table inet admin {",
        "  chain input {",
        "    type filter hook input priority -10; policy accept;",
        "    tcp dport 22 accept",
        "  }",
        "  chain admin_forward {",  # not "fwd": a keyword in nft
        "    type filter hook forward priority 10; policy accept;",
        '    iifname "eth9" counter',
        "  }",
        "}", ""]))



def without_ours(text: str, prefix: str = "VNETFW") -> str:
    return "".join(l + "\n" for l in text.splitlines() if f"{prefix}_" not in l)


def snapshot(ns: str, backend: str) -> str:
    """The whole firewall of ``ns`` as the system's own tools print it."""
    if backend == "nftables":
        return nsrun(ns, "nft", "list", "ruleset")
    return save(ns, backend)


def foreign_view(ns: str, backend: str) -> str:
    """Everything in ``ns`` that is not vnetfw's: its jumps and chains (iptables) or its
    table (nftables) left out."""
    if backend != "nftables":
        return without_ours(save(ns, backend))
    text, out, skip = snapshot(ns, backend), [], False
    for line in text.splitlines():
        if line.startswith("table inet vnetfw"):
            skip = True
        elif skip and line == "}":
            skip = False
            continue
        if not skip:
            out.append(line)
    return "\n".join(out) + "\n"


def engine(ns: str, flavour: str, tmp_path, **kw) -> Engine:
    kw.setdefault("hooks_dir", tmp_path / "no-hooks")   # never the host's hooks
    return Engine(backend=flavour, netns=ns, state_dir=tmp_path / "state", **kw)


@pytest.mark.parametrize("flavour", ALL)
def test_foreign_rules_untouched_by_apply_and_teardown(netns, flavour, tmp_path):
    admin_everywhere(netns, flavour)
    before = snapshot(netns, flavour)
    before_ipt = save(netns)
    eng = engine(netns, flavour, tmp_path)
    rep = eng.apply(NETS)
    assert rep.changed
    during = snapshot(netns, flavour)
    assert during != before
    assert foreign_view(netns, flavour) == before, "a foreign rule or chain was changed"
    # the admin's INPUT rule is still there
    assert "-A INPUT -j ADMIN" in save(netns, "iptables-nft" if flavour == "nftables" else flavour)
    if flavour == "nftables":
        assert save(netns) == before_ipt, "the nftables backend touched iptables-nft's tables"
    eng.teardown()
    assert snapshot(netns, flavour) == before, "teardown left something or removed foreign rules"


@pytest.mark.parametrize("flavour", ALL)
def test_second_apply_changes_nothing(netns, flavour, tmp_path):
    eng = engine(netns, flavour, tmp_path)
    assert eng.apply(NETS).changed
    snap = snapshot(netns, flavour)
    rep = eng.apply(NETS)
    assert not rep.changed and rep.changes == []
    assert snapshot(netns, flavour) == snap
    # the live firewall reads back as exactly the plan
    st = eng.status()
    assert st["in_sync"] and st["drift"] == []
    assert [n["name"] for n in st["networks"]] == ["iso", "nat1", "routed"]


@pytest.mark.parametrize("flavour", ALL)
def test_apply_one_by_one_equals_all_at_once(make_netns, flavour, tmp_path):
    a, b = make_netns("a"), make_netns("b")
    engine(a, flavour, tmp_path / "a").apply(NETS)
    eb = engine(b, flavour, tmp_path / "b")
    for net in reversed(NETS):
        eb.apply([net])
    if flavour == "nftables":   # element order in a listing follows insertion: compare sets
        assert sorted(snapshot(a, flavour).splitlines()) == sorted(snapshot(b, flavour).splitlines())
    else:
        # The same rules, each network's block whole and in its own order; the blocks stand
        # in the order they were applied (appended), which no packet can tell apart.
        assert network_blocks(save(a, flavour)) == network_blocks(save(b, flavour))
        order = [n.name for n in reversed(NETS)]
        assert network_order(save(b, flavour)) == {c: [n for n in order if n in nets]
                                                  for c, nets in network_order(save(a, flavour)).items()}


def network_blocks(saved: str) -> dict[tuple[str, str, str], list[str]]:
    """(family table, chain, network) -> that network's rules in the chain, in order."""
    out: dict[tuple[str, str, str], list[str]] = {}
    fam = table = ""
    for line in saved.splitlines():
        if line.startswith("## "):
            fam = line[3:]
        elif line.startswith("*"):
            table = f"{fam} {line[1:]}"
        elif line.startswith("-A ") and "vnetfw:" in line:
            chain = line.split()[1]
            net = line.split('"vnetfw:')[1].split('"')[0]
            out.setdefault((table, chain, net), []).append(line)
    return out


def network_order(saved: str) -> dict[tuple[str, str], list[str]]:
    """(table, chain) -> networks in the order their blocks stand."""
    out: dict[tuple[str, str], list[str]] = {}
    for table, chain, net in network_blocks(saved):
        out.setdefault((table, chain), []).append(net)
    return out


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("fail_family", [4, 6])
def test_failed_apply_leaves_ruleset_byte_identical(netns, flavour, fail_family, tmp_path,
                                                    monkeypatch):
    admin_rules(netns, flavour)
    eng = engine(netns, flavour, tmp_path)
    routed = [n for n in NETS if n.name == "routed"]
    eng.apply(routed)                   # something of ours is live already (filter only)
    before = save(netns, flavour)
    real_script = IptablesBackend.script

    def broken_script(self, changes, family):
        text = real_script(self, changes, family)
        if family != fail_family:
            return text
        # Corrupt the *second* table of this family's restore: the first one has already
        # been committed by iptables-restore when the second fails.
        parts = text.split("COMMIT\n")
        assert len(parts) >= 3, "expected at least two tables in the restore"
        parts[1] += "-A VNETFW_PRT -j NO_SUCH_TARGET\n"
        return "COMMIT\n".join(parts)

    monkeypatch.setattr(IptablesBackend, "script", broken_script)
    undone = []
    real_undo = IptablesBackend._undo_appends
    monkeypatch.setattr(IptablesBackend, "_undo_appends",
                        lambda self, *a: undone.append(real_undo(self, *a)) or undone[-1])
    with pytest.raises(BackendError, match="rolled back"):
        eng.apply(NETS)
    # First the appends computed without a readback were undone (the next attempt read the
    # firewall after that undo: any leftover would have been its snapshot), then the full
    # change failed the same way and was undone where it wrote.
    assert undone == [[]], "the change from vnetfw's last commit was not tried first"
    assert save(netns, flavour) == before
    monkeypatch.undo()
    # the state did not record the failed networks
    assert [n.name for n in eng.list_networks()] == ["routed"]


def _broken_second_table(real_script, fam: int, meanwhile=lambda: None):
    """``IptablesBackend.script`` whose ``fam`` script fails in its second table (the first
    commits), after running ``meanwhile`` (called right before the restore)."""
    def script(self, changes, family):
        text = real_script(self, changes, family)
        if family != fam or not text:
            return text
        meanwhile()
        parts = text.split("COMMIT\n")
        parts[1] += "-A VNETFW_PRT -j NO_SUCH_TARGET\n"
        return "COMMIT\n".join(parts)
    return script


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_failed_change_is_undone_where_it_wrote_and_nowhere_else(netns, flavour, tmp_path,
                                                                 monkeypatch):
    """A change to a firewall that already holds vnetfw's chains fails after its filter
    table committed. The undo reverses what it wrote there, not the whole table back to the
    snapshot it was diffed against: rules someone inserted meanwhile (in the committed
    table and in the failed one) survive, and so do counters that traffic moved meanwhile;
    everything else is as it was."""
    admin_rules(netns, flavour)
    cmd = "iptables" + flavour.removeprefix("iptables")
    nsrun(netns, cmd, "-I", "OUTPUT", "-o", "lo", "-j", "ACCEPT")
    nsrun(netns, "ip", "link", "set", "lo", "up")
    engine(netns, flavour, tmp_path).apply([n for n in NETS if n.name == "routed"])
    before = save(netns, flavour)
    b = IptablesBackend(eng_runner(netns), flavour=flavour)
    live = b.read()
    cs = b.changes(live, plan(NETS, PROFILES["default"]), "full")

    def meanwhile():
        nsrun(netns, cmd, "-I", "FORWARD", "1", "-s", "198.51.100.7", "-j", "DROP")
        nsrun(netns, cmd, "-t", "nat", "-A", "POSTROUTING", "-o", "eth7", "-j", "RETURN")
        nsrun(netns, sys.executable, "-c", "import socket; socket.socket(socket.AF_INET, "
              "socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', 9))")
    monkeypatch.setattr(IptablesBackend, "script",
                        _broken_second_table(IptablesBackend.script, 4, meanwhile))
    with pytest.raises(BackendError, match="rolled back") as err:
        b.commit(live, cs)
    assert not isinstance(err.value, RollbackIncomplete)
    after = save(netns, flavour)
    theirs = ["-A FORWARD -s 198.51.100.7/32 -j DROP", "-A POSTROUTING -o eth7 -j RETURN"]
    assert all(line in after.splitlines() for line in theirs), after
    policy_counts = re.compile(r"^(:\S+ \S+) \[\d+:\d+\]$", re.M)   # legacy prints them
    assert policy_counts.sub(r"\1", "".join(l + "\n" for l in after.splitlines()
                                            if l not in theirs)) == policy_counts.sub(r"\1", before)
    counted = nsrun(netns, f"{cmd}-save", "-c", "-t", "filter")
    packets = re.search(r"^\[(\d+):\d+\] -A OUTPUT -o lo -j ACCEPT$", counted, re.M)
    assert packets and int(packets[1]) > 0, counted


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("how", ["refused", "never started"])
def test_a_change_refused_because_someone_made_it_first_puts_nothing_back(
        netns, flavour, how, monkeypatch):
    """The race a migration meets: its restore deletes libvirt's rules by their text, but
    libvirt deleted two of them itself first, so the restore fails there and commits
    nothing. The table now looks as if the change had committed; iptables' error names
    the line, and vnetfw puts back none of what libvirt deleted. The same if the restore
    never started at all (the tool missing, the namespace not entered)."""
    from vnetfw.backends import ChangeSet
    from vnetfw.backends.iptables import TableEdit
    from vnetfw.backends.runner import NotStarted, Runner
    cmd = "iptables" + flavour.removeprefix("iptables")
    rules = [["-s", "192.168.100.0/24", "-i", "virbr1", "-j", "ACCEPT"],
             ["-i", "virbr1", "-o", "virbr1", "-j", "ACCEPT"],
             ["-i", "virbr0", "-o", "virbr0", "-j", "ACCEPT"]]
    nsrun(netns, cmd, "-N", "LIBVIRT_FWX")
    for r in rules:
        nsrun(netns, cmd, "-A", "LIBVIRT_FWX", *r)
    b = IptablesBackend(eng_runner(netns), flavour=flavour)
    live = b.read()
    cs = ChangeSet([], {4: {"filter": TableEdit(lines=[
        "-D LIBVIRT_FWX " + " ".join(r) for r in rules[:2]])}})
    for r in rules[:2]:                 # libvirt, first
        nsrun(netns, cmd, "-D", "LIBVIRT_FWX", *r)
    after_libvirt = save(netns, flavour)
    if how == "never started":
        real_run = Runner.run

        def run(self, argv, stdin=None, **kw):
            if argv[0].endswith("-restore") and "-c" not in argv:
                raise NotStarted(f"{argv[0]}: command not found")
            return real_run(self, argv, stdin, **kw)
        monkeypatch.setattr(Runner, "run", run)
    with pytest.raises(BackendError, match="rolled back"):
        b.commit(live, cs)
    assert save(netns, flavour) == after_libvirt


@pytest.mark.parametrize("flavour", ALL)
@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_during_a_commit_finishes_and_records_it_or_stops_at_once(
        netns, flavour, presses, tmp_path, monkeypatch, capsys):
    """One Ctrl-C while the change commits: vnetfw finishes it, records it, runs its hooks,
    then stops (KeyboardInterrupt): the state and the firewall agree. A second one stops
    at once: nothing of the change is committed, recorded or hooked. Either way check
    finds no drift."""
    import signal
    hooks, log = tmp_path / "hooks.d", tmp_path / "hooked"
    hooks.mkdir()
    (hooks / "10-log").write_text(f'#!/bin/sh\necho "$1 $2" >> {log}\n')
    (hooks / "10-log").chmod(0o755)
    eng = engine(netns, flavour, tmp_path, hooks_dir=hooks)
    eng.apply([n for n in NETS if n.name == "routed"])
    log.unlink()
    cls = type(eng.backend_for(eng.store.load()))
    real = cls.commit

    def commit(self, live, changes):
        for _ in range(presses):
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, live, changes)
    monkeypatch.setattr(cls, "commit", commit)
    with pytest.raises(KeyboardInterrupt):
        eng.apply(NETS)
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert "finishing the change in progress" in capsys.readouterr().err
    names = [n.name for n in eng.list_networks()]
    assert names == (sorted(n.name for n in NETS) if presses == 1 else ["routed"])
    assert eng.check() == []
    assert log.exists() is (presses == 1)


@pytest.mark.parametrize("flavour", ALL)
def test_ctrl_c_during_a_commit_that_is_refused_stops_at_once(netns, flavour, tmp_path,
                                                              monkeypatch):
    """Ctrl-C while a commit runs that then fails and is undone: nothing has changed, so
    vnetfw stops there, instead of reading, planning and committing again first."""
    import signal
    eng = engine(netns, flavour, tmp_path)
    eng.apply([n for n in NETS if n.name == "routed"])
    before = snapshot(netns, flavour)
    cls = type(eng.backend_for(eng.store.load()))
    calls = []

    def refused(self, live, changes):
        calls.append(1)
        os.kill(os.getpid(), signal.SIGINT)
        raise BackendError(f"{flavour}: change failed and was rolled back: simulated")
    monkeypatch.setattr(cls, "commit", refused)
    with pytest.raises(KeyboardInterrupt):
        eng.apply(NETS)
    assert calls == [1] and snapshot(netns, flavour) == before
    monkeypatch.undo()
    assert [n.name for n in eng.list_networks()] == ["routed"]


@pytest.mark.parametrize("flavour", ["nftables", "iptables-nft"])
def test_ctrl_c_while_a_vacant_load_still_plans_stops_it_at_once(netns, flavour, tmp_path):
    """Into a vacant firewall networks are loaded while they are planned; a Ctrl-C before
    the last one is planned stops at once (nothing is committed yet): nothing loaded,
    nothing recorded."""
    import signal
    before = snapshot(netns, flavour)
    eng = engine(netns, flavour, tmp_path)

    def definitions():
        yield NETS[0]
        os.kill(os.getpid(), signal.SIGINT)
        yield from NETS[1:]
    with pytest.raises(KeyboardInterrupt):
        eng.apply(definitions())
    assert snapshot(netns, flavour) == before
    assert eng.list_networks() == []


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_interrupted_change_is_undone(netns, flavour, tmp_path, monkeypatch):
    """Ctrl-C after the IPv4 restore committed, before IPv6's: IPv4 is undone and the
    interrupt goes on up; the firewall is as it was."""
    from vnetfw.backends.runner import Runner
    admin_rules(netns, flavour)
    engine(netns, flavour, tmp_path).apply([n for n in NETS if n.name == "routed"])
    before = save(netns, flavour)
    b = IptablesBackend(eng_runner(netns), flavour=flavour)
    live = b.read()
    cs = b.changes(live, plan(NETS, PROFILES["default"]), "full")
    real_run = Runner.run

    def run(self, argv, stdin=None, **kw):
        if argv[0].startswith("ip6tables") and argv[0].endswith("-restore") \
                and "-c" not in argv:
            raise KeyboardInterrupt
        return real_run(self, argv, stdin, **kw)
    monkeypatch.setattr(Runner, "run", run)
    with pytest.raises(KeyboardInterrupt):
        b.commit(live, cs)
    assert save(netns, flavour) == before


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_setup_keeps_admin_rule_above_jumps(netns, flavour, tmp_path):
    mid = flavour.removeprefix("iptables")
    eng = engine(netns, flavour, tmp_path)
    assert eng.setup().changed
    nsrun(netns, f"iptables{mid}", "-I", "FORWARD", "1", "-s", "198.51.100.7", "-j", "DROP")
    nsrun(netns, f"iptables{mid}", "-I", "INPUT", "1", "-p", "tcp", "--dport", "22", "-j",
          "ACCEPT")
    snap = save(netns, flavour)
    rep = eng.setup()
    assert not rep.changed, rep.changes
    eng.apply(NETS)
    text = save(netns, flavour).split("## ip6tables")[0]
    fwd = [l for l in text.splitlines() if l.startswith("-A FORWARD")]
    assert fwd[0] == "-A FORWARD -s 198.51.100.7/32 -j DROP"
    assert [l.split("-j ")[1] for l in fwd[1:]] == ["VNETFW_FWX", "VNETFW_FWI", "VNETFW_FWO"]
    inp = [l for l in text.splitlines() if l.startswith("-A INPUT")]
    assert inp[0].startswith("-A INPUT -p tcp -m tcp --dport 22")
    assert snap.split("## ip6tables")[0].count("-A FORWARD") == text.count("-A FORWARD")


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_setup_repairs_jump_order(netns, flavour, tmp_path):
    mid = flavour.removeprefix("iptables")
    ipt = f"iptables{mid}"
    eng = engine(netns, flavour, tmp_path)
    eng.apply(NETS)
    nsrun(netns, ipt, "-I", "FORWARD", "2", "-i", "eth7", "-j", "ACCEPT")   # admin, mid-way
    # Someone deleted the FWI jump and re-inserted it at the top: FWI, FWX, admin, FWO.
    nsrun(netns, ipt, "-D", "FORWARD", "-m", "comment", "--comment", "vnetfw", "-j",
          "VNETFW_FWI")
    nsrun(netns, ipt, "-I", "FORWARD", "1", "-j", "VNETFW_FWI")
    rep = eng.setup()
    assert rep.changed
    assert any("FORWARD" in c.where for c in rep.changes)
    fwd = [l for l in save(netns, flavour).split("## ip6tables")[0].splitlines()
           if l.startswith("-A FORWARD")]
    targets = [l.split("-j ")[1] for l in fwd]
    assert [t for t in targets if t.startswith("VNETFW")] == ["VNETFW_FWX", "VNETFW_FWI",
                                                             "VNETFW_FWO"]
    assert "ACCEPT" in targets, "the admin rule was removed"
    assert not eng.setup().changed


@pytest.mark.parametrize("flavour", ALL)
def test_remove_deletes_only_that_network(netns, flavour, tmp_path):
    eng = engine(netns, flavour, tmp_path)
    eng.apply(NETS)
    rep = eng.remove(["routed"])
    assert rep.changed and all(c.network in ("routed", None) for c in rep.changes)
    text = snapshot(netns, flavour)
    mark = "-{}" if flavour == "nftables" else "vnetfw:{}"
    assert mark.format("routed") not in text
    assert mark.format("nat1") in text and mark.format("iso") in text
    assert eng.status()["in_sync"]


@pytest.mark.parametrize("flavour", ALL)
def test_dry_run_changes_nothing(netns, flavour, tmp_path):
    eng = engine(netns, flavour, tmp_path)
    before = snapshot(netns, flavour)
    rep = eng.apply(NETS, dry_run=True)
    assert rep.changed and not rep.applied
    assert snapshot(netns, flavour) == before
    assert eng.list_networks() == []


@pytest.mark.parametrize("src,dst", [("iptables-nft", "iptables-legacy"),
                                     ("iptables-legacy", "iptables-nft"),
                                     ("iptables-nft", "nftables"),
                                     ("nftables", "iptables-legacy")])
def test_switching_backend_moves_networks_in_one_command(netns, src, dst, tmp_path):
    admin_everywhere(netns, src)
    foreign = snapshot(netns, src)
    engine(netns, src, tmp_path).apply(NETS)
    eng = engine(netns, dst, tmp_path)
    rep = eng.reload()
    assert rep.backend == dst and rep.changed
    assert foreign_view(netns, src) == foreign, "old backend's rules not removed cleanly"
    if src != "nftables" and dst != "nftables":
        assert snapshot(netns, src) == foreign
    assert ("-nat1" if dst == "nftables" else "vnetfw:nat1") in snapshot(netns, dst)
    # the state now follows the new backend: auto keeps it
    assert Engine(netns=netns, state_dir=tmp_path / "state").status()["backend"] == dst
    assert Engine(netns=netns, state_dir=tmp_path / "state").check() == []


@pytest.mark.parametrize("flavour", ["iptables-nft", "nftables"])
def test_profile_switch_with_the_same_prefix_replans_every_network(netns, flavour, tmp_path):
    """Another profile under the same prefix changes every network's rules: neither the
    unchanged generation nor the unchanged definitions may let the engine skip them."""
    eng = engine(netns, flavour, tmp_path)
    eng.apply(NETS)
    lib = engine(netns, flavour, tmp_path, profile="libvirt", prefix="VNETFW")
    added = [n for n in NETS if n.name == "iso"]
    assert lib.apply(NETS).changed                         # same definitions
    b = lib.backend_for(lib.store.load())
    want = plan(NETS, PROFILES["libvirt"].with_prefix("VNETFW"))
    assert b.live_ruleset(b.read(), "VNETFW") == b.effective(want)
    eng2 = engine(netns, flavour, tmp_path)                # back, adding nothing new
    eng2.remove([added[0].name])
    eng2.apply(added)
    assert lib.check() == [] and eng2.check() == []


def test_profile_switch_moves_chains(netns, tmp_path):
    engine(netns, "iptables-nft", tmp_path).apply(NETS)
    eng = engine(netns, "iptables-nft", tmp_path, profile="libvirt")
    eng.reload()
    text = save(netns)
    assert "VNETFW_" not in text and "LIBVIRT_FWI" in text
    # without --profile, later commands keep the libvirt profile
    assert engine(netns, "iptables-nft", tmp_path).check() == []


@pytest.mark.parametrize("flavour", ALL)
def test_adding_a_network_reads_nothing_and_plans_only_it(make_netns, flavour, tmp_path,
                                                         monkeypatch):
    """While the generation proves the firewall is what vnetfw last committed, adding a
    network costs that network: no readback, no planning of the others. The result is what
    applying everything at once gives (iptables: the new block appended)."""
    import vnetfw.engine as engine_mod
    ns, ref = make_netns("a"), make_netns("ref")
    eng = engine(ns, flavour, tmp_path / "a")
    first, last = [n for n in NETS if n.name != "nat1"], [n for n in NETS if n.name == "nat1"]
    eng.apply(first)
    backend_cls = type(eng.backend_for(eng.store.load()))
    reads, planned = [], []
    real_read, real_plan, real_some = backend_cls.read, engine_mod.plan, engine_mod.plan_some
    monkeypatch.setattr(backend_cls, "read", lambda self: (self.runner.netns == ns
                                                           and reads.append(1)) or real_read(self))

    def spy_plan(nets, prof):
        nets = list(nets)
        planned.append(sorted(n.name for n in nets))
        return real_plan(nets, prof)

    def spy_some(names, nets, prof):
        names = list(names)
        planned.append(sorted(n for n in names if n in nets))
        return real_some(names, nets, prof)

    monkeypatch.setattr(engine_mod, "plan", spy_plan)
    monkeypatch.setattr(engine_mod, "plan_some", spy_some)
    rep = eng.apply(last)
    assert rep.changed and reads == [], "read the firewall although nothing had changed"
    assert planned and all(p in ([], ["nat1"]) for p in planned), planned
    assert all(c.network in (None, "nat1") for c in rep.changes)
    assert eng.store.load().generation is not None, "the commit was not verified"
    monkeypatch.setattr(engine_mod, "plan", real_plan)
    monkeypatch.setattr(engine_mod, "plan_some", real_some)
    engine(ref, flavour, tmp_path / "b").apply(NETS)
    if flavour == "nftables":
        assert sorted(snapshot(ns, flavour).splitlines()) == sorted(snapshot(ref, flavour).splitlines())
    else:
        assert blocks_by_name(save(ns, flavour)) == blocks_by_name(save(ref, flavour))
    assert eng.check() == [] and len(reads) == 0
    # Removing: nftables deletes the network's chains and elements without reading;
    # iptables must read (rule positions depend on every network before it).
    eng.remove(["routed"])
    assert len(reads) == (0 if flavour == "nftables" else 1)
    assert eng.check() == []


# Somebody else's change, unrelated to vnetfw, in what each backend's generation covers.
FOREIGN_CHANGE = {
    "nftables": ("nft", "add", "table", "inet", "somebody_else"),
    "iptables-nft": ("nft", "add", "table", "inet", "somebody_else"),
    "iptables-legacy": ("ip6tables-legacy", "-t", "mangle", "-N", "SOMEBODY_ELSE"),
}


@pytest.mark.parametrize("flavour", ALL)
def test_untouched_firewall_is_not_read_again(netns, flavour, tmp_path, monkeypatch):
    """While the generation has not moved since vnetfw's own verified commit (nf_tables'
    generation id; for iptables-legacy a fingerprint of its tables), the live firewall is
    exactly what vnetfw left: re-apply, check and status need no readback. Any change by
    anyone moves it, and the next command reads again."""
    eng = engine(netns, flavour, tmp_path)
    eng.apply(NETS)
    st = eng.store.load()
    assert st.generation is not None
    backend_cls = type(eng.backend_for(st))
    reads = []
    real_read = backend_cls.read
    monkeypatch.setattr(backend_cls, "read", lambda self: reads.append(1) or real_read(self))
    assert not eng.apply(NETS).changed and eng.check() == [] and eng.status()["in_sync"]
    assert not eng.reload().changed
    assert reads == [], "an untouched firewall was read back"
    # an unrelated change moves the generation: read again (and find nothing to do)
    nsrun(netns, *FOREIGN_CHANGE[flavour])
    assert eng.check() == [] and reads == [1]
    assert not eng.reload().changed and len(reads) == 2
    assert eng.check() == [] and len(reads) == 2, "reload re-verified the generation"
    # the same counter in another namespace (or after a reboot) is not the same generation
    st = eng.store.load()
    st.generation = st.generation._replace(netns_cookie=st.generation.netns_cookie + 1)
    eng.store.save(st)
    assert eng.check() == [] and len(reads) == 3


@pytest.mark.parametrize("flavour", ALL)
def test_prefetched_generation_is_used_once_and_only_for_its_backend(netns, flavour, tmp_path,
                                                                    monkeypatch):
    """The CLI reads the generation in a helper thread while definitions load: the first
    read of the command takes it, later reads go to the kernel; a change made before the
    prefetch is seen, and a prefetch for another backend is ignored."""
    eng = engine(netns, flavour, tmp_path)
    eng.apply(NETS)
    b = eng.backend_for(eng.store.load())
    calls = []
    real = type(b).generation
    monkeypatch.setattr(type(b), "generation", lambda self: calls.append(1) or real(self))
    eng.prefetch()
    assert eng._generation(b) == eng.store.load().generation and calls == [1]
    assert eng._generation(b) is not None and calls == [1, 1]
    nsrun(netns, *FOREIGN_CHANGE[flavour])                     # before the prefetch
    reads = []
    real_read = type(b).read
    monkeypatch.setattr(type(b), "read", lambda self: reads.append(1) or real_read(self))
    again = engine(netns, "auto", tmp_path)                    # the recorded backend
    again.prefetch()
    assert again.check() == [] and reads == [1], "a change before the prefetch went unseen"
    other = engine(netns, "nftables" if flavour != "nftables" else "iptables-nft", tmp_path)
    other.prefetch()                                           # for the other backend
    n = len(calls)
    assert other._generation(b) == b.generation() and len(calls) == n + 2, \
        "a generation prefetched for another backend was taken for this one"


def test_legacy_write_during_a_change_is_not_taken_for_ours(netns, tmp_path, monkeypatch):
    """A fingerprint counts nothing: a foreign write between the read a change is computed
    from and vnetfw's restore would be in the fingerprint taken after it. vnetfw compares
    a fingerprint taken right before its restore with the one the change started from."""
    eng = engine(netns, "iptables-legacy", tmp_path)
    eng.apply(NETS)
    real_read = IptablesBackend.read

    def read_then_someone_writes(self):
        live = real_read(self)
        nsrun(netns, "iptables-legacy", "-I", "VNETFW_FWI", "1", "-s", "192.0.2.7", "-j", "DROP")
        return live

    monkeypatch.setattr(IptablesBackend, "read", read_then_someone_writes)
    eng.remove(["iso"])                         # iptables removes by position: reads first
    monkeypatch.undo()
    assert eng.store.load().generation is None, "a foreign write was recorded as ours"
    # What the race did (the foreign rule, or index edits shifted by it) is seen and fixed.
    assert eng.check() != [], "the foreign write went unseen"
    eng.reload()
    assert eng.check() == [] and eng.store.load().generation is not None


def test_system_iptables_flavour_comes_from_its_version_not_its_path():
    """A wrapper script at /usr/sbin/iptables (Kubernetes, some distros) hides the flavour
    from the path; iptables --version says it. Unknown: no generation (always read)."""
    from vnetfw.backends.runner import Runner

    class Says(Runner):
        def __init__(self, version):
            super().__init__(None)
            self.version = version

        def run(self, argv, stdin=None, *, check=True):
            assert argv == ["iptables", "--version"]
            return self.version

    assert IptablesBackend(Says("iptables v1.8.9 (nf_tables)\n")).nf_tables is True
    assert IptablesBackend(Says("iptables v1.8.9 (legacy)\n")).nf_tables is False
    assert IptablesBackend(Says("iptables v1.6.1\n")).nf_tables is False    # before 1.8
    unknown = IptablesBackend(Says("iptables v1.8.9\n"))
    assert unknown.nf_tables is None and unknown.generation() is None
    # doctor and migrate ask the same question the same way
    assert flavour_of(Says("iptables v1.8.9 (nf_tables)\n"), "iptables") == "iptables-nft"
    assert flavour_of(Says("x"), "iptables-legacy") == "iptables-legacy"
    assert flavour_of(Says("x"), "nftables") is None


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_an_incomplete_undo_is_raised_not_retried(netns, flavour, tmp_path, monkeypatch):
    """If the appends of the no-readback path cannot all be undone, the live firewall is
    no longer a baseline: the error is raised as is, and no full retry snapshots it."""
    eng = engine(netns, flavour, tmp_path)
    eng.apply([n for n in NETS if n.name != "nat1"])
    real_script = IptablesBackend.script
    monkeypatch.setattr(IptablesBackend, "script", lambda self, cs, fam: real_script(
        self, cs, fam) + ("*filter\n-A VNETFW_FWI -j NO_SUCH_TARGET\nCOMMIT\n" if fam == 6
                          else ""))
    monkeypatch.setattr(IptablesBackend, "_undo_appends", lambda self, cs, fams: ["lost"])
    reads = []
    real_read = IptablesBackend.read
    monkeypatch.setattr(IptablesBackend, "read", lambda self: reads.append(1) or real_read(self))
    with pytest.raises(RollbackIncomplete, match="ROLLBACK INCOMPLETE: lost"):
        eng.apply([n for n in NETS if n.name == "nat1"])
    assert reads == [], "retried from a half-undone firewall"


LEGACY_EDITS = [
    ("iptables-legacy", "-F", "VNETFW_FWI"),
    ("iptables-legacy", "-t", "nat", "-A", "POSTROUTING", "-o", "eth9", "-j", "MASQUERADE"),
    ("ip6tables-legacy", "-R", "VNETFW_FWO", "1", "-i", "vbr-nat1", "-j", "ACCEPT"),
    ("iptables-legacy", "-P", "FORWARD", "DROP"),
    ("ip6tables-legacy", "-t", "mangle", "-X", "VNETFW_PRT"),
]


@pytest.mark.parametrize("edit", LEGACY_EDITS, ids=lambda e: " ".join(e[1:4]))
def test_legacy_fingerprint_moves_with_any_edit_not_with_traffic(make_netns, edit, tmp_path):
    """x_tables have no generation counter: vnetfw fingerprints the tables' rules. Packets
    (which move every counter they meet) leave it; any edit, in any of the six tables
    vnetfw writes, moves it, so check reads and reports the drift."""
    ns = make_netns("fp")
    eng = engine(ns, "iptables-legacy", tmp_path)
    if edit[-2:] == ("-X", "VNETFW_PRT"):
        nsrun(ns, "ip6tables-legacy", "-t", "mangle", "-N", "VNETFW_PRT")
    eng.apply(NETS)
    fp = eng.store.load().generation
    assert fp is not None and eng.backend_for(eng.store.load()).generation() == fp
    # traffic through our rules (lo: INPUT/OUTPUT, POSTROUTING of nat and mangle)
    nsrun(ns, "ip", "link", "set", "lo", "up")
    nsrun(ns, sys.executable, "-c", "import socket\n"
          "for a, f in (('127.0.0.1', socket.AF_INET), ('::1', socket.AF_INET6)):\n"
          "    socket.socket(f, socket.SOCK_DGRAM).sendto(b'x', (a, 9))")
    assert "[0:0] -A INPUT" not in nsrun(ns, "iptables-legacy-save", "-c").replace(
        "[0:0] -A INPUT -m comment", ""), "no counter moved: the traffic test proves nothing"
    assert eng.backend_for(eng.store.load()).generation() == fp
    if edit[-2:] == ("-X", "VNETFW_PRT"):
        nsrun(ns, "ip6tables-legacy", "-t", "mangle", "-D", "POSTROUTING", "-m", "comment",
              "--comment", "vnetfw", "-j", "VNETFW_PRT")
        nsrun(ns, "ip6tables-legacy", "-t", "mangle", "-F", "VNETFW_PRT")
    nsrun(ns, *edit)
    assert eng.backend_for(eng.store.load()).generation() != fp
    if any("VNETFW" in a for a in edit):     # a foreign edit elsewhere is no drift of ours
        assert eng.check() != []
    assert eng.reload() is not None and eng.check() == []


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_teardown_removes_every_plain_jump_into_our_chains(netns, flavour, tmp_path):
    """setup counts a plain jump to a vnetfw chain as its own whatever its comment, so
    teardown must remove it too (else the chain cannot be deleted and teardown fails)."""
    admin_rules(netns, flavour)
    before = save(netns, flavour)
    eng = engine(netns, flavour, tmp_path)
    eng.apply(NETS)
    ipt = "iptables" + flavour.removeprefix("iptables")
    nsrun(netns, ipt, "-D", "INPUT", "-m", "comment", "--comment", "vnetfw", "-j", "VNETFW_INP")
    nsrun(netns, ipt, "-I", "INPUT", "1", "-m", "comment", "--comment", "re-added by hand",
          "-j", "VNETFW_INP")
    assert not eng.setup().changed          # it is accepted as the jump...
    eng.teardown()                          # ... and removed with the chain
    assert save(netns, flavour) == before


# ---------------------------------------------------------------------------------------------
# A vacant firewall: definitions are read, planned and loaded one by one


def lazily(nets, log):
    """The networks as the CLI hands them over: read only when the engine asks."""
    for n in nets:
        log.append(n.name)
        yield n


def test_apply_into_a_vacant_firewall_loads_while_it_reads(netns, tmp_path, monkeypatch):
    """nftables: the first network is in nft's input before the last one is read."""
    from vnetfw.backends.nftables import NftablesBackend
    eng = engine(netns, "nftables", tmp_path)
    read, written = [], []
    real_feed = type(eng.runner).feed

    def feed(self, argv):
        f = real_feed(self, argv)
        real_write = f.write
        f.write = lambda text: written.append(len(read)) or real_write(text)
        return f
    monkeypatch.setattr(type(eng.runner), "feed", feed)
    rep = eng.apply(lazily(NETS, read))
    assert rep.changed and read == [n.name for n in NETS]
    assert written[0] == 0 and written[1] == 1, "nft got nothing before every file was read"
    b = eng.backend_for(eng.store.load())
    assert isinstance(b, NftablesBackend)
    assert b.live_ruleset(b.read(), "VNETFW") == b.effective(plan(NETS, PROFILES["default"]))
    assert not eng.apply(NETS).changed


@pytest.mark.parametrize("flavour", ["nftables", "iptables-nft"])
@pytest.mark.parametrize("bad", ["definition", "clash"])
def test_a_bad_definition_met_half_way_loads_nothing(netns, flavour, bad, tmp_path):
    """A file that fails on its own after others were streamed, or two new networks that
    clash (one bridge): the error names the problem, and nothing is loaded or saved."""
    from vnetfw.errors import DefinitionError
    admin_everywhere(netns, flavour)
    before = snapshot(netns, flavour)
    eng = engine(netns, flavour, tmp_path)

    def networks():
        yield from NETS[:2]
        if bad == "definition":
            raise DefinitionError("/defs/broken.xml", "ip: 'x' is not an address")
        yield dataclasses.replace(NETS[2], name="other", bridge=NETS[0].bridge)
    with pytest.raises(DefinitionError, match="broken.xml" if bad == "definition"
                       else "vbr-nat1"):
        eng.apply(networks())
    assert snapshot(netns, flavour) == before
    assert eng.store.load().networks == {}


@pytest.mark.parametrize("flavour", ["nftables"])
def test_vacant_firewall_with_active_networks_gets_them_all(netns, flavour, tmp_path):
    """After a flush (or a reboot) the state still lists active networks: an apply of one
    redefined network loads it and every other active network."""
    eng = engine(netns, flavour, tmp_path)
    eng.apply(NETS)
    nsrun(netns, "nft", "flush", "ruleset")
    changed = [n for n in NETS if n.name == "routed"][0]
    changed = dataclasses.replace(changed, forward_dev="eth7")
    rep = eng.apply([changed])
    assert rep.changed and rep.networks == ["routed"]
    want = [n for n in NETS if n.name != "routed"] + [changed]
    b = eng.backend_for(eng.store.load())
    assert b.live_ruleset(b.read(), "VNETFW") == b.effective(plan(want, PROFILES["default"]))
    assert eng.check() == []


def test_iptables_legacy_never_streams(netns, tmp_path, monkeypatch):
    """x_tables' restore holds the global xtables lock from *filter to COMMIT: vnetfw does
    not hold it while it reads files and plans, so legacy is never 'vacant'."""
    from vnetfw.backends.runner import Runner
    b = IptablesBackend(eng_runner(netns), flavour="iptables-legacy")
    assert not b.vacant(b.read(), "VNETFW")
    monkeypatch.setattr(Runner, "feed", lambda *a: pytest.fail("legacy streamed"))
    assert engine(netns, "iptables-legacy", tmp_path).apply(NETS).changed


@pytest.mark.parametrize("flavour", ["iptables-nft"])
def test_iptables_fresh_load_equals_the_diffed_change(netns, flavour, tmp_path):
    """Into a vacant firewall (an admin's rules only), the streamed load lands what the
    read-diff-commit path would, reports the same changes, and its generation is trusted."""
    admin_rules(netns, flavour)
    before = save(netns, flavour)
    b = IptablesBackend(eng_runner(netns), flavour=flavour)
    rs = plan(NETS, PROFILES["default"])
    live = b.read()
    assert b.vacant(live, "VNETFW")
    expected = b.changes(live, rs, "full")
    g0 = b.generation()
    cs = b.load_fresh(live, "VNETFW", rs.by_network())
    assert sorted(map(str, cs.items)) == sorted(map(str, expected.items))
    assert b.generation_after(cs, g0) is not None
    after = b.read()
    assert not b.vacant(after, "VNETFW") and b.changes(after, rs, "full").empty
    assert without_ours(save(netns, flavour)) == before


@pytest.mark.parametrize("flavour", ["iptables-nft"])
@pytest.mark.parametrize("where", ["planning", "nat-stream", "ipv4-filter", "ipv4-nat",
                                   "ipv4-mangle", "ipv6", "interrupted"])
def test_iptables_fresh_load_failing_anywhere_changes_nothing(netns, flavour, where, tmp_path,
                                                             monkeypatch):
    """Wherever the load into a vacant firewall fails, the firewall is byte-identical
    afterwards and the error names the restore that failed. Before any COMMIT: planning
    fails half-way, or the nat restore refuses a line while networks are still streamed
    (nothing committed, and said so). After: the filter restore refuses its table, the nat
    restore refuses its table (filter's restore commits on its own meanwhile), the mangle
    table is refused after the same restore committed nat, IPv6's restore fails after
    IPv4's committed, or Ctrl-C after IPv4's restores finished, while IPv6's commits."""
    from vnetfw.backends import iptables as ipt
    admin_rules(netns, flavour)
    before = save(netns, flavour)
    b = IptablesBackend(eng_runner(netns), flavour=flavour)
    rs = plan(NETS, PROFILES["default"])
    nets = rs.by_network()
    real_tail, real_script, real_network = ipt._Fresh.tail, ipt._Fresh.script, ipt._Fresh.network
    # iptables-nft-restore takes an unknown target for a chain, and finds it missing only
    # at COMMIT; an unknown option it refuses at once, as it reads the line.
    bad = {"ipv4-filter": "-A VNETFW_FWX -j NO_SUCH_TARGET\n",
           "nat-stream": "-A VNETFW_PRT --no-such-option\n"}.get(
        where, "-A VNETFW_PRT -j NO_SUCH_TARGET\n")
    if where in ("ipv4-filter", "ipv4-nat", "ipv4-mangle"):
        group0, mark = {"ipv4-filter": ("filter", "COMMIT\n"), "ipv4-nat": ("nat", "COMMIT\n"),
                        "ipv4-mangle": ("nat", "*mangle\n")}[where]

        def tail(self, fam, group):
            text = real_tail(self, fam, group)
            if fam == 4 and group[0] == group0:
                assert mark in text
                return text.replace(mark, bad + mark if mark == "COMMIT\n" else mark + bad, 1)
            return text
        monkeypatch.setattr(ipt._Fresh, "tail", tail)
    feeds = []
    if where == "nat-stream":       # the last network's nat lines carry a bad one
        from vnetfw.backends.runner import Runner
        real_feed, count = Runner.feed, []
        monkeypatch.setattr(Runner, "feed", lambda self, argv: feeds.append(
            real_feed(self, argv)) or feeds[-1])

        def network(self, rules):
            out = real_network(self, rules)
            count.append(1)
            if len(count) == len(nets):
                out["nat"] = out.get("nat", "") + bad
            return out
        monkeypatch.setattr(ipt._Fresh, "network", network)
    if where == "ipv6":
        monkeypatch.setattr(ipt._Fresh, "script", lambda self, fam: real_script(self, fam)
                            + "*filter\n-A VNETFW_FWX -j NO_SUCH_TARGET\nCOMMIT\n")
    if where == "interrupted":      # IPv4's restores are waited for first: they finished
        from vnetfw.backends.runner import Feed
        real_finish = Feed.finish

        def finish(self):
            if "ip6tables" in self.argv[0]:
                raise KeyboardInterrupt
            return real_finish(self)
        monkeypatch.setattr(Feed, "finish", finish)

    def planned():
        yield from nets[:2]
        if where == "planning":
            raise RuntimeError("planning failed")
        yield from nets[2:]
        for _ in range(500):        # nat-stream: planning ends after the restore gave up
            if not feeds or feeds[1].exited():
                break
            time.sleep(0.01)
    raised = {"planning": RuntimeError, "interrupted": KeyboardInterrupt}.get(where, BackendError)
    with pytest.raises(raised) as e:
        b.load_fresh(b.read(), "VNETFW", planned())
    assert save(netns, flavour) == before
    if raised is BackendError:      # the message names the restore that failed, and only it
        culprit = {"ipv6": "ipv6", "ipv4-filter": "ipv4 filter"}.get(where, "ipv4 nat+mangle")
        outcome = "change refused, nothing was changed" if where == "nat-stream" \
            else "change failed and was rolled back"
        assert str(e.value).startswith(f"{flavour}: {outcome}: {culprit}: "), e.value
        assert str(e.value).count("ipv") == 1, e.value


@pytest.mark.parametrize("flavour", ["iptables-nft"])
@pytest.mark.parametrize("nth", [2, 3])
def test_iptables_fresh_load_restore_that_cannot_start_stops_the_others(netns, flavour, nth,
                                                                        tmp_path, monkeypatch):
    """The second or third restore of a load into a vacant firewall cannot be started here:
    the ones already running are killed before anything is written, and the apply takes
    the ordinary path, every rule included."""
    from vnetfw.backends.runner import FeedUnavailable, Runner
    real_feed, feeds = Runner.feed, []

    def feed(self, argv):
        if len(feeds) == nth - 1:
            raise FeedUnavailable(f"{argv[0]}: no /dev/fd to hand it a pipe as a file")
        feeds.append(real_feed(self, argv))
        return feeds[-1]
    monkeypatch.setattr(Runner, "feed", feed)
    eng = engine(netns, flavour, tmp_path)
    rep = eng.apply(NETS)
    assert len(feeds) == nth - 1 and all(f.exited() for f in feeds)
    assert rep.changed and rep.warnings == [] and eng.check() == []


@pytest.mark.parametrize("flavour", ["iptables-nft"])
def test_iptables_fresh_load_rollback_keeps_what_others_wrote_meanwhile(netns, flavour,
                                                                          monkeypatch):
    """A failed load into a vacant firewall takes out only vnetfw's chains and jumps: a
    rule that someone else added while vnetfw planned (after its snapshot) survives, and so
    do the counters of the rules that were there (a restore from the snapshot loses both)."""
    from vnetfw.backends import iptables as ipt
    admin_rules(netns, flavour)
    cmd = "iptables" + flavour.removeprefix("iptables")
    nsrun(netns, cmd, "-I", "OUTPUT", "-o", "lo", "-j", "ACCEPT")
    nsrun(netns, "ip", "link", "set", "lo", "up")
    b = IptablesBackend(eng_runner(netns), flavour=flavour)
    rs = plan(NETS, PROFILES["default"])
    nets = rs.by_network()
    real_tail = ipt._Fresh.tail
    monkeypatch.setattr(ipt._Fresh, "tail", lambda self, fam, group: real_tail(
        self, fam, group).replace("COMMIT\n", "-A VNETFW_PRT -j NO_SUCH_TARGET\nCOMMIT\n", 1)
        if group[0] == "nat" else real_tail(self, fam, group))

    def planned():
        yield from nets[:2]
        # meanwhile someone adds a rule, and a packet moves an admin rule's counter
        nsrun(netns, cmd, "-I", "FORWARD", "1", "-s", "198.51.100.7", "-j", "DROP")
        nsrun(netns, sys.executable, "-c", "import socket; socket.socket(socket.AF_INET, "
              "socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', 9))")
        yield from nets[2:]
    live = b.read()
    with pytest.raises(BackendError, match="rolled back"):
        b.load_fresh(live, "VNETFW", planned())
    after = save(netns, flavour)
    assert "VNETFW" not in after
    assert "-A FORWARD -s 198.51.100.7/32 -j DROP" in after
    counted = nsrun(netns, f"{cmd}-save", "-c", "-t", "filter")
    packets = re.search(r"^\[(\d+):\d+\] -A OUTPUT -o lo -j ACCEPT$", counted, re.M)
    assert packets and int(packets[1]) > 0, counted


def eng_runner(ns: str):
    from vnetfw.backends.runner import Runner
    return Runner(netns=ns)



@pytest.mark.parametrize("flavour", FLAVOURS)
def test_kernel_without_checksum_gets_everything_else(netns, flavour, tmp_path, monkeypatch):
    """The CHECKSUM fix-up is optional: when the kernel lacks it (simulated: tools first on
    PATH that answer as iptables 1.8.9 does on such a kernel), the first apply — streamed
    into a vacant firewall, then read, diffed and retried — lands every other rule, with a
    warning."""
    from tests.netns.test_optional_rules import kernel_without_checksum
    (tmp_path / "bin").mkdir()
    kernel_without_checksum(tmp_path / "bin", flavour)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    eng = engine(netns, flavour, tmp_path)
    rep = eng.apply(NETS)
    assert any("CHECKSUM" in w for w in rep.warnings)
    b = eng.backend_for(eng.store.load())
    want = plan(NETS, PROFILES["default"])
    live = b.live_ruleset(b.read(), "VNETFW")
    assert set(live.rules) == {r for r in want.rules if not r.optional}
    assert any(r.optional for r in want.rules)



@pytest.mark.parametrize("flavour", ["nftables", "iptables-nft"])
def test_a_refused_vacant_load_is_tried_again_whole_where_a_writer_can_be_in_its_way(
        netns, flavour, tmp_path, monkeypatch):
    """iptables: the load into a vacant firewall is refused (and undone) for a reason of the
    moment (another writer in the builtin chains it refers to): the ordinary path commits
    the whole plan, CHECKSUM included, with no warning; nothing is left out for a reason
    that is not its own. nftables: its own table in one transaction refers to nothing
    another writer has, so the refusal stands, without a second attempt."""
    from vnetfw.backends import get_backend
    cls = type(get_backend(flavour, eng_runner(netns)))
    calls = []

    def refused(self, live, prefix, networks):
        calls.append(1)
        raise BackendError(f"{flavour}: change failed and was rolled back: ipv4 filter: "
                           "line 12: RULE_INSERT failed (No such file or directory)")
    monkeypatch.setattr(cls, "load_fresh", refused)
    eng = engine(netns, flavour, tmp_path)
    if flavour == "nftables":
        before = snapshot(netns, flavour)
        with pytest.raises(BackendError, match="RULE_INSERT failed"):
            eng.apply(NETS)
        assert calls == [1] and snapshot(netns, flavour) == before
        return
    rep = eng.apply(NETS)
    assert calls == [1] and rep.changed and rep.warnings == []
    assert eng.check() == []
    b = eng.backend_for(eng.store.load())
    assert b.live_ruleset(b.read(), "VNETFW") == b.effective(plan(NETS, PROFILES["default"]))
    assert eng.store.load().generation is not None      # and the result is trusted


@pytest.mark.parametrize("flavour", ["nftables", "iptables-nft"])
def test_a_tool_that_cannot_be_fed_here_is_run_the_ordinary_way(netns, flavour, tmp_path,
                                                                monkeypatch):
    """No /dev/fd, no memory file, a fork refused: nothing about the firewall, so the load
    falls back to read-diff-commit, every rule included (no CHECKSUM left out)."""
    from vnetfw.backends.runner import FeedUnavailable, Runner

    def unavailable(self, argv):
        raise FeedUnavailable(f"{argv[0]}: no /dev/fd to hand it a pipe as a file")
    monkeypatch.setattr(Runner, "feed", unavailable)
    eng = engine(netns, flavour, tmp_path)
    rep = eng.apply(NETS)
    assert rep.changed and rep.warnings == []
    assert eng.check() == [] and eng.store.load().generation is not None


def test_a_legacy_fingerprint_loads_no_table(netns):
    """Asking x_tables for a table that is not loaded loads it (iptable_nat...): the
    fingerprint reads only tables already listed, so reading creates nothing."""
    from vnetfw.backends.xtfp import fingerprint

    def loaded() -> tuple[str, str]:
        return (nsrun(netns, "cat", "/proc/net/ip_tables_names"),
                nsrun(netns, "cat", "/proc/net/ip6_tables_names"))
    nsrun(netns, "iptables-legacy", "-t", "filter", "-S")      # filter only, IPv4 only
    before = loaded()
    assert "filter" in before[0] and "nat" not in before[0] and "mangle" not in before[0]
    assert fingerprint(f"/run/netns/{netns}") == fingerprint(f"/run/netns/{netns}")
    assert loaded() == before


def test_the_system_iptables_is_asked_its_flavour_once_per_command(netns, tmp_path,
                                                                    monkeypatch):
    """Backend ``iptables``: the prefetch and the engine each build a backend, and each
    needs ``iptables --version``; the runner they share asks once."""
    from vnetfw.backends.runner import Runner
    asked = []
    real_run = Runner.run
    monkeypatch.setattr(Runner, "run", lambda self, argv, *a, **kw: (
        asked.append(1) if argv == ["iptables", "--version"] else None)
        or real_run(self, argv, *a, **kw))
    eng = engine(netns, "iptables", tmp_path)
    eng.prefetch()
    assert eng.apply(NETS).changed
    assert asked == [1]
