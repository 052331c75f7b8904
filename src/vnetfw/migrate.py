"""Migration from older firewall layouts, the pure part: which live rules are old product
rules of the managed networks, and the iptables-restore lines that remove them.

Nothing here runs a command; ``migrate_run`` reads the live rulesets, calls this module and
commits. The contract:

- ``candidates(networks, mode)`` derives, from the planner, every rule an older layout would
  have written for ``networks``: the same matches and verdicts as the planned rules, in the
  builtin chain the private chain hangs off (``old`` layout: filter INPUT/OUTPUT/FORWARD,
  nat and mangle POSTROUTING, as libvirt before 5.1 wrote them), or in libvirt's own
  ``LIBVIRT_*`` chains (``libvirt`` layout, what ``--adopt`` takes over).
- ``find(live, flavour, networks, modes)`` parses every rule of the chains those layouts use
  and returns the ones that are *exactly* a candidate (``OldRule``), plus the ones that merely
  mention a managed bridge or subnet and therefore stay (``KeptRule``, shown so the user sees
  what was left alone and why). Matching is on parsed rule semantics (the backend's own
  parser, so iptables-save's canonical spelling does not matter), never on substrings.
- A rule counts as an old product rule only with the owner mark its writer used: libvirt
  wrote no comment (so a candidate from the ``libvirt`` profile, without any comment,
  matches); an older vnetfw wrote ``-m comment --comment vnetfw:NET`` (so a candidate of
  network NET under either profile, with exactly that comment, matches). Any other comment,
  any extra match (``-m physdev``, ``--sport``, a non-default ``--reject-with``...), or the
  same rule for an unmanaged bridge or subnet means "not ours": it stays. The one spelling
  variant accepted is ``-m state --state`` for ``-m conntrack --ctstate`` (libvirt used the
  state match before 2013; the two are the same conntrack test).
- ``plan_flavour(...)`` turns the findings of one flavour into iptables-restore lines per
  (family, table) (``Edits``) and a simulated snapshot of the state they leave, so the
  backend computes its own changes against that state and everything loads in the same
  restore (the backend also places vnetfw's FORWARD jumps around libvirt's so every
  stage stays in order across both layouts). It keeps libvirt's chains once empty unless
  asked to drop them, and refuses (``GuardError``) to let profile ``libvirt`` take over LIBVIRT_* chains
  that still hold rules of networks not being taken over.

What is deliberately *not* a candidate: the very old ``-s NET -j MASQUERADE`` without
``! -d NET`` (libvirt before 0.9; also the most common hand-written NAT rule, so it is far
more likely an admin's), and anything for a network that is not among the given definitions.
"""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass, field
from typing import Iterable, Literal

from .backends.iptables import (BUILTINS, COMMENT_PREFIX, Foreign, IptLive, TableDump,
                                parse_rule, plain_jump_target, tokens)
from .errors import GuardError
from .model import Network
from .plan import PROFILES, network_rules
from .ruleset import FAMILIES, LAYOUT, Family, Rule

Mode = Literal["old", "libvirt"]
LIBVIRT_PREFIX = "LIBVIRT"
ORIGIN_LIBVIRT = "libvirt"          # written by libvirt: no comment
ORIGIN_VNETFW = "vnetfw"            # written by an older vnetfw: comment vnetfw:NET
_PROBE = COMMENT_PREFIX + "?"       # stands in for the owner while parsing

# (family, table, chain) -> {semantic key: [(network, origin), ...]}
Candidates = dict[tuple[Family, str, str], dict[Rule, list[tuple[str, str]]]]


@dataclass(frozen=True)
class OldRule:
    """A live rule that is exactly an old product rule of ``network``."""

    flavour: str
    family: Family
    table: str
    chain: str
    index: int              # 1-based position in the live chain when it was read
    args: str               # iptables-save arguments (what follows ``-A CHAIN``)
    network: str
    origin: str             # ORIGIN_LIBVIRT or ORIGIN_VNETFW
    layout: Mode

    @property
    def text(self) -> str:
        return f"-A {self.chain} {self.args}"

    def describe(self) -> str:
        return f"{self.flavour} ipv{self.family} {self.table}: {self.text}"

    def to_json(self) -> dict:
        return {"flavour": self.flavour, "family": f"ipv{self.family}", "table": self.table,
                "chain": self.chain, "rule": self.text, "network": self.network,
                "origin": self.origin, "layout": self.layout}


