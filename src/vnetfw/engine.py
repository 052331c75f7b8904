"""The engine: desired state + backend -> one atomic change per command.

Contract: every public method takes the state lock, reads the live firewall once, computes
the changes with the (pure) planner and backend diff, commits them in the backend's atomic
step, and only then saves the new desired state. If the commit fails, the backend has undone
what the change wrote (what others wrote meanwhile stays) and the state file is untouched,
so a failed command leaves nothing behind. ``dry_run`` computes and reports the same
changes without committing.

Reading less: the state records the backend's generation right after each verified commit.
While the live generation still equals it, the firewall is exactly what vnetfw committed:
an unchanged re-apply, ``check`` and ``status`` read nothing, and ``apply``/``remove`` plan
only the networks that differ and let the backend compute their change from its own last
commit (``Backend.assumed_live``) instead of a readback.

Hooks (``hooks``): after a command changed networks, the hooks in the hooks folder
(default ``/etc/vnetfw/hooks.d``; run-parts' names) run, in name order, as ``HOOK NETWORK
EVENT`` with the network's definition as JSON on stdin (``EVENT``: added, updated,
removed, reloaded), like libvirt's network hook, inside the engine's namespace, with
``VNETFW_NETNS``, ``VNETFW_BACKEND`` and ``VNETFW_STATE_DIR`` set. They are found and
checked before the change (a hook another user could have written refuses the command,
``HookError``, with nothing changed) and run after it is complete, so a failing hook
never leaves half-applied rules: it is reported (``Report.hook_failures``, exit status 6)
and the rules stay whole.

Ctrl-C: from the moment the backend commits, the first one is held back and raised once the
command is done, its state written and its zones and hooks run (the CLI: its report, then
exit 130; ``interrupts``); before, nothing has changed and it stops the command at once.

Optional rules (the CHECKSUM fix-up, which some kernels lack): if a full commit fails, what
the backend implements of the desired ruleset holds optional rules (never on nftables,
which has no CHECKSUM) and the backend has evidence that the kernel lacks their target (the
tool's message naming it, or a probe of it), the change is committed again without them
and the report carries a warning, like libvirt which treats that rule as best-effort.
Without such evidence a failed commit is a failed command: undone, reported, nothing
retried and no rule left out (a restore that failed once is no reason to drop the CHECKSUM
rules of every network).
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Collection, Iterable, Iterator, NamedTuple, Sequence

from .backends import Backend, Change, Scope, get_backend
from .backends.registry import AUTO, AUTO_ORDER, NAMES, requested
from .backends.nfgen import Generation
from .backends.runner import FeedUnavailable, Runner
from .errors import BackendError, RollbackIncomplete, UsageError
from . import hooks, interrupts
from .inflight import ChangeWindow, Record, new_change_id, record_for
from .model import Mode, Network, network_from_dict, validate_together
from .plan import (PROFILES, Profile, allowing, network_rules, peers_of, plan, plan_networks,
                   plan_some, waiting_allows)
from .ruleset import Rule, Ruleset
from .state import State, StateStore, default_state_dir

DEFAULT_HOOKS_DIR = "/etc/vnetfw/hooks.d"
_UNREAD = object()      # _sync's generation argument when the caller has not read it

def _some(names: list[str], shown: int = 8) -> str:
    """Names for an error message: a host with 1,000 networks gets a line, not a page."""
    if not names:
        return "none"
    more = f", ... {len(names) - shown} more ('vnetfw list')" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _features(net: Network, active: dict[str, Network], desired: Ruleset,
              counters: dict[Rule, tuple[int, int]]) -> dict[str, Any]:
    """A network's forwards (with what their DNAT elements counted: connections, as the
    nat hooks see a connection's first packet only) and allows (``waiting``: the network
    they name is not active, or not firewalled, so they have no rules yet)."""
    if not net.port_forwards and not net.allows:
        return {}
    waiting = set(waiting_allows(net, active))
    mine = [r for r in desired.rules if r.network == net.name and r.chain == "DNAT"]
    forwards = []
    for fw in net.port_forwards:
        addr = str(net.forward_address(fw))
        hits = [counters.get(r, (0, 0)) for r in mine if r.to_addr == addr
                and r.proto == fw.proto and fw.port[0] <= (r.dport or 0) <= fw.port[1]
                and r.dst == (None if fw.host_address is None
                              else f"{fw.host_address}/{fw.host_address.max_prefixlen}")]
        forwards.append({**fw.to_dict(), "address": addr, "text": fw.describe(),
                         "packets": sum(h[0] for h in hits), "bytes": sum(h[1] for h in hits)})
    return {"port_forwards": forwards,
            "allows": [{**a.to_dict(), "waiting": a.to in waiting} for a in net.allows]}


def drift_text(c: Change) -> str:
    """A backend change, phrased as what is wrong with the live firewall."""
    return c.drift_text()


class Partial(NamedTuple):
    """What changes since vnetfw's last commit: that commit's generation, and the rules of
    the networks that differ, as committed then (``before``) and as wanted now (``after``)."""

    generation: Generation
    before: Ruleset
    after: Ruleset


@dataclass
class Report:
    """What a command did (or, with dry_run, would do)."""

    action: str
    backend: str
    changes: list[Change] = field(default_factory=list)
    applied: bool = True
    warnings: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)
    hook_failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "backend": self.backend, "changed": self.changed,
                "applied": self.applied, "networks": self.networks,
                "changes": [c.to_json() for c in self.changes], "warnings": self.warnings,
                "hook_failures": self.hook_failures, "notes": self.notes}


def resolve_profile(name: str, prefix: str | None = None) -> Profile:
    if name not in PROFILES:
        raise UsageError("--profile", f"unknown profile {name!r} (expected one of "
                                           f"{', '.join(PROFILES)})")
    prof = PROFILES[name]
    if prefix is not None:
        try:
            prof = prof.with_prefix(prefix)
        except ValueError as e:
            raise UsageError("--prefix", str(e)) from None
    return prof


class Engine:
    """Drives one backend in one network namespace with one state directory.

    ``backend="auto"`` and ``profile=None`` mean: what the active networks were applied with,
    else nftables-if-usable and the ``default`` profile. Naming another backend or profile
    explicitly moves the active networks there (new rules first, then the old removed).
    """

    def __init__(self, backend: str = "auto", profile: str | None = None,
                 netns: str | None = None, state_dir: str | Path | None = None,
                 prefix: str | None = None, hooks_dir: str | Path | None = None) -> None:
        self.runner = Runner(netns)
        self.store = StateStore(state_dir if state_dir is not None else default_state_dir(netns))
        if profile is not None:
            resolve_profile(profile, prefix)            # fail early on a bad name or prefix
        self._profile_name = profile
        self._prefix = prefix
        self._backend_name = backend
        self._backend: Backend | None = None
        self._found: str | None = None      # the backend found holding vnetfw's layout
        self._prefetch: threading.Thread | None = None
        self._prefetched: tuple[str, Generation | None] | None = None
        # Ctrl-C from the commit until the command is done: see ``interrupts``
        self.interrupts = interrupts.DEFERRAL
        # Absolute now: a hook runs by its full path, never looked up through PATH
        # ("--hooks-dir ."), and a later chdir changes nothing.
        self.hooks_dir = Path(os.path.abspath(
            hooks_dir if hooks_dir is not None
            else os.environ.get("VNETFW_HOOKS_DIR", DEFAULT_HOOKS_DIR)))
        # From the first commit until the state records it: ``inflight``
        self.window = ChangeWindow(self.store.dir)
        self._intent: Callable[[], Record] | None = None    # the record a commit writes
        self._landed = False                # a commit of this command went through
        # How a reader (check, status) says that it waits for another vnetfw's commit
        self.waiting: Callable[[str], None] = interrupts.say

    # -- helpers ------------------------------------------------------------------------
    def backend_for(self, state: State, find: bool = False) -> Backend:
        """The requested backend; ``auto`` keeps the one the active networks use. With
        ``find`` (the commands that read or repair what is live: check, status, reload,
        teardown) and no backend on record (no state: lost, or never written), ``auto``
        is the backend whose live firewall holds vnetfw's layout (``_found_live``), so
        that they look where vnetfw's rules are, not at nftables by default."""
        if self._backend is None:
            name = requested(self._backend_name, lambda: state.backend)
            if name == AUTO and find:
                self._found = self._found_live(self.profile_for(state).prefix)
                name = self._found or name
            self._backend = get_backend(name, self.runner)
            # A backend the active networks already use was usable when they were applied,
            # and 'auto' probed what it picked; otherwise check what costs no process (the
            # commands exist) and let the commit say what the kernel refuses (nftables'
            # 'nft -c' probe then explains it).
            if name != state.backend and (why := self._backend.available(probe=False)) is not None:
                raise BackendError(f"backend {self._backend.name} is not usable: {why}")
        return self._backend

    def _found_live(self, prefix: str) -> str | None:
        """The first backend, in the order ``auto`` prefers them, whose live firewall holds
        the prefix's layout (``Backend.holds``); None if none does. Costs a read of each
        (x_tables: none where no table is loaded), on the rare path with no state."""
        for name in AUTO_ORDER:
            try:
                if get_backend(name, self.runner).holds(prefix):
                    return name
            except BackendError:
                continue            # not readable here: it holds nothing we could use
        return None

    def profile_for(self, state: State) -> Profile:
        name = self._profile_name or state.profile or "default"
        prefix = self._prefix
        if prefix is None and name == state.profile and state.prefix:
            prefix = state.prefix if state.prefix != PROFILES[name].prefix else None
        return resolve_profile(name, prefix)

    def _untouched(self, state: State, backend: Backend, profile: Profile,
                   networks: dict[str, Network]) -> bool:
        """True when the live firewall provably still is exactly what vnetfw last committed
        for ``networks``: same backend, prefix, profile and networks, and the generation has
        not moved since (no change at all, by anyone). No readback needed."""
        # (Cheap tests first: the generation is read only when they pass.)
        return (self._last_commit_was(state, backend, profile) and networks == state.networks
                and self._generation(backend) == state.generation)

    def _proven(self, state: State, backend: Backend, profile: Profile,
                generation: Generation | None) -> bool:
        """Is the live firewall (at ``generation``) provably vnetfw's last commit?"""
        return self._last_commit_was(state, backend, profile) \
            and generation == state.generation

    @staticmethod
    def _last_commit_was(state: State, backend: Backend, profile: Profile) -> bool:
        """Did vnetfw's last verified commit use this backend, prefix and profile? (If not,
        or if its generation is unknown, no command may skip reading the firewall.)"""
        return (state.generation is not None and state.backend == backend.name
                and state.prefix == profile.prefix and state.profile == profile.name)

    def prefetch(self) -> None:
        """Begin reading the firewall's generation in a helper thread, for the command that
        follows; the CLI calls it before loading definitions, so that both overlap. An
        x_tables fingerprint (~25 ms at 1,000 networks) is mostly the kernel copying the
        tables and hashing them, which run without the interpreter lock. Reading it a few
        milliseconds earlier is as safe as reading it later: a change made after the read
        goes unnoticed until the next command either way, and a generation that no longer
        matches only costs a readback. Only a backend named or recorded is prefetched."""
        def work() -> None:
            try:
                name = requested(self._backend_name, self.store.recorded_backend)
                if name in NAMES:
                    self._prefetched = (name, get_backend(name, self.runner).generation())
            except Exception:   # noqa: BLE001 - a prefetch never fails a command
                self._prefetched = None
        self._prefetch = threading.Thread(target=work, name="vnetfw-generation", daemon=True)
        self._prefetch.start()

    def _generation(self, backend: Backend) -> Generation | None:
        """The backend's generation: the prefetched one if this is the first read and it was
        for this backend, else read now."""
        t, self._prefetch = self._prefetch, None
        if t is not None:
            t.join()
            got, self._prefetched = self._prefetched, None
            if got is not None and got[0] == backend.name:
                return got[1]
        return backend.generation()

    def _partial(self, state: State, backend: Backend, profile: Profile,
                 after: dict[str, Network]) -> "Partial | None":
        """The networks that differ between vnetfw's last commit and ``after``, planned as
        they were and as they will be; None if the last commit was with another backend or
        prefix or profile (every network's rules change then), or its generation is unknown."""
        if not self._last_commit_was(state, backend, profile):
            return None
        before = state.networks
        names = [n for n in before if after.get(n) != before[n]] + \
                [n for n in after if n not in before]
        # An allow's rules depend on the network it names: those change with it.
        names += sorted(allowing(names, before, after) - set(names))
        return Partial(state.generation, plan_some(names, before, profile),
                       plan_some(names, after, profile))

    def _sync(self, backend: Backend, desired: Ruleset | Callable[[], Ruleset] | None,
              scope: Scope, dry_run: bool, report: Report, prefix: str | None = None,
              partial: "Partial | None" = None,
              fresh: Callable[[], Iterable[tuple[str, Sequence[Rule]]]] | None = None,
              g0: Any = _UNREAD) -> Generation | None:
        """One change, by the first strategy that applies, each its own function: from
        vnetfw's last commit without a readback (``_from_last_commit``), into a vacant
        firewall while planning (``_load_vacant``), read-diff-commit (``_commit_diff``),
        and after a refusal that stands, without optional rules where the kernel lacks
        them (``_without_optional``). Returns the generation (nf_tables generation id,
        x_tables fingerprint) the live firewall verifiably matches ``desired`` at (None:
        unknown).

        ``partial``: the networks that change since vnetfw's previous commit, and that
        commit's generation. If the generation has not moved since, the live state is that
        commit's, and a backend that can (``assumed_live``) computes and commits the change
        of those networks alone, without reading the firewall or planning the others. If
        that commit fails (the backend has undone it), the full path runs. ``desired`` may
        be given as a function: every network is then planned only if the full path runs.

        ``g0``: the generation, if the caller already read it (before anything else).

        ``fresh``: the same networks, planned one by one (``plan_networks``; apply's also
        reads their definition files as it goes, so it may raise DefinitionError), with
        ``prefix``. If the live firewall holds nothing of that prefix's (first apply, after
        a reboot or a flush), the backend loads them while they are planned
        (``load_fresh``). If that fails, the backend has loaded nothing or rolled back
        (except: an interrupt after nft sent its batch may leave the table loaded and the
        state unsaved; the next command finds and repairs it); a definition error then wins
        over the backend's; where another writer may have been in the load's way
        (``Backend.shares_chains``: iptables) the ordinary path runs once with the whole
        plan; a refusal that stands, for a plan with optional rules, is tried once more
        without them only on evidence that the kernel lacks their target
        (``_without_optional``). If the tool could not be fed at all
        (``FeedUnavailable``), the ordinary path runs."""
        if g0 is _UNREAD:
            g0 = self._generation(backend)
        if partial is not None:
            landed, g0 = self._from_last_commit(backend, partial, dry_run, report, g0)
            if landed:
                return g0
        live = backend.read()                   # g0 was taken before: the diff's base
        refused: BackendError | None = None
        if fresh is not None and prefix is not None and not dry_run \
                and backend.vacant(live, prefix):
            try:
                return self._load_vacant(backend, live, prefix, fresh, report, g0)
            except FeedUnavailable:
                pass    # nothing started (no /dev/fd, no memory file...): the path below
            except RollbackIncomplete:
                raise
            except BackendError as e:
                refused = e
        if callable(desired):
            desired = desired()                 # after a refusal: a bad definition says so
        if refused is not None:
            if not backend.shares_chains:
                return self._without_optional(backend, desired, scope, dry_run, report,
                                              prefix, refused)
            # Undone. Once more the ordinary way, from what is there now: a load into a
            # vacant firewall takes long enough for another writer to get in its way (an
            # iptables restore refers to rules of the builtin chains around its jumps),
            # and trimming optional rules is no answer to that.
            g0 = backend.generation()
            live = backend.read()
        try:
            return self._commit_diff(backend, live, desired, scope, dry_run, report, g0, prefix)
        except RollbackIncomplete:
            raise                               # no baseline for another attempt
        except BackendError as e:
            return self._without_optional(backend, desired, scope, dry_run, report, prefix, e)

    def _from_last_commit(self, backend: Backend, partial: Partial, dry_run: bool,
                          report: Report, g0: Generation | None
                          ) -> tuple[bool, Generation | None]:
        """Strategy 1, no readback: while the generation is still that of vnetfw's last
        commit, the backend (if it can: ``assumed_live``) computes the change of the
        networks that differ from what it committed then, and commits it. Returns (True,
        the generation after) once committed; (False, the generation now) when it cannot,
        or its commit was refused and undone (the caller then reads the firewall)."""
        if g0 is None or g0 != partial.generation \
                or (assumed := backend.assumed_live(partial.before)) is None:
            return False, g0
        try:
            return True, self._commit_diff(backend, assumed, partial.after, "full", dry_run,
                                           report, g0)
        except RollbackIncomplete:
            raise                               # the live state is no baseline for a retry
        except BackendError:
            return False, backend.generation()  # undone; the full path says what it does

    def _load_vacant(self, backend: Backend, live: Any, prefix: str,
                     fresh: Callable[[], Iterable[tuple[str, Sequence[Rule]]]],
                     report: Report, g0: Generation | None) -> Generation | None:
        """Strategy 2, into a firewall holding nothing of ``prefix``'s: the backend loads
        the networks while they are planned (``load_fresh``). Returns the generation after;
        raises what the load raised, with nothing loaded (``FeedUnavailable``: the tool
        could not even be started that way)."""
        try:
            cs = backend.load_fresh(live, prefix, self._then_arm(fresh()))
        except (RollbackIncomplete, FeedUnavailable):
            raise
        except BackendError:
            self.interrupts.abandon()
            raise
        self.interrupts.landed()
        self._landed = True
        report.changes += cs.items
        return backend.generation_after(cs, g0)

    def _without_optional(self, backend: Backend, desired: Ruleset | None, scope: Scope,
                          dry_run: bool, report: Report, prefix: str | None,
                          refused: BackendError) -> None:
        """After ``refused`` (undone): if the plan holds optional rules and the backend has
        evidence that this kernel lacks their target (``Backend.lacks_optional``: the
        tool's message naming it, or a probe of it), commit once more without those of
        them that are not live already, with a warning; else ``refused`` stands. A refusal
        for any other reason (a tool that failed once, a lock, a writer in the way) is
        reported as the failure it is, and never costs a rule that is live and fine."""
        eff = backend.effective(desired) if desired is not None else None
        if eff is None or not any(r.optional for r in eff.rules):
            raise refused
        why = backend.lacks_optional(refused, eff)
        if why is None:
            raise refused
        assert desired is not None
        live = backend.read()
        kept = set(backend.live_ruleset(live, desired.prefix).rules)
        trimmed = replace(desired, rules=tuple(r for r in desired.rules
                                               if not r.optional or r in kept))
        report.warnings.append(f"optional rules (CHECKSUM fix-up) left out: {why}")
        self._commit_diff(backend, live, trimmed, scope, dry_run, report, None, prefix)
        return None     # the plan holds rules the kernel refused: never "untouched"

    def _then_arm(self, networks: Iterable[tuple[str, Sequence[Rule]]]
                  ) -> Iterator[tuple[str, Sequence[Rule]]]:
        """``networks``, and once the backend has taken the last of them (it commits next),
        Ctrl-C held back until the command is done (``interrupts``). While they are still
        planned, nothing is committed and Ctrl-C stops the load at once."""
        yield from networks
        self._enter_window()
        self.interrupts.arm()

    def _commit_diff(self, backend: Backend, live: Any, desired: Ruleset | None, scope: Scope,
                     dry_run: bool, report: Report, g0: Generation | None,
                     prefix: str | None = None) -> Generation | None:
        """Diff ``live`` against ``desired`` and commit it (not on a dry run); the changes
        go into ``report`` once they are committed. Returns the generation the result is
        verified at (``g0`` if nothing had to change). A failed commit raises, with the live
        firewall as it was."""
        cs = backend.changes(live, desired, scope, prefix=prefix)
        if cs.empty or dry_run:
            report.changes += cs.items
            report.applied = not dry_run
            return g0 if cs.empty else None
        self._enter_window()
        self.interrupts.arm()
        try:
            backend.commit(live, cs)
        except RollbackIncomplete:
            raise
        except BackendError:
            self.interrupts.abandon()      # undone; whatever comes next reads again
            raise
        self.interrupts.landed()
        self._landed = True
        report.changes += cs.items
        return backend.generation_after(cs, g0)

    def _switch_away(self, state: State, backend: Backend, profile: Profile, dry_run: bool,
                     report: Report) -> bool:
        """If the active networks live under another backend or prefix, remove them there
        (after the new rules are in place, so filtering never has a gap)."""
        old_prefix = state.prefix or profile.prefix
        if state.backend is None or (state.backend == backend.name
                                     and old_prefix == profile.prefix):
            return False
        old = get_backend(state.backend, self.runner)
        if old.available() is not None:
            report.warnings.append(f"previous backend {state.backend} is not usable here; "
                                   "its rules were not removed")
            return False
        # g0=None: what a teardown leaves is not recorded, so its generation is not read.
        self._sync(old, None, "teardown", dry_run, report, prefix=old_prefix, g0=None)
        return True

    def _save(self, state: State, backend: Backend, profile: Profile,
              networks: dict[str, Network], generation: Generation | None) -> None:
        state.backend = backend.name
        state.profile = profile.name
        state.prefix = profile.prefix
        state.networks = networks
        state.generation = generation
        if self.window.record is not None:      # a change is in flight: this records it
            state.change = self.window.record.change
        self.store.save(state)

    def _zones(self, before: dict[str, Network], after: dict[str, Network],
               report: Report) -> None:
        """firewalld: bind the managed bridges to a zone, unbind the ones that went away.
        Does nothing without firewalld, and inside --netns unless $VNETFW_FIREWALLD_BUS
        names the bus of a firewalld that manages that namespace. Never raises."""
        from . import firewalld
        res = firewalld.sync(before, after, netns=self.runner.netns)
        report.warnings += res.warnings
        report.notes += res.notes

    def find_hooks(self, dry_run: bool = False) -> list[str]:
        """The hooks a command will run (none on a dry run), found and checked now, before
        it changes anything: ``HookError`` if one is not safe to run as root."""
        return [] if dry_run else hooks.find(self.hooks_dir)

    def _run_hooks(self, found: list[str], backend: Backend,
                   events: list[tuple[Network, str]], report: Report) -> None:
        if not found or not events:
            return
        env = {"VNETFW_NETNS": self.runner.netns or "", "VNETFW_BACKEND": backend.name,
               "VNETFW_STATE_DIR": os.path.abspath(self.store.dir)}
        report.hook_failures += hooks.run(self.runner, found, events, env)

    # -- the change in flight (``inflight``) ---------------------------------------------
    @contextlib.contextmanager
    def _changing(self, dry_run: bool) -> Iterator[State]:
        """A command that may change the firewall: the state lock; Ctrl-C held back from
        its first commit (``interrupts``); the state, after a change that a dead writer
        left in flight is finished or undone (``_recover``; a dry run only says it is
        pending). The command declares what it would record (``_intend``) and ends the
        window once it has (``window.close``). If it fails after its first commit, the
        record stays unless the failure undid everything (a refused commit, rolled back,
        and nothing of this command landed before it): the next command sees it."""
        with self.store.lock(), self.interrupts:
            self._landed = False
            self._recovery = None
            state = self.store.load()
            if (rec := self.window.pending()) is not None:
                if dry_run:
                    self._recovery = Report("recover", rec.backend or "?", warnings=[
                        f"an interrupted {rec.describe()} is pending: the next command "
                        "that changes the firewall finishes or undoes it"])
                else:
                    state = self._recover(state, rec)
            try:
                yield state
            except BaseException as e:
                undone = isinstance(e, BackendError) \
                    and not isinstance(e, RollbackIncomplete) and not self._landed
                self.window.close(keep=not undone)
                raise
            finally:
                self._intent = None
                self.window.close()

    def _intend(self, command: str, state: State, backend: Backend, profile: Profile,
                after: "dict[str, Network] | Callable[[], dict[str, Network]]",
                layout: bool = True) -> None:
        """What this command records once its change is done: the record written right
        before its first commit (``after`` may be a function: apply's networks are all
        read by then)."""
        self._intent = lambda: record_for(command, state, backend.name, profile.name,
                                          profile.prefix, after() if callable(after) else after,
                                          layout)

    def _enter_window(self) -> None:
        """Right before a commit: from here readers wait until the state records it, and
        the record of the change in flight is on disk."""
        if self._intent is None:
            raise AssertionError("a commit outside a command that changes the firewall")
        self.window.open(self._intent)

    def _report(self, action: str, backend: str, **kw: Any) -> Report:
        """The command's report, starting with what finishing or undoing an interrupted
        change took (``_recover``)."""
        rep = Report(action, backend, **kw)
        if self._recovery is not None:
            rep.changes += self._recovery.changes
            rep.warnings += self._recovery.warnings
        return rep

    def _profile_of(self, st: State) -> Profile:
        name = st.profile if st.profile in PROFILES else "default"
        prefix = st.prefix if st.prefix and st.prefix != PROFILES[name].prefix else None
        return resolve_profile(name, prefix)

    def _recover(self, state: State, rec: Record) -> State:
        """Finish or undo ``rec``, a change whose writer is gone (killed, or stopped by an
        undo that failed) before it recorded itself, so that no part of it outlives the
        start of this command. Finished: the firewall holds all of it and only the state
        did not say so; it is recorded, the firewall untouched. Otherwise undone: the
        firewall is made the recorded state again (on iptables it may hold some tables or
        one family of the change), and whatever backend or prefix the change moved to is
        cleared. Which, and what it took, goes into this command's report. Returns the
        state the command goes on from."""
        rep = Report("recover", state.backend or rec.backend or "?")
        self._recovery = rep
        what = rec.describe()
        if rec.known and rec.change == state.change:
            self.window.discard()       # it recorded itself; only the record was left
            return state
        self._intent = lambda: rec      # the window keeps this very record until done
        after = self._after_of(state, rec)
        if after is not None and self._holds(after, rec, state):
            self.window.open(self._intent)
            self.store.save(after)
            self.window.close()
            rep.warnings.append(f"an interrupted {what} had landed whole: recorded it as "
                                "done (the firewall was not changed)")
            return self.store.load()
        gen: Generation | None = None
        if state.backend in NAMES:
            b = get_backend(state.backend, self.runner)
            prof = self._profile_of(state)
            gen = self._sync(b, plan(state.networks.values(), prof), "full", False, rep,
                             prof.prefix)
        went = (rec.backend, rec.prefix)
        if rec.known and rec.backend in NAMES and rec.prefix \
                and went != (state.backend, state.prefix):
            self._sync(get_backend(rec.backend, self.runner), None, "teardown", False, rep,
                       prefix=rec.prefix, g0=None)
            gen = None
        self.window.open(self._intent)
        state.generation = gen
        state.change = new_change_id()      # not the change's: it did not happen
        self.store.save(state)
        self.window.close()
        n = len(rep.changes)
        rep.warnings.append(f"undid an interrupted {what}: " +
                            (f"{n} change(s) put the recorded state back" if n
                             else "it had changed nothing"))
        self._intent = None
        return self.store.load()

    @staticmethod
    def _after_of(state: State, rec: Record) -> State | None:
        """The state ``rec`` would have recorded, if it was computed from ``state`` and
        can be read."""
        if not rec.known or rec.before != state.change or rec.backend not in NAMES \
                or rec.profile not in PROFILES:
            return None
        nets = {k: v for k, v in state.networks.items() if k not in rec.drop}
        try:
            nets.update((n.name, n) for n in map(network_from_dict, rec.networks))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        return State(rec.backend, rec.profile, rec.prefix, nets, None, rec.change)

    def _holds(self, after: State, rec: Record, before: State) -> bool:
        """Does the live firewall hold all of the change to ``after``, and nothing of what
        it changed from (another backend or prefix it moved the networks away from)?"""
        b = get_backend(after.backend or "", self.runner)
        prof = self._profile_of(after)
        live = b.read()
        if rec.layout:
            if not b.changes(live, plan(after.networks.values(), prof), "full").empty:
                return False
        elif not b.changes(live, None, "teardown", prefix=prof.prefix).empty:
            return False
        if before.backend in NAMES and (before.backend, before.prefix) != \
                (after.backend, after.prefix):
            old = get_backend(before.backend, self.runner)
            if not old.changes(old.read(), None, "teardown",
                               prefix=before.prefix or prof.prefix).empty:
                return False
        return True

    @staticmethod
    def _interrupted(rec: Record | None, state: State, drift: list[Change]) -> list[Change]:
        """For check and status: ``drift``, headed by the change left in flight that it
        comes from, named as such. (A change that left no drift, because it was stopped
        before it committed anything or it had recorded itself, is no news: the next
        command that changes the firewall clears its record.)"""
        if rec is None or not drift or (rec.known and rec.change == state.change):
            return drift
        return [Change(None, "recover", "vnetfw",
                       f"{rec.describe()} did not finish (killed, or its undo failed); the "
                       "next command that changes the firewall finishes or undoes it")] + drift

    # -- commands -----------------------------------------------------------------------
    def setup(self, dry_run: bool = False) -> Report:
        """Create missing private chains and jumps; repair jump order. Rules are untouched."""
        with self._changing(dry_run) as state:
            b = self.backend_for(state)
            rep = self._report("setup", b.name, applied=not dry_run)
            self._intend("setup", state, b, self.profile_for(state), state.networks)
            self._sync(b, plan((), self.profile_for(state)), "setup", dry_run, rep)
            return rep

    def apply(self, networks: Iterable[Network], dry_run: bool = False, *,
              exact: bool = False) -> Report:
        """Start or update ``networks``; every other active network stays as it is (with
        ``exact``, see ``sync``: every other active network is removed, in the same commit).

        ``networks`` may be lazy (the CLI reads definition files as they are asked for).
        While vnetfw's last commit may still be live (a re-apply, an added network) every
        one is read first. Otherwise, when the firewall holds nothing of vnetfw's, each
        goes to the backend as soon as it is read (``_sync``'s ``fresh``), and all are
        checked together before the backend's process sees the end of its input: a bad
        definition met half-way loads nothing, like one met first."""
        with self._changing(dry_run) as state:
            b = self.backend_for(state)
            prof = self.profile_for(state)
            # New networks load in the order they come: a collection sorted by name, like
            # ``plan`` and ``render``; a lazy iterable as it yields (a folder: file-name
            # order). Active networks not redefined follow by name. No packet can tell,
            # but nft lists chains in the order they were created.
            source = iter(sorted(networks, key=lambda n: n.name)
                          if isinstance(networks, Collection) else networks)
            nets: list[Network] = []            # the definitions read so far
            merged: dict[str, Network] = {}

            def everything() -> dict[str, Network]:
                """Every network once all definitions are read, checked together (clashes
                with networks already active are reported against the new file)."""
                if not merged:
                    nets.extend(source)
                    new = {n.name for n in nets}
                    kept = [] if exact else [n for k, n in state.networks.items()
                                             if k not in new]
                    validate_together(kept + nets)
                    merged.update((n.name, n) for n in kept)
                    merged.update((n.name, n) for n in nets)
                return merged

            def as_read() -> Iterator[tuple[str, tuple[Rule, ...]]]:
                """Each network planned as soon as it is read (if not read already); then,
                once all are checked together, the others by name."""
                done: set[str] = set()
                later: list[Network] = []       # with allows: planned with their peers
                for n in source:
                    nets.append(n)
                    done.add(n.name)
                    if n.allows:
                        later.append(n)
                        continue
                    yield n.name, network_rules(n, prof, ())    # as plan() calls it: cached
                every = everything()
                for n in later:
                    yield n.name, network_rules(n, prof, peers_of(n, every))
                yield from ((k, network_rules(n, prof, peers_of(n, every)))
                            for k, n in sorted(every.items()) if k not in done)

            rep = self._report("sync" if exact else "apply", b.name, applied=not dry_run)
            self._intend("sync" if exact else "apply", state, b, prof, everything)
            if self._last_commit_was(state, b, prof):
                everything()        # likely unchanged or a small change: read all files
                                    # while the prefetched generation arrives
            g0 = self._generation(b)
            partial = None
            if self._proven(state, b, prof, g0):
                # The firewall is vnetfw's last commit, so not vacant: read every definition.
                if everything() == state.networks:
                    return self._noted(rep, nets)           # nothing to do, nothing read
                partial = self._partial(state, b, prof, merged)
            found = self.find_hooks(dry_run)
            gen = self._sync(b, lambda: plan(everything().values(), prof), "full", dry_run,
                             rep, prof.prefix, g0=g0, partial=partial, fresh=as_read)
            if self._switch_away(state, b, prof, dry_run, rep):
                gen = None
            self._noted(rep, nets)
            if not dry_run:
                old = dict(state.networks)
                self._save(state, b, prof, everything(), gen)
                self.window.close()
                self._zones(old, merged, rep)
                self._run_hooks(found, b,
                                [(n, "updated" if n.name in old else "added") for n in nets
                                 if old.get(n.name) != n]
                                + [(n, "removed") for k, n in sorted(old.items())
                                   if k not in merged], rep)
            return rep

    def sync(self, networks: Iterable[Network], dry_run: bool = False) -> Report:
        """Make the active networks exactly ``networks``: start or update them and remove
        every other active network, in one atomic change (``apply`` with ``exact``). Hooks
        get ``added``/``updated`` for the given networks that changed and ``removed`` for
        the others."""
        return self.apply(networks, dry_run, exact=True)

    @staticmethod
    def _noted(rep: Report, nets: list[Network]) -> Report:
        """The report of an apply: which networks it was given, and notes on those that get
        no rules."""
        rep.networks = sorted({n.name for n in nets})
        for n in nets:
            if n.mode is Mode.OPEN:
                rep.notes.append(f"{n.name}: mode open gets no firewall rules, by design")
            elif not n.mode.firewalled:
                rep.notes.append(f"{n.name}: mode {n.mode.value} puts guests on a host "
                                 "bridge or device; vnetfw does not firewall it (no rules)")
        return rep

    def remove(self, names: Iterable[str], dry_run: bool = False) -> Report:
        names = list(dict.fromkeys(names))
        with self._changing(dry_run) as state:
            unknown = [n for n in names if n not in state.networks]
            if unknown:
                raise UsageError("remove", f"not active: {', '.join(unknown)} (active: "
                                      f"{_some(sorted(state.networks))})")
            b = self.backend_for(state)
            prof = self.profile_for(state)
            kept = {k: v for k, v in state.networks.items() if k not in names}
            rep = self._report("remove", b.name, networks=sorted(names), applied=not dry_run)
            found = self.find_hooks(dry_run)
            self._intend("remove", state, b, prof, kept)
            gen = self._sync(b, lambda: plan(kept.values(), prof), "full", dry_run, rep,
                             partial=self._partial(state, b, prof, kept))
            if self._switch_away(state, b, prof, dry_run, rep):
                gen = None
            if not dry_run:
                before = dict(state.networks)
                gone = [state.networks[n] for n in names]
                self._save(state, b, prof, kept, gen)
                self.window.close()
                self._zones(before, kept, rep)
                self._run_hooks(found, b, [(n, "removed") for n in gone], rep)
            return rep

    def reload(self, dry_run: bool = False) -> Report:
        """Repair everything from the desired state in one atomic step: the layout (chains,
        jumps, their order) and every active network's rules. What had to be fixed is the
        report's ``changes``; hooks get ``reloaded`` when anything was repaired."""
        with self._changing(dry_run) as state:
            b = self.backend_for(state, find=True)
            prof = self.profile_for(state)
            rep = self._report("reload", b.name, networks=sorted(state.networks),
                               applied=not dry_run)
            if not state.networks:
                # No desired state (never applied, or torn down): nothing to repair, and
                # nothing to re-create. (A layout left by 'setup' or by removing the last
                # network is not guarded either: see ``check``.) A change left in flight
                # was dealt with above.
                return rep
            found: list[str] = []
            self._intend("reload", state, b, prof, state.networks)
            if self._untouched(state, b, prof, state.networks):
                gen = state.generation
            else:
                found = self.find_hooks(dry_run)
                gen = self._sync(b, lambda: plan(state.networks.values(), prof), "full",
                                 dry_run, rep, prof.prefix,
                                 fresh=lambda: plan_networks(state.networks.values(), prof))
                if self._switch_away(state, b, prof, dry_run, rep):
                    gen = None
            if not dry_run and ((state.backend, state.prefix, state.generation)
                                != (b.name, prof.prefix, gen)):
                self._save(state, b, prof, state.networks, gen)
            self.window.close()
            if not dry_run:     # idempotent: restores zones after a firewalld restart
                self._zones(state.networks, state.networks, rep)
            if rep.changed and not dry_run:
                self._run_hooks(found, b, [(state.networks[n], "reloaded")
                                           for n in sorted(state.networks)], rep)
            return rep

    def check(self) -> list[Change]:
        """Every difference between the live firewall and the desired state (empty: clean).
        Read-only; phrase them with ``drift_text``. The state and the firewall are read
        while no other vnetfw is between a commit and its recorded state (``inflight``): a
        change in progress is seen before or after, never half-way. A change whose writer
        died on the way heads the drift it left, as ``interrupted``.

        No active networks (never applied, torn down, or every one removed) is no desired
        state: clean, without reading the firewall, as ``watch`` sees it ("nothing to
        guard") and as ``reload`` acts on it (nothing to re-create). Except with no state
        at all (lost, or another state dir) while vnetfw's chains are live: the rules of
        networks no state names are reported (``_leftovers``); and what a change killed on
        its way there left of vnetfw's is drift (``_left_by``)."""
        def read(rec: Record | None) -> list[Change]:
            state = self.store.load()
            if not state.networks:
                return self._interrupted(rec, state,
                                         self._left_by(rec) or self._leftovers(state))
            b = self.backend_for(state)
            prof = self.profile_for(state)
            if self._untouched(state, b, prof, state.networks):
                return []
            desired = plan(state.networks.values(), prof)
            return self._interrupted(rec, state, self._drift(b, b.read(), desired))
        return self.window.steadily(read, waiting=self.waiting)

    def _left_by(self, rec: Record | None) -> list[Change]:
        """With no active networks: what of vnetfw's a change in flight left live (where
        it went; nothing if there is no such change)."""
        if rec is None or not rec.known or rec.backend not in NAMES or not rec.prefix:
            return []
        b = get_backend(rec.backend, self.runner)
        return b.changes(b.read(), None, "teardown", prefix=rec.prefix).items

    @staticmethod
    def _drift(b: Backend, live: Any, desired: Ruleset) -> list[Change]:
        """What differs between ``live`` and ``desired``, less the optional rules that are
        missing because this kernel lacks their target (the change went in without them,
        with a warning: ``_without_optional``); otherwise ``check`` would report them, and
        ``watch`` repair them, forever. The backend is asked (a probe) only when optional
        rules are missing; where the kernel has the target, a missing one is drift."""
        items = b.changes(live, desired, "full").items
        missing = [c for c in items
                   if c.what == "add" and isinstance(c.rule, Rule) and c.rule.optional]
        if not missing or b.lacks_optional(
                None, replace(desired, rules=tuple(c.rule for c in missing))) is None:
            return items
        skip = {id(c) for c in missing}
        return [c for c in items if id(c) not in skip]

    def _leftovers(self, state: State) -> list[Change]:
        """With no state on record and ``auto``: the rules of networks that the backend
        holding vnetfw's layout carries (``backend_for(find=True)``), which no state names.
        Nothing when no backend holds any (a namespace vnetfw never set up: no read beyond
        that search) or the state names a backend (its networks were all removed)."""
        if requested(self._backend_name, lambda: state.backend) != AUTO:
            return []
        b = self.backend_for(state, find=True)
        if self._found is None:
            return []
        return b.changes(b.read(), plan((), self.profile_for(state)), "full").items

    def teardown(self, dry_run: bool = False) -> Report:
        """Remove every chain, jump and rule vnetfw owns (and nothing else); forget networks."""
        with self._changing(dry_run) as state:
            b = self.backend_for(state, find=True)
            prof = self.profile_for(state)
            rep = self._report("teardown", b.name, networks=sorted(state.networks),
                               applied=not dry_run)
            found = self.find_hooks(dry_run)
            self._intend("teardown", state, b, prof, {}, layout=False)
            self._sync(b, None, "teardown", dry_run, rep, prefix=state.prefix or prof.prefix,
                       g0=None)                 # not recorded: no generation to read
            if not dry_run:
                before = dict(state.networks)
                gone = list(before.values())
                self._save(state, b, prof, {}, None)    # the layout is gone too: unknown
                self.window.close()
                self._zones(before, {}, rep)
                self._run_hooks(found, b, [(n, "removed") for n in gone], rep)
            return rep

    def status(self) -> dict[str, Any]:
        """Active networks and whether the live firewall matches them (read-only; read
        like ``check``: before or after another vnetfw's change, never half-way)."""
        def read(rec: Record | None) -> tuple:
            state = self.store.load()
            b = self.backend_for(state, find=True)
            prof = self.profile_for(state)
            desired = plan(state.networks.values(), prof)
            live = None
            if not state.networks:              # none: clean, or leftovers (``check``)
                drift = self._interrupted(rec, state,
                                          self._left_by(rec) or self._leftovers(state))
            elif self._untouched(state, b, prof, state.networks):
                drift = []
            else:
                live = b.read()
                drift = self._interrupted(rec, state, self._drift(b, live, desired))
            counters: dict[Rule, tuple[int, int]] = {}
            if any(n.port_forwards for n in state.networks.values()) \
                    and hasattr(b, "forward_counters"):
                counters = b.forward_counters(live if live is not None else b.read(),
                                              prof.prefix)
            return state, b, prof, desired, drift, counters
        state, b, prof, desired, drift, counters = self.window.steadily(read,
                                                                        waiting=self.waiting)
        per_net: dict[str, int] = {}
        for r in desired.rules:
            per_net[r.network] = per_net.get(r.network, 0) + 1
        return {
            "backend": b.name, "profile": prof.name, "prefix": prof.prefix,
            "state_dir": str(self.store.dir), "desired": bool(state.networks),
            "in_sync": not drift, "drift": drift,
            "networks": [{"name": n.name, "mode": n.mode.value, "bridge": n.bridge,
                          "forward_dev": n.forward_dev,
                          "subnets": [str(ip.subnet) for ip in n.ips],
                          "rules": per_net.get(n.name, 0), "source": n.source,
                          **_features(n, state.networks, desired, counters)}
                         for n in sorted(state.networks.values(), key=lambda n: n.name)],
        }

    def show(self, name: str) -> dict[str, Any]:
        """One active network: its definition, its rules (in the order planned) with the
        packets and bytes each has matched where the backend keeps counters, and what of
        it differs from the live firewall. Read-only, like ``status``."""
        state = self.store.load()
        net = state.networks.get(name)
        if net is None:
            raise UsageError("show", f"not active: {name} (active: "
                                     f"{_some(sorted(state.networks))})")
        b = self.backend_for(state)
        prof = self.profile_for(state)
        live = b.read()
        desired = plan(state.networks.values(), prof)
        drift = [c for c in b.changes(live, desired, "full").items if c.network == name]
        counts = b.counters(live, prof.prefix)
        # nftables counts only what port forwards' map elements translated
        fwd = b.forward_counters(live, prof.prefix) if hasattr(b, "forward_counters") \
            else {}
        return {"backend": b.name, "profile": prof.name, "prefix": prof.prefix,
                "network": net, "in_sync": not drift, "drift": drift,
                "rules": list(network_rules(net, prof, peers_of(net, state.networks))),
                "all_counted": counts is not None,
                "counters": {**fwd, **(counts or {})},
                **_features(net, state.networks, desired, {**fwd, **(counts or {})})}

    def list_networks(self) -> list[Network]:
        return sorted(self.store.load().networks.values(), key=lambda n: n.name)
