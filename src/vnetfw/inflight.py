"""The change in flight: readers see the firewall before or after it, never half-way, and
the next writer finishes or undoes a change whose writer died half-way.

A command changes the firewall with one or more tool processes (nft: one transaction;
iptables-nft: an IPv4 restore, then an IPv6 one; iptables-legacy: each table its own
commit), then records the result in ``state.json``. Until then the firewall and the state
disagree, and on iptables the firewall may hold part of the change. ``ChangeWindow``
brackets that stretch, in the state directory:

- ``commit.lock``: the writer (which holds the state lock already) takes it exclusively
  right before its first commit and keeps it until the new state is written (``open``,
  ``close``). Readers (``check``, ``status``) hold it shared while they read the state and
  the firewall (``steadily``), so they see one side of a change or the other. A reader
  that has to wait says so within a second (``waiting``) and gives up after ``timeout``;
  it never waits for a writer's planning or hooks, only for its commit.
Both are used like the state file (``safe_files``): never through a link planted in
their place, and a record read only from a file root (or the invoking user) owns and no
one else can write.

- ``inflight.json`` (``Record``): written (O_EXCL) once the writer holds ``commit.lock``,
  before its first tool commits; removed once the state is written, or once a failed
  change is known to have been undone. Found by someone who holds ``commit.lock`` or the
  state lock, its writer is gone: killed (kill -9, the OOM killer), or stopped by an undo
  that failed. The next command that changes the firewall finishes or undoes it first
  (``Engine._recover``); ``check`` and ``status`` name it.

The record is not fsynced: the firewall lives in kernel memory, so whatever loses the
page cache (a crash, a power cut) also empties the firewall, and the boot unit loads the
recorded state into it. A record left torn or empty is read as an unknown change.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

from . import safe_files
from .errors import LockTimeout, StateError

RECORD = "inflight.json"
LOCK = "commit.lock"
SAY_AFTER = 1.0         # a reader that waits longer says so
_POLL = 0.02
T = TypeVar("T")


def new_change_id() -> str:
    return uuid.uuid4().hex


@dataclass
class Record:
    """A change in flight: what it would record once done. ``before`` is the change id of
    the state it was computed from, ``change`` the one it writes into the state it records
    (so the state says whether it got that far). ``networks`` are the network definitions
    it adds or replaces (``Network.to_dict``), ``drop`` the names it removes: the networks
    after it are the state's, so edited. ``layout`` False: a teardown (nothing of vnetfw's
    stays). ``known`` False: the record could not be read (torn, or by another version)."""

    command: str
    pid: int
    started: float
    change: str
    before: str | None
    backend: str | None = None
    profile: str | None = None
    prefix: str | None = None
    networks: list[dict] = field(default_factory=list)
    drop: list[str] = field(default_factory=list)
    layout: bool = True
    known: bool = True

    def describe(self) -> str:
        """``apply (pid 1234, 01:02:03 UTC)``"""
        if not self.known:
            return "change (unreadable record)"
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started))
        return f"{self.command} (pid {self.pid}, started {when})"

    @classmethod
    def unknown(cls) -> "Record":
        return cls("change", 0, 0.0, "", None, known=False)

    @classmethod
    def from_json(cls, raw: bytes) -> "Record":
        try:
            d = json.loads(raw)
            rec = cls(**{k: d[k] for k in ("command", "pid", "started", "change", "before",
                                           "backend", "profile", "prefix", "networks",
                                           "drop", "layout")})
            if not (isinstance(rec.command, str) and isinstance(rec.change, str)
                    and isinstance(rec.networks, list) and isinstance(rec.drop, list)):
                raise TypeError("fields of the wrong type")
            return rec
        except (ValueError, KeyError, TypeError):
            return cls.unknown()


def _open_in(directory: Path, name: str, flags: int, mode: int = 0o600) -> int:
    """Open ``directory/name`` without following a link planted there."""
    return os.open(directory / name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)


def _trusted(step: Callable[[], T], path: Path) -> T:
    """``step()``; a file someone else could have planted (``safe_files``) or one that
    cannot be used, as a one-line StateError."""
    try:
        return step()
    except safe_files.Unsafe as e:
        raise StateError(e.refusing("file", path), file=e.path) from None
    except OSError as e:
        raise StateError(f"{path}: cannot use: {e.strerror or e}", file=str(path)) from None


class ChangeWindow:
    """``commit.lock`` and ``inflight.json`` of one state directory (see the module)."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self._fd: int | None = None
        self.record: Record | None = None      # while open: the change in flight

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    # -- reading ----------------------------------------------------------------------
    def pending(self) -> Record | None:
        """The record of a change whose writer is gone, if any. Only meaningful while the
        caller holds the state lock or ``commit.lock`` (otherwise a live writer's)."""
        path = self.dir / RECORD
        try:
            raw = safe_files.read(path)
        except FileNotFoundError:
            return None
        except (safe_files.Unsafe, OSError):
            raw = _trusted(lambda: safe_files.read(path), path)
        return Record.from_json(raw)

    def steadily(self, read: Callable[[Record | None], T], timeout: float = 60.0,
                 waiting: Callable[[str], None] | None = None) -> T:
        """``read(pending())`` with ``commit.lock`` held shared: no writer is between its
        first commit and its recorded state meanwhile. Without a state directory yet there
        is nothing to lock; ``read`` then runs unlocked, and again locked if a first
        writer made the directory meanwhile."""
        if not self.dir.is_dir():
            out = read(None)
            if not self.dir.is_dir():
                return out
        fd = _trusted(lambda: safe_files.open_lock(self.dir / LOCK), self.dir / LOCK)
        try:
            self._flock(fd, fcntl.LOCK_SH, timeout, waiting)
            return read(self.pending())
        finally:
            os.close(fd)

    def _flock(self, fd: int, how: int, timeout: float,
               waiting: Callable[[str], None] | None) -> None:
        start = time.monotonic()
        said = False
        while True:
            try:
                fcntl.flock(fd, how | fcntl.LOCK_NB)
                return
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            waited = time.monotonic() - start
            if how == fcntl.LOCK_SH and waited > SAY_AFTER and not said and waiting:
                said = True
                waiting(f"vnetfw: waiting for {self._who()} to finish changing the "
                        f"firewall (up to {timeout:.0f}s)")
            if waited > timeout:
                if how == fcntl.LOCK_SH:
                    raise LockTimeout(f"{self.dir / LOCK}: {self._who()} has been changing "
                                      f"the firewall for over {timeout:.0f}s; try again "
                                      "later", file=str(self.dir / LOCK)) from None
                raise LockTimeout(f"{self.dir / LOCK}: readers (check, status) have held it "
                                  f"for over {timeout:.0f}s", file=str(self.dir / LOCK)) from None
            time.sleep(_POLL)

    def _who(self) -> str:
        try:
            rec = self.pending()
        except StateError:
            rec = None
        return f"vnetfw {rec.describe()}" if rec is not None and rec.known \
            else "another vnetfw"

    # -- writing ----------------------------------------------------------------------
    def open(self, record: Callable[[], Record], timeout: float = 60.0) -> None:
        """Before a writer's first commit (it holds the state lock): take ``commit.lock``
        and write ``record()``, unless a record is there already (a recovery, which keeps
        the record it works on until it is done). Idempotent."""
        if self._fd is not None:
            return
        fd = _trusted(lambda: safe_files.open_lock(self.dir / LOCK), self.dir / LOCK)
        try:
            self._flock(fd, fcntl.LOCK_EX, timeout, None)
            kept = self.pending()
            if kept is not None:
                self.record = kept
            else:
                self.record = record()
                self._write(self.record)
        except BaseException:
            os.close(fd)
            self.record = None
            raise
        self._fd = fd

    def _write(self, rec: Record) -> None:
        data = json.dumps(asdict(rec), separators=(",", ":")).encode()
        try:
            fd = _open_in(self.dir, RECORD, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        except OSError as e:
            raise StateError(f"{self.dir / RECORD}: cannot create: {e.strerror}",
                             file=str(self.dir / RECORD)) from None
        try:
            os.write(fd, data)
        except OSError as e:
            os.close(fd)
            self.discard()
            raise StateError(f"{self.dir / RECORD}: cannot write: {e.strerror}",
                             file=str(self.dir / RECORD)) from None
        os.close(fd)

    def discard(self) -> None:
        """Remove the record (the change is recorded, or known undone)."""
        try:
            os.unlink(self.dir / RECORD)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StateError(f"{self.dir / RECORD}: cannot remove: {e.strerror}",
                             file=str(self.dir / RECORD)) from None

    def close(self, keep: bool = False) -> None:
        """End the window: remove the record (unless ``keep``: the firewall may hold part
        of the change, and the next command must see it), then release the lock."""
        if self._fd is None:
            return
        try:
            if not keep:
                self.discard()
        finally:
            os.close(self._fd)
            self._fd = None
            self.record = None


def record_for(command: str, before: Any, backend: str | None, profile: str | None,
               prefix: str | None, after: dict, layout: bool = True) -> Record:
    """The record of ``command`` taking state ``before`` (a ``State``) to the networks
    ``after`` (name -> ``Network``) with that backend, profile and prefix."""
    was = before.networks
    return Record(command, os.getpid(), time.time(), new_change_id(), before.change,
                  backend, profile, prefix,
                  [n.to_dict() for k, n in sorted(after.items()) if was.get(k) != n],
                  sorted(k for k in was if k not in after), layout)