@dataclass(frozen=True)
class KeptRule:
    """A live rule that names a managed bridge or subnet but is not an old product rule."""

    flavour: str
    family: Family
    table: str
    chain: str
    args: str
    why: str

    @property
    def text(self) -> str:
        return f"-A {self.chain} {self.args}"

    def describe(self) -> str:
        return f"{self.flavour} ipv{self.family} {self.table}: {self.text}  ({self.why})"

    def to_json(self) -> dict:
        return {"flavour": self.flavour, "family": f"ipv{self.family}", "table": self.table,
                "chain": self.chain, "rule": self.text, "why": self.why}


@dataclass
class Findings:
    deleted: list[OldRule] = field(default_factory=list)
    kept: list[KeptRule] = field(default_factory=list)


# ---------------------------------------------------------------------------------------
# Candidates


def _key(r: Rule) -> Rule:
    """A rule's semantics: everything but the chain it sits in and the owner."""
    return r._replace(chain="", network="")


def _chain_for(mode: Mode, table: str, suffix: str) -> str:
    if mode == "libvirt":
        return f"{LIBVIRT_PREFIX}_{suffix}"
    return next(s.builtin for s in LAYOUT if (s.table, s.suffix) == (table, suffix))


def scanned_chains(mode: Mode) -> list[tuple[str, str]]:
    """(table, chain) pairs a layout wrote into."""
    return list(dict.fromkeys((s.table, _chain_for(mode, s.table, s.suffix)) for s in LAYOUT))


def candidates(networks: Iterable[Network], mode: Mode) -> Candidates:
    """Every rule the ``mode`` layout would have produced for ``networks``.

    Old layout: libvirt-profile rules without a comment (libvirt), and the rules of both
    profiles with the network's vnetfw comment (an older vnetfw). libvirt layout: the
    libvirt-profile rules without a comment, in the same ``LIBVIRT_<suffix>`` chain.
    """
    out: Candidates = {}

    def add(r: Rule, origin: str) -> None:
        chain = _chain_for(mode, r.table, r.chain)
        owners = out.setdefault((r.family, r.table, chain), {}).setdefault(_key(r), [])
        if (r.network, origin) not in owners:
            owners.append((r.network, origin))

    for net in networks:
        for r in network_rules(net, PROFILES["libvirt"]):
            add(r, ORIGIN_LIBVIRT)
        if mode == "old":
            for prof in ("libvirt", "default"):
                for r in network_rules(net, PROFILES[prof]):
                    add(r, ORIGIN_VNETFW)
    return out


# ---------------------------------------------------------------------------------------
# Classifying live rules


def semantics(args: str, family: Family, table: str) -> tuple[Rule, str | None] | None:
    """Parse iptables-save arguments of a rule in any chain into (semantic key, comment);
    None if the backend's parser does not fully understand the rule (then it is nobody's
    product rule). ``-m state --state`` is read as the equivalent conntrack state match."""
    tok = tokens(args)
    if tok is None:
        return None
    comment: str | None = None
    kept: list[str] = []
    i = 0
    while i < len(tok):
        if tok[i:i + 3] == ["-m", "comment", "--comment"] and i + 3 < len(tok):
            if comment is not None:
                return None                 # two comments: not something we wrote
            comment = tok[i + 3]
            i += 4
            continue
        if tok[i:i + 3] == ["-m", "state", "--state"] and i + 3 < len(tok):
            kept += ["-m", "conntrack", "--ctstate", tok[i + 3]]
            i += 4
            continue
        kept.append(tok[i])
        i += 1
    parsed = parse_rule(shlex.join(kept + ["-m", "comment", "--comment", _PROBE]), family,
                        table, "")
    if isinstance(parsed, Foreign):
        return None
    return _key(parsed), comment


def _match(owners: list[tuple[str, str]], comment: str | None) -> tuple[str, str] | None:
    for net, origin in owners:
        if origin == ORIGIN_LIBVIRT and comment is None:
            return net, origin
        if origin == ORIGIN_VNETFW and comment == COMMENT_PREFIX + net:
            return net, origin
    return None


def _mentions(args: str, bridges: set[str], subnets: set[str]) -> str | None:
    for t in tokens(args) or args.split():
        if t in bridges:
            return f"names bridge {t} but is not a rule the old layout made"
        if "/" in t:
            try:
                net = str(ipaddress.ip_network(t, strict=False))
            except ValueError:
                continue
            if net in subnets:
                return f"names subnet {net} but is not a rule the old layout made"
    return None


