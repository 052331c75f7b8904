"""What vnetfw ships besides its code (``vnetfw/share/``): the man page and the completions
are current with the parser and work; the wheel and the sdist carry them with the systemd
units and the license; ``vnetfw install-files`` puts them in place from the wheel alone."""

from __future__ import annotations

import email.parser
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from vnetfw import shipped
from vnetfw.cli import build_parser, main
from vnetfw.manpage import _actions, _commands

ROOT = Path(__file__).resolve().parents[2]
SHARE_FILES = [shipped.MAN, shipped.BASH, shipped.ZSH, *shipped.UNITS]


def test_generated_files_are_current():
    assert shipped.stale() == [], ("the man page or completions are stale: run "
                                   "`.venv/bin/python -m vnetfw.shipped` and commit the result")


def test_man_page_names_every_command_and_option():
    man = (shipped.SHARE / shipped.MAN).read_text()
    parser = build_parser()
    for name, sp in _commands(parser):
        assert f"\\fB{name.replace('-', chr(92) + '-')}\\fR" in man, name
        for a in _actions(sp, globals_too=False):
            for opt in a.option_strings:
                assert opt.replace("-", "\\-") in man, (name, opt)
    for opt in ("\\-\\-backend", "\\-\\-netns", "\\-\\-state\\-dir", "\\-\\-json"):
        assert opt in man
    assert ".SH EXAMPLES" in man and ".SH FILES" in man


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff missing")
def test_man_page_formats_without_warnings():
    p = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(shipped.SHARE / shipped.MAN)],
                       capture_output=True, text=True)
    assert p.returncode == 0 and p.stderr == "", p.stderr


def _bash_complete(words: list[str], cwd: Path) -> list[str]:
    """What the shipped bash completion offers for the last of ``words``."""
    script = (f"source {shipped.SHARE / shipped.BASH}\n"
              "compopt() { :; }\n"                 # only valid inside a real completion
              f"COMP_WORDS=({' '.join(repr(w) for w in words)})\n"
              "COMP_CWORD=$((${#COMP_WORDS[@]} - 1))\n"
              "_vnetfw\n"
              'printf "%s\\n" "${COMPREPLY[@]}"\n')
    p = subprocess.run(["bash", "--norc", "-c", script], capture_output=True, text=True,
                       cwd=cwd, check=True)
    return sorted(l for l in p.stdout.splitlines() if l)


