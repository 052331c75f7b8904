"""``vnetfw demo`` end to end: it builds, proves, reports and leaves nothing behind."""

from __future__ import annotations

import json
import os

import pytest

from vnetfw.lab import demo

pytestmark = pytest.mark.netns


def _labs() -> set[str]:
    return {n for n in os.listdir("/run/netns") if n.startswith(f"vl{os.getpid()}-")} \
        if os.path.isdir("/run/netns") else set()


@pytest.mark.parametrize("profile", ["default", "libvirt"])
def test_demo_json(capsys, profile):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    before = _labs()
    rc = demo.run(backend="iptables-nft", profile=profile, json=True)
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["ok"] and doc["mismatches"] == 0, doc
    assert {r["src"].split("/")[0] for r in doc["rows"]} >= {"nat46", "natdev", "routed",
                                                             "isolated", "open", "up:uplink0"}
    iso = [r for r in doc["rows"] if r["src"] == "isolated/g0" and r["dst"] == "routed/g0"
           and r["proto"] == "udp"]
    assert iso and all(r["observed"]["reach"] == (profile == "libvirt") for r in iso)
    assert _labs() == before


def test_demo_tables(capsys):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    assert demo.run(backend="iptables-legacy", profile="default", json=False) == 0
    out = capsys.readouterr().out
    assert "IPv4" in out and "IPv6" in out and "match the policy" in out
