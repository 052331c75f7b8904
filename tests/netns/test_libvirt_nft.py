"""Adopting from libvirt's nftables backend with the real libvirt 11.3 (bookworm-backports,
unpacked, not installed: scripts/dev fetches it into .libvirt-bpo/, or
$VNETFW_TEST_LIBVIRT_ROOT names another unpacked root), confined like tests/netns/
test_libvirt.py, with ``firewall_backend = "nftables"``: libvirt's rules live in the tables
``ip``/``ip6 libvirt_network``. ``migrate --adopt`` takes a running network over while new
connections keep going out and none gets in, then the network restarts open under the hook.
Skipped (saying why) when no unpacked libvirt 11 is there.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.netns import test_libvirt as lvt
from vnetfw.lab import libvirtd as lv
from vnetfw.lab.netns import Netns

pytestmark = pytest.mark.netns

ROOT = Path(os.environ.get("VNETFW_TEST_LIBVIRT_ROOT")
            or Path(__file__).resolve().parents[2] / ".libvirt-bpo" / "root")


def _libvirt_rules(ns: Netns, bridge: str) -> list[str]:
    """libvirt's rules naming ``bridge`` in its nftables tables."""
    out = []
    for fam in ("ip", "ip6"):
        p = subprocess.run(ns.argv("nft", "list", "table", fam, "libvirt_network"),
                           capture_output=True, text=True)
        out += [l.strip() for l in p.stdout.splitlines() if f'"{bridge}"' in l]
    return out


@pytest.fixture
def host11(tmp_path):
    if (why := lv.missing()) is not None:
        pytest.skip(why)
    if not (ROOT / "usr/sbin/libvirtd").exists():
        pytest.skip(f"no unpacked libvirt 11 at {ROOT} (scripts/dev test fetches it)")
    ns = Netns.create(f"vnt{os.getpid()}-lv11")
    h = lvt.Host(ns, tmp_path)
    h.d = lv.Libvirtd(ns, tmp_path / "libvirt", root=str(ROOT), fw_backend="nftables")
    try:
        ns.sysctl({"net.ipv4.ip_forward": 1})
        h.install()
        h.d.start()
        yield h
    finally:
        try:
            if h.d.proc:
                h.d.clear()
        finally:
            h.d.kill_all()
            ns.delete()


def test_adopt_from_libvirts_nftables_tables_with_no_gap(host11, tmp_path):
    h = host11
    h.d.define("<network><name>default</name><forward mode='nat'/><bridge name='vbd' "
               "stp='off'/><ip address='10.50.30.1' prefix='24'/><ip family='ipv6' "
               "address='fd00:30::1' prefix='64'/></network>")
    h.d.virsh("net-start", "default")
    before = _libvirt_rules(h.ns, "vbd")
    assert len(before) == 10 and h.active() == []      # 5 per family; its NAT names no bridge
    made: list[Netns] = []
    procs: list[subprocess.Popen] = []
    try:
        up, g = lvt._uplink_and_guest(h.ns, "10.50.30", "uplink", "l11", made)
        procs += [lvt._listen(up, 5001), lvt._listen(g, 5002)]
        out = lvt._connect_loop(g, "198.51.100.2", 5001, 3.0)
        inn = lvt._connect_loop(up, "10.50.30.10", 5002, 3.0)
        dumped = tmp_path / "default.dump.xml"
        dumped.write_text(h.d.virsh("net-dumpxml", "--inactive", "default").stdout)
        converted = tmp_path / "default.open.xml"
        converted.write_text(h.vnetfw("libvirt", "convert", str(dumped)).stdout)
        h.d.virsh("net-define", str(converted))
        time.sleep(0.5)
        dry = h.vnetfw("migrate", "--adopt", "--dry-run", str(converted)).stdout
        assert "would delete 15 old rule(s)" in dry and "libvirt_network guest_nat" in dry
        mig = h.vnetfw("migrate", "--adopt", str(converted))
        ok, fail = map(int, out.communicate(timeout=30)[0].split())
        iok, _ = map(int, inn.communicate(timeout=30)[0].split())
        assert (fail, iok) == (0, 0) and ok > 50, mig.stdout
        assert _libvirt_rules(h.ns, "vbd") == []
        nat = h.ns.run("nft", "list", "chain", "ip", "libvirt_network", "guest_nat")
        assert "10.50.30." not in nat                       # its NAT rules went too
        assert h.active() == ["default"] and h.vnetfw("check").returncode == 0
        # the next start is open: libvirt 11.3 writes nothing, the hook applies it
        h.d.virsh("net-destroy", "default")
        h.d.virsh("net-start", "default")
        assert _libvirt_rules(h.ns, "vbd") == []
        assert h.active() == ["default"] and h.vnetfw("check").returncode == 0
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for n in made:
            n.delete()
