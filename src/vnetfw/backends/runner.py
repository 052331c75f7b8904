"""Running commands: the one place vnetfw starts processes.

Contract: ``Runner.run(argv, stdin)`` runs ``argv`` (a list, never a shell string) inside the
runner's network namespace, or the caller's own when ``netns`` is None, and returns its
stdout; a non-zero exit raises ``CommandFailed`` carrying the command and its stderr,
``NotStarted`` if it never ran. The command runs in a session of its own; on an interrupt
or a timeout that session is killed and waited for before the exception goes on.

``Runner.feed(argv)`` starts a command that reads its input while vnetfw is still writing it
(``Feed``): the kernel-facing tool parses the first networks while the next are planned.
An argument equal to ``FEED_PATH`` is replaced by ``/dev/fd/N`` naming the input pipe;
otherwise the pipe is the command's stdin.

Entering a namespace: rather than prefixing every command with ``ip netns exec`` (one more
process per command, plus a /sys remount we do not need), the child calls setns(2) on
``/run/netns/NAME`` between fork and exec. iptables, ip6tables and nft only need the network
namespace, so that is all we switch.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import re
import select
import signal
import subprocess
from dataclasses import dataclass, field
from typing import IO, Mapping

from ..errors import BackendError

CLONE_NEWNET = 0x40000000
# Stands for the input pipe in ``Runner.feed``'s argv (as /dev/fd/N). nft reads ``-f -``
# (stdin) whole before it parses a byte (to quote lines in its error messages), but a
# file it parses as it reads: hence a path to the pipe rather than stdin.
FEED_PATH = "<feed>"
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
NETNS_DIR = "/run/netns"
_NETNS_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


# iptables' closing hint, which says nothing about what went wrong
_HELP_HINT = re.compile(r"^Try `\S+ -h' or '\S+ --help' for more information\.$")


def complaint(stderr: str, limit: int = 4) -> str:
    """A tool's error output as one line: what it said, without iptables' closing "Try
    `iptables-restore -h' ..." hint or the carets nft draws under the input line it quotes
    (the last line of either says nothing). nft: "/dev/fd/3:7:1-40: Error: Could not
    process rule: ...; add rule inet ..."; iptables-restore: "...: Chain 'X' does not
    exist; Error occurred at line: 3". At most ``limit`` lines, each cut at 200 characters."""
    lines = [ln.strip() for ln in stderr.splitlines()]
    keep = [ln if len(ln) <= 200 else ln[:199] + "…" for ln in lines
            if ln and not _HELP_HINT.match(ln) and not set(ln) <= {"^", "~", " "}]
    more = len(keep) - limit
    return "; ".join(keep[:limit]) + (f"; ({more} more lines)" if more > 0 else "")


class NotStarted(BackendError):
    """The command never ran (not found, not executable, could not enter the namespace):
    nothing it was to do has happened."""


class CommandFailed(BackendError):
    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr.strip()
        said = complaint(self.stderr) or f"exit status {returncode}"
        super().__init__(f"{argv[0]} failed: {said}")


def netns_problem(name: str) -> str | None:
    if not _NETNS_NAME.match(name) or name in (".", ".."):
        return f"network namespace name {name!r} must be 1-64 of letters, digits, '_', '.', '-'"
    if not os.path.exists(os.path.join(NETNS_DIR, name)):
        return f"network namespace {name!r} does not exist (ip netns add {name})"
    return None


# The C library the interpreter links (setns, getsockopt with an input buffer): vnetfw's
# one handle on it (nfgen, xtfp and watch_nl use this one).
LIBC = ctypes.CDLL(None, use_errno=True)


_NO_NETNS = b"vnetfw: the command could not enter the network namespace\n"


def _setns_preexec(fd: int):
    def enter() -> None:
        if LIBC.setns(fd, CLONE_NEWNET) != 0:      # runs in the child only
            os.write(2, _NO_NETNS)
            os._exit(125)
    return enter


@dataclass
class Runner:
    netns: str | None = None
    timeout: float = 120.0
    _answers: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.netns is not None and (p := netns_problem(self.netns)) is not None:
            raise BackendError(p)

    def answer(self, argv: list[str]) -> str:
        """``run(argv)`` for a question whose answer does not change while vnetfw runs
        (``iptables --version``): asked once per runner, however many parts ask it."""
        key = tuple(argv)
        if key not in self._answers:
            self._answers[key] = self.run(argv)
        return self._answers[key]

    def which(self, prog: str) -> str | None:
        import shutil       # imported by the few commands that ask (~1.5 ms)
        return shutil.which(prog)

    def _netns_kwargs(self) -> tuple[int | None, dict]:
        """(fd of our namespace or None, Popen arguments that enter it in the child)."""
        if self.netns is None:
            return None, {}
        fd = os.open(os.path.join(NETNS_DIR, self.netns), os.O_RDONLY | os.O_CLOEXEC)
        os.set_inheritable(fd, True)
        return fd, {"preexec_fn": _setns_preexec(fd), "pass_fds": (fd,)}

    def run(self, argv: list[str], stdin: str | None = None, *, check: bool = True,
            env: Mapping[str, str] | None = None, timeout: float | None = None) -> str:
        """Run argv in our namespace; return stdout. Raise CommandFailed on non-zero exit,
        NotStarted if it never ran (see the module's contract). ``env``: variables to set
        on top of vnetfw's environment; ``timeout``: instead of the runner's."""
        fd = None
        timeout = self.timeout if timeout is None else timeout
        try:
            fd, kwargs = self._netns_kwargs()
            try:
                # Its own session: the terminal's Ctrl-C reaches vnetfw, which decides
                # (``interrupts``), not a restore half-way through its tables.
                p = subprocess.Popen(argv, stdin=None if stdin is None else subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True,
                                     env=None if env is None else {**os.environ, **env},
                                     **kwargs)
            except FileNotFoundError:
                raise NotStarted(f"{argv[0]}: command not found") from None
            except OSError as e:            # not executable, no memory to fork...
                raise NotStarted(f"{argv[0]}: {e.strerror or e}") from None
            with p:
                try:
                    out, err = p.communicate(stdin, timeout=timeout)
                except BaseException as e:
                    # Killed, and waited for: a restore killed inside its commit finishes
                    # that system call first, and whoever reads the firewall next (the undo
                    # after a Ctrl-C) must see its result. (subprocess.run does not wait
                    # for it on Ctrl-C.)
                    try:        # the whole session: a wrapper script's children too
                        os.killpg(p.pid, signal.SIGKILL)
                    except OSError:
                        p.kill()
                    p.wait()
                    if isinstance(e, subprocess.TimeoutExpired):
                        raise BackendError(f"{argv[0]} did not finish within "
                                           f"{timeout:.0f}s") from None
                    raise
        finally:
            if fd is not None:
                os.close(fd)
        if p.returncode == 125 and err.encode() == _NO_NETNS:
            raise NotStarted(f"{argv[0]}: could not enter network namespace {self.netns}")
        if check and p.returncode != 0:
            raise CommandFailed(argv, p.returncode, err)
        return out

    def feed(self, argv: list[str]) -> "Feed":
        """Start ``argv`` in our namespace with an input pipe that ``Feed.write`` fills;
        ``Feed.finish`` ends the input and waits, ``Feed.abort`` kills the command before it
        sees the end of its input. The command's output goes to memory files, not pipes, so
        it never blocks on output nobody reads while vnetfw blocks writing its input.
        Raises ``FeedUnavailable`` when the command cannot be started this way (then the
        caller can run it the ordinary way), ``BackendError`` when it does not exist."""
        if FEED_PATH in argv and not os.path.isdir("/dev/fd"):
            raise FeedUnavailable(f"{argv[0]}: no /dev/fd to hand it a pipe as a file")
        fd = None
        out = err = None
        try:
            r, w = os.pipe()
        except OSError as e:
            raise FeedUnavailable(f"{argv[0]}: no pipe: {e}") from None
        try:
            # A pipe holds 64 KiB: vnetfw would stop at every 64 KiB until the command
            # catches up. A larger one lets both run on (best effort: the limit is
            # /proc/sys/fs/pipe-max-size, 1 MiB by default).
            fcntl.fcntl(w, F_SETPIPE_SZ, 1 << 20)
        except OSError:
            pass
        try:
            try:
                out, err = _memfile("stdout"), _memfile("stderr")
                fd, kwargs = self._netns_kwargs()
            except OSError as e:
                raise FeedUnavailable(f"{argv[0]}: cannot be started: {e}") from None
            kwargs["pass_fds"] = kwargs.get("pass_fds", ()) + (r,)
            args = [f"/dev/fd/{r}" if a == FEED_PATH else a for a in argv]
            try:
                # Its own process group: a wrapper script's children go with it on abort,
                # and a Ctrl-C in vnetfw's terminal reaches vnetfw, which aborts it, rather
                # than the command half-way through a commit.
                proc = subprocess.Popen(args, stdin=r if FEED_PATH not in argv else
                                        subprocess.DEVNULL, stdout=out, stderr=err,
                                        start_new_session=True, **kwargs)
            except FileNotFoundError:
                raise BackendError(f"{argv[0]}: command not found") from None
            except OSError as e:
                raise FeedUnavailable(f"{argv[0]}: cannot be started: {e}") from None
        except BaseException:
            os.close(w)
            for f in (out, err):
                if f is not None:
                    f.close()
            raise
        finally:
            os.close(r)
            if fd is not None:
                os.close(fd)
        os.set_blocking(w, False)       # writes wait in poll(), with a time limit
        return Feed(argv, proc, w, out, err, self.timeout)


class FeedUnavailable(BackendError):
    """``Runner.feed`` could not start the command with a pipe for its input here (no pipe,
    no /dev/fd, no memory file, a fork refused): nothing about the firewall; the caller
    may run it the ordinary way."""


def _memfile(name: str) -> IO[bytes]:
    """An anonymous file in memory (no temporary directory needed); a temporary file where
    this Python has no memfd_create."""
    if hasattr(os, "memfd_create"):
        return os.fdopen(os.memfd_create(f"vnetfw-{name}", os.MFD_CLOEXEC), "w+b")
    import tempfile
    return tempfile.TemporaryFile()


class Feed:
    """A running command reading what vnetfw writes (``Runner.feed``).

    Writes go straight to the pipe, unbuffered, so a failure is seen where it happens and
    never left in a buffer. Time limits: a write that the command does not take within
    ``timeout`` (it stopped reading: waiting for a lock), and the command's run after its
    input ended; vnetfw's own time between writes (reading files, planning) is not
    counted. When one runs out, the command is killed."""

    def __init__(self, argv: list[str], proc: subprocess.Popen, pipe: int,
                 out: IO[bytes], err: IO[bytes], timeout: float) -> None:
        self.argv = argv
        self._proc = proc
        self._pipe: int | None = pipe
        self._out = out
        self._err = err
        self._timeout = timeout
        self._error: BackendError | None = None

    def write(self, text: str) -> None:
        """Hand ``text`` to the command (waits while its pipe is full). If the command
        stopped reading (it failed, or did not read for ``timeout``), raise why."""
        assert self._pipe is not None, "feed already ended"
        data = memoryview(text.encode())
        poller = None
        try:
            while data:
                try:
                    data = data[os.write(self._pipe, data):]
                except BlockingIOError:
                    if poller is None:
                        poller = select.poll()
                        poller.register(self._pipe, select.POLLOUT)
                    if not poller.poll(self._timeout * 1000):
                        self._kill()
                        self._error = BackendError(
                            f"{self.argv[0]} did not read its input for "
                            f"{self._timeout:g}s and was killed")
                        raise self._error from None
        except OSError:                 # EPIPE: the command is gone
            self._close_pipe()
            raise self._failure(self._wait() or 1) from None
        except BackendError:
            self._close_pipe()
            self._wait()
            self._close_files()
            raise

    def end(self) -> None:
        """End the input: the command now acts on it (``finish`` waits for it)."""
        self._close_pipe()

    def finish(self) -> str:
        """End the input, wait; return the command's stdout. Raise CommandFailed on a
        non-zero exit, BackendError when it ran out of time."""
        self.end()
        rc = self._wait()
        if rc != 0 or self._error is not None:
            raise self._failure(rc)
        self._out.seek(0)
        text = self._out.read().decode("utf-8", "replace")
        self._close_files()
        return text

    def exited(self) -> bool:
        """Has the command ended already (before its input did: it failed)?"""
        return self._proc.poll() is not None

    def abort(self) -> None:
        """Kill the command before it reads the end of its input, so it acts on nothing
        (each caller makes sure a cut-off input means nothing to its command). Never
        raises."""
        self._kill()
        self._close_pipe()
        self._proc.wait()
        self._close_files()

    def _kill(self) -> None:
        """SIGKILL to the command's process group (a wrapper script and its children)."""
        if self._proc.returncode is not None:
            return
        try:
            os.killpg(self._proc.pid, 9)
        except OSError:
            pass

    def _close_pipe(self) -> None:
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            os.close(pipe)

    def _wait(self) -> int:
        try:
            return self._proc.wait(timeout=self._timeout)
        except subprocess.TimeoutExpired:
            self._kill()
            self._error = BackendError(f"{self.argv[0]} did not finish within "
                                       f"{self._timeout:g}s and was killed")
            return self._proc.wait()

    def _failure(self, rc: int) -> BackendError:
        if self._error is None:         # read its stderr once, however often it is asked
            self._err.seek(0)
            self._error = CommandFailed(self.argv, rc,
                                        self._err.read().decode("utf-8", "replace"))
        self._close_files()
        return self._error

    def _close_files(self) -> None:
        self._out.close()
        self._err.close()