def find(live: IptLive, flavour: str, networks: Iterable[Network],
         modes: Iterable[Mode] = ("old",)) -> Findings:
    """The old product rules of ``networks`` in ``live`` (one iptables flavour), and the
    rules that name a managed bridge or subnet but stay."""
    nets = list(networks)
    bridges = {n.bridge for n in nets if n.bridge}
    subnets = {str(ip.subnet) for n in nets for ip in n.ips}
    res = Findings()
    for mode in modes:
        cands = candidates(nets, mode)
        for fam in FAMILIES:
            for table, chain in scanned_chains(mode):
                dump = live.tables.get(fam, {}).get(table)
                if dump is None:
                    continue
                want = cands.get((fam, table, chain), {})
                for idx, args in enumerate(dump.chains.get(chain, []), start=1):
                    sem = semantics(args, fam, table)
                    hit = _match(want.get(sem[0], []), sem[1]) if sem else None
                    if hit is not None:
                        res.deleted.append(OldRule(flavour, fam, table, chain, idx, args,
                                                   hit[0], hit[1], mode))
                    elif sem and mode == "libvirt" and (sem[1] or "").startswith(
                            COMMENT_PREFIX):
                        continue        # vnetfw's own rules (profile libvirt): not "kept"
                    elif (why := _mentions(args, bridges, subnets)) is not None:
                        res.kept.append(KeptRule(flavour, fam, table, chain, args, why))
    return res


# ---------------------------------------------------------------------------------------
# Edits


def plain_jump(args: str) -> str | None:
    """The target of ``-j T`` with no match and no comment (how libvirt writes its jumps)."""
    ref = plain_jump_target(args)
    return ref if ref is not None and tokens(args) == ["-j", ref] else None


@dataclass
class Edits:
    """iptables-restore lines per (family, table), to run *before* the backend's own lines,
    and the snapshot as it will be once they ran (for the backend to diff against)."""

    lines: dict[tuple[Family, str], list[str]] = field(default_factory=dict)
    after: IptLive | None = None
    notes: list[str] = field(default_factory=list)

    def add(self, fam: Family, table: str, line: str) -> None:
        self.lines.setdefault((fam, table), []).append(line)


def _copy(live: IptLive) -> IptLive:
    return IptLive({fam: {t: TableDump(d.text, dict(d.policies),
                                       {c: list(r) for c, r in d.chains.items()})
                          for t, d in tables.items()}
                    for fam, tables in live.tables.items()})


def deletion_edits(live: IptLive, deleted: Iterable[OldRule]) -> Edits:
    """Delete every given rule by its rule spec (``-D CHAIN ARGS``): identical duplicates
    are all in ``deleted``, so it does not matter which copy each ``-D`` takes, and a rule
    that vanished meanwhile makes the restore fail (and roll back) instead of deleting a
    neighbour."""
    ed = Edits(after=_copy(live))
    gone: dict[tuple[Family, str, str], set[int]] = {}
    for d in deleted:
        ed.add(d.family, d.table, f"-D {d.chain} {d.args}")
        gone.setdefault((d.family, d.table, d.chain), set()).add(d.index)
    assert ed.after is not None
    for (fam, table, chain), idxs in gone.items():
        rules = ed.after.tables[fam][table].chains[chain]
        ed.after.tables[fam][table].chains[chain] = [
            r for i, r in enumerate(rules, start=1) if i not in idxs]
    return ed


def libvirt_chains_empty(after: IptLive) -> bool:
    """No rule left in any LIBVIRT_* chain of this flavour, in any family or table."""
    for tables in after.tables.values():
        for dump in tables.values():
            for chain, rules in dump.chains.items():
                if chain.startswith(LIBVIRT_PREFIX + "_") and rules:
                    return False
    return True


def _refs(args: str) -> list[str]:
    """Chains a rule jumps or goes to."""
    tok = tokens(args) or []
    return [tok[i + 1] for i in range(len(tok) - 1) if tok[i] in ("-j", "-g", "--jump", "--goto")]


