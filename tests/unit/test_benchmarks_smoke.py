"""Smoke test: the benchmark code runs end to end for N=1 on one backend in a namespace.

No timing is asserted (numbers are the benchmark's business, not the tests'); this only
keeps ``python -m benchmarks`` from rotting as vnetfw's internals change.
"""

from __future__ import annotations

import os
import shutil

import pytest

pytestmark = pytest.mark.netns

needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None
                                or shutil.which("iptables-nft-restore") is None,
                                reason="needs root, iproute2 and iptables-nft")


def test_definitions_and_per_rule_script_are_pure():
    from benchmarks import netdefs
    from benchmarks.control import render
    from benchmarks.perrule import iptables_commands

    nets = netdefs.load(netdefs.xmls("mixed", 6))
    assert [n.name for n in nets] == [f"n{i:05d}" for i in range(6)]
    texts, rules = render("iptables-nft", nets)
    cmds = iptables_commands(texts[4], "iptables-nft")
    assert rules > 0 and cmds and all(c.startswith("iptables-nft -w -t ") for c in cmds)


@needs_root
def test_control_case_runs_for_one_network(tmp_path):
    from benchmarks import report
    from benchmarks.control import PerRuleBudget, measure_case

    case = measure_case(tmp_path, "iptables-nft", "nat", 1, runs=1, repeats=1,
                        budget=PerRuleBudget(30.0), log=lambda _msg: None)
    data = case.to_json()
    for key in ("floor", "cli_apply", "lib_apply", "per_rule", "cli_reapply", "lib_add1",
                "cli_rm1", "lib_rm_all"):
        assert data["median_s"].get(key) is not None, key
    text = report.render_all({"meta": {}, "control": {"cases": [data]}}, markdown=True)
    assert "| iptables-nft | nat | 1 |" in text


@needs_root
def test_stress_tool_runs_and_counts_a_whole_load(capsys):
    from benchmarks.stress import main

    assert main(["--loads", "1", "--networks", "3"]) == 0
    assert "1 of 1 loads whole" in capsys.readouterr().out


@needs_root
@pytest.mark.skipif(shutil.which("ipset") is None or shutil.which("iptables-legacy-restore")
                    is None, reason="needs ipset and iptables-legacy")
def test_legacy_sets_what_if_runs_both_layouts():
    from benchmarks.whatif_legacy_sets import add_one, bridges_per_set

    assert bridges_per_set(limit=3) == (3, "")
    (ms, rules), (ms_sets, rules_sets) = add_one(2, 1, False), add_one(2, 1, True)
    assert ms > 0 and ms_sets > 0
    # per network, 8 subnet-bound rules leave the tables; 9 set rules come in once
    assert rules_sets == rules - 2 * 8 + 9


def test_libvirt_hook_benchmark_runs_for_one_network_each():
    from vnetfw.lab import libvirtd
    if (why := libvirtd.missing()) is not None:
        pytest.skip(why)
    from benchmarks import libvirt_hook
    from benchmarks.report import table
    res = libvirt_hook.run(1, log=lambda _msg: None)
    (cell,) = res["cells"]
    assert cell["vnetfw_in_sync_with_n_running"] is True
    assert set(cell["median_s"]) == {"libvirt", "hook", "open"}
    assert "hook / libvirt" in table(*libvirt_hook.rows(res), markdown=True)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("nft") is None,
                    reason="needs root and nft")
def test_per_rule_replay_rebuilds_the_nftables_ruleset_forwards_included(make_netns, tmp_path):
    """libvirt's pattern (one nft process per object) must rebuild exactly what vnetfw
    loaded, forward maps with an ``addr . port`` data type included: nft 1.0.6 cannot
    create those through JSON, and the benchmark stopped with an error once forwards came."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from benchmarks.perrule import nft_commands
    from tests.conftest import nsrun

    src, dst = make_netns("src"), make_netns("dst")
    defs = Path(__file__).parents[1] / "fixtures" / "nft" / "mixed.toml"
    subprocess.run([sys.executable, "-m", "vnetfw", "--netns", src, "--state-dir",
                    str(tmp_path), "--backend", "nftables", "apply", str(defs)],
                   check=True, capture_output=True)
    listing = json.loads(nsrun(src, "nft", "-j", "list", "ruleset"))
    assert any(" . " in str(o.get("map", {}).get("map")) for o in listing["nftables"])
    for cmd in nft_commands(listing):
        subprocess.run(["ip", "netns", "exec", dst, "sh", "-c", cmd], check=True)
    assert _objects(dst) == _objects(src)


def _objects(ns: str) -> list[tuple]:
    """Every table, chain, set and map (kind, name, key and data type, element count) and
    every rule (chain, expressions) of ``ns``: what one process per object has to create.
    Comments and counters on the table and the sets are left out: nft 1.0.6's JSON listing
    drops a table's comment and its JSON input ignores a set's ``counter`` statement."""
    import json

    from tests.conftest import nsrun

    out = []
    for o in json.loads(nsrun(ns, "nft", "-j", "list", "ruleset"))["nftables"]:
        (kind, body), = o.items()
        if kind in ("table", "chain"):
            out.append((kind, body["name"], body.get("hook"), body.get("prio")))
        elif kind in ("set", "map"):
            out.append((kind, body["name"], str(body["type"]), str(body.get("map")),
                        len(body.get("elem", []))))
        elif kind == "rule":
            out.append((kind, body["chain"], json.dumps(body["expr"], sort_keys=True)))
    return sorted(out)
