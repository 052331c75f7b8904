"""Network namespaces the lab creates, guarded so the lab can never act on its own host.

Contract:
- ``Netns.create(name)`` makes a fresh namespace and registers it for cleanup;
  ``Netns.delete()`` (or leaving a ``with Netns.create(...)`` block) removes it. Every
  namespace still registered is deleted at interpreter exit (atexit), and
  ``cleanup_on_signals()`` turns SIGTERM/SIGHUP into ``SystemExit`` so ``with`` blocks and
  ``finally`` clauses run on those signals too (SIGINT already raises ``KeyboardInterrupt``).
- Every command run "in" a namespace (``run``, ``run_process``, ``popen``, ``ip``) first
  passes ``guard``: the target must be a real network-namespace file (nsfs) and must be
  neither the namespace this process started in nor the one it is in now. Otherwise
  ``GuardError`` is raised and nothing runs. Commands are argv lists; nothing goes through a
  shell.

``ip -n NS ...`` is used for iproute2 work (no extra process, no /sys remount); other
programs run under ``ip netns exec NS`` so that /sys and /proc/sys show that namespace, or,
with ``run_process(..., setns=True)``, enter it with setns(2) in the child between fork and
exec, as vnetfw's own Runner does (no extra process; only the network namespace changes).
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import threading
from typing import Sequence

from ..backends.runner import CLONE_NEWNET, LIBC, NETNS_DIR
from ..errors import GuardError

SELF_NS = "/proc/self/ns/net"


def ns_identity(path: str) -> tuple[int, int]:
    """(device, inode) of a namespace file: equal identities mean the same namespace."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


# Captured at import, i.e. before the lab could have moved this process anywhere.
START_NS = ns_identity(SELF_NS)


def guard(name: str, path: str | None = None) -> None:
    """Raise ``GuardError`` unless ``name`` is a namespace other than ours.

    ``path`` defaults to ``/run/netns/<name>``. Both the namespace the process started in and
    the one it is in now are refused. A path that is not an nsfs file (a bare file left by a
    failed ``ip netns add``) is refused too: ``ip netns exec`` on it would fail, and iproute2
    must never be pointed at something we cannot identify.
    """
    path = path or os.path.join(NETNS_DIR, name)
    try:
        target = ns_identity(path)
    except OSError as e:
        raise GuardError(f"lab guard: namespace {name!r} cannot be inspected: {e}") from None
    here = ns_identity(SELF_NS)
    if target[0] != START_NS[0]:
        raise GuardError(f"lab guard: {path} is not a network namespace file")
    if target in (START_NS, here):
        raise GuardError(f"lab guard: refusing to act on namespace {name!r}: it is the "
                         "namespace this process runs in")


_registry: set[str] = set()
_registry_lock = threading.Lock()


class Netns:
    """A namespace the lab created; commands run through it are guarded."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Netns({self.name!r})"

    @classmethod
    def create(cls, name: str) -> "Netns":
        if os.path.exists(os.path.join(NETNS_DIR, name)):
            raise GuardError(f"lab guard: namespace {name!r} already exists; not reusing it")
        _run(["ip", "netns", "add", name])     # fails if the name exists: never adopted
        with _registry_lock:
            _registry.add(name)
        ns = cls(name)
        try:
            guard(name)
            ns.ip("link", "set", "lo", "up")
        except BaseException:
            ns.delete()
            raise
        return ns

    def delete(self) -> None:
        with _registry_lock:
            _registry.discard(self.name)
        _delete(self.name)

    def __enter__(self) -> "Netns":
        return self

    def __exit__(self, *exc) -> None:
        self.delete()

    @property
    def path(self) -> str:
        """The namespace file (``/run/netns/<name>``), after passing the guard."""
        guard(self.name)
        return os.path.join(NETNS_DIR, self.name)

    # -- running things inside -----------------------------------------------------------
    def ip(self, *args: str) -> str:
        """``ip -n NS args...``"""
        guard(self.name)
        return _run(["ip", "-n", self.name, *args])

    def ip_batch(self, lines: Sequence[str]) -> None:
        """Many iproute2 commands in one process (``ip -n NS -batch -``); stops at the first
        failure, which raises with iproute2's message."""
        guard(self.name)
        if lines:
            _run(["ip", "-n", self.name, "-batch", "-"], stdin="\n".join(lines) + "\n")

    def argv(self, *argv: str) -> list[str]:
        """argv that runs ``argv`` inside the namespace (after passing the guard)."""
        guard(self.name)
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str, stdin: str | None = None, timeout: float = 30.0) -> str:
        return _run(self.argv(*argv), stdin=stdin, timeout=timeout)

    def run_process(self, *argv: str, stdin: str | None = None, timeout: float = 30.0,
                    check: bool = True, setns: bool = False) -> subprocess.CompletedProcess:
        """Like ``run`` but return the ``CompletedProcess`` (text stdout/stderr); with
        ``check=False`` a non-zero exit is returned rather than raised. ``setns=True``: the
        child enters the namespace with setns(2) between fork and exec (as vnetfw's Runner
        does) instead of running under ``ip netns exec``."""
        if not setns:
            return _run_process(self.argv(*argv), stdin=stdin, timeout=timeout, check=check)
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)

        def enter() -> None:                        # runs in the child only
            if LIBC.setns(fd, CLONE_NEWNET) != 0:
                os._exit(125)                       # never run the command outside it
        try:
            os.set_inheritable(fd, True)
            return _run_process(list(argv), stdin=stdin, timeout=timeout, check=check,
                                preexec_fn=enter, pass_fds=(fd,))
        finally:
            os.close(fd)

    def popen(self, *argv: str, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.argv(*argv), **kwargs)

    def sysctl(self, values: dict[str, int | str]) -> None:
        """Set sysctls (``{"net.ipv4.ip_forward": 1}``) inside the namespace, in one process
        (``ip netns exec`` makes /proc/sys/net show the target namespace)."""
        self.run("sysctl", "-q", "-w", *(f"{k}={v}" for k, v in values.items()))


class LabError(RuntimeError):
    """Building or probing the lab failed (a command in a lab namespace failed)."""


def _run(argv: list[str], stdin: str | None = None, timeout: float = 30.0) -> str:
    return _run_process(argv, stdin=stdin, timeout=timeout).stdout


def _run_process(argv: list[str], stdin: str | None = None, timeout: float = 30.0,
                 check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    p = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout,
                       **kwargs)
    if check and p.returncode != 0:
        raise LabError(f"{' '.join(argv[:6])}... failed ({p.returncode}): "
                           f"{p.stderr.strip() or p.stdout.strip()}")
    return p


def _delete(name: str) -> None:
    # Deleting a namespace only drops its name; it dies with its last process. The lab
    # stops its own processes first, so this really frees the bridges and veths.
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def cleanup_all() -> None:
    """Delete every namespace the lab created and has not deleted yet."""
    with _registry_lock:
        names = sorted(_registry)
        _registry.clear()
    for name in names:
        _delete(name)


atexit.register(cleanup_all)


class cleanup_on_signals:
    """Context manager: while active, SIGTERM and SIGHUP raise ``SystemExit`` (so cleanup
    runs) instead of killing the process outright. Only installed from the main thread and
    only over the default handler; the previous handlers are restored on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGHUP)

    def __enter__(self) -> "cleanup_on_signals":
        self._old: dict[int, object] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                if signal.getsignal(sig) is signal.SIG_DFL:
                    self._old[sig] = signal.signal(sig, _raise_exit)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _raise_exit(signum, frame) -> None:
    raise SystemExit(128 + signum)