def test_bash_completion(tmp_path):
    (tmp_path / "nets").mkdir()
    (tmp_path / "net.xml").write_text("")
    assert _bash_complete(["vnetfw", "re"], tmp_path) == ["reload", "remove", "render"]
    assert "install-files" in _bash_complete(["vnetfw", ""], tmp_path)
    assert _bash_complete(["vnetfw", "apply", "--d"], tmp_path) == ["--dry-run"]
    # globals after the command, and an option's choices
    assert "--state-dir" in _bash_complete(["vnetfw", "status", "--"], tmp_path)
    assert _bash_complete(["vnetfw", "--backend", "iptables-"], tmp_path) == [
        "iptables-legacy", "iptables-nft"]
    assert _bash_complete(["vnetfw", "render", "--family", ""], tmp_path) == ["ipv4", "ipv6"]
    # files for PATH arguments, directories for DIR options, nothing for NAME
    assert _bash_complete(["vnetfw", "apply", "n"], tmp_path) == ["net.xml", "nets"]
    assert _bash_complete(["vnetfw", "--state-dir", "n"], tmp_path) == ["nets"]
    assert _bash_complete(["vnetfw", "remove", "n"], tmp_path) == []


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh missing")
def test_zsh_completion_parses():
    p = subprocess.run(["zsh", "-n", str(shipped.SHARE / shipped.ZSH)], capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr
    text = (shipped.SHARE / shipped.ZSH).read_text()
    assert text.startswith("#compdef vnetfw\n")
    for name, _ in _commands(build_parser()):
        assert f"'{name}:" in text and f"{name}) _arguments" in text


# --- the wheel and the sdist -------------------------------------------------------------

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The wheel and the sdist, built by setuptools from a copy of the tree (so nothing is
    written into the checkout), without build isolation: the test extras bring setuptools."""
    tmp = tmp_path_factory.mktemp("build")
    src = tmp / "src"
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], cwd=ROOT, capture_output=True, check=True
                           ).stdout.decode().split("\0")
    for rel in filter(None, files):
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    out = tmp / "dist"
    code = ("import sys; from setuptools import build_meta as b; "
            "out = sys.argv[1]; w = b.build_wheel(out); s = b.build_sdist(out); print('BUILT', w, s)")
    p = subprocess.run([sys.executable, "-c", code, str(out)], cwd=src, capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    wheel, sdist = p.stdout.splitlines()[-1].split()[1:]
    return out / wheel, out / sdist, p.stderr


def test_wheel_holds_share_and_license(built):
    wheel, _, log = built
    names = set(zipfile.ZipFile(wheel).namelist())
    for rel in SHARE_FILES:
        assert f"vnetfw/share/{rel}" in names, rel
    assert "vnetfw-0.1.0.dist-info/licenses/LICENSE" in names
    assert "SetuptoolsDeprecationWarning" not in log      # e.g. the old license table


def test_wheel_metadata(built):
    wheel, _, _ = built
    with zipfile.ZipFile(wheel) as z:
        meta = email.parser.Parser().parsestr(z.read("vnetfw-0.1.0.dist-info/METADATA").decode())
    assert meta["License-Expression"] == "MIT"
    assert meta["License-File"] == "LICENSE"
    classifiers = meta.get_all("Classifier")
    assert "Operating System :: POSIX :: Linux" in classifiers
    assert "Topic :: System :: Networking :: Firewalls" in classifiers
    assert not [c for c in classifiers if c.startswith("License ::")]   # SPDX says it
    assert {u.split(",")[0] for u in meta.get_all("Project-URL")} >= {"Homepage",
                                                                       "Documentation"}
    # The index page starts with how to install and use it, not with a developer's script.
    body = meta.get_payload()
    assert meta["Description-Content-Type"] == "text/markdown"
    assert "scripts/dev" not in body
    install, use = body.index("## Install"), body.index("## Use")
    assert install < use < 2500 and "pipx install vnetfw" in body[install:use]


def test_sdist_holds_share_and_license(built):
    _, sdist, _ = built
    names = {n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n}
    for rel in SHARE_FILES:
        assert f"src/vnetfw/share/{rel}" in names, rel
    assert "LICENSE" in names and "docs/pypi.md" in names


def test_install_files_from_the_wheel_alone(built, tmp_path):
    """The wheel unpacked where nothing else is, no source tree: install-files finds its
    files there and writes them under --root, the units running the given vnetfw."""
    wheel, _, _ = built
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    root = tmp_path / "root"
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(site)}
    p = subprocess.run([sys.executable, "-I", "-c",
                        "import sys; sys.path.insert(0, sys.argv[1]); import vnetfw.cli as c; "
                        "assert c.__file__.startswith(sys.argv[1]), c.__file__; "
                        "sys.exit(c.main(['install-files', '--root', sys.argv[2]]))",
                        str(site), str(root)], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    usr = root / "usr/local"
    assert (usr / "share/man/man8/vnetfw.8").read_text() == (
        shipped.SHARE / shipped.MAN).read_text()
    assert (usr / "share/bash-completion/completions/vnetfw").is_file()
    assert (usr / "share/zsh/site-functions/_vnetfw").is_file()
    for unit in ("vnetfw.service", "vnetfw-watch.service"):
        text = (usr / "lib/systemd/system" / unit).read_text()
        execs = [l for l in text.splitlines() if l.startswith(("ExecStart=", "ExecReload="))
                 and "vnetfw" in l]
        assert execs and all(l.split("=", 1)[1].startswith("/") for l in execs), execs


def test_install_files_reports_and_is_idempotent(tmp_path, capsys):
    root = tmp_path / "r"
    assert main(["install-files", "--root", str(root), "--dry-run", "units"]) == 0
    assert not root.exists()                                   # a dry run writes nothing
    assert "would install" in capsys.readouterr().out
    assert main(["install-files", "--root", str(root), "units", "man"]) == 0
    out = capsys.readouterr().out
    assert out.count("installed") == 3 and "completions" not in out
    unit = root / "usr/local/lib/systemd/system/vnetfw.service"
    unit.write_text(unit.read_text() + "# edited\n")
    assert main(["install-files", "--root", str(root), "units", "man"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [l.split()[0] for l in lines] == ["unchanged", "updated", "unchanged"]
    assert main(["install-files", "--root", str(root), "manpages"]) == 2
    assert "'manpages' is not one of units, man, completions" in capsys.readouterr().err


def test_install_files_json_validates(tmp_path, capsys):
    import jsonschema
    from vnetfw.output import schema
    assert main(["install-files", "--json", "--root", str(tmp_path), "man"]) == 0
    doc = json.loads(capsys.readouterr().out)
    jsonschema.validate(doc, schema("install-files"))
    assert [f["status"] for f in doc["files"]] == ["installed"]


def test_units_under_a_home_get_read_only_homes():
    from vnetfw.install import unit_text
    text = (shipped.SHARE / shipped.UNITS[0]).read_text()
    assert "ProtectHome=yes" in unit_text(text, "/usr/local/bin/vnetfw") or \
        sys.prefix.startswith(("/root", "/home"))
    home = unit_text(text, "/root/.local/bin/vnetfw")
    assert "ProtectHome=yes" not in home and "ProtectHome=read-only" in home
    assert "ExecStart=/root/.local/bin/vnetfw reload" in home
