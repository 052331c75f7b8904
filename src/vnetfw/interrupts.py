"""Ctrl-C while vnetfw changes the firewall: finish the change, record it, then stop.

A change is committed by one tool process (nft: one transaction; iptables: one restore per
family, undone on failure) and then recorded in the state file. An interrupt between the
two would leave a firewall that changed and a state that does not say so; one that kills
the tool half-way through iptables' tables costs an undo. So from the moment the commit
starts (``Deferral.arm``) the first SIGINT is only noted, and said on stderr; when the
command is done (the state written, zones and hooks run: the outermost ``with`` ends) it
is raised as KeyboardInterrupt, or, for the CLI, left in ``interrupted`` so that the
report is printed before exit 130. A second one is raised at once, for an admin who means
it (the commit is then undone, or with nft whole or nothing, as before). Before ``arm``
nothing has changed and Ctrl-C stops vnetfw at once, as ever; so it does again once a
commit was refused and undone (``abandon``: the command will read and plan again),
unless a commit of the same command already went through (``landed``).

Only SIGINT's default handling is taken over: a caller that handles SIGINT itself
(``vnetfw watch`` stops gracefully) or ignores it (a background job) keeps its own. The
tools and hooks run in their own session (both started by ``Runner``), so the
terminal's Ctrl-C reaches vnetfw, not a restore half-way through its tables. Signal
handlers can only be set in the main thread: elsewhere (a library caller's worker
thread) this does nothing.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import TracebackType


def say(text: str) -> None:
    """A line on stderr, if anyone still reads it: after a Ctrl-C, a ``| tee`` that the same
    Ctrl-C ended is gone, and a BrokenPipeError here must not become the interrupt's."""
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


class Deferral:
    """Hold back the first SIGINT from ``arm`` to the end of the outermost ``with``.

    ``raise_at_end``: raise the held-back press as KeyboardInterrupt there (a library
    caller), or only note it in ``interrupted`` (the CLI, which prints the command's report
    first and then exits 130)."""

    def __init__(self) -> None:
        self._old: object = None
        self._armed = False
        self._depth = 0
        self._landed = False
        self.pending = False
        self.raise_at_end = True
        self.interrupted = False

    def arm(self) -> None:
        if self._armed or threading.current_thread() is not threading.main_thread() \
                or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            return
        self._old = signal.signal(signal.SIGINT, self._on_sigint)
        self._armed = True

    def landed(self) -> None:
        """A commit went through: from here the command finishes whatever happens next
        (``abandon`` no longer stops it)."""
        self._landed = True

    def _on_sigint(self, signum: int, frame: object) -> None:
        if self.pending:
            raise KeyboardInterrupt
        self.pending = True
        say("vnetfw: finishing the change in progress, then stopping "
            "(Ctrl-C again to stop at once)")

    def _restore(self) -> None:
        if self._armed:
            signal.signal(signal.SIGINT, self._old)    # type: ignore[arg-type]
            self._armed = False

    def abandon(self) -> None:
        """The commit was refused and undone: back to stopping at once (now, if Ctrl-C was
        pressed meanwhile), unless an earlier commit of this command went through (then
        the command finishes, as after any press)."""
        if self._landed:
            return
        self._restore()
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt

    def __enter__(self) -> "Deferral":
        self._depth += 1
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._depth -= 1
        if self._depth:
            return                  # an outer ``with`` (migrate's two steps) ends it
        self._restore()
        pending, self.pending, self._landed = self.pending, False, False
        if pending and kind is None:
            self.interrupted = True
            if self.raise_at_end:
                raise KeyboardInterrupt


# One per process, as SIGINT is: every Engine (and migrate around two of them) shares it.
DEFERRAL = Deferral()
