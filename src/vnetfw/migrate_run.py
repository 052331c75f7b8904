"""``vnetfw migrate``: take networks over from an older layout, without a gap in filtering.

Contract: ``migrate(engine_kwargs, networks, adopt, dry_run, drop_libvirt_chains)`` reads the
live rulesets of both iptables flavours (iptables-nft and iptables-legacy, IPv4 and IPv6),
finds with ``vnetfw.migrate`` the rules an older layout wrote for exactly these networks
(builtin chains always; libvirt's ``LIBVIRT_*`` chains with ``adopt``, and with ``adopt``
also libvirt's nftables tables, ``migrate_nft``), and then:

1. applies the networks through the engine (desired state, lock, hooks, backend switching,
   rollback all as ``vnetfw apply``), with the old rules of the *same* iptables flavour
   deleted in the very same ``iptables-restore`` per family: each table's new chains, jumps
   and rules and the old rules' deletion are one COMMIT, so there is no moment without
   filtering, and a failure anywhere is undone where it wrote (the backend's undo,
   ``ipt_undo``);
2. only then deletes the old rules found in the *other* flavour (or all of them when the
   backend is nftables), one restore per family with the same rollback. Here the new rules
   are already in place while the old ones go: both enforce the same policy, and a packet
   must pass both (an accept in one base chain never overrides a drop in another).
3. with ``adopt``, the same for libvirt's own nftables tables (libvirt >= 10.4 with
   ``firewall_backend = "nftables"``): its rules of these networks go, by handle, in one nft
   transaction for both families.

``dry_run`` reads and computes everything and changes nothing. Nothing that is not exactly
an old product rule of one of the given networks is deleted (see ``vnetfw.migrate``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Iterable

from .backends import Backend, Change, ChangeSet
from .backends.iptables import IptablesBackend, IptLive, TableEdit, flavour_of
from .backends.registry import FLAVOURS
from .engine import Engine, Report
from .errors import BackendError, RollbackIncomplete
from .migrate import Edits, Findings, KeptRule, Mode, OldRule, plan_flavour
from .model import Network



def edits_changeset(ed: Edits, f: Findings, extra: ChangeSet | None = None) -> ChangeSet:
    """Prepend ``ed``'s lines to each (family, table) script of ``extra`` (the backend's own
    change set, or a new one), and its deletions to the reported changes."""
    cs = extra if extra is not None else ChangeSet([], {})
    if cs.payload is None:
        cs.payload = {}
    for (fam, table), lines in ed.lines.items():
        te = cs.payload.setdefault(fam, {}).setdefault(table, TableEdit())
        te.lines[:0] = lines
    items = [Change(d.family, "delete", f"{d.table} {d.chain}",
                    f"old {d.origin} rule: {d.args}", d.network) for d in f.deleted]
    moved = [ln for (fam, table), lines in ed.lines.items() for ln in lines
             if not any(ln == f"-D {d.chain} {d.args}" for d in f.deleted)]
    if moved:
        items.append(Change(None, "move", "filter FORWARD / libvirt chains",
                            f"{len(moved)} jump/chain edit(s) for libvirt's layout"))
    cs.items[:0] = items
    return cs


class FoldingBackend(Backend):
    """The engine's iptables backend, whose full-sync changes also carry the migration
    edits of its own flavour, so ``commit`` loads both in one restore per family."""

    def __init__(self, inner: IptablesBackend, flavour: str, networks: list[Network],
                 modes: tuple[Mode, ...], drop_libvirt: bool) -> None:
        super().__init__(inner.runner)
        self.inner = inner
        self.name = inner.name
        self.flavour = flavour
        self.networks = networks
        self.modes = modes
        self.drop_libvirt = drop_libvirt
        self.findings: Findings | None = None
        self.edits: Edits | None = None

    def available(self, probe: bool = True) -> str | None:
        return self.inner.available(probe)

    def read(self) -> IptLive:
        return self.inner.read()

    def render(self, desired, family=None) -> str:
        return self.inner.render(desired, family)

    def live_ruleset(self, live, prefix):
        return self.inner.live_ruleset(live, prefix)

    def changes(self, live, desired, scope, prefix=None) -> ChangeSet:
        if scope != "full" or desired is None:
            return self.inner.changes(live, desired, scope, prefix=prefix)
        f, ed = plan_flavour(live, self.flavour, self.networks, self.modes, desired.prefix,
                             self.drop_libvirt)
        assert ed.after is not None
        cs = self.inner.changes(ed.after, desired, scope)
        self.findings, self.edits = f, ed
        return edits_changeset(ed, f, cs)

    def commit(self, live, changes: ChangeSet) -> None:
        self.inner.commit(live, changes)      # its undo works from the real ``live``


class MigrationEngine(Engine):
    """An engine whose iptables backend folds the migration into its own restore."""

    def __init__(self, *, networks: list[Network], modes: tuple[Mode, ...],
                 drop_libvirt: bool, **kw: Any) -> None:
        super().__init__(**kw)
        self._mig = (networks, modes, drop_libvirt)
        self.folded: FoldingBackend | None = None
        self.flavour: str | None = None
        self._resolved = False

    def backend_for(self, state, find=False):
        b = super().backend_for(state, find)
        if not self._resolved:
            self._resolved = True
            self.flavour = flavour_of(self.runner, b.name)
            if self.flavour is not None and isinstance(b, IptablesBackend):
                self.folded = FoldingBackend(b, self.flavour, *self._mig)
        return self.folded if self.folded is not None else b


@dataclass
class FlavourResult:
    flavour: str
    atomic: bool                 # deleted in the same restore as vnetfw's rules went in
    findings: Findings
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None


@dataclass
class MigrateReport:
    dry_run: bool
    adopt: bool
    networks: list[str]
    apply: Report
    flavours: list[FlavourResult] = field(default_factory=list)

    @property
    def deleted(self) -> list[OldRule]:
        return [d for fr in self.flavours for d in fr.findings.deleted]

    @property
    def kept(self) -> list[KeptRule]:
        return [k for fr in self.flavours for k in fr.findings.kept]

    @property
    def notes(self) -> list[str]:
        return [n for fr in self.flavours for n in fr.notes] + \
            [f"{fr.flavour}: not checked ({fr.skipped})" for fr in self.flavours if fr.skipped]

    def to_json(self) -> dict[str, Any]:
        return {"action": "migrate", "dry_run": self.dry_run, "adopt": self.adopt,
                "applied": not self.dry_run, "networks": self.networks,
                "deleted": [d.to_json() for d in self.deleted],
                "kept": [k.to_json() for k in self.kept],
                "atomic": [fr.flavour for fr in self.flavours if fr.atomic],
                "notes": self.notes, "apply": self.apply.to_json()}


def migrate(networks: Iterable[Network], *, adopt: bool = False, dry_run: bool = False,
            drop_libvirt_chains: bool = False, **engine_kw: Any) -> MigrateReport:
    """Take ``networks`` over (see the module contract). ``engine_kw`` are ``Engine``'s
    arguments (backend, profile, netns, state_dir, prefix, hooks_dir)."""
    nets = list(networks)
    modes: tuple[Mode, ...] = ("old", "libvirt") if adopt else ("old",)
    eng = MigrationEngine(networks=nets, modes=modes, drop_libvirt=drop_libvirt_chains,
                          **engine_kw)
    with eng.interrupts:   # a Ctrl-C held back in the first step stops after the second
        return _migrate(eng, nets, modes, adopt, dry_run, drop_libvirt_chains)


def _migrate(eng: "MigrationEngine", nets: list[Network], modes: tuple[Mode, ...],
             adopt: bool, dry_run: bool, drop_libvirt_chains: bool) -> MigrateReport:
    rep = eng.apply(nets, dry_run=dry_run)
    out = MigrateReport(dry_run, adopt, sorted(n.name for n in nets), rep)
    folded = eng.folded
    for flavour in FLAVOURS:
        if folded is not None and flavour == folded.flavour and folded.findings is not None:
            assert folded.edits is not None
            out.flavours.append(FlavourResult(flavour, True, folded.findings,
                                              list(folded.edits.notes)))
            continue
        b = IptablesBackend(eng.runner, flavour)
        if (why := b.available()) is not None:
            out.flavours.append(FlavourResult(flavour, False, Findings(), skipped=why))
            continue
        live = b.read()
        f, ed = plan_flavour(live, flavour, nets, modes, None, drop_libvirt_chains)
        out.flavours.append(FlavourResult(flavour, False, f, list(ed.notes)))
        if ed.lines and not dry_run:
            eng.interrupts.arm()
            try:
                b.commit(live, edits_changeset(ed, f))
                eng.interrupts.landed()
            except RollbackIncomplete:
                raise           # not "nothing was removed": it says what is left
            except BackendError as e:
                raise BackendError(
                    f"the networks were applied, but removing the old rules from {flavour} "
                    f"failed: {e}. Nothing of them was removed; run vnetfw migrate again") from e
    if adopt:
        out.flavours.append(_adopt_libvirt_nft(eng, nets, dry_run, drop_libvirt_chains))
    return out


NFT_LIBVIRT = "nftables (libvirt_network)"


def _adopt_libvirt_nft(eng: "MigrationEngine", nets: list[Network], dry_run: bool,
                       drop: bool) -> FlavourResult:
    """libvirt's nftables backend (libvirt >= 10.4): delete its rules of ``nets`` from the
    tables ``ip``/``ip6 libvirt_network``, in one nft transaction, once vnetfw's rules are
    in place (both enforce the same policy meanwhile: a packet must pass both)."""
    from .migrate_nft import FAMILIES, TABLE, delete_script, find, left_over
    if eng.runner.which("nft") is None:
        return FlavourResult(NFT_LIBVIRT, False, Findings(), skipped="nft not installed")
    try:
        tables = eng.runner.run(["nft", "list", "tables"])
    except BackendError as e:
        return FlavourResult(NFT_LIBVIRT, False, Findings(), skipped=str(e))
    listings = {fam: eng.runner.run(["nft", "-a", "list", "table", name, TABLE])
                for fam, name in FAMILIES.items() if f"table {name} {TABLE}" in tables}
    if not listings:
        return FlavourResult(NFT_LIBVIRT, False, Findings())
    found = find(listings, nets)
    res = FlavourResult(NFT_LIBVIRT, False, Findings(deleted=found))  # type: ignore[arg-type]
    script = delete_script(found)
    if left_over(listings, found):
        res.notes.append(f"{NFT_LIBVIRT}: libvirt's tables keep the rules of networks that "
                         "were not taken over")
    elif drop:
        script += "".join(f"delete table {FAMILIES[f]} {TABLE}\n" for f in listings)
        res.notes.append(f"{NFT_LIBVIRT}: libvirt's tables were left with no rule and are "
                         "removed")
    elif found:
        res.notes.append(f"{NFT_LIBVIRT}: libvirt's tables are now empty and are kept (a "
                         "running libvirtd creates them once per daemon start; "
                         "--drop-libvirt-chains removes them when libvirt is gone)")
    if script and not dry_run:
        eng.interrupts.arm()
        try:
            eng.runner.run(["nft", "-f", "-"], stdin=script)
            eng.interrupts.landed()
        except BackendError as e:
            raise BackendError(
                f"the networks were applied, but removing libvirt's rules from its nftables "
                f"tables failed: {e}. Nothing of them was removed (one nft transaction); run "
                "vnetfw migrate again") from e
    return res


def print_human(rep: MigrateReport) -> None:
    """The report as an admin reads it: exactly which rules go, which stay, what is added."""
    nets = ", ".join(rep.networks)
    dels = rep.deleted
    verb = "would delete" if rep.dry_run else "deleted"
    if dels:
        print(f"migrate: {verb} {len(dels)} old rule(s) of {nets}:")
        for d in dels:
            who = "libvirt" if d.origin == "libvirt" else "older vnetfw"
            print(f"  {d.describe()}    [{d.network}; written by {who}]")
    else:
        print(f"migrate: no old rules of {nets} found")
    if rep.kept:
        print("kept (they name a managed bridge or subnet, but are not rules an old layout "
              "made):")
        for k in rep.kept:
            print(f"  {k.describe()}")
    added = [c for c in rep.apply.changes if not c.detail.startswith("old ")]
    how = "would apply" if rep.dry_run else "applied"
    print(f"{how} {nets} with vnetfw's chains: {len(added)} change(s) ({rep.apply.backend})")
    for fr in rep.flavours:
        if fr.findings.deleted:
            when = ("in the same iptables-restore per family as vnetfw's rules" if fr.atomic
                    else "after vnetfw's rules were in place")
            print(f"  {fr.flavour}: old rules {'go' if rep.dry_run else 'went'} {when}")
    for n in rep.notes:
        print(f"note: {n}")
    for w in rep.apply.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if rep.dry_run:
        print("dry run: nothing was changed")
