"""Things the kernel is the judge of: which backend holds vnetfw's chains when there is no
state to say, and how long an interface name may be."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import nsrun, save
from vnetfw.engine import Engine
from vnetfw.model import ifname_problem
from vnetfw.sources.toml import parse_toml

NETS = parse_toml("""
[[network]]
name = "nat1"
bridge = "vbr-nat1"
mode = "nat"
ip = [{ address = "10.50.1.1", prefix = 24, dhcp = true }]
[[network]]
name = "iso"
bridge = "vbr-iso"
mode = "isolated"
ip = [{ address = "10.50.2.1", prefix = 24 }]
""", "nets.toml")


def engine(ns, tmp_path, backend="auto", state="state") -> Engine:
    return Engine(backend=backend, netns=ns, state_dir=tmp_path / state,
                  hooks_dir=tmp_path / "no-hooks")


@pytest.mark.parametrize("flavour", ["iptables-nft", "iptables-legacy", "nftables"])
def test_with_no_state_check_status_and_teardown_look_where_vnetfws_chains_are(
        netns, flavour, tmp_path):
    """The state is lost (deleted, or another --state-dir) while vnetfw's rules stay live.
    Before the fix, without --backend, ``check`` and ``status`` called that clean and
    ``teardown`` went to nftables, leaving iptables' chains behind. Now the backend holding
    vnetfw's chains is found: check and status report the rules of networks no state
    names, reload (no desired state: nothing to repair) names that backend and changes
    nothing, teardown takes them out there."""
    engine(netns, tmp_path, backend=flavour).apply(NETS)
    shutil.rmtree(tmp_path / "state")
    eng = engine(netns, tmp_path)
    drift = eng.check()
    assert eng.backend_for(eng.store.load()).name == flavour
    assert drift and {c.network for c in drift if c.network} == {"nat1", "iso"}
    assert all(c.what == "delete" for c in drift)
    st = engine(netns, tmp_path).status()
    assert st["backend"] == flavour and not st["in_sync"]
    def everything() -> str:
        return (save(netns, "iptables-nft") + save(netns, "iptables-legacy")
                + nsrun(netns, "nft", "list", "ruleset"))
    before = everything()
    rep = engine(netns, tmp_path).reload()
    assert rep.backend == flavour and not rep.changed and everything() == before
    rep = engine(netns, tmp_path).teardown()
    assert rep.backend == flavour and rep.changed
    assert "VNETFW" not in everything() and "table inet vnetfw" not in everything()
    assert engine(netns, tmp_path).check() == []


def test_with_no_state_and_nothing_live_auto_is_as_before(netns, tmp_path):
    eng = engine(netns, tmp_path)
    eng.check()
    assert eng.backend_for(eng.store.load()).name == "nftables"


def test_a_legacy_search_loads_no_table(netns, tmp_path):
    """Looking for vnetfw's chains among iptables-legacy's tables where none is loaded
    reads the kernel's list and runs nothing (which could load a table)."""
    before = (nsrun(netns, "cat", "/proc/net/ip_tables_names"),
              nsrun(netns, "cat", "/proc/net/ip6_tables_names"))
    from vnetfw.backends import get_backend
    from vnetfw.backends.runner import Runner
    assert get_backend("iptables-legacy", Runner(netns)).holds("VNETFW") is False
    assert (nsrun(netns, "cat", "/proc/net/ip_tables_names"),
            nsrun(netns, "cat", "/proc/net/ip6_tables_names")) == before


@pytest.mark.parametrize("name", ["ブリッジ網", "ブリッジ網路", "ааааааа", "аааааааа",
                                  "a" * 15, "a" * 16, "é" * 7 + "x", "é" * 8])
def test_the_interface_name_limit_is_the_kernels(netns, name):
    """vnetfw accepts a name exactly when the kernel does: 15 bytes, not characters."""
    p = subprocess.run(["ip", "netns", "exec", netns, "ip", "link", "add", name,
                        "type", "bridge"], capture_output=True, text=True)
    assert (p.returncode == 0) == (ifname_problem(name) is None), (name, p.stderr)
