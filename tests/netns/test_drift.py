"""Drift: every kind of damage, injected by hand, is reported by check and repaired by reload.

For each kind: ``check`` reports it (and the CLI exits 1), ``reload`` repairs it in one
step, ``check`` is clean afterwards, and the repaired ruleset equals a fresh apply in a
second namespace (compared with the system's own iptables-save, not vnetfw's parser).
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys

import pytest

from tests.conftest import blocks_by_name, nsrun, save
from tests.netns.test_engine import NETS, admin_rules, engine

FLAVOURS = ["iptables-nft", "iptables-legacy"]


def ipt(flavour: str, family: int = 4) -> str:
    return ("iptables" if family == 4 else "ip6tables") + flavour.removeprefix("iptables")


# kind -> (function that damages the namespace, words the drift report must contain)
def _missing_rule(ns, fl):
    nsrun(ns, ipt(fl), "-D", "VNETFW_FWI", "1")


def _extra_rule(ns, fl):
    nsrun(ns, ipt(fl), "-I", "VNETFW_FWO", "2", "-s", "192.0.2.9", "-j", "ACCEPT")


def _jump_missing(ns, fl):
    nsrun(ns, ipt(fl, 6), "-D", "FORWARD", "-m", "comment", "--comment", "vnetfw", "-j",
          "VNETFW_FWO")


def _jump_misplaced(ns, fl):
    nsrun(ns, ipt(fl), "-D", "FORWARD", "-m", "comment", "--comment", "vnetfw", "-j",
          "VNETFW_FWX")
    nsrun(ns, ipt(fl), "-A", "FORWARD", "-j", "VNETFW_FWX")


def _chain_deleted(ns, fl):
    nsrun(ns, ipt(fl), "-t", "nat", "-D", "POSTROUTING", "-m", "comment", "--comment", "vnetfw",
          "-j", "VNETFW_PRT")
    nsrun(ns, ipt(fl), "-t", "nat", "-F", "VNETFW_PRT")
    nsrun(ns, ipt(fl), "-t", "nat", "-X", "VNETFW_PRT")


def _table_flushed(ns, fl):
    nsrun(ns, ipt(fl), "-F")                # every chain of filter, ours and builtin


def _everything_gone(ns, fl):
    if fl == "iptables-nft":
        nsrun(ns, "nft", "flush", "ruleset")
    else:
        for fam in (4, 6):
            for table in ("filter", "nat", "mangle"):
                nsrun(ns, ipt(fl, fam), "-t", table, "-F")
                nsrun(ns, ipt(fl, fam), "-t", table, "-X")


DRIFTS = {
    "missing-rule": (_missing_rule, ["VNETFW_FWI", "missing rule"]),
    "extra-rule": (_extra_rule, ["VNETFW_FWO", "unexpected", "192.0.2.9"]),
    "jump-missing": (_jump_missing, ["ipv6 filter FORWARD", "missing jump to VNETFW_FWO"]),
    "jump-misplaced": (_jump_misplaced, ["filter FORWARD", "VNETFW_FWX"]),
    "chain-deleted": (_chain_deleted, ["nat", "missing chain VNETFW_PRT"]),
    "table-flushed": (_table_flushed, ["missing rule", "missing jump to VNETFW_INP"]),
    "everything-gone": (_everything_gone, ["missing chain VNETFW_FWX"]),
}


def _nft(ns, *cmds):
    for c in cmds:
        nsrun(ns, "nft", *c.split())


NFT_DRIFTS = {
    "missing-rule": (lambda ns: _nft(ns, "flush chain inet vnetfw fwi4-nat1"),
                     ["fwi4-nat1", "missing rule"]),
    "extra-rule": (lambda ns: _nft(ns, "insert rule inet vnetfw fwo4-nat1 ip saddr 192.0.2.9 accept"),
                   ["fwo4-nat1", "unexpected rule", "192.0.2.9"]),
    "element-missing": (lambda ns: nsrun(ns, "nft", "delete", "element", "inet", "vnetfw", "fwo",
                                         '{ ipv4 . "vbr-nat1" }'),
                        ["map fwo", "missing element", "vbr-nat1"]),
    "chain-deleted": (lambda ns: (nsrun(ns, "nft", "delete", "element", "inet", "vnetfw", "fwo",
                                        '{ ipv4 . "vbr-nat1" }'),
                                  _nft(ns, "flush chain inet vnetfw fwo4-nat1",
                                       "delete chain inet vnetfw fwo4-nat1")),
                      ["missing chain fwo4-nat1"]),
    "table-flushed": (lambda ns: _nft(ns, "flush table inet vnetfw"), ["missing rule"]),
    "table-deleted": (lambda ns: _nft(ns, "delete table inet vnetfw"), ["missing table vnetfw"]),
    "everything-gone": (lambda ns: _nft(ns, "flush ruleset"), ["missing table vnetfw"]),
}


@pytest.mark.parametrize("kind", sorted(NFT_DRIFTS))
def test_nft_drift_is_reported_and_repaired(make_netns, kind, tmp_path):
    ns, ref = make_netns("d"), make_netns("ref")
    eng = engine(ns, "nftables", tmp_path / "a")
    eng.apply(NETS)
    engine(ref, "nftables", tmp_path / "b").apply(NETS)
    fresh = sorted(nsrun(ref, "nft", "list", "ruleset").splitlines())
    damage, words = NFT_DRIFTS[kind]
    damage(ns)
    common = ["--netns", ns, "--state-dir", str(tmp_path / "a" / "state")]
    p = cli("check", *common)
    assert p.returncode == 1, p.stdout + p.stderr
    for w in words:
        assert w in p.stdout, f"{w!r} not in check output:\n{p.stdout}"
    assert eng.reload().changed
    assert eng.check() == []
    assert cli("check", *common).returncode == 0
    assert sorted(nsrun(ns, "nft", "list", "ruleset").splitlines()) == fresh
    assert not eng.reload().changed


def cli(*args):
    return subprocess.run([sys.executable, "-m", "vnetfw", *args], capture_output=True,
                          text=True)


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("kind", sorted(DRIFTS))
def test_drift_is_reported_and_repaired(make_netns, flavour, kind, tmp_path):
    ns, ref = make_netns("d"), make_netns("ref")
    eng = engine(ns, flavour, tmp_path / "a")
    eng.apply(NETS)
    engine(ref, flavour, tmp_path / "b").apply(NETS)
    fresh = save(ref, flavour)
    assert save(ns, flavour) == fresh
    assert eng.check() == []

    damage, words = DRIFTS[kind]
    damage(ns, flavour)
    common = ["--netns", ns, "--state-dir", str(tmp_path / "a" / "state"), "--backend", flavour]
    p = cli("check", *common)
    assert p.returncode == 1, p.stdout + p.stderr
    for w in words:
        assert w in p.stdout, f"{w!r} not in check output:\n{p.stdout}"
    js = json.loads(cli("check", "--json", *common).stdout)
    assert not js["clean"] and js["drift"]

    rep = eng.reload()
    assert rep.changed
    assert eng.check() == []
    assert cli("check", *common).returncode == 0
    if kind != "everything-gone":
        # A network block put back whole is appended, where a fresh apply had it by name.
        assert blocks_by_name(save(ns, flavour)) == blocks_by_name(fresh)
    else:   # the builtin tables come back in iptables' own order; compare rule sets
        assert sorted(save(ns, flavour).splitlines()) == sorted(fresh.splitlines())
    assert not eng.reload().changed, "a second reload repaired something again"


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_reload_keeps_admin_rules_above_jumps(netns, flavour, tmp_path):
    admin_rules(netns, flavour)
    eng = engine(netns, flavour, tmp_path)
    eng.apply(NETS)
    nsrun(netns, ipt(flavour), "-I", "FORWARD", "1", "-s", "198.51.100.66", "-j", "DROP")
    nsrun(netns, ipt(flavour), "-F", "VNETFW_FWI")
    assert eng.reload().changed
    fwd = [l for l in save(netns, flavour).split("## ip6tables")[0].splitlines()
           if l.startswith("-A FORWARD")]
    assert fwd[0] == "-A FORWARD -s 198.51.100.66/32 -j DROP"
    assert eng.check() == []


def _hook(path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_hooks_receive_name_event_and_definition(netns, tmp_path):
    hooks = tmp_path / "hooks.d"
    hooks.mkdir()
    log = tmp_path / "log"
    _hook(hooks / "10-record", f'echo "$1 $2" >> {log}\ncat >> {log}.json\necho >> {log}.json\n')
    eng = engine(netns, "iptables-nft", tmp_path, hooks_dir=hooks)
    rep = eng.apply(NETS)
    assert rep.hook_failures == []
    assert sorted(log.read_text().split("\n")[:-1]) == ["iso added", "nat1 added", "routed added"]
    docs = [json.loads(l) for l in (tmp_path / "log.json").read_text().splitlines() if l]
    assert {d["name"]: d["bridge"] for d in docs} == {"nat1": "vbr-nat1", "routed": "vbr-route",
                                                       "iso": "vbr-iso"}
    log.write_text("")
    eng.apply(NETS)                          # unchanged: no event
    assert log.read_text() == ""
    eng.remove(["routed"])
    assert log.read_text() == "routed removed\n"


def test_failing_hook_is_reported_and_rules_stay_whole(netns, tmp_path):
    hooks = tmp_path / "hooks.d"
    hooks.mkdir()
    _hook(hooks / "50-broken", 'echo "cannot reach the DNS server" >&2\nexit 3\n')
    common = ["--netns", netns, "--state-dir", str(tmp_path / "s"), "--backend", "iptables-nft",
              "--hooks-dir", str(hooks)]
    d = tmp_path / "defs"
    d.mkdir()
    (d / "n.toml").write_text('name="n"\nbridge="vbr-n"\nmode="nat"\n'
                              'ip=[{address="10.77.0.1", prefix=24}]\n')
    p = cli("apply", str(d), *common)
    assert p.returncode == 6
    assert "50-broken n added: exit 3: cannot reach the DNS server" in p.stderr
    # the rules are complete and the state knows the network
    assert cli("check", *common).returncode == 0
    assert "vnetfw:n" in save(netns)


def test_nft_admin_chain_rules_come_first_and_survive_everything(netns, tmp_path):
    """The nftables backend's admin chains: evaluated before vnetfw's rules in each base
    chain, never flushed by apply, reload or a table rebuild."""
    eng = engine(netns, "nftables", tmp_path)
    eng.apply(NETS)
    nsrun(netns, "nft", "add", "rule", "inet", "vnetfw", "admin_forward", "ip", "saddr",
          "198.51.100.66", "counter", "drop")
    listing = nsrun(netns, "nft", "list", "chain", "inet", "vnetfw", "forward")
    body = [l.strip() for l in listing.splitlines() if "jump" in l or "vmap" in l]
    assert body[0] == "jump admin_forward", body
    assert eng.check() == [], "an admin rule in an admin chain is not drift"
    assert not eng.apply(NETS).changed
    _nft(netns, "flush chain inet vnetfw fwi4-nat1")                 # drift -> reload
    assert eng.reload().changed
    # a foreign chain forces a full table rebuild: the admin rule must come back too
    _nft(netns, "add chain inet vnetfw intruder")
    assert eng.reload().changed
    assert eng.check() == []
    admin = nsrun(netns, "nft", "list", "chain", "inet", "vnetfw", "admin_forward")
    assert "ip saddr 198.51.100.66 counter packets 0 bytes 0 drop" in admin
    rep = eng.teardown()
    assert any("admin rule" in c.detail for c in rep.changes), "teardown must say it drops them"
