"""Shared test fixtures.

Real-kernel tests run in network namespaces that the tests create and always delete. The
session-wide ``host_guard`` snapshots the firewall, links and forwarding sysctls of the
namespace pytest was started in and fails the run if any of them changed: no test may ever
touch the host.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess

import pytest

IS_ROOT = os.geteuid() == 0
HAVE_IP = shutil.which("ip") is not None
_counter = itertools.count()


def _out(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return f"<{argv[0]} missing>"
    p = subprocess.run(argv, capture_output=True, text=True)
    # Drop iptables-save's timestamped header/footer comments.
    return "\n".join(l for l in (p.stdout + p.stderr).splitlines() if not l.startswith("#"))


def host_snapshot() -> dict[str, str]:
    snap = {}
    for cmd in (["iptables-nft-save"], ["ip6tables-nft-save"], ["iptables-legacy-save"],
                ["ip6tables-legacy-save"], ["nft", "list", "ruleset"], ["ip", "-o", "link"],
                ["ip", "-o", "addr"]):
        snap[" ".join(cmd)] = _out(cmd)
    for key in ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"):
        try:
            with open(f"/proc/sys/{key}") as f:
                snap[key] = f.read()
        except OSError:
            snap[key] = "<unreadable>"
    return snap


@pytest.fixture(scope="session", autouse=True)
def no_host_hooks(tmp_path_factory):
    """vnetfw processes started by tests never run the host's /etc/vnetfw/hooks.d."""
    old = os.environ.get("VNETFW_HOOKS_DIR")
    os.environ["VNETFW_HOOKS_DIR"] = str(tmp_path_factory.mktemp("no-hooks"))
    yield
    if old is None:
        os.environ.pop("VNETFW_HOOKS_DIR", None)
    else:
        os.environ["VNETFW_HOOKS_DIR"] = old


@pytest.fixture(scope="session", autouse=True)
def host_guard():
    """Fail the session if the host's firewall, links, addresses or sysctls changed."""
    if not IS_ROOT:
        yield
        return
    before = host_snapshot()
    yield
    after = host_snapshot()
    changed = [k for k in before if before[k] != after[k]]
    assert not changed, f"tests changed the host namespace: {changed}"


def _require_netns():
    if not IS_ROOT:
        pytest.skip("real-kernel tests need root")
    if not HAVE_IP:
        pytest.skip("iproute2 (ip) is not installed")


@pytest.fixture
def make_netns():
    """Factory: ``make_netns()`` -> name of a fresh namespace with lo up; all deleted after."""
    _require_netns()
    made: list[str] = []

    def make(tag: str = "t") -> str:
        name = f"vnt{os.getpid()}-{tag}{next(_counter)}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        made.append(name)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        return name

    yield make
    for name in made:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def netns(make_netns):
    """One fresh network namespace (deleted after the test)."""
    return make_netns()


def nsrun(ns: str, *argv: str, stdin: str | None = None, check: bool = True) -> str:
    """Run a command inside namespace ``ns``; return stdout."""
    p = subprocess.run(["ip", "netns", "exec", ns, *argv], input=stdin, capture_output=True,
                       text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} in {ns} failed: {p.stderr.strip()}")
    return p.stdout


def save(ns: str, flavour: str = "iptables-nft") -> str:
    """Both families' iptables-save of ``ns`` for ``flavour``, without timestamps/counters."""
    mid = flavour.removeprefix("iptables")
    text = ""
    for fam in ("iptables", "ip6tables"):
        out = nsrun(ns, f"{fam}{mid}-save")
        text += f"## {fam}\n" + "\n".join(l for l in out.splitlines() if not l.startswith("#")) + "\n"
    return text


def blocks_by_name(saved: str) -> str:
    """``save`` output with each chain's vnetfw rules regrouped by network name (stable).

    vnetfw keeps network blocks in the order they were applied and appends new or
    re-added ones; no packet can tell two block orders apart (each block matches only its
    own bridge or subnets). Compare with this where a repair may append a block that a
    fresh apply would have put elsewhere. Every other line keeps its place."""
    lines = saved.splitlines()
    ours = [i for i, l in enumerate(lines) if l.startswith("-A ") and '"vnetfw:' in l]

    # One group per run of consecutive vnetfw rules (a chain, as iptables-save prints it).
    groups: dict[int, list[int]] = {}
    for i in ours:
        groups.setdefault(_run_start(lines, i), []).append(i)
    out = list(lines)
    for idx in groups.values():
        ordered = sorted(idx, key=lambda i: (lines[i].split()[1],
                                             lines[i].split('"vnetfw:')[1].split('"')[0]))
        for dst, src in zip(idx, ordered):
            out[dst] = lines[src]
    return "\n".join(out) + "\n"


def _run_start(lines: list[str], i: int) -> int:
    chain = lines[i].split()[1]
    while i > 0 and lines[i - 1].startswith(f"-A {chain} ") and '"vnetfw:' in lines[i - 1]:
        i -= 1
    return i
