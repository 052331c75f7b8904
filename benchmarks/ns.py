"""Throwaway network namespaces, and running commands inside them.

Every namespace is named ``vnb<pid>-<tag><n>`` and registered for deletion at exit (and on
SIGTERM/SIGHUP, which are turned into SystemExit while the benchmark runs). Nothing here ever
acts on the namespace the process started in: ``guard`` refuses it.

Two ways into a namespace:
- ``Netns.argv(...)`` -> ``ip netns exec NS ...`` (also remounts /sys; used for long-lived
  helpers such as iperf3 and for shell scripts);
- ``Netns.run_setns(...)``: the child calls setns(2) between fork and exec, exactly as vnetfw's
  own Runner does, so the floor pays the same process-start price as vnetfw.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import itertools
import os
import signal
import subprocess
import threading
import time

NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
_START = os.stat("/proc/self/ns/net")
_START_ID = (_START.st_dev, _START.st_ino)
_counter = itertools.count()
_registry: set[str] = set()
_lock = threading.Lock()
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class GuardError(RuntimeError):
    pass


def guard(name: str) -> str:
    path = os.path.join(NETNS_DIR, name)
    st = os.stat(path)
    if (st.st_dev, st.st_ino) == _START_ID:
        raise GuardError(f"refusing to act on {name!r}: it is the benchmark's own namespace")
    if st.st_dev != _START.st_dev:
        raise GuardError(f"{path} is not a network namespace file")
    return path


def _sh(argv: list[str], stdin: str | None = None, timeout: float = 120.0,
        check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:8])} failed ({p.returncode}): "
                           f"{(p.stderr or p.stdout).strip()[-2000:]}")
    return p


class Netns:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Netns({self.name})"

    @classmethod
    def create(cls, tag: str = "ns") -> "Netns":
        name = f"vnb{os.getpid()}-{tag}{next(_counter)}"
        if os.path.exists(os.path.join(NETNS_DIR, name)):
            raise GuardError(f"namespace {name} already exists; not reusing it")
        _sh(["ip", "netns", "add", name])
        with _lock:
            _registry.add(name)
        ns = cls(name)
        guard(name)
        ns.ip("link", "set", "lo", "up")
        return ns

    def delete(self) -> None:
        with _lock:
            _registry.discard(self.name)
        _delete(self.name)

    def __enter__(self) -> "Netns":
        return self

    def __exit__(self, *exc) -> None:
        self.delete()

    @property
    def path(self) -> str:
        return guard(self.name)

    def ip(self, *args: str) -> str:
        guard(self.name)
        return _sh(["ip", "-n", self.name, *args]).stdout

    def ip_batch(self, lines: list[str]) -> None:
        guard(self.name)
        if lines:
            _sh(["ip", "-n", self.name, "-batch", "-"], stdin="\n".join(lines) + "\n")

    def argv(self, *argv: str) -> list[str]:
        guard(self.name)
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str, stdin: str | None = None, timeout: float = 120.0,
            check: bool = True) -> subprocess.CompletedProcess:
        return _sh(self.argv(*argv), stdin=stdin, timeout=timeout, check=check)

    def run_setns(self, argv: list[str], stdin: str | None = None, timeout: float = 120.0,
                  check: bool = True) -> subprocess.CompletedProcess:
        """Run argv in the namespace via setns(2) in the child (no extra process)."""
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.set_inheritable(fd, True)

            def enter() -> None:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    os._exit(125)
            p = subprocess.run(argv, input=stdin, capture_output=True, text=True,
                               timeout=timeout, preexec_fn=enter, pass_fds=(fd,))
        finally:
            os.close(fd)
        if check and p.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:6])} in {self.name} failed ({p.returncode}): "
                               f"{(p.stderr or p.stdout).strip()[-2000:]}")
        return p

    def sysctl(self, *settings: str) -> None:
        self.run("sysctl", "-q", "-w", *settings)


def _delete(name: str) -> None:
    # Processes we started inside were stopped by their owners; deleting drops the name.
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def cleanup_all() -> None:
    with _lock:
        names = sorted(_registry)
        _registry.clear()
    for n in names:
        _delete(n)


atexit.register(cleanup_all)


class signals_to_exit:
    """While active, SIGTERM/SIGHUP raise SystemExit so finally-blocks and atexit run."""

    def __enter__(self):
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGHUP):
                self._old[s] = signal.signal(s, _raise)
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def _raise(signum, frame):
    raise SystemExit(128 + signum)


def timed(fn, *a, **kw) -> tuple[float, object]:
    t0 = time.perf_counter()
    r = fn(*a, **kw)
    return time.perf_counter() - t0, r
