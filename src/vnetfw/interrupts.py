"""Ctrl-C while vnetfw changes the firewall: finish the change, record it, then stop.

A change is committed by one tool process (nft: one transaction; iptables: one restore per
family, undone on failure) and then recorded in the state file. An interrupt between the
two would leave a firewall that changed and a state that does not say so; one that kills
the tool half-way through iptables' tables costs an undo. So from the moment the commit
starts until the state is written (``Deferral.arm`` .. ``Deferral.release``), the first
SIGINT is only noted (and said on stderr) and raised as KeyboardInterrupt once the state is
written; a second one is raised at once, for an admin who means it (the commit is then
undone, or with nft whole or nothing, as before). Before ``arm`` nothing has changed and
Ctrl-C stops vnetfw at once, as ever.

The tools themselves run in their own session (``Runner``), so the terminal's Ctrl-C
reaches vnetfw alone, and vnetfw decides. Signal handlers can only be set in the main
thread: elsewhere (a library caller's worker thread) this does nothing.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import TracebackType


class Deferral:
    """Hold back the first SIGINT between ``arm`` and ``release``; usable as a context
    manager whose exit restores the handler on any path (without raising what it held back
    when an error is already on its way)."""

    def __init__(self) -> None:
        self._old: object = None
        self._armed = False
        self.pending = False

    def arm(self) -> None:
        if self._armed or threading.current_thread() is not threading.main_thread():
            return
        self._old = signal.signal(signal.SIGINT, self._on_sigint)
        self._armed = True

    def _on_sigint(self, signum: int, frame: object) -> None:
        if self.pending:
            raise KeyboardInterrupt
        self.pending = True
        print("vnetfw: finishing the change in progress, then stopping "
              "(Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def _restore(self) -> None:
        if self._armed:
            signal.signal(signal.SIGINT, self._old)    # type: ignore[arg-type]
            self._armed = False

    def release(self) -> None:
        """The change is complete and recorded: raise the interrupt held back, if any."""
        self._restore()
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt

    def __enter__(self) -> "Deferral":
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is None:
            self.release()
        else:
            self._restore()
            self.pending = False
