"""Running commands: the one place vnetfw starts processes.

Contract: ``Runner.run(argv, stdin)`` runs ``argv`` (a list, never a shell string) inside the
runner's network namespace, or the caller's own when ``netns`` is None, and returns its
stdout; a non-zero exit raises ``CommandFailed`` carrying the command and its stderr.

Entering a namespace: rather than prefixing every command with ``ip netns exec`` (one more
process per command, plus a /sys remount we do not need), the child calls setns(2) on
``/run/netns/NAME`` between fork and exec. iptables, ip6tables and nft only need the network
namespace, so that is all we switch.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from ..errors import BackendError

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"
_NETNS_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class CommandFailed(BackendError):
    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr.strip()
        first = self.stderr.splitlines()[-1] if self.stderr else f"exit status {returncode}"
        super().__init__(f"{argv[0]} failed: {first}")


def netns_problem(name: str) -> str | None:
    if not _NETNS_NAME.match(name) or name in (".", ".."):
        return f"network namespace name {name!r} must be 1-64 of letters, digits, '_', '.', '-'"
    if not os.path.exists(os.path.join(NETNS_DIR, name)):
        return f"network namespace {name!r} does not exist (ip netns add {name})"
    return None


_libc = None


def _setns_preexec(fd: int):
    def enter() -> None:
        if _libc.setns(fd, CLONE_NEWNET) != 0:     # runs in the child only
            os._exit(125)
    return enter


@dataclass
class Runner:
    netns: str | None = None
    timeout: float = 120.0

    def __post_init__(self) -> None:
        global _libc
        if self.netns is not None:
            if (p := netns_problem(self.netns)) is not None:
                raise BackendError(p)
            if _libc is None:
                _libc = ctypes.CDLL(None, use_errno=True)      # the C library the interpreter links

    def which(self, prog: str) -> str | None:
        return shutil.which(prog)

    def run(self, argv: list[str], stdin: str | None = None, *, check: bool = True) -> str:
        """Run argv in our namespace; return stdout. Raise CommandFailed on non-zero exit."""
        fd = None
        kwargs: dict = {}
        try:
            if self.netns is not None:
                fd = os.open(os.path.join(NETNS_DIR, self.netns), os.O_RDONLY | os.O_CLOEXEC)
                os.set_inheritable(fd, True)
                kwargs = {"preexec_fn": _setns_preexec(fd), "pass_fds": (fd,)}
            try:
                p = subprocess.run(argv, input=stdin, capture_output=True, text=True,
                                   timeout=self.timeout, **kwargs)
            except FileNotFoundError:
                raise BackendError(f"{argv[0]}: command not found") from None
            except subprocess.TimeoutExpired:
                raise BackendError(f"{argv[0]} did not finish within {self.timeout:.0f}s") from None
        finally:
            if fd is not None:
                os.close(fd)
        if check and p.returncode != 0:
            raise CommandFailed(argv, p.returncode, p.stderr)
        return p.stdout
