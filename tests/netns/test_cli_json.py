"""The machine interface a fleet relies on, end to end in namespaces the tests make: the
state a fresh or torn-down namespace reports, exit statuses that survive a gone reader,
every --json document validated against its shipped schema, stdin input, and sync."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from tests.conftest import nsrun
from vnetfw import output
from vnetfw.backends.nfgen import genid
from vnetfw.backends.runner import NETNS_DIR

FIX = Path(__file__).parent.parent / "fixtures" / "libvirt"
SCHEMA_OF = {"setup": "report", "apply": "report", "sync": "report", "remove": "report",
             "reload": "report", "teardown": "report", "check": "drift", "diff": "drift",
             "status": "status", "list": "list", "render": "render", "doctor": "doctor",
             "show": "show"}


def toml(name: str, n: int) -> str:
    return (f'name="{name}"\nbridge="vb-{name}"\nmode="nat"\n'
            f'ip=[{{address="10.91.{n}.1", prefix=24, dhcp=true}}]\n')


class Cli:
    """vnetfw in one namespace with its own state and no hooks."""

    def __init__(self, ns: str, tmp: Path, backend: str) -> None:
        self.ns, self.common = ns, ["--netns", ns, "--backend", backend,
                                    "--state-dir", str(tmp / "state"),
                                    "--hooks-dir", str(tmp / "no-hooks")]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("VNETFW_")}

    def run(self, *args: str, stdin: str | None = None, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "vnetfw", *args, *self.common],
                              input=stdin, capture_output=True, text=True, env=self.env, **kw)

    def json(self, *args: str, stdin: str | None = None, code: int | None = 0) -> dict:
        """The one JSON document of ``vnetfw ARGS --json``, validated against its schema."""
        p = self.run(*args, "--json", stdin=stdin)
        assert code is None or p.returncode == code, (args, p.returncode, p.stderr)
        doc = json.loads(p.stdout)          # exactly one document
        name = "error" if "error" in doc else SCHEMA_OF[args[0]]
        jsonschema.Draft202012Validator(output.schema(name)).validate(doc)
        assert doc["command"] == (args[0] if name != "error" or doc["command"] else None)
        return doc


@pytest.fixture(params=["nftables", "iptables-nft"])
def cli(request, netns, tmp_path) -> Cli:
    return Cli(netns, tmp_path, request.param)


def _agree_clean(cli: Cli) -> None:
    """No desired state: status, check and diff say clean and exit 0, reload repairs
    nothing, watch --once has nothing to guard."""
    for cmd in ("status", "check", "diff"):
        p = cli.run(cmd)
        assert p.returncode == 0, (cmd, p.stdout, p.stderr)
    st = cli.json("status")
    assert st["in_sync"] and not st["desired"] and st["drift"] == []
    assert cli.json("check") | {"schema_version": 0} == {
        "schema_version": 0, "command": "check", "clean": True, "desired": False, "drift": []}
    dry = cli.json("reload", "--dry-run")
    assert not dry["changed"] and dry["changes"] == [] and not dry["applied"]
    w = cli.run("watch", "--once", "--firewalld", "off")
    assert w.returncode == 0 and "nothing to guard" in w.stderr


def test_no_desired_state_is_clean_fresh_and_after_teardown(cli):
    before = nsrun(cli.ns, "nft", "list", "ruleset")
    _agree_clean(cli)
    assert cli.json("reload")["changes"] == []
    assert nsrun(cli.ns, "nft", "list", "ruleset") == before, "reload re-created something"

    cli.json("apply", str(FIX / "nat-default.xml"))
    assert cli.run("check").returncode == 0
    cli.json("teardown")
    torn = nsrun(cli.ns, "nft", "list", "ruleset")     # (iptables-nft: empty builtin tables)
    assert "vnetfw" not in torn.lower()
    _agree_clean(cli)
    cli.json("reload")
    assert nsrun(cli.ns, "nft", "list", "ruleset") == torn, "reload undid the teardown"


def _drifted(cli: Cli) -> None:
    cli.json("apply", str(FIX / "isolated.xml"))
    if "nftables" in cli.common:
        nsrun(cli.ns, "nft", "flush", "table", "inet", "vnetfw")
    else:
        nsrun(cli.ns, "iptables-nft", "-F", "VNETFW_FWI")


@pytest.mark.parametrize("cmd", ["check", "status", "diff"])
def test_the_exit_status_survives_a_reader_that_left(cli, cmd):
    _drifted(cli)
    assert cli.run(cmd).returncode == 1
    for extra in ((), ("--json",)):
        r, w = os.pipe()
        os.close(r)                     # the reader is gone before a byte is written
        p = subprocess.run([sys.executable, "-m", "vnetfw", cmd, *extra, *cli.common],
                           stdout=w, stderr=subprocess.PIPE, env=cli.env)
        os.close(w)
        assert p.returncode == 1 and b"Traceback" not in p.stderr, p.stderr
    # as a shell pipeline, the way monitoring writes it
    argv = " ".join([sys.executable, "-m", "vnetfw", cmd, *cli.common])
    sh = subprocess.run(["bash", "-c", f"set -o pipefail; {argv} | head -c0"],
                        capture_output=True, env=cli.env)
    assert sh.returncode == 1, sh.stderr


def test_every_document_validates_and_drift_has_one_shape(cli, tmp_path):
    xml = str(FIX / "nat-default.xml")
    assert cli.json("setup", "--dry-run")["dry_run"]
    dry = cli.json("apply", "--dry-run", xml)
    assert dry["changed"] and not dry["applied"]
    rep = cli.json("apply", xml)
    assert rep["changed"] and rep["applied"] and rep["networks"] == ["default"]
    assert {c["problem"] for c in rep["changes"]} == {"missing"}
    nothing = cli.json("apply", "--dry-run", xml)
    assert not nothing["changed"] and not nothing["applied"], "a no-op dry run 'applied'"
    assert cli.json("list")["networks"][0]["name"] == "default"
    assert cli.json("diff")["clean"]

    _damage = ["nft", "flush", "table", "inet", "vnetfw"] if "nftables" in cli.common \
        else ["iptables-nft", "-F", "VNETFW_FWI"]
    nsrun(cli.ns, *_damage)
    st, ck, df = cli.json("status", code=1), cli.json("check", code=1), cli.json("diff", code=1)
    assert st["drift"] == ck["drift"] == df["drift"] and st["drift"]
    assert {d["problem"] for d in st["drift"]} == {"missing"}
    rl = cli.json("reload", "--dry-run")
    assert [(c["where"], c["repair"], c["detail"]) for c in rl["changes"]] == \
        [(d["where"], d["repair"], d["detail"]) for d in st["drift"]]
    cli.json("reload")
    assert cli.json("check")["clean"]
    assert not cli.json("doctor", code=None)["networks_from"] == ""
    cli.json("remove", "default")
    cli.json("teardown", "--dry-run")


def test_errors_are_json_with_the_status_of_the_text(cli, tmp_path):
    doc = cli.json("remove", "nosuch", code=2)
    assert doc["error"]["kind"] == "usage" and doc["error"]["field"] == "remove"
    bad = tmp_path / "bad.xml"
    bad.write_text((FIX / "nat-default.xml").read_text().replace("virbr0", "virbr0/x"))
    doc = cli.json("apply", str(bad), code=2)
    assert doc["error"]["file"] == str(bad) and doc["error"]["network"] == "default"
    assert doc["error"]["field"].startswith("bridge")
    (tmp_path / "state").mkdir(exist_ok=True)
    (tmp_path / "state" / "state.json").write_text("{not json")
    doc = cli.json("status", code=4)
    assert doc["error"]["kind"] == "state"
    assert doc["error"]["file"] == str(tmp_path / "state" / "state.json")


def test_apply_and_sync_read_a_definition_from_stdin(cli):
    xml = (FIX / "nat-default.xml").read_text()
    rep = cli.json("apply", "-", stdin=xml)
    assert rep["networks"] == ["default"] and rep["changed"]
    assert cli.json("check")["clean"]
    st = cli.json("sync", "-", stdin=toml("other", 1))
    assert st["networks"] == ["other"]
    assert [n["name"] for n in cli.json("list")["networks"]] == ["other"]
    assert cli.json("list")["networks"][0]["source"] == "<stdin>"


def _nft_gen(ns: str) -> int:
    return genid(os.path.join(NETNS_DIR, ns)).id


def test_sync_makes_the_active_set_exactly_the_given_ones_in_one_change(netns, tmp_path):
    cli = Cli(netns, tmp_path, "nftables")
    d = tmp_path / "defs"
    d.mkdir()
    for i, name in enumerate(["a", "b", "c"]):
        (d / f"{name}.toml").write_text(toml(name, i))
    cli.json("apply", str(d))
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "b.toml").write_text(toml("b", 1))
    (keep / "d.toml").write_text(toml("d", 3))
    before = nsrun(netns, "nft", "list", "ruleset")
    dry = cli.json("sync", "--dry-run", str(keep))
    assert dry["changed"] and not dry["applied"]
    assert {c["network"] for c in dry["changes"]} - {None} == {"a", "c", "d"}
    assert nsrun(netns, "nft", "list", "ruleset") == before
    g = _nft_gen(netns)
    rep = cli.json("sync", str(keep))
    assert _nft_gen(netns) == g + 1, "sync took more than one transaction"
    assert {c["network"] for c in rep["changes"] if c["problem"] == "unexpected"} \
        >= {"a", "c"}
    assert [n["name"] for n in cli.json("list")["networks"]] == ["b", "d"]
    assert cli.json("check")["clean"]
    text = nsrun(netns, "nft", "list", "ruleset")
    assert "vb-b" in text and "vb-d" in text and "vb-a" not in text and "vb-c" not in text
    again = cli.json("sync", str(keep))
    assert not again["changed"]

    # a bad definition in the set changes nothing at all
    (keep / "e.toml").write_text('name="e"\nbridge="vb/e"\nmode="nat"\n')
    assert cli.json("sync", str(keep), code=2)["error"]["file"] == str(keep / "e.toml")
    assert nsrun(netns, "nft", "list", "ruleset") == text
    assert [n["name"] for n in cli.json("list")["networks"]] == ["b", "d"]


def test_sync_runs_removed_hooks_for_the_others(netns, tmp_path):
    hooks = tmp_path / "no-hooks"
    hooks.mkdir()
    log = tmp_path / "hook.log"
    (hooks / "10-log").write_text(f'#!/bin/sh\necho "$1 $2" >> {log}\n')
    (hooks / "10-log").chmod(0o755)
    cli = Cli(netns, tmp_path, "nftables")
    cli.json("apply", "-", stdin=toml("a", 0))
    cli.json("sync", "-", stdin=toml("b", 1))
    assert log.read_text().splitlines() == ["a added", "b added", "a removed"]
