"""Backends: the only code that touches the firewall.

Every backend offers the same small contract, so the engine never knows which one it drives:

- ``read() -> Live``: one snapshot of the live state that concerns vnetfw (enough to diff
  against a desired ruleset, and to undo a change computed from it).
- ``changes(live, desired, scope) -> ChangeSet``: pure; what must change to get from ``live``
  to ``desired``. ``scope`` is ``"setup"`` (chains/tables and jumps only), ``"full"`` (setup
  plus every rule) or ``"teardown"`` (remove all vnetfw owns). An empty ChangeSet means the
  live state already is the desired one.
- ``commit(live, changes)``: apply atomically. Either everything lands or what the change
  wrote is undone, so the live state is as ``live`` was, apart from what others wrote
  meanwhile (nftables: one transaction; iptables: its undo, ``ipt_undo``); raises
  ``BackendError``, or ``RollbackIncomplete`` if the undo itself failed.
- ``render(desired, family)``: pure; the text ``commit`` would load on an empty system.
- ``live_ruleset(live, prefix) -> Ruleset``: the live state parsed back into the
  backend-neutral type; compare it with ``effective(desired)``.
- ``generation()`` and ``assumed_live(committed)``: how the engine skips the readback (and
  the planning of networks that do not change) while it can prove that nothing changed
  since its own last commit.
- ``vacant(live, prefix)`` and ``load_fresh(live, prefix, networks)``: loading into a firewall
  that holds nothing of vnetfw's (boot, first apply) while the networks are still being
  planned, so the kernel-facing process parses in parallel with the planner.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Iterator, Literal, NamedTuple, Sequence

from ..errors import BackendError
from .registry import get_backend  # noqa: F401 - the package's entry: a backend by name

if TYPE_CHECKING:               # (annotations only: the CLI imports this package for --help)
    from ..ruleset import Family, Rule, Ruleset
    from .nfgen import Generation
    from .runner import Runner

Scope = Literal["setup", "full", "teardown"]


class Change(NamedTuple):
    """One human-readable change: ``what`` is a verb (create, add, delete, insert, move...),
    ``where`` the family/table/chain, ``detail`` the rule or object in plain words. (A
    NamedTuple: an apply of 1,000 networks reports 25,000 of them.)

    A change of a rule keeps the rule and words it only when asked (``detail``): most
    reports of a large apply are counted, not read."""

    family: Family | None
    what: str
    where: str
    text: str = ""
    network: str | None = None
    rule: Any = None                # a Rule, or a Foreign one: has describe()

    @property
    def detail(self) -> str:
        return self.text if self.rule is None else "rule " + self.rule.describe()

    def __str__(self) -> str:
        fam = f"ipv{self.family} " if self.family else ""
        net = f"  [{self.network}]" if self.network else ""
        return f"{fam}{self.where}: {self.what} {self.detail}".rstrip() + net

    @property
    def problem(self) -> str:
        """What is wrong with the live firewall that this change repairs: ``missing``,
        ``unexpected``, ``misplaced`` or ``differs`` (``what`` is the repair)."""
        return PROBLEMS.get(self.what, "differs")

    def drift_text(self) -> str:
        """The change phrased as what is wrong now (``check``, ``status``)."""
        fam = f"ipv{self.family} " if self.family else ""
        net = f" (network {self.network})" if self.network else ""
        return f"{fam}{self.where}: {self.problem} {self.detail}{net}"

    def to_json(self) -> dict[str, Any]:
        """The one change/drift object of every ``--json`` output (docs/json.md)."""
        return {"network": self.network,
                "family": f"ipv{self.family}" if self.family else None,
                "where": self.where, "problem": self.problem, "repair": self.what,
                "detail": self.detail, "text": self.drift_text()}


# A Change says what a sync does (its ``what``: the repair); as drift, what is wrong now.
PROBLEMS = {"create": "missing", "add": "missing", "insert": "missing",
            "delete": "unexpected", "move": "misplaced", "replace": "differs",
            "reset": "differs", "rebuild": "differs",
            # a change whose writer died half-way (``inflight``): finished or undone
            "recover": "interrupted"}


class ChangeSet:
    """Changes plus the backend's own payload that ``commit`` executes.

    (A plain class rather than a dataclass: the CLI imports this package for ``--help``,
    and the dataclasses module would add its import, ~5 ms, to every start.)"""

    __slots__ = ("items", "payload")

    def __init__(self, items: list[Change] | None = None, payload: Any = None) -> None:
        self.items: list[Change] = [] if items is None else items
        self.payload = payload

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ChangeSet) and (self.items, self.payload) == (
            other.items, other.payload)

    def __repr__(self) -> str:
        return f"ChangeSet(items={self.items!r}, payload={self.payload!r})"

    @property
    def empty(self) -> bool:
        return not self.items


def sequence_edits(old: Sequence[Any], new: Sequence[Any]
                   ) -> Iterator[tuple[str, int, int, bool]]:
    """The deletions and insertions that turn ``old`` into ``new`` (difflib's opcodes), in
    the order to apply them to one list: ``("delete", i, pos, False)`` removes ``old[i]``,
    which then stands at index ``pos``; ``("add", j, pos, at_end)`` puts ``new[j]`` at index
    ``pos``, ``at_end`` when nothing of ``old`` follows it (so the add may be an append)."""
    import difflib      # only an existing chain that changes needs it (~1 ms to import)
    pos = 0
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old, new,
                                                       autojunk=False).get_opcodes():
        if tag == "equal":
            pos += i2 - i1
            continue
        for i in range(i1, i2):
            yield "delete", i, pos, False
        for j in range(j1, j2):
            yield "add", j, pos, i2 == len(old)
            pos += 1


class Backend:
    name: str = "?"
    # Does a load refer to rules that others write too, so that a writer busy meanwhile
    # can make it fail for the moment? (iptables: jumps go among the builtin chains'
    # rules. nftables: vnetfw's own table, one transaction, refers to nothing else.) The
    # engine then commits a refused load into a vacant firewall once more the ordinary way.
    shares_chains: bool = False

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

    def counters(self, live: Any, prefix: str) -> "dict[Rule, tuple[int, int]] | None":
        """Packets and bytes each of vnetfw's rules in ``live`` has matched, by rule; None
        where the backend's rules keep no counters (nftables: vnetfw's rules carry no
        ``counter`` statement)."""
        return None

    def effective(self, desired: Ruleset) -> Ruleset:
        """The part of ``desired`` this backend implements (nftables has no CHECKSUM target,
        so it drops those optional rules). Compare ``live_ruleset`` with this, not ``desired``."""
        return desired

    def lacks_optional(self, refused: BackendError | None, desired: Ruleset) -> str | None:
        """Evidence, as one line, that this kernel lacks the target of the optional rules in
        ``desired`` (what ``effective`` keeps): the tool's own message naming the target in
        ``refused`` (the error of a commit that held them), or a probe of the target itself.
        None without such evidence: a refusal is then a failure like any other, reported as
        such, and no rule is left out for it (a restore can fail for a reason of the moment,
        and live, working rules must not go because of it)."""
        return None

    def available(self, probe: bool = True) -> str | None:
        """None if usable here, else why not (missing command, kernel refuses). Without
        ``probe``, only what costs no process (the commands exist); the commit then says
        what the kernel refuses."""
        return None

    def writes_nf_table(self, family: str, table: str) -> bool:
        """Is nf_tables table ``family``/``table`` one this backend writes? (``vnetfw watch``
        tells its own tables' notifications from others' with it; a backend that cannot
        say answers True: any change may be its.)"""
        return True

    def assumed_live(self, committed: Ruleset) -> Any:
        """A stand-in for ``read()`` when the live state provably is what vnetfw last
        committed (the engine checks the generation), restricted to some networks:
        ``committed`` holds the rules of the networks about to change, as they were
        committed; the live state may hold other networks too, which ``changes`` against
        this stand-in never touches, and the layout (chains, jumps, maps) is in place.

        So a change costs what changes, not what exists: no readback, no planning of the
        networks that stay. Returns None where the backend cannot do that for these
        networks; the engine then reads the live state."""
        return None

    def holds(self, prefix: str) -> bool:
        """Does the live firewall hold anything of the prefix's layout (a table, chain or
        jump of vnetfw's)? Read-only. How a command with no state (lost, or never written)
        finds which backend vnetfw's rules are live in. False where it cannot tell."""
        return False

    def vacant(self, live: Any, prefix: str) -> bool:
        """True when ``live`` holds nothing of the prefix's layout (no chain, table or jump
        of vnetfw's): the layout and every network are then new, and ``load_fresh`` may
        load them while they are being planned. False where the backend cannot."""
        return False

    def load_fresh(self, live: Any, prefix: str,
                   networks: Iterable[tuple[str, Sequence[Rule]]]) -> ChangeSet:
        """Commit the layout and ``networks`` (each network's planned rules, in the order
        to load them) into a ``vacant`` firewall, handing every network to the kernel-facing
        process as soon as it is planned: that process parses while the planner works.
        The same all-or-nothing contract as ``commit``: if ``networks`` raises, the process
        is killed before its input ends and nothing is loaded. Returns what was committed,
        with the items ``changes(live, plan, "full")`` would report."""
        raise NotImplementedError  # pragma: no cover

    def generation(self) -> "Generation | None":
        """Something that stays equal exactly while nothing changes in the firewall this
        backend writes: the namespace's nf_tables generation (nftables, iptables-nft), a
        fingerprint of the x_tables (iptables-legacy); None if unknown."""
        return None

    def transactions(self, changes: ChangeSet) -> int | None:
        """How many nf_tables transactions ``commit(changes)`` makes (None: not nf_tables)."""
        return None

    def generation_after(self, changes: ChangeSet, before: "Generation | None"
                         ) -> "Generation | None":
        """Right after ``commit(changes)``: the generation at which the live state is
        exactly what was committed, or None if that cannot be told. ``before`` is the
        generation read before the state the change was computed from. nf_tables: the
        generation must have moved by exactly our transactions (nobody else committed)."""
        if before is None:
            return None                 # nothing to count from: not worth a read
        after = self.generation()
        n = self.transactions(changes)
        if after is None or n is None or after[1:] != before[1:] \
                or after.id - before.id != n:
            return None
        return after

    def _netns_path(self) -> str | None:
        from .runner import NETNS_DIR
        import os
        return None if self.runner.netns is None else os.path.join(NETNS_DIR, self.runner.netns)

    def _nf_generation(self) -> "Generation | None":
        from .nfgen import genid
        try:
            return genid(self._netns_path())
        except OSError:
            return None
