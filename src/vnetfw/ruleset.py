"""The backend-neutral ruleset: what the planner produces and what backends read back.

A ``Ruleset`` is the whole of vnetfw's firewall for one profile: the chain layout (a prefix,
the private chains and the builtin chains that jump to them) and, per private chain, its
ordered rules. Backends render it (iptables-restore text, nft script) and parse the live
system back into the same type, so ``live == desired`` is plain equality and diffing is
comparing lists.

Invariants the planner guarantees and the nftables backend relies on for constant-time
dispatch: every rule names its owning ``network``; in ``FWX``, ``FWO`` and ``INP`` every rule
matches ``iif == bridge``; in ``FWI``, ``OUT`` and mangle ``PRT`` every rule matches
``oif == bridge`` (never negated); nat ``PRT`` rules all match ``src`` = one of the network's subnets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Literal, NamedTuple

Family = Literal[4, 6]
FAMILIES: tuple[Family, Family] = (4, 6)


@dataclass(frozen=True, slots=True)
class ChainSpec:
    """A private chain: its table, its suffix (``<P>_<suffix>``) and the builtin chain
    that jumps to it."""

    table: str
    suffix: str
    builtin: str


# Evaluation order matters: the FORWARD jumps must stand FWX, FWI, FWO. Every network's
# incoming rules (FWI) are evaluated before any network's outgoing accept (FWO), so no
# network's "allow out" can let a packet into another network.
LAYOUT: tuple[ChainSpec, ...] = (
    ChainSpec("filter", "INP", "INPUT"),
    ChainSpec("filter", "OUT", "OUTPUT"),
    ChainSpec("filter", "FWX", "FORWARD"),
    ChainSpec("filter", "FWI", "FORWARD"),
    ChainSpec("filter", "FWO", "FORWARD"),
    ChainSpec("nat", "PRT", "POSTROUTING"),
    ChainSpec("mangle", "PRT", "POSTROUTING"),
)
TABLES: tuple[str, ...] = ("filter", "nat", "mangle")
# Port forwards and allows (docs/port-forwards.md): rules the nftables backend keeps as
# elements of shared maps and sets, not in per-network chains.
# - nat DNAT: a forward's translation, evaluated at prerouting and (for the host's own
#   connections) at nat output;
# - filter ALW: an allow's new connections and its replies, evaluated before FWX (so an
#   isolated network's allow gets past its own rejects, and nothing else does);
# - filter FWD: connections a forward translated, accepted after FWX (an isolated
#   network's guests never reach a forward) and before FWI (the target network's rejects).
FEATURE_CHAINS: tuple[ChainSpec, ...] = (
    ChainSpec("nat", "DNAT", "PREROUTING"),
    ChainSpec("filter", "ALW", "FORWARD"),
    ChainSpec("filter", "FWD", "FORWARD"),
)
FEATURE_KEYS = frozenset((c.table, c.suffix) for c in FEATURE_CHAINS)
_CHAIN_INDEX = {(c.table, c.suffix): i for i, c in enumerate(LAYOUT + FEATURE_CHAINS)}


def chains_of(table: str) -> tuple[ChainSpec, ...]:
    return tuple(c for c in LAYOUT if c.table == table)


# Verdicts a rule can carry.
ACCEPT, REJECT, RETURN = "ACCEPT", "REJECT", "RETURN"
MASQUERADE, SNAT, CHECKSUM, DNAT = "MASQUERADE", "SNAT", "CHECKSUM", "DNAT"
VERDICTS = frozenset({ACCEPT, REJECT, RETURN, MASQUERADE, SNAT, CHECKSUM, DNAT})
CT_REPLY = ("RELATED", "ESTABLISHED")


@dataclass(frozen=True, slots=True)
class Foreign:
    """A rule (or nft map element) in vnetfw's chains or table that vnetfw did not write, or
    cannot read: a backend's readback keeps its text, and a diff reports and replaces it."""

    text: str

    def describe(self) -> str:
        return f"'{self.text}' (not written by vnetfw)"


