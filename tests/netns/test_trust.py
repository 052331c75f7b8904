"""Trust on disk, end to end: what root reads, writes and runs can have been planted by no
one else (issue 12 items 2-4, issue 16 item 4).

Every test runs the CLI as an admin would, in a namespace the test made, against real
files; another user's files are made with os.chown to ``nobody``. What must hold: a state
dir, state file, hooks dir or hook that is not root's or is writable by group or others
is refused with one line and nothing changes (no rule, no write through a planted
symlink, no hook run); hooks run inside ``--netns``, by absolute path, with run-parts'
names; an edited state makes vnetfw read the firewall again.
"""

from __future__ import annotations

import json
import os
import pwd
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import IS_ROOT, nsrun, save

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="ownership and namespaces need root")

NOBODY = pwd.getpwnam("nobody").pw_uid if IS_ROOT else 65534
NET = 'name="{name}"\nbridge="vbr-{name}"\nmode="nat"\nip=[{{address="10.77.{i}.1", prefix=24}}]\n'
VICTIM = "precious\n"


def vnetfw(*args: str, cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VNETFW_")}
    return subprocess.run([sys.executable, "-m", "vnetfw", *args], capture_output=True,
                          text=True, env=env, cwd=cwd)


def definition(tmp_path: Path, name: str = "n", i: int = 0) -> str:
    d = tmp_path / "defs"
    d.mkdir(exist_ok=True)
    (d / f"{name}.toml").write_text(NET.format(name=name, i=i))
    return str(d / f"{name}.toml")


def common(ns: str, state: Path, hooks: Path, backend: str = "nftables") -> list[str]:
    return ["--netns", ns, "--backend", backend, "--state-dir", str(state),
            "--hooks-dir", str(hooks)]


def nft(ns: str) -> str:
    return nsrun(ns, "nft", "list", "ruleset")


def refused(p: subprocess.CompletedProcess, code: int, *words: str) -> None:
    """Refused with one line on stderr that says what and where."""
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


def victim(tmp_path: Path) -> Path:
    v = tmp_path / "victim"
    v.write_text(VICTIM)
    return v


# -- the state dir --------------------------------------------------------------------------

def test_a_lock_symlink_is_not_followed(netns, tmp_path):
    """A `lock` symlink made apply truncate its target and write a pid into it."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    v = victim(tmp_path)
    (state / "lock").symlink_to(v)
    p = vnetfw("apply", definition(tmp_path), *common(netns, state, tmp_path / "none"))
    refused(p, 4, str(state / "lock"), "symbolic link")
    assert v.read_text() == VICTIM
    assert "vnetfw" not in nft(netns)


def test_a_state_tmp_symlink_is_not_written_through(netns, tmp_path):
    """A `state.tmp` symlink made apply write the state JSON into its target and turned
    state.json into a symlink. The temporary file is now made new (O_EXCL, unique name)."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    v = victim(tmp_path)
    (state / "state.tmp").symlink_to(v)
    p = vnetfw("apply", definition(tmp_path), *common(netns, state, tmp_path / "none"))
    assert p.returncode == 0, p.stderr
    assert v.read_text() == VICTIM
    st = os.lstat(state / "state.json")
    assert stat.S_ISREG(st.st_mode) and st.st_mode & 0o022 == 0
    assert [n for n in os.listdir(state) if n not in ("lock", "state.json", "state.tmp")] == []
    assert vnetfw("check", *common(netns, state, tmp_path / "none")).returncode == 0


@pytest.mark.parametrize("how", ["dir 0777", "dir nobody's", "parent 0777", "parent nobody's",
                                 "dir a symlink through a 0777 dir"])
def test_a_state_dir_others_can_write_is_refused(netns, tmp_path, how):
    """The issue's case: a state dir writable by another user, with a `lock` symlink planted
    in it. Refused before anything is opened in it, whichever link of the path is open."""
    parent = tmp_path / "p"
    parent.mkdir()
    state = parent / "state"
    state.mkdir(mode=0o700)
    if how == "dir 0777":
        state.chmod(0o777)
    elif how == "dir nobody's":
        os.chown(state, NOBODY, NOBODY)
    elif how == "parent 0777":
        parent.chmod(0o777)
    elif how == "parent nobody's":
        os.chown(parent, NOBODY, NOBODY)
    else:
        parent.chmod(0o777)
        link = tmp_path / "link"
        link.symlink_to(state)
        state = link            # the real path's parent is the open one
    v = victim(tmp_path)
    (state / "lock").symlink_to(v)
    p = vnetfw("apply", definition(tmp_path), *common(netns, state, tmp_path / "none"))
    bad = str(parent if "parent" in how or "symlink" in how else state)
    refused(p, 4, "state", bad, "chmod go-w" if "0777" in how else "owned by uid 65534")
    assert v.read_text() == VICTIM
    assert "vnetfw" not in nft(netns)


def test_a_sticky_world_writable_parent_is_fine(netns, tmp_path):
    """Like /tmp: a sticky world-writable parent lets no one else replace what is in it."""
    parent = tmp_path / "tmp"
    parent.mkdir()
    parent.chmod(0o1777)
    state = parent / "vnetfw-state"
    p = vnetfw("apply", definition(tmp_path), *common(netns, state, tmp_path / "none"))
    assert p.returncode == 0, p.stderr
    assert "vbr-n" in nft(netns)
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700


def _state_file(ns: str, tmp_path: Path) -> bytes:
    """A valid state.json naming network n, made by a real apply elsewhere (then torn down)."""
    elsewhere = tmp_path / "elsewhere"
    args = common(ns, elsewhere, tmp_path / "none")
    assert vnetfw("apply", definition(tmp_path), *args).returncode == 0
    data = (elsewhere / "state.json").read_bytes()
    assert vnetfw("teardown", *args).returncode == 0
    assert "vbr-n" not in nft(ns)
    return data


@pytest.mark.parametrize("how", ["nobody's", "0666", "a symlink"])
def test_a_planted_state_file_is_not_applied(netns, tmp_path, how):
    """A state.json another user could have written is not trusted, so not applied."""
    data = _state_file(netns, tmp_path)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    f = state / "state.json"
    if how == "a symlink":
        (tmp_path / "planted.json").write_bytes(data)
        f.symlink_to(tmp_path / "planted.json")
    else:
        f.write_bytes(data)
        if how == "0666":
            f.chmod(0o666)
        else:
            os.chown(f, NOBODY, NOBODY)
    p = vnetfw("reload", *common(netns, state, tmp_path / "none"))
    refused(p, 4, str(f), {"nobody's": "owned by uid 65534", "0666": "mode 0666",
                           "a symlink": "symbolic link"}[how])
    assert "vbr-n" not in nft(netns)
    for cmd in ("check", "status", "list"):
        refused(vnetfw(cmd, *common(netns, state, tmp_path / "none")), 4, str(f))


# -- an edited state ------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["nftables", "iptables-nft", "iptables-legacy"])
def test_an_edited_state_makes_vnetfw_read_the_firewall(netns, tmp_path, backend):
    """state.json edited (a network dropped) with its generation left as it was: check
    must see the dropped network's rules as drift, and reload remove them."""
    state = tmp_path / "state"
    args = common(netns, state, tmp_path / "none", backend)
    assert vnetfw("apply", definition(tmp_path, "a", 1), definition(tmp_path, "b", 2),
                  *args).returncode == 0
    assert vnetfw("check", *args).returncode == 0
    doc = json.loads((state / "state.json").read_text())
    assert doc["generation"]
    doc["networks"] = [n for n in doc["networks"] if n["name"] != "b"]
    (state / "state.json").write_text(json.dumps(doc))
    live = nft(netns) if backend == "nftables" else save(netns, backend)
    assert "vbr-b" in live
    p = vnetfw("check", *args)
    assert p.returncode == 1 and "unexpected" in p.stdout + p.stderr, p.stdout + p.stderr
    p = vnetfw("reload", *args)
    assert p.returncode == 0 and "no change" not in p.stdout, p.stdout
    live = nft(netns) if backend == "nftables" else save(netns, backend)
    assert "vbr-b" not in live and "vbr-a" in live
    assert vnetfw("check", *args).returncode == 0
