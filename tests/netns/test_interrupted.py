"""kill -9 half-way through a change (issue 12, item 6): the next command that changes the
firewall finishes or undoes it first and says which; ``check`` names it.

iptables-nft commits IPv4 and IPv6 as separate restores, iptables-legacy each table: a
vnetfw killed between two of them leaves part of its change live. A wrapper first on PATH
holds the writer right after one tool has committed; the test kills it there (the moment
is chosen by the wrapper, not by a clock) and then runs the next command.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import jsonschema
import pytest

from tests.conftest import nsrun
from vnetfw import output
from tests.netns.test_readers import clean_env, holding_tools, net_toml, vnetfw_argv

pytestmark = pytest.mark.netns


def ours(ns: str, backend: str) -> dict[str, str]:
    """vnetfw's rules of ``ns`` per family (nftables: the whole ruleset, as one)."""
    if backend == "nftables":
        return {"nft": nsrun(ns, "nft", "list", "ruleset")}
    mid = backend.removeprefix("iptables")
    return {fam: "\n".join(ln for ln in nsrun(ns, f"{fam}{mid}-save").splitlines()
                           if "vnetfw" in ln)
            for fam in ("iptables", "ip6tables")}


def run(ns, backend, tmp, *args, env=None):
    return subprocess.run(vnetfw_argv(ns, backend, tmp, *args), env=env or clean_env(),
                          capture_output=True, text=True, timeout=120)


