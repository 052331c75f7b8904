"""``vnetfw doctor`` on a real kernel: each finding reproduced in a namespace and reported,
a clean namespace reporting nothing wrong, and doctor changing nothing, ever.

doctor is run as an admin would (``python -m vnetfw --netns NS doctor --json``), and every
run is bracketed by a snapshot of the namespace's iptables (both flavours and families), nft
ruleset, links and sysctls, which must be identical afterwards.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import nsrun
from vnetfw.engine import Engine
from vnetfw.sources.toml import parse_toml

pytestmark = pytest.mark.netns
FLAVOURS = ["iptables-nft", "iptables-legacy"]

TOML = """
[[network]]
name = "natnet"
bridge = "vbr-nat"
mode = "nat"
ip = [{ address = "10.20.1.1", prefix = 24, dhcp = true },
      { address = "fd00:20:1::1", prefix = 64 }]
[[network]]
name = "iso"
bridge = "vbr-iso"
mode = "isolated"
ip = [{ address = "10.20.2.1", prefix = 24 }]
"""
NETS = parse_toml(TOML, "nets.toml")


def ipt(flavour: str, fam: int = 4) -> str:
    return ("iptables" if fam == 4 else "ip6tables") + flavour.removeprefix("iptables")


def snapshot(ns: str) -> dict[str, str]:
    """Everything doctor could change, minus packet counters (traffic moves them)."""
    out = {}
    for cmd in ("iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save",
                "ip6tables-legacy-save"):
        out[cmd] = re.sub(r"\[\d+:\d+\]", "", "\n".join(
            l for l in nsrun(ns, cmd).splitlines() if not l.startswith("#")))
    out["nft"] = nsrun(ns, "nft", "-s", "list", "ruleset")       # -s: without counters
    out["links"] = nsrun(ns, "ip", "-o", "link")
    for key in ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding",
                "net/bridge/bridge-nf-call-iptables"):
        out[key] = nsrun(ns, "cat", f"/proc/sys/{key}", check=False)
    return out


def doctor(ns: str, state: str, *paths: str) -> tuple[int, dict]:
    before = snapshot(ns)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VNETFW_")}
    p = subprocess.run([sys.executable, "-m", "vnetfw", "--netns", ns, "--state-dir", state,
                        "doctor", "--json", *paths], capture_output=True, text=True, env=env)
    assert p.returncode in (0, 1), p.stderr
    assert snapshot(ns) == before, "doctor changed something"
    rep = json.loads(p.stdout)
    assert rep["ok"] == (p.returncode == 0) == (rep["problems"] == 0)
    return p.returncode, rep


def codes(rep: dict, severity: str | None = None) -> set[str]:
    return {f["code"] for f in rep["findings"] if severity in (None, f["severity"])}


def host_of_networks(ns: str, state, flavour: str = "iptables-nft", forwarding: bool = True):
    """A namespace where NETS run as they should: bridges up with their addresses,
    forwarding on, rules applied by vnetfw."""
    for n in NETS:
        nsrun(ns, "ip", "link", "add", n.bridge, "type", "bridge")
        for ip in n.ips:
            nsrun(ns, "ip", "addr", "add", f"{ip.address}/{ip.prefix}", "dev", n.bridge)
        nsrun(ns, "ip", "link", "set", n.bridge, "up")
    val = "1" if forwarding else "0"
    nsrun(ns, "sysctl", "-qw", f"net.ipv4.ip_forward={val}", f"net.ipv6.conf.all.forwarding={val}")
    Engine(backend=flavour, netns=ns, state_dir=state).apply(NETS)


def test_an_empty_namespace_has_nothing_wrong(netns, tmp_path):
    rc, rep = doctor(netns, str(tmp_path / "st"))
    assert rc == 0 and rep["findings"] == []


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_healthy_networks_have_no_problem(netns, flavour, tmp_path):
    host_of_networks(netns, tmp_path / "st", flavour)
    rc, rep = doctor(netns, str(tmp_path / "st"))
    assert rc == 0, rep["findings"]
    assert rep["networks"] == ["iso", "natnet"] and rep["backend"] == flavour
    assert codes(rep) <= {"br-netfilter"}


def test_forwarding_off(netns, tmp_path):
    host_of_networks(netns, tmp_path / "st", forwarding=False)
    rc, rep = doctor(netns, str(tmp_path / "st"))
    assert rc == 1
    assert {"forwarding-off-ipv4", "forwarding-off-ipv6"} <= codes(rep, "problem")
    f = next(f for f in rep["findings"] if f["code"] == "forwarding-off-ipv6")
    assert f["networks"] == ["natnet"]          # the isolated network routes nothing
    nsrun(netns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    rc, rep = doctor(netns, str(tmp_path / "st"))
    assert "forwarding-off-ipv4" not in codes(rep) and "forwarding-off-ipv6" in codes(rep)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_forward_policy_drop_in_the_same_flavour_is_only_a_note(netns, flavour, tmp_path):
    host_of_networks(netns, tmp_path / "st", flavour)
    nsrun(netns, ipt(flavour), "-P", "FORWARD", "DROP")
    rc, rep = doctor(netns, str(tmp_path / "st"))
    assert rc == 0
    f = next(f for f in rep["findings"] if f["code"] == f"forward-drop-{flavour}-ipv4")
    assert f["severity"] == "note" and "still win" in f["why"]


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_forward_policy_drop_in_the_other_flavour_breaks(netns, flavour, tmp_path):
    other = "iptables-legacy" if flavour == "iptables-nft" else "iptables-nft"
    host_of_networks(netns, tmp_path / "st", flavour)
    nsrun(netns, ipt(other, 6), "-P", "FORWARD", "DROP")
    rc, rep = doctor(netns, str(tmp_path / "st"))
    assert rc == 1
    f = next(f for f in rep["findings"] if f["code"] == f"forward-drop-{other}-ipv6")
    assert f["severity"] == "problem"
    assert "accept verdict only ends the base chain" in f["why"]
    assert f"--backend {other}" in f["fix"]
    assert "mixed-iptables" in codes(rep, "problem")   # both flavours hold something now


def test_nft_table_with_forward_drop_breaks(netns, tmp_path):
    host_of_networks(netns, tmp_path / "st")
    nsrun(netns, "nft", "-f", "-", stdin="table inet filter {\n chain forward {\n"
          "  type filter hook forward priority 0; policy drop;\n }\n}\n")
    rc, rep = doctor(netns, str(tmp_path / "st"))
    assert rc == 1
    f = next(f for f in rep["findings"] if f["code"] == "nft-forward-drop-inet-filter")
    assert "whatever vnetfw accepts" in f["why"] and "iifname" in f["fix"]


def test_docker_chains(netns, tmp_path):
    flavour = "iptables-nft"
    host_of_networks(netns, tmp_path / "st", flavour)
    cmd = ipt(flavour)
    for c in ("DOCKER", "DOCKER-USER", "DOCKER-ISOLATION-STAGE-1"):
        nsrun(netns, cmd, "-N", c)
    nsrun(netns, cmd, "-I", "FORWARD", "-j", "DOCKER-USER")
    nsrun(netns, cmd, "-A", "DOCKER-ISOLATION-STAGE-1", "-i", "docker0", "!", "-o", "docker0",
          "-j", "RETURN")
    nsrun(netns, cmd, "-P", "FORWARD", "DROP")
    rc, rep = doctor(netns, str(tmp_path / "st"))
    assert rc == 0, rep["findings"]
    assert "other-manager-docker" in codes(rep, "note")
    drop = next(f for f in rep["findings"] if f["code"] == f"forward-drop-{flavour}-ipv4")
    assert "Docker" in drop["what"] and drop["severity"] == "note"
    # an admin's rule in DOCKER-USER that drops a managed bridge breaks it
    nsrun(netns, cmd, "-I", "DOCKER-USER", "-o", "vbr-nat", "-j", "DROP")
    rc, rep = doctor(netns, str(tmp_path / "st"))
    assert rc == 1 and "other-manager-docker" in codes(rep, "problem")


def test_libvirt_table_and_chains_for_a_managed_bridge(netns, tmp_path):
    host_of_networks(netns, tmp_path / "st")
    # libvirt's nftables backend table, without our bridge: a note
    nsrun(netns, "nft", "-f", "-", stdin="table ip libvirt_network {\n chain guest_output {\n"
          '  iifname "virbr0" ip saddr 192.168.122.0/24 counter accept\n }\n}\n')
    rc, rep = doctor(netns, str(tmp_path / "st"))
    assert rc == 0 and "other-manager-libvirt" in codes(rep, "note")
    # ... and with a rule for a managed bridge: a problem
    nsrun(netns, "nft", "add", "rule", "ip", "libvirt_network", "guest_output", "oifname",
          "vbr-nat", "reject")
    rc, rep = doctor(netns, str(tmp_path / "st"))
    assert rc == 1
    f = next(f for f in rep["findings"] if f["code"] == "other-manager-libvirt")
    assert f["severity"] == "problem" and f["networks"] == ["natnet"]
    assert "migrate --adopt" in f["fix"]


def test_legacy_and_nft_mix(netns, tmp_path):
    nsrun(netns, "iptables-nft", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT")
    rc, rep = doctor(netns, str(tmp_path / "st"))
    assert rc == 0 and rep["findings"] == []
    nsrun(netns, "ip6tables-legacy", "-t", "nat", "-A", "POSTROUTING", "-o", "eth0", "-j",
          "MASQUERADE")
    rc, rep = doctor(netns, str(tmp_path / "st"))
    assert rc == 1 and codes(rep, "problem") == {"mixed-iptables"}
    f = rep["findings"][0]
    assert any(d.startswith("iptables-legacy ipv6 nat") for d in f["details"])


def test_missing_bridge(netns, tmp_path):
    host_of_networks(netns, tmp_path / "st")
    nsrun(netns, "ip", "link", "del", "vbr-iso")
    nsrun(netns, "ip", "link", "add", "vbr-nat-x", "type", "veth", "peer", "name", "vpeer-x")
    rc, rep = doctor(netns, str(tmp_path / "st"))
    assert rc == 1 and codes(rep, "problem") == {"bridge-missing-vbr-iso"}
    # networks given on the command line are checked instead of the active ones
    other = tmp_path / "other.toml"
    other.write_text('[[network]]\nname = "x"\nbridge = "vbr-nat-x"\nmode = "isolated"\n')
    rc, rep = doctor(netns, str(tmp_path / "st"), str(other))
    assert rc == 1 and codes(rep, "problem") == {"bridge-not-bridge-vbr-nat-x"}
    assert rep["networks_from"] == "arguments"


def test_br_netfilter_note_follows_the_sysctl(netns, tmp_path):
    host_of_networks(netns, tmp_path / "st")
    rc, rep = doctor(netns, str(tmp_path / "st"))
    if nsrun(netns, "cat", "/proc/sys/net/bridge/bridge-nf-call-iptables",
             check=False).strip() != "1":
        pytest.skip("br_netfilter is not loaded on this kernel")
    assert "br-netfilter" in codes(rep, "note")
    nsrun(netns, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0",
          "net.bridge.bridge-nf-call-ip6tables=0")
    rc, rep = doctor(netns, str(tmp_path / "st"))
    assert rc == 0 and "br-netfilter" not in codes(rep)


def test_old_layout_rules_and_libvirt_jump_order(netns, tmp_path):
    from tests.netns.test_migrate import _run_old, libvirt_layout
    host_of_networks(netns, tmp_path / "st")
    # an old libvirt's rules for natnet's bridge, straight in the builtin chains
    _run_old(netns, "iptables-nft", "vbr-nat", "10.20.1.0/24", None)
    rc, rep = doctor(netns, str(tmp_path / "st"))
    assert rc == 1 and "old-layout-rules" in codes(rep, "problem")
    # libvirt (>= 5.1) starts another network: its jumps land on top of ours
    lv = parse_toml('[[network]]\nname = "lv"\nbridge = "virbr7"\nmode = "nat"\n'
                    'ip = [{ address = "10.77.0.1", prefix = 24 }]\n', "lv.toml")
    libvirt_layout(netns, "iptables-nft", lv)
    nsrun(netns, "iptables-nft", "-D", "FORWARD", "-j", "LIBVIRT_FWX")
    nsrun(netns, "iptables-nft", "-D", "FORWARD", "-j", "LIBVIRT_FWI")
    nsrun(netns, "iptables-nft", "-D", "FORWARD", "-j", "LIBVIRT_FWO")
    for c in ("FWO", "FWI", "FWX"):
        nsrun(netns, "iptables-nft", "-I", "FORWARD", "-j", f"LIBVIRT_{c}")
    rc, rep = doctor(netns, str(tmp_path / "st"))
    assert "layout-order-ipv4" in codes(rep, "problem")
    # migrate repairs both
    from vnetfw.migrate_run import migrate
    migrate(NETS, adopt=True, backend="iptables-nft", netns=netns, state_dir=tmp_path / "st")
    rc, rep = doctor(netns, str(tmp_path / "st"))
    assert rc == 0, rep["findings"]
    assert "other-manager-libvirt" in codes(rep, "note")


def test_firewalld_zone_of_a_managed_bridge(make_netns, tmp_path):
    """A real firewalld in the namespace, on a private bus named by $VNETFW_FIREWALLD_BUS:
    a bridge left in the default zone (public) is a problem; in 'trusted' it is not."""
    from tests.netns.test_firewalld import make_real_firewalld
    fw = make_real_firewalld(make_netns, tmp_path)
    try:
        host_of_networks(fw.ns, tmp_path / "st")
        env = {"VNETFW_FIREWALLD_BUS": fw.addr}
        rc, rep = doctor_env(fw.ns, str(tmp_path / "st"), env)
        assert rc == 1
        f = next(x for x in rep["findings"] if x["code"] == "firewalld-zone-vbr-nat")
        assert "zone public" in f["what"] and "default zone" in f["what"]
        assert "--change-interface=vbr-nat" in f["fix"]
        assert not any("firewalld zones" in n for n in rep["not_checked"])
        for br in ("vbr-nat", "vbr-iso"):
            assert fw.cmd("--zone=trusted", f"--change-interface={br}").returncode == 0
        rc, rep = doctor_env(fw.ns, str(tmp_path / "st"), env)
        assert not any(x["code"].startswith("firewalld-zone") for x in rep["findings"])
        # firewalld's table is judged through its zones when firewalld can be asked
        assert not any(x["code"].startswith("nft-forward-drop") for x in rep["findings"])
        # without the bus named, firewalld is not asked from inside a namespace; its table
        # is still judged on its own, with the zone as the fix
        rc, rep = doctor(fw.ns, str(tmp_path / "st"))
        assert any("firewalld zones" in n for n in rep["not_checked"])
        f = next(x for x in rep["findings"] if x["code"] == "nft-forward-drop-inet-firewalld")
        assert "--change-interface" in f["fix"]
    finally:
        fw.stop()
        fw.bus_process.terminate()
        fw.bus_process.wait(5)


def doctor_env(ns: str, state: str, extra_env: dict[str, str]) -> tuple[int, dict]:
    before = snapshot(ns)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VNETFW_")} | extra_env
    p = subprocess.run([sys.executable, "-m", "vnetfw", "--netns", ns, "--state-dir", state,
                        "doctor", "--json"], capture_output=True, text=True, env=env)
    assert p.returncode in (0, 1), p.stderr
    assert snapshot(ns) == before, "doctor changed something"
    return p.returncode, json.loads(p.stdout)
