"""The engine: desired state + backend -> one atomic change per command.

Contract: every public method takes the state lock, reads the live firewall once, computes
the changes with the (pure) planner and backend diff, commits them in the backend's atomic
step, and only then saves the new desired state. If the commit fails, the backend has put
the live ruleset back as it was and the state file is untouched, so a failed command leaves
nothing behind. ``dry_run`` computes and reports the same changes without committing.

Optional rules (the CHECKSUM fix-up, which some kernels lack): if a commit fails and the
desired ruleset holds optional rules, the change is retried once without them and the report
carries a warning, like libvirt which treats that rule as best-effort.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

from .backends import Backend, Change, ChangeSet, Scope, get_backend
from .backends.runner import Runner
from .errors import BackendError, DefinitionError
from .model import Network, validate_together
from .plan import PROFILES, Profile, plan
from .ruleset import Ruleset
from .state import State, StateStore, default_state_dir


@dataclass
class Report:
    """What a command did (or, with dry_run, would do)."""

    action: str
    backend: str
    changes: list[Change] = field(default_factory=list)
    applied: bool = True
    warnings: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "backend": self.backend, "changed": self.changed,
                "applied": self.applied, "networks": self.networks,
                "changes": [c.to_json() for c in self.changes], "warnings": self.warnings}


def resolve_profile(name: str, prefix: str | None = None) -> Profile:
    if name not in PROFILES:
        raise DefinitionError("--profile", f"unknown profile {name!r} (expected one of "
                                           f"{', '.join(PROFILES)})")
    prof = PROFILES[name]
    if prefix is not None:
        try:
            prof = prof.with_prefix(prefix)
        except ValueError as e:
            raise DefinitionError("--prefix", str(e)) from None
    return prof


class Engine:
    """Drives one backend in one network namespace with one state directory."""

    def __init__(self, backend: str = "auto", profile: str = "default", netns: str | None = None,
                 state_dir: str | Path | None = None, prefix: str | None = None) -> None:
        self.runner = Runner(netns)
        self.store = StateStore(state_dir if state_dir is not None else default_state_dir(netns))
        self.profile = resolve_profile(profile, prefix)
        self._backend_name = backend
        self._backend: Backend | None = None

    # -- helpers ------------------------------------------------------------------------
    def backend_for(self, state: State) -> Backend:
        """The requested backend; ``auto`` keeps the one the active networks use."""
        if self._backend is None:
            name = self._backend_name
            if name == "auto" and state.backend:
                name = state.backend
            self._backend = get_backend(name, self.runner)
            if (why := self._backend.available()) is not None:
                raise BackendError(f"backend {self._backend.name} is not usable: {why}")
        return self._backend

    def desired(self, networks: Iterable[Network]) -> Ruleset:
        return plan(networks, self.profile)

    def _sync(self, backend: Backend, desired: Ruleset | None, scope: Scope, dry_run: bool,
              report: Report, prefix: str | None = None) -> None:
        live = backend.read()
        cs = backend.changes(live, desired, scope, prefix=prefix)
        report.changes += cs.items
        if cs.empty or dry_run:
            report.applied = not dry_run
            return
        try:
            backend.commit(live, cs)
        except BackendError as e:
            optional = desired is not None and any(r.optional for r in desired.rules)
            if not optional:
                raise
            report.changes[-len(cs.items):] = []
            trimmed = replace(desired, rules=tuple(r for r in desired.rules if not r.optional))
            report.warnings.append(f"optional rules (CHECKSUM fix-up) left out: {e}")
            live = backend.read()
            cs = backend.changes(live, trimmed, scope, prefix=prefix)
            report.changes += cs.items
            if not cs.empty:
                backend.commit(live, cs)

    def _switch_away(self, state: State, backend: Backend, dry_run: bool,
                     report: Report) -> None:
        """If the active networks live under another backend or prefix, remove them there
        (after the new rules are in place, so filtering never has a gap)."""
        old_prefix = state.prefix or self.profile.prefix
        if state.backend is None or (state.backend == backend.name
                                     and old_prefix == self.profile.prefix):
            return
        old = get_backend(state.backend, self.runner)
        if old.available() is not None:
            report.warnings.append(f"previous backend {state.backend} is not usable here; "
                                   "its rules were not removed")
            return
        self._sync(old, None, "teardown", dry_run, report, prefix=old_prefix)

    def _commit_state(self, state: State, backend: Backend, networks: dict[str, Network]) -> None:
        state.backend = backend.name
        state.profile = self.profile.name
        state.prefix = self.profile.prefix
        state.networks = networks
        self.store.save(state)

    # -- commands -----------------------------------------------------------------------
    def setup(self, dry_run: bool = False) -> Report:
        """Create missing private chains and jumps; repair jump order. Rules are untouched."""
        with self.store.lock():
            state = self.store.load()
            b = self.backend_for(state)
            rep = Report("setup", b.name)
            self._sync(b, self.desired(()), "setup", dry_run, rep)
            return rep

    def apply(self, networks: Iterable[Network], dry_run: bool = False) -> Report:
        """Start or update ``networks``; every other active network stays as it is."""
        nets = list(networks)
        with self.store.lock():
            state = self.store.load()
            b = self.backend_for(state)
            merged = dict(state.networks)
            for n in nets:
                merged[n.name] = n
            # Clashes with networks that are already active are reported against the new file.
            ordered = [merged[k] for k in merged if k not in {n.name for n in nets}] + nets
            validate_together(ordered)
            rep = Report("apply", b.name, networks=sorted(n.name for n in nets))
            self._sync(b, self.desired(merged.values()), "full", dry_run, rep)
            self._switch_away(state, b, dry_run, rep)
            if not dry_run:
                self._commit_state(state, b, merged)
            return rep

    def remove(self, names: Iterable[str], dry_run: bool = False) -> Report:
        names = list(names)
        with self.store.lock():
            state = self.store.load()
            unknown = [n for n in names if n not in state.networks]
            if unknown:
                raise DefinitionError("remove", f"not active: {', '.join(unknown)} (active: "
                                      f"{', '.join(sorted(state.networks)) or 'none'})")
            b = self.backend_for(state)
            kept = {k: v for k, v in state.networks.items() if k not in names}
            rep = Report("remove", b.name, networks=sorted(names))
            self._sync(b, self.desired(kept.values()), "full", dry_run, rep)
            if not dry_run:
                self._commit_state(state, b, kept)
            return rep

    def teardown(self, dry_run: bool = False) -> Report:
        """Remove every chain, jump and rule vnetfw owns (and nothing else); forget networks."""
        with self.store.lock():
            state = self.store.load()
            b = self.backend_for(state)
            rep = Report("teardown", b.name, networks=sorted(state.networks))
            prefix = state.prefix or self.profile.prefix
            self._sync(b, None, "teardown", dry_run, rep, prefix=prefix)
            if not dry_run:
                self._commit_state(state, b, {})
            return rep

    def status(self) -> dict[str, Any]:
        """Active networks and whether the live firewall matches them (read-only, no lock
        needed: a concurrent writer replaces the state file atomically)."""
        state = self.store.load()
        b = self.backend_for(state)
        desired = self.desired(state.networks.values())
        live = b.read()
        drift = b.changes(live, desired, "full").items
        per_net: dict[str, int] = {}
        for r in desired.rules:
            per_net[r.network] = per_net.get(r.network, 0) + 1
        return {
            "backend": b.name, "profile": state.profile or self.profile.name,
            "prefix": desired.prefix, "state_dir": str(self.store.dir),
            "in_sync": not drift, "drift": [str(c) for c in drift],
            "networks": [{"name": n.name, "mode": n.mode.value, "bridge": n.bridge,
                          "forward_dev": n.forward_dev,
                          "subnets": [str(ip.subnet) for ip in n.ips],
                          "rules": per_net.get(n.name, 0), "source": n.source}
                         for n in sorted(state.networks.values(), key=lambda n: n.name)],
        }

    def list_networks(self) -> list[Network]:
        return sorted(self.store.load().networks.values(), key=lambda n: n.name)
