"""What ``vnetfw doctor`` learns about libvirt: its networks with vnetfw metadata, its hook,
and whether the running daemon can see that hook. Read-only, like ``doctor_facts``.

libvirt finds its hooks when the daemon starts: it notes then whether
``/etc/libvirt/hooks/network.d`` holds any executable, and only if so looks into the folder
at each event. A hook written after the daemon started into an otherwise empty folder is
therefore never run until libvirtd (or virtnetworkd) restarts, and an open network carrying
vnetfw metadata then starts with no rules at all.

Each running ``libvirtd``/``virtnetworkd`` in the namespace doctor looks at (its own, or
``--netns``) is seen *through its own eyes*: ``/proc/PID/root`` resolves paths in that
process's mount namespace, so a daemon with a private ``/etc/libvirt`` (a container, a
confined test daemon) is read where it reads. With no daemon running, the host's
``/etc/libvirt`` is read. Nothing is written, nothing is run.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from .libvirt_hook import HOOK_FILE, MARKER

DAEMONS = ("libvirtd", "virtnetworkd")
_MARK = b"urn:vnetfw:"


@dataclass
class LibvirtView:
    """One libvirt network daemon (or, with none running, the host's config)."""

    who: str                            # "libvirtd (pid 123)", or "/etc/libvirt"
    started: float | None               # daemon start, seconds since the epoch
    hook: str                           # "ours", "missing" or "foreign"
    hook_mtime: float | None = None
    older_hooks: bool = False           # another executable hook predates the daemon
    with_metadata: list[str] = field(default_factory=list)   # defined networks
    running_with_metadata: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


def _ns_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _uptime() -> float:
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def daemons(netns: str | None) -> list[tuple[int, str, float]]:
    """(pid, name, start time) of the libvirt network daemons in that network namespace."""
    want = _ns_id(f"/run/netns/{netns}" if netns else "/proc/self/ns/net")
    ticks = os.sysconf("SC_CLK_TCK")
    # /proc/stat's btime is whole seconds; now - uptime is to the hundredth.
    boot = time.time() - _uptime()
    out = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/comm") as f:
                name = f.read().strip()
            if name not in DAEMONS or _ns_id(f"/proc/{pid}/ns/net") != want:
                continue
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read().rsplit(")", 1)[1].split()
            out.append((int(pid), name, boot + int(stat[19]) / ticks))
        except (OSError, ValueError, IndexError):
            continue                                    # gone meanwhile
    return sorted(out)


def _has_metadata(path: Path, view: LibvirtView) -> str | None:
    """The network name if the file's network carries vnetfw metadata."""
    try:
        data = path.read_bytes()
    except OSError as e:
        view.unreadable.append(f"{path}: {e.strerror or e}")
        return None
    if _MARK not in data:
        return None
    from .errors import DefinitionError
    from .sources.libvirt_xml import parse_hook_xml
    try:        # a definition is a <network>; a status file wraps it in <networkstatus>
        net = parse_hook_xml(data, str(path), ("network", "networkstatus"))
    except DefinitionError as e:
        view.unreadable.append(str(e))
        return None
    return net.name if net is not None else None


def view(root: str, who: str, started: float | None) -> LibvirtView:
    """libvirt's config and status as seen under ``root`` (``/`` or ``/proc/PID/root``)."""
    etc = Path(root) / "etc/libvirt"
    hooks = etc / "hooks/network.d"
    hook = hooks / HOOK_FILE
    v = LibvirtView(who, started, "missing")
    try:
        st = os.lstat(hook)
        with open(hook, "rb") as f:
            v.hook = "ours" if MARKER.encode() in f.read(4096) else "foreign"
        v.hook_mtime = st.st_mtime
    except FileNotFoundError:
        pass
    except OSError as e:
        v.unreadable.append(f"{hook}: {e.strerror or e}")
    if started is not None and hooks.is_dir():
        for p in hooks.iterdir():
            try:
                if p.name != HOOK_FILE and os.access(p, os.X_OK) and p.stat().st_mtime < started:
                    v.older_hooks = True
            except OSError:
                pass
    for d, names in ((etc / "qemu/networks", v.with_metadata),
                     (Path(root) / "run/libvirt/network", v.running_with_metadata)):
        if d.is_dir() and not (started is None and names is v.running_with_metadata):
            for p in sorted(d.glob("*.xml")):
                if (name := _has_metadata(p, v)) is not None:
                    names.append(name)
    return v


def gather_libvirt(netns: str | None) -> list[LibvirtView]:
    """One view per running daemon; the host's config if none runs and libvirt is there."""
    found = [view(f"/proc/{pid}/root", f"{name} (pid {pid})", t)
             for pid, name, t in daemons(netns)]
    if not found and netns is None and os.path.isdir("/etc/libvirt"):
        found.append(view("/", "/etc/libvirt (no libvirt daemon running)", None))
    return found
