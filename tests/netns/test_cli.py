"""The command line, end to end, as an admin would run it (subprocesses, real namespace)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import nsrun, save
from tests.netns.test_engine import admin_rules
from vnetfw.errors import StateError
from vnetfw.state import StateStore

FIX = Path(__file__).parent.parent / "fixtures" / "libvirt"


def vnetfw(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items()
         if not k.startswith("VNETFW_") or k == "VNETFW_HOOKS_DIR"}
    e.update(env or {})
    p = subprocess.run([sys.executable, "-m", "vnetfw", *args], capture_output=True, text=True,
                       env=e)
    if check and p.returncode != 0:
        raise AssertionError(f"vnetfw {' '.join(args)} -> {p.returncode}: {p.stderr}")
    return p


def test_global_options_before_and_after_subcommand(make_netns, tmp_path):
    a, b = make_netns("a"), make_netns("b")
    xml = str(FIX / "nat-default.xml")
    vnetfw("--backend", "iptables-legacy", "--netns", a, "--state-dir", str(tmp_path / "a"),
           "apply", xml)
    vnetfw("apply", xml, "--backend", "iptables-legacy", "--netns", b,
           "--state-dir", str(tmp_path / "b"))
    assert "VNETFW_FWI" in save(a, "iptables-legacy")
    assert save(a, "iptables-legacy") == save(b, "iptables-legacy")
    # environment defaults, and --json
    out = vnetfw("--netns", a, "status", "--json",
                 env={"VNETFW_BACKEND": "iptables-legacy", "VNETFW_STATE_DIR": str(tmp_path / "a")})
    st = json.loads(out.stdout)
    assert st["backend"] == "iptables-legacy" and st["in_sync"]
    assert [n["name"] for n in st["networks"]] == ["default"]


def test_apply_dry_run_then_apply_then_remove_then_teardown(netns, tmp_path):
    xml = str(FIX / "route-default.xml")
    common = ["--backend", "iptables-nft", "--netns", netns, "--state-dir", str(tmp_path)]
    # An admin's rules exist in every table; teardown must give back exactly this.
    admin_rules(netns, "iptables-nft")
    before = save(netns)
    dry = json.loads(vnetfw("apply", "--dry-run", "--json", xml, *common).stdout)
    assert dry["changed"] and not dry["applied"]
    assert save(netns) == before
    rep = json.loads(vnetfw("apply", "--json", xml, *common).stdout)
    assert rep["changed"] and rep["applied"]
    assert {c["network"] for c in rep["changes"]} >= {"default"}
    again = vnetfw("apply", xml, *common).stdout
    assert "no change" in again
    listed = json.loads(vnetfw("list", "--json", *common).stdout)
    assert [n["name"] for n in listed["networks"]] == ["default"]
    vnetfw("remove", "default", *common)
    assert "vnetfw:default" not in save(netns)
    err = vnetfw("remove", "default", *common, check=False)
    assert err.returncode == 2 and "not active: default" in err.stderr
    vnetfw("teardown", *common)
    assert save(netns) == before


def test_status_exits_1_on_drift(netns, tmp_path):
    common = ["--backend", "iptables-nft", "--netns", netns, "--state-dir", str(tmp_path)]
    vnetfw("apply", str(FIX / "isolated.xml"), *common)
    assert vnetfw("status", *common).returncode == 0
    nsrun(netns, "iptables-nft", "-F", "VNETFW_FWI")
    p = vnetfw("status", *common, check=False)
    assert p.returncode == 1 and "DRIFT" in p.stdout and "VNETFW_FWI" in p.stdout


def test_bad_definition_changes_nothing(netns, tmp_path):
    common = ["--backend", "iptables-nft", "--netns", netns, "--state-dir", str(tmp_path)]
    good = FIX / "nat-default.xml"
    bad = tmp_path / "bad.xml"
    bad.write_text(good.read_text().replace("virbr0", "virbr0/evil").replace(
        "<name>default", "<name>evil"))
    before = save(netns)
    p = vnetfw("apply", str(good), str(bad), *common, check=False)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1, "one clear line"
    assert "bad.xml" in p.stderr and "'evil'" in p.stderr and "bridge" in p.stderr
    assert save(netns) == before


def test_render_needs_no_root_and_matches_restore_format(tmp_path):
    out = vnetfw("render", "--backend", "iptables", "--family", "ipv4",
                 str(FIX / "nat-default.xml")).stdout
    assert out.startswith("*filter\n") and out.endswith("COMMIT\n")
    assert "-A VNETFW_PRT -s 192.168.122.0/24 ! -d 192.168.122.0/24 -p tcp" in out
    both = vnetfw("render", "--backend", "iptables", str(FIX / "nat-default.xml")).stdout
    assert "# ipv6" in both and out in both


def test_rendered_family_loads_with_iptables_restore(netns):
    """What render prints is exactly what iptables-restore takes."""
    out = vnetfw("render", "--backend", "iptables", "--family", "ipv4",
                 str(FIX / "nat-ipv6.xml")).stdout
    nsrun(netns, "iptables-nft-restore", "--noflush", stdin=out)
    assert "-A VNETFW_FWO -s 192.168.122.0/24 -i virbr0" in save(netns)


def test_lock_serialises_processes(tmp_path):
    store = StateStore(tmp_path)
    held = threading.Event()
    release = threading.Event()

    def holder():
        with store.lock():
            held.set()
            release.wait(5)

    t = threading.Thread(target=holder)
    t.start()
    held.wait(5)
    with pytest.raises(StateError, match=f"held by pid {os.getpid()} "):
        with StateStore(tmp_path).lock(timeout=0.3):
            pass
    release.set()
    t.join()
    with StateStore(tmp_path).lock(timeout=1):
        pass


def test_unfirewalled_modes_are_said_plainly(netns, tmp_path):
    d = tmp_path / "defs"
    d.mkdir()
    (d / "b.xml").write_text("<network><name>host-br</name><forward mode='bridge'/>"
                             "<bridge name='br0'/></network>")
    (d / "o.toml").write_text('name="op"\nbridge="vbr-op"\nmode="open"\n'
                              'ip=[{address="10.88.0.1", prefix=24}]\n')
    common = ["--backend", "iptables-nft", "--netns", netns, "--state-dir", str(tmp_path / "s")]
    out = vnetfw("apply", str(d), *common).stdout
    assert "note: host-br: mode bridge puts guests on a host bridge or device; vnetfw does " \
           "not firewall it (no rules)" in out
    assert "note: op: mode open gets no firewall rules, by design" in out
    text = save(netns)
    assert "br0" not in text and "vbr-op" not in text


def test_many_changes_are_summed_up_per_network(netns, tmp_path):
    d = tmp_path / "defs"
    d.mkdir()
    (d / "many.toml").write_text("".join(
        f'[[network]]\nname="n{i:03d}"\nbridge="vb{i}"\nmode="nat"\n'
        f'ip=[{{address="10.90.{i}.1", prefix=24, dhcp=true}}]\n' for i in range(70)))
    common = ["--backend", "iptables-nft", "--netns", netns, "--state-dir", str(tmp_path / "s")]
    out = vnetfw("apply", "--dry-run", str(d), *common).stdout.splitlines()
    assert out[0].startswith("apply: would change ")
    assert "  layout: create 14, insert 14" in out
    assert "  n000: add 25" in out and "  ... and 10 more network(s)" in out
    assert len(out) < 70
    every = vnetfw("apply", "--dry-run", "--verbose", str(d), *common).stdout.splitlines()
    assert len(every) == int(out[0].split()[3]) + 1


def _held_tools(bin_dir: Path, mark: Path, go: Path) -> None:
    """Wrappers, first on PATH, for the tools that commit: each marks that it started, then
    waits for ``go`` before it runs the real tool (``nft`` only when it loads)."""
    bin_dir.mkdir()
    for tool, real, when in (("nft", "/usr/sbin/nft", '[ "$1" = "-f" ]'),
                             ("iptables-nft-restore", "/usr/sbin/iptables-nft-restore", "true"),
                             ("ip6tables-nft-restore", "/usr/sbin/ip6tables-nft-restore",
                              "true")):
        (bin_dir / tool).write_text(
            f"#!/bin/sh\nif {when}; then touch {mark}\n"
            f"  while [ ! -e {go} ]; do sleep 0.01; done\nfi\nexec {real} \"$@\"\n")
        (bin_dir / tool).chmod(0o755)


@pytest.mark.parametrize("backend", ["nftables", "iptables-nft"])
@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_at_the_terminal_while_a_change_commits(make_netns, tmp_path, backend, presses):
    """Ctrl-C as a terminal sends it, to vnetfw's whole process group, while the tool that
    commits runs (held by a wrapper): the tool, in its own session, is not killed by it.
    One press: vnetfw says it is finishing, finishes, prints its report, says it stopped
    after recording, exits 130, and the firewall matches the recorded networks. Two: it
    stops at once, exit 130, nothing changed."""
    import signal
    import time
    ns = make_netns("c")
    mark, go = tmp_path / "committing", tmp_path / "go"
    _held_tools(tmp_path / "bin", mark, go)
    base = ["--netns", ns, "--backend", backend, "--state-dir", str(tmp_path / "st"),
            "--hooks-dir", str(tmp_path / "no-hooks")]
    vnetfw(*base, "apply", str(FIX / "nat-default.xml"))      # not vacant: ordinary commit
    before = nsrun(ns, "nft", "list", "ruleset")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VNETFW_")}
    env["PATH"] = f"{tmp_path / 'bin'}:{env['PATH']}"
    p = subprocess.Popen([sys.executable, "-m", "vnetfw", *base, "apply",
                          str(FIX / "route-default.xml")], env=env, start_new_session=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not mark.exists() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert mark.exists(), p.communicate()
        os.killpg(p.pid, signal.SIGINT)
        said = p.stderr.readline()          # vnetfw has taken the first press
        assert "finishing the change in progress" in said
        if presses == 2:
            os.killpg(p.pid, signal.SIGINT)
            out, err = p.communicate(timeout=30)   # stopped with the tool still held
    finally:
        go.touch()
    if presses == 1:
        out, err = p.communicate(timeout=30)
    err = said + err
    assert p.returncode == 130, err
    assert ("finished and recorded" in err) is (presses == 1), err
    # nat-default -> route-default is a change of the network "default": if it landed
    # but was not recorded, check would find the route rules against a nat state.
    assert (nsrun(ns, "nft", "list", "ruleset") != before) is (presses == 1)
    assert vnetfw(*base, "check", check=False).returncode == 0


def test_ctrl_c_at_the_terminal_while_a_hook_runs_lets_the_hook_finish(make_netns, tmp_path):
    """A Ctrl-C to vnetfw's process group while a hook runs (the change is recorded, the
    press held back): the hook, in a session of its own, is not killed by it and finishes;
    vnetfw then says it stopped after recording, exit 130."""
    import signal
    import time
    ns = make_netns("h")
    hooks, mark, go, log = (tmp_path / "hooks.d", tmp_path / "hooking", tmp_path / "go",
                            tmp_path / "hooked")
    hooks.mkdir()
    (hooks / "10-held").write_text(f"#!/bin/sh\ntouch {mark}\n"
                                   f"while [ ! -e {go} ]; do sleep 0.01; done\n"
                                   f'echo "$1 $2" >> {log}\n')
    (hooks / "10-held").chmod(0o755)
    base = ["--netns", ns, "--backend", "nftables", "--state-dir", str(tmp_path / "st"),
            "--hooks-dir", str(hooks)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("VNETFW_")}
    p = subprocess.Popen([sys.executable, "-m", "vnetfw", *base, "apply",
                          str(FIX / "nat-default.xml")], env=env, start_new_session=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not mark.exists() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert mark.exists(), p.communicate()
        os.killpg(p.pid, signal.SIGINT)
        said = p.stderr.readline()
        assert "finishing the change in progress" in said
    finally:
        go.touch()
    out, err = p.communicate(timeout=30)
    assert p.returncode == 130 and "finished and recorded" in err, err
    assert log.read_text() == "default added\n"
