"""The CLI's machine interface without root: the JSON Schemas themselves, the exit-status
table in --help and in the docs, errors as JSON, and definitions read from stdin. (What
the commands that touch a firewall print is validated in tests/netns/test_cli_json.py.)"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from vnetfw import output
from vnetfw.backends import Change
from vnetfw.errors import DefinitionError, StateError, UsageError

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = sorted(p.stem for p in (ROOT / "src" / "vnetfw" / "schemas").glob("*.json"))

TOML = b'name="x"\nbridge="vbx"\nmode="nat"\nip=[{address="10.77.0.1", prefix=24}]\n'
XML = (b"<?xml version='1.0'?>\n<network><name>y</name><forward mode='nat'/>"
       b"<bridge name='vby'/><ip address='10.78.0.1' prefix='24'/></network>\n")


def vnetfw(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vnetfw", *args], input=stdin,
                          capture_output=True)


def valid(doc: dict, name: str) -> dict:
    jsonschema.Draft202012Validator(output.schema(name)).validate(doc)
    return doc


def test_the_shipped_schemas_are_schemas_and_share_one_change_shape():
    assert {"report", "drift", "status", "list", "render", "error", "doctor",
            "migrate"} <= set(SCHEMAS)
    shapes = []
    for name in SCHEMAS:
        s = output.schema(name)
        jsonschema.Draft202012Validator.check_schema(s)
        assert s["properties"]["schema_version"] == {"const": output.SCHEMA_VERSION}
        if "change" in s.get("$defs", {}):
            shapes.append(s["$defs"]["change"])
    assert len(shapes) >= 4 and all(s == shapes[0] for s in shapes)


def test_a_schema_refuses_what_it_should():
    """No schema that accepts anything: the old shapes fail."""
    c = Change(4, "add", "filter VNETFW_FWI", "", "default").to_json()
    doc = output.document("check", clean=False, desired=True, drift=[c])
    valid(doc, "drift")
    with pytest.raises(jsonschema.ValidationError):
        valid(doc | {"drift": [c | {"problem": "create"}]}, "drift")   # a repair as problem
    with pytest.raises(jsonschema.ValidationError):
        valid({k: v for k, v in doc.items() if k != "schema_version"}, "drift")
    with pytest.raises(jsonschema.ValidationError):
        valid(doc | {"drift": [c["text"]]}, "drift")        # the old status: strings


def test_a_change_says_what_is_wrong_and_what_repairs_it():
    got = {w: Change(None, w, "inet vnetfw", "chain x").to_json()["problem"]
           for w in ("create", "add", "insert", "delete", "move", "replace", "reset")}
    assert got == {"create": "missing", "add": "missing", "insert": "missing",
                   "delete": "unexpected", "move": "misplaced", "replace": "differs",
                   "reset": "differs"}
    j = Change(6, "delete", "filter FORWARD", "jump to VNETFW_FWX").to_json()
    assert j["repair"] == "delete" and j["family"] == "ipv6"
    assert j["text"] == "ipv6 filter FORWARD: unexpected jump to VNETFW_FWX"


def _docs_table(path: Path) -> dict[int, str]:
    rows = re.findall(r"^\| (\d+) \| ([^|]+) \|", path.read_text(), re.M)
    return {int(code): name.strip() for code, name in rows}


def test_one_exit_status_table_in_help_and_docs():
    helptext = vnetfw("--help").stdout.decode()
    in_help = dict((int(c), n.strip()) for c, n in
                   re.findall(r"^  (\d+) +(.+?) {2,}\S", helptext, re.M))
    table = {code: name for code, name, _ in output.EXIT_CODES}
    assert in_help == table
    assert _docs_table(ROOT / "docs" / "exit-codes.md") == table


def test_usage_and_definition_errors_as_json_with_the_same_status(tmp_path):
    p = vnetfw("render", "--json", "--bogus", "x.xml")
    doc = valid(json.loads(p.stdout), "error")
    assert p.returncode == 2 and doc["error"]["kind"] == "usage"
    assert "--bogus" in doc["error"]["message"]

    bad = tmp_path / "bad.toml"
    bad.write_text('name="evil"\nbridge="br/x"\nmode="nat"\n')
    p = vnetfw("render", "--json", str(bad))
    doc = valid(json.loads(p.stdout), "error")
    assert p.returncode == 2 and doc["command"] == "render"
    assert doc["error"] | {"message": ""} == {"kind": "definition", "file": str(bad),
                                              "network": "evil", "field": "bridge",
                                              "message": ""}
    assert p.stderr.decode().count("\n") == 1 and "bad.toml" in p.stderr.decode()
    p = vnetfw("render", str(bad))
    assert p.returncode == 2 and p.stdout == b"", "without --json: plain text on stderr"

    good = tmp_path / "good.toml"
    good.write_bytes(TOML)
    p = vnetfw("render", "--json", "--profile", "nosuch", str(good))
    doc = valid(json.loads(p.stdout), "error")
    assert p.returncode == 2 and doc["error"]["kind"] == "usage"
    assert doc["error"]["field"] == "--profile" and doc["error"]["file"] is None


def test_error_classes_say_where():
    e = DefinitionError("a.xml", "bad", network="n", field="bridge")
    assert (e.kind, e.file, e.network, e.field) == ("definition", "a.xml", "n", "bridge")
    u = UsageError("--prefix", "too long")
    assert (u.kind, u.file, u.field, u.exit_code) == ("usage", None, "--prefix", 2)
    s = StateError("x: corrupt", file="/var/lib/vnetfw/state.json")
    assert (s.kind, s.file, s.exit_code) == ("state", "/var/lib/vnetfw/state.json", 4)


@pytest.mark.parametrize("data,name", [(TOML, "x"), (XML, "y"),
                                       (b"\n  " + XML.split(b"\n", 1)[1], "y")])
def test_render_reads_one_definition_from_stdin_by_its_content(data, name):
    p = vnetfw("render", "--json", "--backend", "nftables", "-", stdin=data)
    assert p.returncode == 0, p.stderr
    doc = valid(json.loads(p.stdout), "render")
    assert doc["networks"] == [name] and f"network {name}" in doc["ruleset"]
    plain = vnetfw("render", "--backend", "nftables", "-", stdin=data)
    assert plain.stdout.decode() == doc["ruleset"]


def test_stdin_errors_name_stdin():
    p = vnetfw("render", "-", stdin=b"")
    assert p.returncode == 2 and b"<stdin>: no definition" in p.stderr
    p = vnetfw("render", "-", stdin=b"<network><name>z</name>")
    assert p.returncode == 2 and p.stderr.startswith(b"vnetfw: error: <stdin>:")
    p = vnetfw("render", "-", "-", stdin=TOML)
    assert p.returncode == 2 and b"given twice" in p.stderr


def test_a_change_finished_after_ctrl_c_says_so_in_its_one_document(monkeypatch, capsys):
    """The first Ctrl-C during a commit is held back: the report is printed, then exit
    130. With --json the one document says it was interrupted (and nothing else is
    printed on stdout)."""
    from vnetfw import cli
    from vnetfw.engine import Report
    from vnetfw.interrupts import DEFERRAL

    class Fake:
        class store:
            on_wait = None

        def setup(self, dry_run):
            DEFERRAL.interrupted = True         # as the Deferral leaves it at the end
            return Report("setup", "nftables", [Change(None, "create", "inet", "table t")])
    monkeypatch.setattr(cli, "_engine", lambda a: Fake())
    monkeypatch.setattr(cli, "has_net_admin", lambda: True)
    assert cli.main(["setup", "--json"]) == 130
    out, err = capsys.readouterr()
    doc = valid(json.loads(out), "report")
    assert doc["interrupted"] and doc["applied"] and doc["changed"]
    assert "interrupted after the change in progress was finished" in err