def drop_libvirt_chains(ed: Edits) -> bool:
    """Append lines that remove libvirt's (now empty) chains and the plain jumps to them
    from the builtin chains. Only if every reference to them is such a plain jump (an
    admin's ``-i eth0 -j LIBVIRT_FWX`` would make ``-X`` fail): else nothing is added, a
    note says why, and False is returned."""
    assert ed.after is not None
    doomed: list[tuple[Family, str, str]] = []
    for fam, tables in ed.after.tables.items():
        for table, dump in tables.items():
            lv = [c for c in dump.chains if c.startswith(LIBVIRT_PREFIX + "_")]
            for chain, rules in dump.chains.items():
                for args in rules:
                    for c in set(_refs(args)) & set(lv):
                        if plain_jump(args) != c or chain not in BUILTINS.get(table, ()):
                            ed.notes.append(
                                f"libvirt's chain {c} (ipv{fam} {table}) is still referenced "
                                f"by '-A {chain} {args}', so libvirt's chains were left in "
                                "place")
                            return False
            doomed += [(fam, table, c) for c in lv]
    for fam, table, c in doomed:
        dump = ed.after.tables[fam][table]
        for chain in BUILTINS.get(table, ()):
            rules = dump.chains.get(chain, [])
            for args in [a for a in rules if plain_jump(a) == c]:
                ed.add(fam, table, f"-D {chain} {args}")
                rules.remove(args)
    for fam, table, c in doomed:
        ed.add(fam, table, f"-X {c}")
        del ed.after.tables[fam][table].chains[c]
        ed.after.tables[fam][table].policies.pop(c, None)
    return bool(doomed)


def foreign_in_libvirt_chains(after: IptLive) -> list[tuple[Family, str, str, str]]:
    """Rules in LIBVIRT_* chains that vnetfw did not write (no ``vnetfw:`` comment)."""
    out = []
    for fam, tables in after.tables.items():
        for table, dump in tables.items():
            for chain, rules in dump.chains.items():
                if not chain.startswith(LIBVIRT_PREFIX + "_"):
                    continue
                for args in rules:
                    sem = semantics(args, fam, table)
                    if sem is None or not (sem[1] or "").startswith(COMMENT_PREFIX):
                        out.append((fam, table, chain, args))
    return out


def libvirt_forward_active(after: IptLive, fam: Family) -> bool:
    dump = after.tables.get(fam, {}).get("filter")
    return dump is not None and any(dump.chains.get(f"{LIBVIRT_PREFIX}_{s}")
                                    for s in ("FWX", "FWI", "FWO"))


def plan_flavour(live: IptLive, flavour: str, networks: Iterable[Network],
                 modes: Iterable[Mode], prefix: str | None,
                 drop_libvirt: bool = False) -> tuple[Findings, Edits]:
    """Everything migrate does in one iptables flavour, as restore lines.

    ``prefix`` is the chain prefix vnetfw is applying *in this same flavour and restore*
    (None when vnetfw's rules go elsewhere: nftables, or the other iptables flavour).
    Raises ``GuardError`` when vnetfw would take libvirt's own chains (profile libvirt)
    while they still hold rules of networks that are not being taken over: vnetfw owns
    every rule in its chains and would delete them.
    """
    nets = list(networks)
    modes = tuple(modes)
    f = find(live, flavour, nets, modes)
    ed = deletion_edits(live, f.deleted)
    assert ed.after is not None
    if prefix == LIBVIRT_PREFIX:
        left = foreign_in_libvirt_chains(ed.after)
        if left:
            fam, table, chain, args = left[0]
            raise GuardError(
                f"{flavour}: profile libvirt puts vnetfw's rules into libvirt's own LIBVIRT_* "
                f"chains, which still hold {len(left)} rule(s) vnetfw would not keep, e.g. "
                f"ipv{fam} {table} '-A {chain} {args}'"
                + ("" if "libvirt" in modes else " (use --adopt to take libvirt's rules for "
                   "these networks over)")
                + ". Take over every libvirt network at once, or use the default profile, "
                  "whose VNETFW_* chains coexist with libvirt's.")
    # (Where vnetfw's FORWARD jumps go next to libvirt's is the backend's job: its
    # changes against ``ed.after`` keep every stage in order across both layouts.)
    if "libvirt" in modes and prefix != LIBVIRT_PREFIX and any(
            c.startswith(LIBVIRT_PREFIX + "_") for t in ed.after.tables.values()
            for d in t.values() for c in d.chains):
        if not libvirt_chains_empty(ed.after):
            ed.notes.append(f"{flavour}: libvirt's LIBVIRT_* chains keep the rules of networks "
                            "that were not taken over")
        elif drop_libvirt:
            if drop_libvirt_chains(ed):
                ed.notes.append(f"{flavour}: libvirt's LIBVIRT_* chains were empty and are "
                                "removed with their jumps")
        else:
            ed.notes.append(
                f"{flavour}: libvirt's LIBVIRT_* chains are now empty and are kept with their "
                "jumps: an empty chain costs one jump and returns, while a running libvirtd "
                "creates its chains only once per daemon start and would fail to start its "
                "next network without them (--drop-libvirt-chains removes them when libvirt "
                "is gone)")
    return f, ed
