"""``vnetfw libvirt-hook``: libvirt's network hook, and installing it.

libvirt runs every executable in ``/etc/libvirt/hooks/network.d/`` (found when libvirtd or
virtnetworkd starts, not later) as ``NAME OP SUBOP -`` with
``<hookData><network>...</network></hookData>`` on stdin, for every network it manages, at
every event. The hook acts only on networks libvirt leaves unfirewalled on purpose: open
networks carrying vnetfw metadata (``sources.libvirt_meta``).

- ``start begin`` (before libvirt creates the bridge): apply the network. A definition
  error or a failed commit exits non-zero, so libvirt refuses to start the network and
  ``virsh net-start`` shows vnetfw's one-line error: a network vnetfw was asked to firewall
  never runs unprotected. (The rules may name a bridge that does not exist yet: iptables and
  nft match interfaces by name.)
- ``updated begin``: apply again (``virsh net-update``).
- ``stopped end``: remove the network's rules, if vnetfw has that network active with the
  same bridge.
- Every other event, and every network without vnetfw metadata, exits 0 and changes nothing.
  A network that merely lacks the metadata is not even parsed, so vnetfw's strictness can
  never stop libvirt from starting a network vnetfw has no say in.

A hook must never call back into libvirt (libvirt's hook documentation: that deadlocks), and
this one does not: everything it needs is on stdin. After vnetfw's own commit, its own hooks
failing (``/etc/vnetfw/hooks.d``) is a warning, not a failure: the rules are in place, and
failing would make libvirt abandon a start whose rules vnetfw already committed.

The installed file (``hook_script``) is a small shell script: events other than the three
above cost one ``sh`` that drains stdin, not a Python start-up (libvirt also runs network
hooks for every guest interface plugged: ``port-created``, ``port-deleted``).
"""

from __future__ import annotations

import os
import shlex
import stat
import sys
from pathlib import Path
from typing import Any, BinaryIO

DEFAULT_LIBVIRT_HOOKS_DIR = "/etc/libvirt/hooks/network.d"
HOOK_FILE = "vnetfw"
MARKER = "# vnetfw-libvirt-hook: written by 'vnetfw libvirt-hook install'"
EVENTS = {("start", "begin"): "apply", ("updated", "begin"): "apply",
          ("stopped", "end"): "remove"}
HOOK_SOURCE = "libvirt hook input"
_MARK = b"urn:vnetfw:"                 # no vnetfw metadata without this, in any prefix
RESTART_ADVICE = ("restart libvirtd once so that it sees the new hook (systemctl restart "
                  "libvirtd, or virtnetworkd where the modular daemons run); libvirt finds "
                  "its hooks only when it starts")


def run_event(args: list[str], stdin: BinaryIO, engine: Any) -> str | None:
    """Handle one libvirt event (``NAME OP SUBOP -``); returns what was done (None:
    nothing). ``engine`` is called to make the Engine, only when one is needed. Raises
    ``VnetfwError`` on a definition error or a failed commit."""
    name, op, subop = args[0], args[1], args[2]
    action = EVENTS.get((op, subop))
    data = stdin.read()
    if action is None or _MARK not in data:
        return None
    from .sources.libvirt_xml import parse_hook_xml
    net = parse_hook_xml(data, HOOK_SOURCE)
    if net is None:
        return None
    from .errors import DefinitionError
    if net.name != name:
        raise DefinitionError(HOOK_SOURCE, f"libvirt named the network {name!r} in the "
                                           "arguments but the definition says otherwise",
                              network=net.name, field="name")
    eng = engine()
    if action == "apply":
        rep = eng.apply([net])
        for w in rep.warnings:
            print(f"vnetfw: warning: {w}", file=sys.stderr)
        for f in rep.hook_failures:
            print(f"vnetfw: warning: hook failed (the rules are in place): {f}",
                  file=sys.stderr)
        return f"applied {name}: {len(rep.changes)} change(s) ({rep.backend})"
    active = {n.name: n for n in eng.list_networks()}
    if name not in active or active[name].bridge != net.bridge:
        return None
    try:
        rep = eng.remove([name])
    except DefinitionError:             # removed meanwhile by someone else: nothing to do
        return None
    return f"removed {name}: {len(rep.changes)} change(s) ({rep.backend})"


# ---------------------------------------------------------------------------------------
# Installing


def hook_command(a: Any) -> list[str]:
    """This same vnetfw, by absolute path, with the global options ``a`` was given (and
    those its environment set: libvirt runs hooks with a scrubbed environment)."""
    exe = sys.executable
    if not exe or not os.path.isabs(exe):
        from .errors import VnetfwError
        raise VnetfwError("cannot tell the absolute path of this Python interpreter")
    cmd = [exe, "-m", "vnetfw"]
    opts = [("--backend", a.backend if a.backend != "auto" else None),
            ("--profile", a.profile), ("--prefix", a.prefix), ("--netns", a.netns),
            ("--state-dir", a.state_dir or os.environ.get("VNETFW_STATE_DIR")),
            ("--hooks-dir", a.hooks_dir or os.environ.get("VNETFW_HOOKS_DIR"))]
    for opt, value in opts:
        if value:
            cmd += [opt, str(value)]
    return cmd


def hook_script(command: list[str]) -> str:
    cmd = " ".join(shlex.quote(c) for c in command)
    cases = "|".join(f'"{op} {sub}"' for op, sub in EVENTS)
    return f"""#!/bin/sh
{MARKER}
# libvirt runs it as NAME OP SUBOP - with the network's XML on stdin. Only these events
# reach vnetfw; the others (port-created ... for every guest interface) cost no more than
# reading stdin. Remove it with 'vnetfw libvirt-hook uninstall'.
case "$2 $3" in
  {cases}) exec {cmd} libvirt-hook "$@" ;;
  *) exec cat >/dev/null ;;
esac
"""


def _refuse(msg: str):
    from .errors import GuardError
    return GuardError(msg)


def _check_dir(d: Path) -> None:
    """libvirtd runs what is in ``d`` as root: it must be a real folder owned by root (or
    us) that nobody else can write to."""
    st = os.lstat(d)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise _refuse(f"{d} is not a folder (a symlink is not followed)")
    if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
        raise _refuse(f"{d} is writable by others or not owned by root: libvirt runs what "
                      "is in it as root, so vnetfw does not put a hook there")


def _ours(path: Path) -> bool | None:
    """True if ``path`` is a regular file vnetfw wrote, False if it is something else, None
    if there is nothing there."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError:
        return False                                    # a symlink (ELOOP), unreadable ...
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        return MARKER.encode() in os.read(fd, 4096)
    finally:
        os.close(fd)


def install(hooks_dir: str | Path, command: list[str]) -> Path:
    """Write the hook (atomically: a new file renamed into place) into ``hooks_dir``."""
    d = Path(hooks_dir)
    d.mkdir(mode=0o755, parents=True, exist_ok=True)
    _check_dir(d)
    path = d / HOOK_FILE
    if _ours(path) is False:
        raise _refuse(f"{path} exists and was not written by vnetfw: left alone")
    tmp = d / f".{HOOK_FILE}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o700)
    try:
        os.write(fd, hook_script(command).encode())
        os.fchmod(fd, 0o755)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def uninstall(hooks_dir: str | Path) -> Path | None:
    """Remove the hook vnetfw wrote; None if there was none. Anything else is left alone."""
    path = Path(hooks_dir) / HOOK_FILE
    ours = _ours(path)
    if ours is None:
        return None
    if not ours:
        raise _refuse(f"{path} was not written by vnetfw: left alone")
    path.unlink()
    return path
