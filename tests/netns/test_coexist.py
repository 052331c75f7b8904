"""vnetfw next to libvirt's own LIBVIRT_* layout in the same FORWARD chain, with real packets.

libvirt (re)inserts its three FORWARD jumps at the top when it starts. If vnetfw's jumps
were already there, the chain reads LIBVIRT_FWX, LIBVIRT_FWI, LIBVIRT_FWO, VNETFW_FWX, ...:
libvirt's "allow out" (FWO) now runs before vnetfw's "reject in" (FWI), so a libvirt guest
can open connections into vnetfw's NAT network. vnetfw must see that as drift and put its
jumps so that every cross jump comes before every incoming jump, and every incoming jump
before every outgoing one, across both layouts.
"""

from __future__ import annotations

import os

import pytest

from tests.conftest import nsrun, save
from vnetfw.engine import Engine
from vnetfw.lab import matrix
from vnetfw.lab.topology import Lab
from vnetfw.sources.toml import parse_toml

pytestmark = pytest.mark.netns

NETS = parse_toml("""
[[network]]
name = "vn"
bridge = "br-vn"
mode = "nat"
ip = [{ address = "10.31.1.1", prefix = 24 }]
[[network]]
name = "lv"
bridge = "br-lv"
mode = "nat"
ip = [{ address = "10.31.2.1", prefix = 24 }]
""", "test_coexist.py")
VN, LV = NETS[0], NETS[1]


def forward_jumps(ns: str, flavour: str) -> list[str]:
    text = save(ns, flavour).split("## ip6tables")[0]
    return [l.split("-j ")[1] for l in text.splitlines()
            if l.startswith("-A FORWARD") and "_FW" in l]


def stages_in_order(jumps: list[str]) -> bool:
    stage = [("FWX", "FWI", "FWO").index(j[-3:]) for j in jumps]
    return stage == sorted(stage)


@pytest.mark.parametrize("flavour", ["iptables-nft", "iptables-legacy"])
def test_libvirt_restart_above_vnetfw_is_repaired(flavour, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("real-kernel tests need root")
    ipt = "iptables" + flavour.removeprefix("iptables")
    with Lab(NETS, guests=1) as lab:
        hv = lab.require_hv().name
        ours = Engine(backend=flavour, netns=hv, state_dir=tmp_path / "vnetfw",
                      hooks_dir=tmp_path / "none")
        ours.apply([VN])
        # "libvirt": its rules for lv in LIBVIRT_* chains, then its restart re-inserting its
        # plain jumps at the top, in its own order.
        Engine(backend=flavour, profile="libvirt", netns=hv, state_dir=tmp_path / "libvirt",
               hooks_dir=tmp_path / "none").apply([LV])
        for j in ("LIBVIRT_FWO", "LIBVIRT_FWI", "LIBVIRT_FWX"):
            nsrun(hv, ipt, "-D", "FORWARD", "-m", "comment", "--comment", "vnetfw", "-j", j)
            nsrun(hv, ipt, "-I", "FORWARD", "1", "-j", j)
        assert forward_jumps(hv, flavour)[:3] == ["LIBVIRT_FWX", "LIBVIRT_FWI", "LIBVIRT_FWO"]

        before = matrix.run(lab, "default")
        assert before.row("lv/g0", "vn/g0", 4, "tcp").observed.reached, \
            "expected the leak this test is about (libvirt's FWO before vnetfw's FWI)"

        drift = ours.check()
        assert any("out-of-order jump to VNETFW_FW" in c.detail for c in drift), drift
        assert ours.reload().changed
        jumps = forward_jumps(hv, flavour)
        assert stages_in_order(jumps), jumps
        assert sorted(jumps) == sorted(["LIBVIRT_FWX", "LIBVIRT_FWI", "LIBVIRT_FWO",
                                        "VNETFW_FWX", "VNETFW_FWI", "VNETFW_FWO"])
        assert ours.check() == []
        # libvirt's own jumps were not moved: only vnetfw's own rules are ever touched
        assert [j for j in jumps if j.startswith("LIBVIRT")] == \
            ["LIBVIRT_FWX", "LIBVIRT_FWI", "LIBVIRT_FWO"]

        after = matrix.run(lab, "default")
        for src, dst in (("lv/g0", "vn/g0"), ("vn/g0", "lv/g0")):
            for proto in ("tcp", "udp"):
                assert not after.row(src, dst, 4, proto).observed.reached, (src, dst, proto)
        for g in ("lv/g0", "vn/g0"):        # both still reach the uplink
            assert after.row(g, "up:uplink0", 4, "tcp").observed.reached
