"""The collection's modules, as ansible-doc reads them: every module documents every option
its argument spec takes (and no other), with check and diff mode. ansible-test sanity checks
far more (scripts/ansible-sanity), but needs a few minutes of installs; this runs in CI."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_DOC = Path(sys.executable).parent / "ansible-doc"
MODULES = ("network", "sync", "facts")
COMMON = {"backend", "profile", "state_dir", "netns", "executable"}


def _spec_options(module: str) -> set[str]:
    """The options of the module's argument_spec, read from its source."""
    tree = ast.parse((ROOT / "ansible/plugins/modules" / f"{module}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "argument_spec":
            call = node.value
            names = {k.arg for k in call.keywords if k.arg}
            return names | (COMMON if any(k.arg is None for k in call.keywords) else set())
    raise AssertionError(f"{module}: no argument_spec")


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    if not ANSIBLE_DOC.exists():
        pytest.skip("ansible-core is not installed (pip install -e '.[test]')")
    tmp = tmp_path_factory.mktemp("coll")
    shutil.copytree(ROOT / "ansible", tmp / "ansible_collections/vnetfw/vnetfw")
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(tmp), ANSIBLE_HOME=str(tmp / "home"),
               ANSIBLE_LOCAL_TEMP=str(tmp / "t"))
    p = subprocess.run([str(ANSIBLE_DOC), "--json", "-t", "module",
                        *(f"vnetfw.vnetfw.{m}" for m in MODULES)],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


@pytest.mark.parametrize("module", MODULES)
def test_documented_options_are_the_argument_spec(docs, module):
    doc = docs[f"vnetfw.vnetfw.{module}"]["doc"]
    assert set(doc["options"]) == _spec_options(module)
    assert doc["attributes"]["check_mode"]["support"] == "full"
    if module != "facts":
        assert doc["attributes"]["diff_mode"]["support"] == "full"
    assert docs[f"vnetfw.vnetfw.{module}"]["examples"].strip()
    assert docs[f"vnetfw.vnetfw.{module}"]["return"]