class Rule(NamedTuple):
    """One rule in one private chain.

    Addresses are canonical CIDR strings (``192.168.122.0/24``, ``ff02::/16``); ``dst_neg``
    negates ``dst``, ``oif_neg`` negates ``oif``. ``to_ports`` is the MASQUERADE/SNAT port
    range, ``to_source`` the SNAT address range text (``a.b.c.d`` or ``a.b.c.d-e.f.g.h``).

    A NamedTuple rather than a frozen dataclass: just as immutable and comparable, and
    about five times cheaper to build (a host with 1,000 networks plans 25,000 rules).
    """

    family: Family
    table: str
    chain: str                    # suffix: INP OUT FWX FWI FWO PRT
    network: str
    verdict: str
    iif: str | None = None
    oif: str | None = None
    oif_neg: bool = False
    src: str | None = None
    dst: str | None = None
    dst_neg: bool = False
    proto: str | None = None
    dport: int | None = None
    ctstate: tuple[str, ...] = ()
    to_ports: tuple[int, int] | None = None
    to_source: str | None = None
    dport_end: int | None = None
    ctstatus: str | None = None
    ctdir: str | None = None
    to_addr: str | None = None
    to_port: int | None = None

    @property
    def feature(self) -> bool:
        """A port forward's or allow's rule (``FEATURE_CHAINS``)."""
        return (self.table, self.chain) in FEATURE_KEYS

    @property
    def optional(self) -> bool:
        """Failing to load it is not fatal: the CHECKSUM fix-up, not supported everywhere."""
        return self.verdict == CHECKSUM

    @property
    def key(self) -> tuple[Family, str, str]:
        return (self.family, self.table, self.chain)

    def describe(self) -> str:
        """A short human form, backend-independent, for diffs and explanations."""
        parts = []
        if self.iif:
            parts.append(f"in {self.iif}")
        if self.oif:
            parts.append(f"out {'not ' if self.oif_neg else ''}{self.oif}")
        if self.src:
            parts.append(f"from {self.src}")
        if self.dst:
            parts.append(f"to {'not ' if self.dst_neg else ''}{self.dst}")
        if self.proto:
            ports = "" if not self.dport else f"/{self.dport}" + (
                f"-{self.dport_end}" if self.dport_end is not None else "")
            parts.append(self.proto + ports)
        if self.ctstate:
            parts.append("state " + ",".join(self.ctstate).lower())
        if self.ctdir:
            parts.append(f"direction {self.ctdir.lower()}")
        if self.ctstatus:
            parts.append(f"status {self.ctstatus.lower()}")
        v = self.verdict.lower()
        if self.to_addr:
            to = f"[{self.to_addr}]" if ":" in self.to_addr else self.to_addr
            v += f" to {to}:{self.to_port}"
        if self.to_source:
            v += f" to {self.to_source}"
        if self.to_ports:
            v += f" ports {self.to_ports[0]}-{self.to_ports[1]}"
        return f"{' '.join(parts) or 'any'} -> {v}"


@dataclass(frozen=True)
class Ruleset:
    """vnetfw's whole firewall for one chain prefix, both families.

    ``rules`` is ordered; the order of rules sharing a ``key`` is their evaluation order.
    ``families`` are the families the layout is set up for (normally both).
    """

    prefix: str
    rules: tuple[Rule, ...] = ()
    families: tuple[Family, ...] = FAMILIES

    @classmethod
    def canonical(cls, prefix: str, rules: Iterable[Rule],
                  families: tuple[Family, ...] = FAMILIES) -> "Ruleset":
        """Build a ruleset with rules in canonical order: by family, then by layout chain;
        each chain keeps the order its rules were given in (a bucket sort: linear), except
        the forwards' and allows' (``FEATURE_CHAINS``), which are sorted."""
        buckets: dict[tuple[int, int], list[Rule]] = {}
        for r in rules:
            k = (r.family, _CHAIN_INDEX[r.table, r.chain])
            if (b := buckets.get(k)) is None:
                buckets[k] = b = []
            b.append(r)
        for k, b in buckets.items():
            if (LAYOUT + FEATURE_CHAINS)[k[1]] in FEATURE_CHAINS:
                # Forwards and allows do not depend on each other's order (their matches
                # never overlap): sorted, so a set's elements read back compare equal.
                b.sort(key=lambda r: (r.network, repr(r)))
        return cls(prefix, tuple(r for k in sorted(buckets) for r in buckets[k]), families)

    def chain_name(self, suffix: str) -> str:
        return f"{self.prefix}_{suffix}"

    def chain(self, family: Family, table: str, suffix: str) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.key == (family, table, suffix))

    def by_chain(self) -> dict[tuple[Family, str, str], list[Rule]]:
        """Every layout chain (even empty ones) -> its rules in order."""
        out: dict[tuple[Family, str, str], list[Rule]] = {
            (f, c.table, c.suffix): [] for f in self.families for c in LAYOUT}
        for r in self.rules:
            out.setdefault(r.key, []).append(r)     # feature chains: only when used
        return out

    def networks(self) -> list[str]:
        return sorted({r.network for r in self.rules})

    def by_network(self) -> list[tuple[str, list[Rule]]]:
        """Each network's rules, networks by name, rules in ruleset order: the shape
        ``plan_networks`` yields and ``Backend.load_fresh`` takes."""
        nets: dict[str, list[Rule]] = {}
        for r in self.rules:
            if (g := nets.get(r.network)) is None:
                nets[r.network] = g = []
            g.append(r)
        return sorted(nets.items())

    def of_network(self, name: str) -> Iterator[Rule]:
        return (r for r in self.rules if r.network == name)
