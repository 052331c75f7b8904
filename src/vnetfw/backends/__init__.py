"""Backends: the only code that touches the firewall.

Every backend offers the same small contract, so the engine never knows which one it drives:

- ``read() -> Live``: one snapshot of the live state that concerns vnetfw (enough to restore
  it exactly, and to diff against a desired ruleset).
- ``changes(live, desired, scope) -> ChangeSet``: pure; what must change to get from ``live``
  to ``desired``. ``scope`` is ``"setup"`` (chains/tables and jumps only), ``"full"`` (setup
  plus every rule) or ``"teardown"`` (remove all vnetfw owns). An empty ChangeSet means the
  live state already is the desired one.
- ``commit(live, changes)``: apply atomically. Either everything lands or the live state is
  left as ``live`` was (the backend restores its snapshot); raises ``BackendError``.
- ``render(desired, family)``: pure; the text ``commit`` would load on an empty system.
- ``live_ruleset(live, prefix) -> Ruleset``: the live state parsed back into the
  backend-neutral type; compare it with ``effective(desired)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from ..errors import BackendError
from ..ruleset import Family, Ruleset
from .runner import Runner

if TYPE_CHECKING:
    from .nfgen import Generation

Scope = Literal["setup", "full", "teardown"]

IPTABLES_FLAVOURS = ("iptables-nft", "iptables-legacy", "iptables")
BACKENDS = IPTABLES_FLAVOURS + ("nftables",)


class Change(NamedTuple):
    """One human-readable change: ``what`` is a verb (create, add, delete, insert, move...),
    ``where`` the family/table/chain, ``detail`` the rule or object in plain words. (A
    NamedTuple: an apply of 1,000 networks reports 25,000 of them.)"""

    family: Family | None
    what: str
    where: str
    detail: str = ""
    network: str | None = None

    def __str__(self) -> str:
        fam = f"ipv{self.family} " if self.family else ""
        net = f"  [{self.network}]" if self.network else ""
        return f"{fam}{self.where}: {self.what} {self.detail}".rstrip() + net

    def to_json(self) -> dict[str, Any]:
        return {"family": f"ipv{self.family}" if self.family else None, "what": self.what,
                "where": self.where, "detail": self.detail, "network": self.network}


@dataclass
class ChangeSet:
    """Changes plus the backend's own payload that ``commit`` executes."""

    items: list[Change] = field(default_factory=list)
    payload: Any = None

    @property
    def empty(self) -> bool:
        return not self.items


class Backend:
    name: str = "?"
    can_assume: bool = False        # assumed_live() can stand in for read()

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def read(self) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def changes(self, live: Any, desired: Ruleset | None, scope: Scope,
                prefix: str | None = None) -> ChangeSet:
        """``prefix`` names the layout when ``desired`` is None (teardown)."""
        raise NotImplementedError  # pragma: no cover

    def commit(self, live: Any, changes: ChangeSet) -> None:
        raise NotImplementedError  # pragma: no cover

    def render(self, desired: Ruleset, family: Family | None = None) -> str:
        raise NotImplementedError  # pragma: no cover

    def live_ruleset(self, live: Any, prefix: str) -> Ruleset:
        raise NotImplementedError  # pragma: no cover

    def effective(self, desired: Ruleset) -> Ruleset:
        """The part of ``desired`` this backend implements (nftables has no CHECKSUM target,
        so it drops those optional rules). Compare ``live_ruleset`` with this, not ``desired``."""
        return desired

    def available(self) -> str | None:
        """None if usable here, else why not (missing command, kernel refuses)."""
        return None

    def assumed_live(self, desired: Ruleset) -> Any:
        """The state ``read()`` would return right after ``desired`` was committed; only for
        backends with ``can_assume`` (not iptables: its rollback needs the real
        ``iptables-save`` text of the tables it changes)."""
        return None

    def generation(self) -> "Generation | None":
        """The namespace's nf_tables generation, if this backend writes through nf_tables
        (nftables, iptables-nft); None otherwise (iptables-legacy) or if unknown."""
        return None

    def transactions(self, changes: ChangeSet) -> int | None:
        """How many nf_tables transactions ``commit(changes)`` makes (None: not nf_tables)."""
        return None

    def _nf_generation(self) -> "Generation | None":
        from .nfgen import genid
        from .runner import NETNS_DIR
        import os
        try:
            return genid(None if self.runner.netns is None
                         else os.path.join(NETNS_DIR, self.runner.netns))
        except OSError:
            return None


def get_backend(name: str, runner: Runner) -> Backend:
    """Instantiate a backend by name; ``auto`` picks nftables when usable, else iptables."""
    if name in IPTABLES_FLAVOURS:
        from .iptables import IptablesBackend
        return IptablesBackend(runner, flavour=name)
    if name == "nftables":
        try:
            from .nftables import NftablesBackend
        except ImportError:
            raise BackendError("the nftables backend is not available in this build") from None
        return NftablesBackend(runner)
    if name == "auto":
        try:
            from .nftables import NftablesBackend
            nb = NftablesBackend(runner)
            if nb.available() is None:
                return nb
        except ImportError:
            pass
        from .iptables import IptablesBackend
        return IptablesBackend(runner, flavour="iptables")
    raise BackendError(f"unknown backend {name!r} (expected auto, {', '.join(BACKENDS)})")
