"""Errors vnetfw reports to its user.

Every error is one line a person can act on at 3 a.m.: it says where (file, network, field)
and what is wrong. The CLI prints ``str(error)`` (with ``--json``: an error object built from
``kind``, ``file``, ``network``, ``field`` and the message) and exits with ``exit_code``;
nothing is changed. The exit codes are the table in ``vnetfw.output.EXIT_CODES``.
"""

from __future__ import annotations


def cut(text: str, limit: int = 400) -> str:
    """``text`` for a one-line message: at most ``limit`` characters, and how many more
    there were (a 1 MiB name must not make a 1 MiB error line)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


def shown(value: object, limit: int = 64) -> str:
    """``repr(value)`` for a message, a long string cut before it is quoted."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}… ({len(value)} characters)"
    return cut(repr(value), 2 * limit)


class VnetfwError(Exception):
    """Base class: an error with a message fit to print as is.

    ``kind`` names the class of error for machines (``--json``); ``file``, ``network`` and
    ``field`` say where, when known."""

    exit_code = 2
    kind = "error"
    file: str | None = None
    network: str | None = None
    field: str | None = None

    def __init__(self, message: str = "", *, file: str | None = None,
                 network: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        if file is not None:
            self.file = file
        if network is not None:
            self.network = network
        if field is not None:
            self.field = field


class DefinitionError(VnetfwError):
    """A network definition is invalid.

    ``source`` is the file (or ``<string>``, ``<stdin>``), ``network`` the network's name
    when known, ``field`` the offending field, ``problem`` what is wrong with it.
    """

    kind = "definition"

    def __init__(self, source: str, problem: str, *, network: str | None = None,
                 field: str | None = None) -> None:
        self.source = source
        self.problem = problem
        # Each part cut to a length fit for one line: a value quoted in ``problem`` or a
        # network's name can be as long as the file it came from.
        where = [cut(source, 1000)]
        if network is not None:
            where.append(f"network {shown(network)}")
        if field is not None:
            where.append(cut(field, 200))
        super().__init__(": ".join(where + [cut(problem)]), file=source, network=network,
                         field=field)


class UsageError(DefinitionError):
    """The command line asks for something that cannot be: an unknown profile, a bad option
    value, a network that is not active. ``source`` is the option (or command) at fault; it
    is reported as the ``field``, not as a file. (A DefinitionError, for the callers that
    catch those: both exit 2.)"""

    kind = "usage"

    def __init__(self, source: str, problem: str, *, network: str | None = None) -> None:
        super().__init__(source, problem, network=network)
        self.file = None
        self.field = source


class BackendError(VnetfwError):
    """A firewall command failed. What the change wrote was undone (or it never changed
    anything)."""

    exit_code = 3
    kind = "backend"


class NeedsRoot(BackendError):
    """The command reads or changes the firewall, and this process may not (it lacks
    CAP_NET_ADMIN). Raised before anything is tried, so the message names the cause rather
    than the first tool that failed."""

    kind = "permission"


class RollbackIncomplete(BackendError):
    """A failed change could not be fully undone: the live firewall differs from before.
    Never retried another way (that would take the half-undone state as its baseline)."""

    kind = "rollback_incomplete"

    @staticmethod
    def unless(problems: list[str], msg: str) -> BackendError:
        """The error of a change that failed after it began writing and was undone: ``msg``
        says what failed; ``problems``, what the undo could not put back (none: a plain
        BackendError, the firewall as it was)."""
        if problems:
            return RollbackIncomplete(f"{msg}; ROLLBACK INCOMPLETE: {'; '.join(problems)}")
        return BackendError(msg)


class StateError(VnetfwError):
    """The state directory cannot be used (unreadable, corrupt, locked)."""

    exit_code = 4
    kind = "state"


class LockTimeout(StateError):
    """Another process held the state lock for longer than vnetfw waits."""

    kind = "lock"


class HookError(VnetfwError):
    """The hooks cannot be run safely (a hooks dir or hook another user could have
    written): refused before the command changed anything."""

    exit_code = 6
    kind = "hook"


class GuardError(VnetfwError):
    """A safety guard refused to act (e.g. a lab asked to touch the namespace it runs in)."""

    exit_code = 5
    kind = "guard"
