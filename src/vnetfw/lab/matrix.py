"""The traffic matrix: every pair the policy speaks about, probed for real and judged.

Contract: ``pairs(lab)`` lists (src host, dst host, family) for: guest -> its own gateway,
guest -> every other guest of its network, guest -> every uplink host, guest -> the first
guest of every other network, every uplink host -> every guest; per family where both ends
have an address of that family (a guest whose address lies in no subnet of the hypervisor
-- a rogue IPv6 guest -- is only a source, or a destination on its own bridge). ``run(lab,
profile, active)`` probes every pair with TCP and UDP at once, compares each with
``policy.expect`` and returns a ``MatrixResult``. The hypervisor's conntrack table is
flushed first, so each run starts from the rules alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Collection

from ..model import Network
from ..plan import Profile
from .policy import GATEWAY, GUEST, UPLINK, Expectation, Host, Policy
from .probe import Observation, new_probe, run_probes
from .topology import Lab

PROTOS = ("tcp", "udp")


@dataclass(frozen=True)
class Row:
    src: str
    dst: str
    family: int
    proto: str
    src_addr: str                   # the source host's own address
    addr: str                       # the destination address probed
    expected: Expectation
    observed: Observation

    @property
    def ok(self) -> bool:
        return not self.observed.anomaly and \
            self.expected.matches(self.observed.reached, self.observed.seen)

    def to_json(self) -> dict[str, Any]:
        return {"src": self.src, "dst": self.dst, "family": f"ipv{self.family}",
                "proto": self.proto, "src_addr": self.src_addr, "addr": self.addr,
                "expected": {"reach": self.expected.reach, "seen": self.expected.seen_text(),
                             "why": self.expected.why},
                "observed": {"reach": self.observed.reached, "seen": self.observed.seen,
                             "detail": self.observed.detail, "anomaly": self.observed.anomaly},
                "ok": self.ok}


@dataclass
class MatrixResult:
    rows: list[Row] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    @property
    def mismatches(self) -> list[Row]:
        return [r for r in self.rows if not r.ok]

    def row(self, src: str, dst: str, family: int, proto: str) -> Row:
        return next(r for r in self.rows if (r.src, r.dst, r.family, r.proto)
                    == (src, dst, family, proto))

    def observed(self) -> dict[tuple[str, str, int, str], tuple[bool, str | None]]:
        """What the kernel did, keyed by pair: for comparing runs with each other."""
        return {(r.src, r.dst, r.family, r.proto): (r.observed.reached, r.observed.seen)
                for r in self.rows}

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "elapsed": round(self.elapsed, 3),
                "mismatches": len(self.mismatches), "rows": [r.to_json() for r in self.rows]}

    def explain(self) -> str:
        """The mismatches, one line each (for assertion messages)."""
        return "\n".join(
            f"{r.src} -> {r.dst} ipv{r.family}/{r.proto} ({r.addr}): expected "
            f"{'yes' if r.expected.reach else 'no'} {r.expected.seen_text()} "
            f"[{r.expected.why}], observed {'yes' if r.observed.reached else 'no'} "
            f"{r.observed.seen or ''} {r.observed.detail} {r.observed.anomaly}".rstrip()
            for r in self.mismatches)


def pairs(lab: Lab) -> list[tuple[Host, Host, int]]:
    pol = Policy(lab.networks, "default")

    def reachable(h: Host, fam: int) -> bool:
        """Has an address the hypervisor routes to (a rogue guest's does not)."""
        a = h.addr(fam)
        return a is not None and (h.role != GUEST or pol.hv_routes_to(a))

    guests = [h for h in lab.hosts if h.role == GUEST]
    gateways = {h.network: h for h in lab.hosts if h.role == GATEWAY}
    uplinks = [h for h in lab.hosts if h.role == UPLINK]
    firsts: dict[str | None, Host] = {}
    for g in guests:
        firsts.setdefault(g.network, g)
    out: list[tuple[Host, Host, int]] = []
    for fam in (4, 6):
        for g in guests:
            if g.addr(fam) is None:
                continue
            peers = [o for o in guests if o.network == g.network and o is not g]
            out += [(g, o, fam) for o in peers if o.addr(fam) is not None]
            far = [gateways[g.network], *uplinks,
                   *(f for n, f in firsts.items() if n != g.network)]
            out += [(g, d, fam) for d in far if reachable(d, fam)]
        for u in uplinks:
            if u.addr(fam) is not None:
                out += [(u, g, fam) for g in guests if reachable(g, fam)]
    return out


def run(lab: Lab, profile: Profile | str, active: Collection[str] | None = None,
        networks: Collection[Network] | None = None) -> MatrixResult:
    """Probe every pair and judge it. ``active``: networks whose rules are loaded (default
    all of the lab's); ``networks``: their definitions if they differ from the lab's."""
    t0 = time.monotonic()
    pol = Policy(networks if networks is not None else lab.networks, profile, active)
    todo = []
    for src, dst, fam in pairs(lab):
        for proto in PROTOS:
            addr = dst.addr(fam)
            probe = new_probe(lab.ns_of[src.name].name, lab.ns_of[dst.name].name, addr, proto)
            todo.append((src, dst, fam, proto, probe))
    lab.flush_conntrack()
    nss = {ns.name: ns for ns in lab.namespaces}
    seen = run_probes(nss, lab.listeners, [t[-1] for t in todo])
    rows = [Row(src.name, dst.name, fam, proto, src.addr(fam) or "", p.addr,
                pol.expect(src, dst, fam, proto), seen[p])
            for src, dst, fam, proto, p in todo]
    return MatrixResult(rows, time.monotonic() - t0)
