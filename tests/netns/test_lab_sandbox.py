"""The lab's own safety: the namespace guard, and cleanup on every way out."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from vnetfw.errors import GuardError
from vnetfw.lab.netns import SELF_NS, Netns, guard
from vnetfw.lab.topology import Lab
from vnetfw.sources.toml import parse_toml

NETS = parse_toml("""
name = "n1"
bridge = "br-n1"
mode = "route"
ip = [{ address = "10.30.1.1", prefix = 24 }]
""")


def _exists(name: str) -> bool:
    return os.path.exists(f"/run/netns/{name}")


def root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")


def test_guard_refuses_own_namespace_and_non_namespaces(tmp_path):
    with pytest.raises(GuardError, match="runs in"):
        guard("self", SELF_NS)
    f = tmp_path / "plain"
    f.write_text("")
    with pytest.raises(GuardError, match="not a network namespace"):
        guard("plain", str(f))
    with pytest.raises(GuardError, match="cannot be inspected"):
        guard("missing", str(tmp_path / "missing"))


def test_guard_refuses_a_name_bound_to_our_namespace():
    """``ip netns attach`` gives our own namespace a name: nothing may run through it."""
    root()
    name = f"vlguard{os.getpid()}"
    subprocess.run(["ip", "netns", "attach", name, str(os.getpid())], check=True)
    try:
        ns = Netns(name)
        for attempt in (lambda: ns.ip("link", "add", "vlbad0", "type", "dummy"),
                        lambda: ns.run("true"), lambda: ns.sysctl({"net.ipv4.ip_forward": 1})):
            with pytest.raises(GuardError):
                attempt()
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
    assert "vlbad0" not in subprocess.run(["ip", "-o", "link"], capture_output=True,
                                          text=True).stdout


def test_lab_cleans_up_after_an_exception():
    root()
    with pytest.raises(RuntimeError, match="boom"):
        with Lab(NETS, guests=1) as lab:
            names = [ns.name for ns in lab.namespaces]
            procs = [lst.proc for lst in lab.listeners.values()]
            assert names and all(_exists(n) for n in names)
            raise RuntimeError("boom")
    assert not any(_exists(n) for n in names)
    assert all(p.poll() is not None for p in procs)


def test_lab_cleans_up_on_sigterm():
    root()
    code = ("import sys, time\n"
            "from vnetfw.lab.topology import Lab\n"
            "from tests.netns.test_lab_sandbox import NETS\n"
            "with Lab(NETS, guests=1) as lab:\n"
            "    print(' '.join(ns.name for ns in lab.namespaces), flush=True)\n"
            "    time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    try:
        names = p.stdout.readline().split()
        assert names and all(_exists(n) for n in names)
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=20) == 128 + signal.SIGTERM
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
    assert not any(_exists(n) for n in names)
