"""Errors vnetfw reports to its user.

Every error is one line a person can act on at 3 a.m.: it says where (file, network, field)
and what is wrong. The CLI prints ``str(error)`` and exits non-zero; nothing is changed.
"""

from __future__ import annotations


class VnetfwError(Exception):
    """Base class: an error with a message fit to print as is."""

    exit_code = 2


class DefinitionError(VnetfwError):
    """A network definition is invalid.

    ``source`` is the file (or ``<string>``), ``network`` the network's name when known,
    ``field`` the offending field, ``problem`` what is wrong with it.
    """

    def __init__(self, source: str, problem: str, *, network: str | None = None,
                 field: str | None = None) -> None:
        self.source = source
        self.network = network
        self.field = field
        self.problem = problem
        where = [source]
        if network is not None:
            where.append(f"network {network!r}")
        if field is not None:
            where.append(field)
        super().__init__(": ".join(where + [problem]))


class BackendError(VnetfwError):
    """A firewall command failed. What the change wrote was undone (or it never changed
    anything)."""

    exit_code = 3


class RollbackIncomplete(BackendError):
    """A failed change could not be fully undone: the live firewall differs from before.
    Never retried another way (that would take the half-undone state as its baseline)."""


class StateError(VnetfwError):
    """The state directory cannot be used (unreadable, corrupt, locked)."""

    exit_code = 4


class GuardError(VnetfwError):
    """A safety guard refused to act (e.g. a lab asked to touch the namespace it runs in)."""

    exit_code = 5
