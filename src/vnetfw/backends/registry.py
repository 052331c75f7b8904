"""The backends vnetfw has, by name, and what ``auto`` means: decided here and nowhere else.

Contract:
- ``NAMES``: every backend a user may name; ``CHOICES`` what ``--backend`` takes (``auto``
  first). ``IPTABLES_FLAVOURS``: the names the iptables backend serves (``iptables`` is
  whichever of ``FLAVOURS`` the system's ``iptables`` is); ``iptables_tool`` their commands.
- ``requested(name, recorded)``: what a request means before anything runs. A named backend
  is itself; ``auto`` keeps the backend the active networks were applied with
  (``recorded()``, asked only for ``auto``), and stays ``AUTO`` when there are none.
- ``get_backend(name, runner)``: the backend instance; ``AUTO`` probes nftables (``nft -c``
  of a probe table, which creates nothing) and falls back to the system's iptables.
- ``unprobed(name)``: ``render`` runs nothing (it needs no root), so there ``auto`` means
  what it picks wherever the kernel takes nftables.

Importing this module costs nothing on ``--help``: the backends themselves are imported only
when one is instantiated. Adding a backend means a name here and a branch in
``get_backend``; everything that asks about a backend's tables asks the backend itself
(``Backend.writes_nf_table``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from ..errors import BackendError

if TYPE_CHECKING:
    from . import Backend
    from .runner import Runner

AUTO = "auto"
NFTABLES = "nftables"
FLAVOURS = ("iptables-nft", "iptables-legacy")       # what the system's iptables can be
IPTABLES_FLAVOURS = ("iptables",) + FLAVOURS
NAMES = (NFTABLES,) + IPTABLES_FLAVOURS
CHOICES = (AUTO,) + NAMES
# What ``auto`` prefers, first to last, where it looks for networks already live (the
# engine, with no state): the system's "iptables" is one of the two flavours.
AUTO_ORDER = (NFTABLES,) + FLAVOURS


def requested(name: str, recorded: Callable[[], str | None]) -> str:
    """The backend ``name`` asks for, before any probe: see the module contract."""
    if name == AUTO:
        return recorded() or AUTO
    return name


def unprobed(name: str) -> str:
    """``name`` for a command that probes nothing: ``auto`` is nftables."""
    return NFTABLES if name == AUTO else name


def iptables_tool(flavour: str, family: int, verb: str) -> str:
    """The command of an iptables flavour: ``("iptables-nft", 6, "save")`` ->
    ``ip6tables-nft-save``; ``verb`` "" is the plain command (``iptables``)."""
    name = ("iptables" if family == 4 else "ip6tables") + flavour.removeprefix("iptables")
    return f"{name}-{verb}" if verb else name


def get_backend(name: str, runner: Runner) -> Backend:
    """Instantiate a backend by name; ``auto`` picks nftables when usable, else iptables."""
    if name in IPTABLES_FLAVOURS:
        from .iptables import IptablesBackend
        return IptablesBackend(runner, flavour=name)
    if name == NFTABLES:
        from .nftables import NftablesBackend
        return NftablesBackend(runner)
    if name == AUTO:
        from .nftables import NftablesBackend
        nb = NftablesBackend(runner)
        if nb.available() is None:
            return nb
        from .iptables import IptablesBackend
        return IptablesBackend(runner, flavour="iptables")
    raise BackendError(f"unknown backend {name!r} (expected {', '.join(CHOICES)})")
