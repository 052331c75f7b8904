"""Desired state on disk, and the lock that keeps two vnetfw processes from interleaving.

Contract: ``StateStore.lock()`` is an exclusive, blocking (with timeout) lock held for the
whole read-modify-write of one command; while it waits it says once (``on_wait``) who
holds the lock, as the kernel knows it (``lock_holders``); ``load()`` returns the last saved
``State`` (empty if none); ``save()`` replaces it atomically (write to a temporary file, fsync, rename), so a
crash leaves either the old or the new state, never half of one.

Layout: ``<state_dir>/state.json`` and ``<state_dir>/lock``; ``inflight`` adds
``commit.lock`` and, while a change is in flight, ``inflight.json``. The default state dir is
``/var/lib/vnetfw``; with ``--netns NAME`` and no explicit state dir it is
``/var/lib/vnetfw/netns/NAME``, because each namespace has its own firewall.

Trust: vnetfw applies what the state file says, as root, so the state dir (and every
directory above it), the state file and the lock must be root's (or the invoking user's)
and not writable by group or others, and no link is followed at their end
(``safe_files``); anything else is refused with a ``StateError`` naming the path. The
file is written under a fresh temporary name, never through one someone planted.

Sealed generation: ``save()`` writes a CRC-32 of the file's own bytes (with the seal itself
zeroed) into its first field, ``_crc32``. ``load()`` trusts the recorded generation only
while that seal holds: a file edited by hand, or pieced together, gets ``generation`` None,
and the next command reads the firewall rather than believing nothing changed. (A check
against edits, not against an adversary: only root can write the file, see Trust. So a
CRC, not SHA-256: importing OpenSSL's hashlib costs 2-6 ms, more than the rest of an
unchanged ``check`` at ten networks; zlib is 0.5 ms, and either hashes 2 MB, 10,000
networks, in about 3 ms.)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from . import __version__, safe_files
from .errors import LockTimeout, StateError
from .backends.nfgen import Generation
from .model import Network, network_from_dict

DEFAULT_STATE_DIR = "/var/lib/vnetfw"
FORMAT_VERSION = 1
# The seal's field: first in the file, as "_" sorts before every other key (sort_keys).
_SEAL = b'{"_crc32":"'
_UNSEALED = b"0" * 8
T = TypeVar("T")


def default_state_dir(netns: str | None) -> Path:
    env = os.environ.get("VNETFW_STATE_DIR")
    if env:
        return Path(env)
    base = Path(DEFAULT_STATE_DIR)
    return base / "netns" / netns if netns else base


@dataclass
class State:
    backend: str | None = None          # backend the active networks were applied with
    profile: str | None = None
    prefix: str | None = None
    networks: dict[str, Network] = field(default_factory=dict)
    # The backend's generation right after vnetfw's last verified commit: the nf_tables
    # generation id, or the x_tables fingerprint on iptables-legacy (None: unknown). While
    # the live one equals it, nothing has changed.
    generation: Generation | None = None
    # Which change wrote this state (``inflight``): a record of a change in flight says
    # the state it started from and the one it writes, so the next command can tell
    # whether it got as far as recording itself.
    change: str | None = None
    # Each network as read from the file, with the object made of it: a network that is
    # still that very object is written back as read (1,000 networks: ~2 ms of to_dict).
    loaded: dict[str, tuple[Network, dict]] = field(default_factory=dict, repr=False,
                                                    compare=False)

    def to_json(self) -> dict:
        def form(net: Network) -> dict:
            was = self.loaded.get(net.name)
            return was[1] if was is not None and was[0] is net else net.to_dict()
        return {"version": FORMAT_VERSION, "backend": self.backend, "profile": self.profile,
                "prefix": self.prefix, "vnetfw": __version__,
                "generation": list(self.generation) if self.generation else None,
                "change": self.change,
                "networks": [form(self.networks[k]) for k in sorted(self.networks)]}


WAIT_SAY = 0.5      # seconds of waiting for the lock before saying so


def lock_holders(fd: int) -> list[int]:
    """The pids that hold a lock on the file open at ``fd``, from the kernel's /proc/locks
    (pids as this process's pid namespace sees them). Not a pid written into the file: that
    is the last writer's, alive or not, and says nothing about who holds the lock now."""
    st = os.fstat(fd)
    # /proc/locks: "1: FLOCK  ADVISORY  WRITE 4836 fe:00:2153392 0 EOF", the device as
    # hex major:minor; a process waiting for the lock is listed as "1: -> FLOCK ...".
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = []
    try:
        with open("/proc/locks") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 6 and parts[1] != "->" and parts[5] == key \
                        and parts[4].isdigit():
                    pids.append(int(parts[4]))
    except OSError:
        pass
    return pids


def describe_pid(pid: int) -> str:
    """``pid 1234 (vnetfw apply net.xml)``: the process and its command line, if readable."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return f"pid {pid}"
    if "vnetfw" in argv[2:3] and argv[1:2] == ["-m"]:
        argv = argv[2:]                             # python -m vnetfw ...
    elif argv and argv[0].endswith("/vnetfw"):
        argv[0] = "vnetfw"
    cmd = " ".join(argv)
    return f"pid {pid}" + (f" ({cmd[:77] + '...' if len(cmd) > 80 else cmd})" if cmd else "")


class StateStore:
    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.path = self.dir / "state.json"
        # Called once with a line to show when ``lock`` has waited WAIT_SAY seconds (the
        # CLI prints it on stderr); None: wait in silence.
        self.on_wait: Callable[[str], None] | None = None

    def holders_text(self, fd: int) -> str:
        pids = lock_holders(fd)
        return ", ".join(describe_pid(p) for p in pids) if pids else "a process not " \
            "visible here (another PID namespace?)"

    @contextlib.contextmanager
    def lock(self, timeout: float = 30.0) -> Iterator[None]:
        self._trusted(lambda: safe_files.ensure_dir(self.dir), "state directory", self.dir)
        fd = self._trusted(lambda: safe_files.open_lock(self.dir / "lock"), "lock file",
                           self.dir / "lock")
        try:
            start = time.monotonic()
            said = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as e:
                    if e.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    waited = time.monotonic() - start
                    if waited > timeout:
                        raise LockTimeout(f"{self.dir}/lock: held by {self.holders_text(fd)} "
                                          f"for over {timeout:.0f}s; gave up waiting",
                                          file=str(self.dir / "lock")) from None
                    if not said and waited >= WAIT_SAY and self.on_wait is not None:
                        said = True
                        self.on_wait(f"vnetfw: waiting for the state lock {self.dir}/lock, "
                                     f"held by {self.holders_text(fd)} (up to "
                                     f"{timeout:.0f}s)")
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)        # closing releases the flock

    @staticmethod
    def _trusted(step: Callable[[], T], what: str, where: Path,
                 missing_ok: bool = False) -> T | None:
        """``step()``; its refusals and failures as one-line StateErrors naming ``where``
        (None for a missing file or directory, if ``missing_ok``)."""
        try:
            return step()
        except safe_files.Unsafe as e:
            raise StateError(e.refusing(what, where), file=e.path) from None
        except OSError as e:
            if missing_ok and isinstance(e, FileNotFoundError):
                return None
            bad = str(e.filename or where)
            raise StateError(f"{bad}: cannot use {what}: {e.strerror or e}", file=bad) from None

    def _read(self) -> bytes | None:
        """The state file's bytes (None: no state yet), from a trusted place only."""
        if self._trusted(lambda: safe_files.check_path(self.dir), "state directory",
                         self.dir, missing_ok=True) is None:
            return None
        return self._trusted(lambda: safe_files.read(self.path), "state file", self.path,
                             missing_ok=True)

    def recorded_backend(self) -> str | None:
        """The backend the state names, without building its networks (None if none)."""
        try:
            raw = self._read()
            b = json.loads(raw).get("backend") if raw is not None else None
        except (StateError, ValueError, AttributeError):
            return None
        return b if isinstance(b, str) else None

    def load(self) -> State:
        data = self._read()
        if data is None:
            return State()
        try:
            raw = data.decode()
            d = json.loads(raw)
            if d.get("version") != FORMAT_VERSION:
                raise ValueError(f"unsupported format version {d.get('version')!r}")
            raw_nets = d.get("networks", [])
            nets = [network_from_dict(n) for n in raw_nets]
        except (ValueError, KeyError, TypeError, IndexError) as e:   # (bad UTF-8 too)
            raise StateError(f"{self.path}: corrupt state ({e}); move it aside and run "
                             "'vnetfw apply' again", file=str(self.path)) from None
        try:
            gen = Generation(*d["generation"]) if d.get("generation") else None
        except TypeError:
            gen = None          # written by another version: just read the firewall once
        if d.get("vnetfw") != __version__:
            # Another vnetfw committed it: its rules may not be this version's plan, so
            # "nothing changed since" proves nothing. Read the firewall once.
            gen = None
        if gen is not None and not _sealed(data):
            # Edited since vnetfw wrote it: the generation no longer vouches for these
            # networks (a network taken out by hand would keep its rules live unseen).
            gen = None
        change = d.get("change")
        return State(d.get("backend"), d.get("profile"), d.get("prefix"),
                     {n.name: n for n in nets}, gen, change if isinstance(change, str) else None,
                     {n.name: (n, r) for n, r in zip(nets, raw_nets)})

    def save(self, state: State) -> None:
        """Replace the state file (under the lock, which serialises writers)."""
        doc = state.to_json()
        doc["_crc32"] = _UNSEALED.decode()
        # Compact: json's C encoder only serves separators without indent, and a state of
        # 10,000 networks is several MB.
        data = _seal((json.dumps(doc, separators=(",", ":"), sort_keys=True) + "\n").encode())

        def write() -> None:
            safe_files.check_path(self.dir)
            safe_files.replace(self.path, data)
            # What a writer killed half-way left (we hold the lock: no write is under way),
            # and the fixed name older versions wrote through (unlink never follows a link).
            for old in safe_files.leftovers(self.path) + [self.dir / "state.tmp"]:
                with contextlib.suppress(OSError):
                    os.unlink(old)
        self._trusted(write, "state file", self.path)


def _digest(data: bytes) -> bytes:
    """CRC-32 of ``data`` with its seal's characters taken as zeros, as 8 hex digits."""
    at, n = len(_SEAL), len(_UNSEALED)
    view = memoryview(data)
    crc = zlib.crc32(view[at + n:], zlib.crc32(_UNSEALED, zlib.crc32(view[:at])))
    return b"%08x" % crc


def _seal(data: bytes) -> bytes:
    assert data.startswith(_SEAL + _UNSEALED)
    return _SEAL + _digest(data) + data[len(_SEAL) + len(_UNSEALED):]


def _sealed(data: bytes) -> bool:
    """Are these the bytes ``save()`` wrote (the seal in them matches them)?"""
    at = len(_SEAL)
    return data.startswith(_SEAL) and data[at:at + len(_UNSEALED)] == _digest(data)