def kill_after(ns, backend, tmp, tool, *args) -> None:
    """Run ``vnetfw ARGS`` and kill -9 it right after ``tool`` has committed."""
    mark, go = tmp / "committed", tmp / "go"
    mark.unlink(missing_ok=True)
    go.unlink(missing_ok=True)
    holding_tools(tmp / "bin", tool, mark, go)
    env = clean_env()
    env["PATH"] = f"{tmp / 'bin'}:{env['PATH']}"
    p = subprocess.Popen(vnetfw_argv(ns, backend, tmp, *args), env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not mark.exists() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert mark.exists(), p.communicate()
        os.kill(p.pid, signal.SIGKILL)
        p.communicate()
    finally:
        go.touch()
    (tmp / "bin" / tool).unlink()


def setup_two(ns, backend, tmp) -> dict[str, str]:
    (tmp / "no-hooks").mkdir(exist_ok=True)
    for i in (1, 2, 3):
        (tmp / f"n{i}.toml").write_text(net_toml(i))
    assert run(ns, backend, tmp, "apply", str(tmp / "n1.toml")).returncode == 0
    return ours(ns, backend)


NEXT = {  # the next command, and what the firewall holds of n2 after it (undone: none)
    "apply": ("apply", "{tmp}/n3.toml"),
    "remove": ("remove", "n1"),
    "reload": ("reload",),
    "setup": ("setup",),
    "watch": ("watch", "--once", "--no-events", "--firewalld", "off"),
    "teardown": ("teardown",),
}


@pytest.mark.parametrize("backend,tool,next_cmd", [
    ("iptables-nft", "iptables-nft-restore", c) for c in NEXT] + [
    ("iptables-legacy", "iptables-legacy-restore", "apply"),
    ("iptables-legacy", "iptables-legacy-restore", "reload"),
])
def test_a_change_killed_half_way_is_undone_by_the_next_command(netns, tmp_path, backend,
                                                                 tool, next_cmd):
    before = setup_two(netns, backend, tmp_path)
    kill_after(netns, backend, tmp_path, tool, "apply", str(tmp_path / "n2.toml"))
    half = ours(netns, backend)
    assert "vnetfw:n2" in half["iptables"] and "vnetfw:n2" not in half["ip6tables"]
    chk = run(netns, backend, tmp_path, "check")
    assert chk.returncode == 1 and "interrupted apply (pid" in chk.stdout, chk.stdout
    nxt = run(netns, backend, tmp_path, *(a.format(tmp=tmp_path) for a in NEXT[next_cmd]))
    assert nxt.returncode == 0, nxt.stderr
    assert "undid an interrupted apply (pid" in nxt.stderr, nxt.stderr
    after = ours(netns, backend)
    assert all("vnetfw:n2" not in text for text in after.values()), after
    if next_cmd == "teardown":
        assert not any(after.values())
        return
    if next_cmd in ("reload", "setup", "watch"):
        assert after == before
    assert run(netns, backend, tmp_path, "check").returncode == 0
    assert not (tmp_path / "state" / "inflight.json").exists()


@pytest.mark.parametrize("backend,tool", [("iptables-nft", "ip6tables-nft-restore"),
                                          ("nftables", "nft")])
def test_a_change_killed_after_its_last_commit_is_recorded_by_the_next(netns, tmp_path,
                                                                       backend, tool):
    """Every table committed, the state not yet written: the change is whole, and the
    next command records it instead of taking it out."""
    setup_two(netns, backend, tmp_path)
    kill_after(netns, backend, tmp_path, tool, "apply", str(tmp_path / "n2.toml"))
    whole = ours(netns, backend)
    assert all("vnetfw:n2" in t or "n2" in t for t in whole.values())
    chk = run(netns, backend, tmp_path, "check")
    assert chk.returncode == 1 and "interrupted apply (pid" in chk.stdout, chk.stdout
    nxt = run(netns, backend, tmp_path, "reload")
    assert nxt.returncode == 0 and "had landed whole" in nxt.stderr, nxt.stderr
    assert "no change" in nxt.stdout
    assert ours(netns, backend) == whole
    lst = run(netns, backend, tmp_path, "list")
    assert "n1" in lst.stdout and "n2" in lst.stdout
    assert run(netns, backend, tmp_path, "check").returncode == 0


def test_a_killed_removal_is_undone(netns, tmp_path):
    """A remove killed with IPv4's rules of n1 gone and IPv6's still there: the next
    command puts n1 back whole (the state still has it), and says so."""
    backend = "iptables-nft"
    before = setup_two(netns, backend, tmp_path)
    kill_after(netns, backend, tmp_path, "iptables-nft-restore", "remove", "n1")
    half = ours(netns, backend)
    assert "vnetfw:n1" not in half["iptables"] and "vnetfw:n1" in half["ip6tables"]
    doc = json.loads(run(netns, backend, tmp_path, "check", "--json").stdout)
    jsonschema.Draft202012Validator(output.schema("drift")).validate(doc)
    assert [d["problem"] for d in doc["drift"]][:2] == ["interrupted", "missing"]
    assert "remove (pid" in doc["drift"][0]["text"]
    nxt = run(netns, backend, tmp_path, "reload")
    assert "undid an interrupted remove" in nxt.stderr, nxt.stderr
    assert ours(netns, backend) == before


def test_watch_clears_a_change_killed_before_it_committed_anything(netns, tmp_path):
    """Killed after writing its record but before nft ran: nothing to repair, no drift;
    watch --once still resolves the record (the campaign found it left behind)."""
    from benchmarks.faults import write_wrappers
    backend = "nftables"
    before = setup_two(netns, backend, tmp_path)
    write_wrappers(tmp_path / "kbin", backend, tmp_path / "count")
    (tmp_path / "count").write_text("0")
    env = clean_env()
    env.update(PATH=f"{tmp_path / 'kbin'}:{env['PATH']}", FAULT="kill-before:1")
    p = run(netns, backend, tmp_path, "apply", str(tmp_path / "n2.toml"), env=env)
    assert p.returncode == -signal.SIGKILL
    assert (tmp_path / "state" / "inflight.json").exists()
    assert ours(netns, backend) == before
    assert run(netns, backend, tmp_path, "check").returncode == 0     # nothing to report
    w = run(netns, backend, tmp_path, "watch", "--once", "--no-events", "--firewalld", "off")
    assert w.returncode == 0 and "it had changed nothing" in w.stderr, w.stderr
    assert not (tmp_path / "state" / "inflight.json").exists()
    assert ours(netns, backend) == before
