"""``vnetfw install-files``: put the files vnetfw ships (``shipped``) where the system looks
for them -- the systemd units, the man page, the bash and zsh completions.

Local software belongs under ``/usr/local`` (systemd reads units from
``/usr/local/lib/systemd/system``; man, bash-completion and zsh look under
``/usr/local/share``), leaving ``/etc/systemd/system`` to the admin's own overrides. The
units name the ``vnetfw`` that runs this command by its full path, so a pipx or virtualenv
install needs no edit. ``--root DIR`` installs into a staging tree instead (a package build,
or a test). Nothing is started or enabled: that stays the admin's ``systemctl`` step.

``plan`` is pure (what goes where, with which text); ``install`` writes it, each file
through a temporary name and rename, so a reader never sees half a unit.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from . import shipped
from .errors import VnetfwError

WHAT = ("units", "man", "completions")
PREFIX = "/usr/local"
DEST = {
    shipped.MAN: "share/man/man8/vnetfw.8",
    shipped.BASH: "share/bash-completion/completions/vnetfw",
    shipped.ZSH: "share/zsh/site-functions/_vnetfw",
    **{u: "lib/systemd/system/" + Path(u).name for u in shipped.UNITS},
}
GROUP = {shipped.MAN: "man", shipped.BASH: "completions", shipped.ZSH: "completions",
         **{u: "units" for u in shipped.UNITS}}


class InstallError(VnetfwError):
    exit_code = 4


@dataclass(frozen=True)
class Item:
    source: str          # path under share/
    dest: Path           # absolute path to write
    text: str


def vnetfw_executable() -> str:
    """The full path of the vnetfw command next to this interpreter (pipx, a virtualenv, or
    /usr/local/bin), else the one on $PATH, else the bare name systemd looks up itself."""
    here = Path(sys.executable).parent / "vnetfw"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    return shutil.which("vnetfw") or "vnetfw"


def under_home(exe: str) -> bool:
    """Is ``exe`` (or the environment it runs in) where ProtectHome=yes hides it?"""
    return any(str(p) == h or str(p).startswith(h + "/")
               for p in (Path(exe), Path(sys.prefix)) for h in ("/root", "/home", "/run/user"))


def unit_text(text: str, exe: str) -> str:
    """A unit whose ``Exec*=vnetfw ...`` lines run ``exe``; where ``exe`` lives under a home
    directory (pipx's default for root is ~/.local), homes are read-only to the unit instead
    of hidden, or it could not start vnetfw at all."""
    out = []
    for line in text.splitlines(keepends=True):
        key, eq, value = line.partition("=")
        if eq and key.startswith("Exec") and value.startswith("vnetfw "):
            line = f"{key}={exe}{value[len('vnetfw'):]}"
        elif line.strip() == "ProtectHome=yes" and under_home(exe):
            line = ("# vnetfw install-files: vnetfw is installed under a home directory\n"
                    "ProtectHome=read-only\n")
        out.append(line)
    return "".join(out)


def plan(what: tuple[str, ...] = WHAT, root: str = "/", prefix: str = PREFIX,
         exe: str | None = None) -> list[Item]:
    exe = exe or vnetfw_executable()
    items = []
    for source, rel in DEST.items():
        if GROUP[source] not in what:
            continue
        text = (shipped.SHARE / source).read_text()
        if source in shipped.UNITS:
            text = unit_text(text, exe)
        dest = Path(root) / prefix.lstrip("/") / rel
        items.append(Item(source, dest, text))
    return items


def install(items: list[Item], dry_run: bool = False) -> list[tuple[Item, str]]:
    """Write each item; returns (item, "installed" | "updated" | "unchanged")."""
    done = []
    for it in items:
        old = it.dest.read_text() if it.dest.is_file() else None
        status = "unchanged" if old == it.text else "installed" if old is None else "updated"
        if status != "unchanged" and not dry_run:
            try:
                it.dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = it.dest.with_name(f".{it.dest.name}.vnetfw-new")
                tmp.write_text(it.text)
                tmp.chmod(0o644)
                os.replace(tmp, it.dest)
            except OSError as e:
                raise InstallError(f"{it.dest}: {e.strerror or e}") from None
        done.append((it, status))
    return done
