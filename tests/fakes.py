"""Fakes for fast unit tests of the engine's decisions: no kernel, no process.

The real backends are tested on the real kernel (tests/netns); these fakes let the engine's
choices be tested beside them, in milliseconds: whether it reads the firewall or assumes
its last commit is live, loads into a vacant firewall, retries without optional rules,
switches backends, runs hooks. The idea is knftables' fake: an in-memory firewall that
holds what was committed and can be dumped as text, so a test states what the firewall
holds afterwards instead of which calls were made.

- ``FakeFirewall``: the "kernel" one namespace has, shared by every ``FakeBackend`` made
  for it: per backend name, per chain prefix, the set of rules committed (a prefix that is
  present has its layout set up). One transaction per commit moves ``generation``, like
  nf_tables' generation id. Faults are queued (``refuse``) or standing (``lacks``: a
  kernel without the optional rules' target).
- ``FakeBackend``: the ``Backend`` contract over it. Rules are compared as a set per
  prefix: the order of rules is the real backends' business, tested on the kernel.
  ``calls`` records the engine's requests (``read``, ``assumed_live``, ``commit``,
  ``load_fresh``...).
- ``FakeRunner``: a ``Runner`` stand-in for backend code that runs commands: answers by
  argv from a table, records every argv, runs nothing.
- ``fake_engine``: an ``Engine`` whose ``get_backend`` hands out FakeBackends of one
  FakeFirewall, with a state directory under the test's tmp_path and firewalld off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from vnetfw.backends import Backend, Change, ChangeSet, Scope
from vnetfw.backends.nfgen import Generation
from vnetfw.backends.runner import CommandFailed, NotStarted
from vnetfw.errors import BackendError, RollbackIncomplete
from vnetfw.ruleset import Family, Rule, Ruleset


@dataclass
class FakeFirewall:
    """What is committed, per backend name -> prefix -> rules."""

    tables: dict[str, dict[str, set[Rule]]] = field(default_factory=dict)
    generation: int = 1
    # Each commit takes the next entry: a message to refuse it with (the change is then
    # undone: nothing lands), or None to let it through. Empty: every commit lands.
    refuse: list[str | None] = field(default_factory=list)
    # A kernel without the optional rules' target: every commit holding one is refused
    # with this message, and ``lacks_optional`` (the probe) says so.
    lacks: str | None = None
    # The next refused commit's undo fails too (RollbackIncomplete).
    undo_fails: bool = False
    backends: dict[str, "FakeBackend"] = field(default_factory=dict)

    def backend(self, name: str, **kw: Any) -> "FakeBackend":
        """The one FakeBackend of that name on this firewall (made on first use)."""
        if name not in self.backends:
            self.backends[name] = FakeBackend(self, name, **kw)
        return self.backends[name]

    def touch(self) -> None:
        """Someone else commits something (the generation moves, nothing of ours changes)."""
        self.generation += 1

    def dump(self) -> str:
        """Everything committed, one line per layout and rule, sorted: what a test compares."""
        lines = []
        for name, prefixes in sorted(self.tables.items()):
            for prefix, rules in sorted(prefixes.items()):
                lines.append(f"{name} {prefix} layout")
                lines += sorted(f"{name} {prefix} ipv{r.family} {r.table} {r.chain} "
                                f"[{r.network}] {r.describe()}" for r in rules)
        return "".join(line + "\n" for line in lines)

    def rules(self, name: str, prefix: str = "VNETFW") -> set[Rule]:
        return set(self.tables.get(name, {}).get(prefix, set()))


@dataclass(frozen=True)
class FakeLive:
    """A snapshot: prefix -> rules (a prefix present has its layout)."""

    prefixes: dict[str, frozenset[Rule]]
    assumed: bool = False


@dataclass(frozen=True)
class FakeDelta:
    """What a commit does to one prefix."""

    prefix: str
    create: bool = False
    drop: bool = False
    add: frozenset[Rule] = frozenset()
    delete: frozenset[Rule] = frozenset()


class FakeBackend(Backend):
    """The backend contract over a ``FakeFirewall``.

    ``optional``: does it implement optional rules (iptables does; nftables has no
    CHECKSUM and leaves them out of ``effective``). ``streams``: does it load into a
    vacant firewall while networks are planned (``load_fresh``). ``assumes``: can it
    commit from its last commit without a readback (``assumed_live``). ``shares_chains``:
    as iptables (a vacant load refused is tried once more the ordinary way)."""

    def __init__(self, fw: FakeFirewall, name: str, *, optional: bool = True,
                 streams: bool = True, assumes: bool = True, shares_chains: bool = False,
                 usable: str | None = None) -> None:
        super().__init__(runner=None)       # type: ignore[arg-type] - runs nothing
        self.fw = fw
        self.name = name
        self.optional = optional
        self.streams = streams
        self.assumes = assumes
        self.shares_chains = shares_chains
        self.usable = usable
        self.calls: list[str] = []

    # -- the contract -------------------------------------------------------------------
    def available(self, probe: bool = True) -> str | None:
        return self.usable

    def read(self) -> FakeLive:
        self.calls.append("read")
        return FakeLive({p: frozenset(rs) for p, rs in self.fw.tables.get(self.name, {}).items()})

    def generation(self) -> Generation:
        return Generation(self.fw.generation, 1, "fake-boot")

    def transactions(self, changes: ChangeSet) -> int:
        return 1

    def effective(self, desired: Ruleset) -> Ruleset:
        if self.optional:
            return desired
        return Ruleset(desired.prefix, tuple(r for r in desired.rules if not r.optional),
                       desired.families)

    def live_ruleset(self, live: FakeLive, prefix: str) -> Ruleset:
        return Ruleset.canonical(prefix, sorted(live.prefixes.get(prefix, ()),
                                                key=lambda r: (r.network, r.describe())))

    def lacks_optional(self, refused: BackendError | None, desired: Ruleset) -> str | None:
        self.calls.append("lacks_optional")
        return self.fw.lacks

    def assumed_live(self, committed: Ruleset) -> FakeLive | None:
        self.calls.append("assumed_live")
        if not self.assumes:
            return None
        return FakeLive({committed.prefix: frozenset(committed.rules)}, assumed=True)

    def vacant(self, live: FakeLive, prefix: str) -> bool:
        return self.streams and prefix not in live.prefixes

    def changes(self, live: FakeLive, desired: Ruleset | None, scope: Scope,
                prefix: str | None = None) -> ChangeSet:
        prefix = desired.prefix if desired is not None else prefix
        assert prefix is not None
        have = live.prefixes.get(prefix)
        items: list[Change] = []
        if scope == "teardown":
            if have is None:
                return ChangeSet()
            items.append(Change(None, "delete", self.name, f"layout {prefix} "
                                f"({len(have)} rules)"))
            return ChangeSet(items, FakeDelta(prefix, drop=True))
        assert desired is not None
        want = frozenset(self.effective(desired).rules) if scope == "full" else None
        create = have is None
        if create:
            items.append(Change(None, "create", self.name, f"layout {prefix}"))
        add = delete = frozenset()
        if want is not None:
            add, delete = want - (have or frozenset()), (have or frozenset()) - want
            items += [Change(r.family, "add", f"{r.table} {r.chain}", network=r.network,
                             rule=r) for r in sorted(add, key=Rule.describe)]
            items += [Change(r.family, "delete", f"{r.table} {r.chain}", network=r.network,
                             rule=r) for r in sorted(delete, key=Rule.describe)]
        return ChangeSet(items, FakeDelta(prefix, create=create, add=add, delete=delete))

    def commit(self, live: FakeLive, changes: ChangeSet) -> None:
        self.calls.append("commit")
        self._land(changes.payload)

    def load_fresh(self, live: FakeLive, prefix: str,
                   networks: Iterable[tuple[str, Sequence[Rule]]]) -> ChangeSet:
        self.calls.append("load_fresh")
        rules = [r for _, rs in networks for r in rs]      # may raise: nothing lands
        cs = self.changes(live, Ruleset.canonical(prefix, rules), "full")
        self._land(cs.payload)
        return cs

    def render(self, desired: Ruleset, family: Family | None = None) -> str:
        return "".join(f"{r.describe()}\n" for r in desired.rules
                       if family is None or r.family == family)

    # -- the fake kernel ----------------------------------------------------------------
    def _land(self, d: FakeDelta) -> None:
        """One transaction: all of it, or (refused) none of it."""
        fault = self.fw.refuse.pop(0) if self.fw.refuse else None
        if fault is None and self.fw.lacks is not None and any(r.optional for r in d.add):
            fault = self.fw.lacks
        if fault is not None:
            if self.fw.undo_fails:
                self.fw.undo_fails = False
                raise RollbackIncomplete(f"{self.name}: change failed: {fault}; ROLLBACK "
                                         "INCOMPLETE: fake")
            raise BackendError(f"{self.name}: change failed and was rolled back: {fault}")
        mine = self.fw.tables.setdefault(self.name, {})
        if d.drop:
            mine.pop(d.prefix, None)
        else:
            rules = mine.setdefault(d.prefix, set())
            rules -= d.delete
            rules |= d.add
        self.fw.generation += 1


class FakeRunner:
    """A ``Runner`` that runs nothing: ``answers`` maps an argv (tuple) to its stdout, or to
    an exception to raise (``fail(...)``); an argv not in the table raises NotStarted.
    ``ran`` lists every argv, with its stdin."""

    def __init__(self, answers: dict[tuple[str, ...], str | BaseException] | None = None,
                 netns: str | None = None, have: Iterable[str] | None = None) -> None:
        self.answers = dict(answers or {})
        self.netns = netns
        self.ran: list[tuple[tuple[str, ...], str | None]] = []
        self._have = None if have is None else set(have)

    @staticmethod
    def fail(argv: Sequence[str], stderr: str, code: int = 1) -> CommandFailed:
        return CommandFailed(list(argv), code, stderr)

    def run(self, argv: list[str], stdin: str | None = None, *, check: bool = True) -> str:
        key = tuple(argv)
        self.ran.append((key, stdin))
        got = self.answers.get(key)
        if got is None:
            raise NotStarted(f"{argv[0]}: not in the fake's answers")
        if isinstance(got, BaseException):
            raise got
        return got

    def answer(self, argv: list[str]) -> str:
        return self.run(argv)

    def which(self, prog: str) -> str | None:
        return f"/usr/sbin/{prog}" if self._have is None or prog in self._have else None


def fake_engine(tmp_path, fw: FakeFirewall, backend: str = "fake", monkeypatch=None,
                make: Callable[[str], FakeBackend] | None = None, **kw: Any):
    """An Engine on ``fw``: every backend it asks for is ``fw.backend(name)`` (or
    ``make(name)``); state in ``tmp_path/state``, no hooks unless ``hooks_dir`` is given,
    firewalld off (never the host's)."""
    from vnetfw import engine as engine_mod
    assert monkeypatch is not None, "fake_engine needs pytest's monkeypatch"
    monkeypatch.setattr(engine_mod, "get_backend",
                        lambda name, runner: (make or fw.backend)(name))
    monkeypatch.setenv("VNETFW_FIREWALLD", "off")
    kw.setdefault("hooks_dir", tmp_path / "no-hooks")
    return engine_mod.Engine(backend=backend, state_dir=tmp_path / "state", **kw)
