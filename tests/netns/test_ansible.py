"""The Ansible collection (ansible/), run by ansible-playbook against localhost inside a test
namespace (the modules' netns option), with ansible-core from pip (the test extras).

Each playbook's registered results are written to a JSON file the test reads; between
playbooks the test looks at the kernel itself: present (changed), present again (unchanged),
a change in check mode with --diff (reported, the kernel's ruleset byte for byte as before),
the change for real with its diff, absent (twice), sync (exactly the folder, removing the
others, idempotent, and in check mode changing nothing), and the status as facts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import nsrun

pytestmark = pytest.mark.netns
ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
VNETFW = Path(sys.executable).parent / "vnetfw"

LAB = """\
[[network]]
name = "lab"
bridge = "vlab0"
mode = "nat"
[[network.ip]]
address = "10.77.0.1"
prefix = 24
"""
LAB_ROUTED = LAB.replace('mode = "nat"', 'mode = "route"')
LAB2 = """\
[[network]]
name = "lab2"
bridge = "vlab2"
mode = "isolated"
[[network.ip]]
address = "10.78.0.1"
prefix = 24
"""


@pytest.fixture
def play(tmp_path, netns):
    """``play(tasks, *flags)`` runs one playbook of ``tasks`` (each registered as r0, r1 ...)
    on localhost with the modules pointed at ``netns``; returns (results, stdout)."""
    if not PLAYBOOK.exists():
        pytest.skip("ansible-core is not installed (pip install -e '.[test]')")
    coll = tmp_path / "collections" / "ansible_collections" / "vnetfw" / "vnetfw"
    shutil.copytree(ROOT / "ansible", coll)
    inventory = tmp_path / "inventory"
    inventory.write_text(f"localhost ansible_connection=local "
                         f"ansible_python_interpreter={sys.executable}\n")
    common = {"netns": netns, "state_dir": str(tmp_path / "state"), "backend": "nftables",
              "executable": str(VNETFW)}
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(tmp_path / "collections"),
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"),
               ANSIBLE_HOME=str(tmp_path / "ansible-home"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_RETRY_FILES_ENABLED="0", ANSIBLE_DEPRECATION_WARNINGS="0")
    runs = iter(range(100))

    def run(tasks: list[dict], *flags: str) -> tuple[dict, str]:
        n = next(runs)
        out = tmp_path / f"results{n}.json"
        body = []
        for i, (module, args, extra) in enumerate(tasks):
            uses_common = module != "ansible.builtin.command"
            body.append({"name": f"task {i}", module: ({**common, **args} if uses_common
                                                       else args),
                         "register": f"r{i}", **extra})
        results = "{" + ", ".join(f"'r{i}': r{i}" for i in range(len(tasks))) + "}"
        body.append({"name": "results", "ansible.builtin.copy": {
            "content": "{{ " + results + " | to_json }}", "dest": str(out)},
            "check_mode": False, "diff": False})
        book = tmp_path / f"play{n}.yml"
        book.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False,
                                     "tasks": body}]))
        p = subprocess.run([str(PLAYBOOK), "-i", str(inventory), str(book), *flags],
                           capture_output=True, text=True, env=env, cwd=tmp_path)
        assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
        return json.loads(out.read_text()), p.stdout

    run.common = common
    return run


def ruleset(ns: str) -> str:
    return nsrun(ns, "nft", "list", "ruleset")


def test_network_present_again_check_diff_change_absent(play, netns, tmp_path):
    net = "vnetfw.vnetfw.network"
    res, _ = play([(net, {"name": "lab", "definition": LAB}, {}),
                   (net, {"name": "lab", "definition": LAB}, {})])
    assert res["r0"]["changed"] and res["r0"]["changes"]
    assert res["r0"]["backend"] == "nftables"
    assert not res["r1"]["changed"] and res["r1"]["changes"] == []   # idempotent
    live = ruleset(netns)
    assert "vlab0" in live and "10.77.0.0/24" in live

    # A change in check mode with --diff: reported, nothing changed on the kernel.
    res, out = play([(net, {"name": "lab", "definition": LAB_ROUTED}, {})], "--check", "--diff")
    r = res["r0"]
    assert r["changed"] and r["changes"] and not r["report"]["applied"]
    assert r["report"]["dry_run"]
    assert ruleset(netns) == live
    texts = [c["text"] for c in r["changes"]]
    assert any(("+ " + t) in out or ("- " + t) in out for t in texts), out[-3000:]
    assert "masquerade" in ruleset(netns)

    # The same change for real: the diff is the network's live rules before and after.
    res, out = play([(net, {"name": "lab", "definition": LAB_ROUTED}, {})], "--diff")
    r = res["r0"]
    assert r["changed"] and r["report"]["applied"]
    assert r["diff"]["before"] != r["diff"]["after"] and "vlab0" in r["diff"]["after"]
    assert "masquerade" not in ruleset(netns) and "vlab0" in ruleset(netns)

    # A definition of another network is refused, naming both; nothing changes.
    before = ruleset(netns)
    res, _ = play([(net, {"name": "lab", "definition": LAB2}, {"ignore_errors": True})])
    assert res["r0"]["failed"] and "'lab2'" in res["r0"]["msg"] and "'lab'" in res["r0"]["msg"]
    assert ruleset(netns) == before

    # Absent, then absent again.
    res, _ = play([(net, {"name": "lab", "state": "absent"}, {}),
                   (net, {"name": "lab", "state": "absent"}, {})])
    assert res["r0"]["changed"] and not res["r1"]["changed"]
    assert "vlab0" not in ruleset(netns)


def test_sync_and_facts(play, netns, tmp_path):
    both, only2 = tmp_path / "both", tmp_path / "only2"
    both.mkdir()
    only2.mkdir()
    (both / "lab.toml").write_text(LAB)
    (both / "lab2.toml").write_text(LAB2)
    (only2 / "lab2.toml").write_text(LAB2)
    sync, facts = "vnetfw.vnetfw.sync", "vnetfw.vnetfw.facts"

    res, _ = play([(sync, {"src": [str(both)]}, {}), (sync, {"src": [str(both)]}, {}),
                   (facts, {}, {})])
    assert res["r0"]["changed"] and sorted(res["r0"]["networks"]) == ["lab", "lab2"]
    assert not res["r1"]["changed"]
    st = res["r2"]["ansible_facts"]["vnetfw"]
    assert st["in_sync"] and sorted(n["name"] for n in st["networks"]) == ["lab", "lab2"]

    # In check mode: lab would go; nothing changes.
    live = ruleset(netns)
    res, out = play([(sync, {"src": [str(only2)]}, {})], "--check", "--diff")
    assert res["r0"]["changed"] and res["r0"]["removed"] == ["lab"]
    assert ruleset(netns) == live

    res, _ = play([(sync, {"src": [str(only2)]}, {}), (facts, {}, {})])
    assert res["r0"]["changed"] and res["r0"]["removed"] == ["lab"]
    assert [n["name"] for n in res["r1"]["ansible_facts"]["vnetfw"]["networks"]] == ["lab2"]
    live = ruleset(netns)
    assert "vlab2" in live and "vlab0" not in live
