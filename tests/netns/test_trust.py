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
    assert [n for n in os.listdir(state) if n.endswith(".tmp") and n != "state.tmp"] == []
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


# -- hooks ----------------------------------------------------------------------------------

def _hook(path: Path, mark: Path, mode: int = 0o755) -> Path:
    path.write_text(f"#!/bin/sh\necho \"$0 $1 $2\" >> {mark}\n")
    path.chmod(mode)
    return path


@pytest.mark.parametrize("how", ["dir 0777", "dir nobody's", "hook 0777", "hook 0775",
                                 "hook nobody's", "symlink to nobody's program",
                                 "symlink into a 0777 dir"])
def test_a_hook_others_could_have_written_is_not_run(netns, tmp_path, how):
    """Hooks run as root: one from a place another user can write is refused with one
    line, before the change, so nothing changes and nothing runs."""
    hooks = tmp_path / "hooks.d"
    hooks.mkdir()
    mark = tmp_path / "ran"
    name = hooks / "10-hook"
    if how.startswith("symlink"):
        other = tmp_path / "other"
        other.mkdir()
        prog = _hook(other / "prog", mark)
        if how == "symlink to nobody's program":
            os.chown(prog, NOBODY, NOBODY)
            bad = prog
        else:
            other.chmod(0o777)
            bad = other
        name.symlink_to(prog)
    else:
        _hook(name, mark, {"hook 0777": 0o777, "hook 0775": 0o775}.get(how, 0o755))
        bad = name if how.startswith("hook") else hooks
        if how == "dir 0777":
            hooks.chmod(0o777)
        elif how == "dir nobody's":
            os.chown(hooks, NOBODY, NOBODY)
        elif how == "hook nobody's":
            os.chown(name, NOBODY, NOBODY)
    p = vnetfw("apply", definition(tmp_path), *common(netns, tmp_path / "state", hooks))
    refused(p, 6, "hook", str(bad), "owned by uid 65534" if "nobody" in how else "chmod go-w")
    assert not mark.exists()
    assert "vnetfw" not in nft(netns)


def test_a_symlink_to_roots_program_is_a_hook(netns, tmp_path):
    """A hook may be a link to a program root owns in a place only root can write (as
    run-parts runs one); every step of the link is checked like the hooks dir."""
    hooks, mark = tmp_path / "hooks.d", tmp_path / "ran"
    hooks.mkdir()
    (tmp_path / "bin").mkdir()
    (hooks / "10-link").symlink_to(_hook(tmp_path / "bin" / "prog", mark))
    p = vnetfw("apply", definition(tmp_path), *common(netns, tmp_path / "state", hooks))
    assert p.returncode == 0, p.stderr
    assert mark.read_text() == f"{hooks / '10-link'} n added\n"


def test_hooks_dir_dot_runs_hooks_by_absolute_path(netns, tmp_path):
    """`--hooks-dir .` ran the hook by its bare name, through PATH, and failed."""
    hooks, mark = tmp_path / "hooks.d", tmp_path / "ran"
    hooks.mkdir()
    _hook(hooks / "10-hook", mark)
    args = common(netns, tmp_path / "state", Path("."))
    p = vnetfw("apply", definition(tmp_path), *args, cwd=hooks)
    assert p.returncode == 0, p.stderr
    assert mark.read_text() == f"{hooks / '10-hook'} n added\n"


def test_hooks_run_inside_the_namespace_with_its_name_backend_and_state_dir(netns, tmp_path):
    """With --netns, a hook runs in that namespace (it ran in the host's), and its
    environment says which namespace, backend and state dir."""
    hooks, out = tmp_path / "hooks.d", tmp_path / "seen"
    hooks.mkdir()
    (hooks / "10-where").write_text(
        "#!/bin/sh\n"
        f'echo "ns=$(ip netns identify) inode=$(stat -L -c %i /proc/self/ns/net) '
        f'env=$VNETFW_NETNS,$VNETFW_BACKEND,$VNETFW_STATE_DIR" >> {out}\n')
    (hooks / "10-where").chmod(0o755)
    state = tmp_path / "state"
    p = vnetfw("apply", definition(tmp_path), *common(netns, state, hooks, "iptables-nft"))
    assert p.returncode == 0, p.stderr
    inode = os.stat(f"/run/netns/{netns}").st_ino
    assert out.read_text() == f"ns={netns} inode={inode} env={netns},iptables-nft,{state}\n"
    assert inode != os.stat("/proc/self/ns/net").st_ino


def test_hook_names_follow_run_parts(netns, tmp_path):
    """Like run-parts without --lsbsysinit: only names of ASCII letters, digits, '_' and
    '-' run, in C-locale order; packaging leftovers, backups and dot-files do not."""
    hooks, log = tmp_path / "hooks.d", tmp_path / "ran"
    hooks.mkdir()
    names = ["10-ok", "20_OK-b", "Z9", ".hidden", "10-ok~", "10-ok.dpkg-old",
             "10-ok.dpkg-dist", "10-ok.dpkg-new", "10-ok.rpmnew", "10-ok.rpmsave", "hook.sh",
             "with space", "caf\u00e9", "30-off"]
    for n in names:
        (hooks / n).write_text(f"#!/bin/sh\necho {n!r} >> {log}\n")
        (hooks / n).chmod(0o644 if n == "30-off" else 0o755)
    (hooks / "40-dir").mkdir()          # not a file: skipped, as run-parts does
    p = vnetfw("apply", definition(tmp_path), *common(netns, tmp_path / "state", hooks))
    assert p.returncode == 0, p.stderr
    # C-locale order: digits, then upper case, then lower case
    assert log.read_text().split() == ["10-ok", "20_OK-b", "Z9"]
