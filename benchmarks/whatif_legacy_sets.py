"""What if iptables-legacy kept vnetfw's per-network matches in ipsets? (Not part of a run.)

``python -m benchmarks.whatif_legacy_sets [--reps 9]``

x_tables replace a whole table on every change, so on iptables-legacy adding one network
costs what the table holds: raw +1 grows ~9x from 10 to 1,000 networks, and the issue's
"add one at 1,000 <= 2x add one at 10" cannot hold. The one way out on x_tables is to keep
the per-network matches out of the tables, in ipsets, whose elements change one by one.
This measures how far that goes, in throwaway namespaces:

1. Per-bridge matches ("on bridge BR, from any address": DHCP's requests come from 0.0.0.0)
   need ``hash:net,iface`` entries (0.0.0.0/0, BR), the only ipset type that names an
   interface. It hashes the net part only, so all of them share one bucket, and a bucket
   holds at most 64 entries: the 65th bridge is refused ("Hash is full"). Checked here.
2. So only the rules bound to a network's subnet can move into sets (FWX's RETURN, FWI's
   and FWO's ACCEPTs, the five nat rules: ``hash:net,iface`` of (subnet, bridge) and
   ``hash:net`` of subnets, both fine at 1,000); the per-bridge rules stay rules. Raw +1 (the
   restores and, for the hybrid, the ``ipset restore`` that adds its elements) is timed for
   the layout as vnetfw writes it and for that hybrid, at 10 and at 1,000 NAT networks.

The hybrid here has the real rule counts and shapes but not a working order (the set rules
are appended to each table); it measures cost, not policy. Results of 2026-11-28 are in
``benchmarks/README.md`` (C8).
"""

from __future__ import annotations

import argparse
import statistics
import time

from vnetfw.backends.iptables import IptablesBackend
from vnetfw.backends.runner import CommandFailed, Runner
from vnetfw.lab.netns import cleanup_on_signals
from vnetfw.plan import PROFILES, plan

from .netdefs import load, xml_for
from .ns import new_netns

RESTORE = {4: "iptables-legacy-restore", 6: "ip6tables-legacy-restore"}
EXTRA = 60000 - 7       # the added network's index: no other network has it
SETS = ["create vnf4_nat hash:net,iface family inet hashsize 4096 maxelem 1000000",
        "create vnf4_src hash:net family inet hashsize 4096 maxelem 1000000"]
SET_RULES = {
    "filter": ["-A VNETFW_FWX -m set --match-set vnf4_nat src,src -j RETURN",
               "-A VNETFW_FWI -m set --match-set vnf4_nat dst,dst -m conntrack --ctstate "
               "RELATED,ESTABLISHED -j ACCEPT",
               "-A VNETFW_FWO -m set --match-set vnf4_nat src,src -j ACCEPT"],
    "nat": ["-A VNETFW_PRT -m set --match-set vnf4_src src -d 224.0.0.0/24 -j RETURN",
            "-A VNETFW_PRT -m set --match-set vnf4_src src -d 255.255.255.255/32 -j RETURN",
            "-A VNETFW_PRT -m set --match-set vnf4_nat src,dst -j RETURN",
            "-A VNETFW_PRT -m set --match-set vnf4_src src -p tcp -j MASQUERADE "
            "--to-ports 1024-65535",
            "-A VNETFW_PRT -m set --match-set vnf4_src src -p udp -j MASQUERADE "
            "--to-ports 1024-65535",
            "-A VNETFW_PRT -m set --match-set vnf4_src src -j MASQUERADE"]}


def _render(indices) -> dict[int, str]:
    nets = load({f"n{i:05d}": xml_for(i) for i in indices})
    b = IptablesBackend(Runner(), "iptables-legacy")
    rs = plan(nets, PROFILES["default"])
    return {fam: b.render(rs, fam) for fam in (4, 6)}


def _subnet_bound(line: str) -> bool:
    return " -s 10." in line or " -d 10." in line


def _hybrid(text: str) -> str:
    """The same script without its subnet-bound rules, with the set rules per table."""
    out: list[str] = []
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:]
        if _subnet_bound(line):
            continue
        if line == "COMMIT":
            out += SET_RULES.get(table, [])
        out.append(line)
    return "\n".join(out) + "\n"


def _elements(i: int) -> list[str]:
    a, b = divmod(i, 256)
    return [f"add vnf4_nat 10.{a}.{b}.0/24,vb{i:05d}", f"add vnf4_src 10.{a}.{b}.0/24"]


def _appends(text: str, hybrid: bool) -> str:
    """One network's rules as appends to chains that exist (no declarations, no jumps)."""
    return "\n".join(ln for ln in text.splitlines()
                     if not ln.startswith((":", "-I", "#"))
                     and not (hybrid and _subnet_bound(ln))) + "\n"


def add_one(n: int, reps: int, hybrid: bool) -> tuple[float, int]:
    """(median ms of the raw +1 at ``n`` networks, rules in the tables at ``n``)."""
    full, one = _render(range(n)), _render([EXTRA])
    with new_netns("whatif") as ns:
        r = Runner(netns=ns.name)
        if hybrid:
            r.run(["ipset", "restore"],
                  stdin="\n".join(SETS + [e for i in range(n) for e in _elements(i)]) + "\n")
            full = {fam: _hybrid(text) if fam == 4 else text for fam, text in full.items()}
        for fam in (4, 6):
            r.run([RESTORE[fam], "-w"], stdin=full[fam])
        add = {fam: _appends(one[fam], hybrid and fam == 4) for fam in (4, 6)}
        elements = "\n".join(_elements(EXTRA)) + "\n"
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            if hybrid:
                r.run(["ipset", "restore"], stdin=elements)
            for fam in (4, 6):
                r.run([RESTORE[fam], "-w", "--noflush"], stdin=add[fam])
            times.append((time.perf_counter() - t0) * 1000)
            for fam in (4, 6):          # back to n networks for the next repetition
                r.run([RESTORE[fam], "-w", "--noflush"], stdin=add[fam].replace("-A ", "-D "))
            if hybrid:
                r.run(["ipset", "restore"], stdin=elements.replace("add ", "del "))
        rules = sum(ln.startswith("-A ") for text in full.values() for ln in text.splitlines())
        return statistics.median(times), rules


def bridges_per_set(limit: int = 1000) -> tuple[int, str]:
    """How many bridges one ``hash:net,iface`` set takes as (0.0.0.0/0, BR), and why no more."""
    with new_netns("whatif") as ns:
        r = Runner(netns=ns.name)
        r.run(["ipset", "create", "t", "hash:net,iface", "maxelem", "1000000"])
        for k in range(1, limit + 1):
            try:
                r.run(["ipset", "add", "t", f"0.0.0.0/0,vb{k}"])
            except CommandFailed as e:
                return k - 1, str(e)
    return limit, ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.whatif_legacy_sets",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--sizes", default="10,1000")
    a = ap.parse_args(argv)
    small, large = (int(x) for x in a.sizes.split(","))
    with cleanup_on_signals():
        n, why = bridges_per_set()
        print(f"hash:net,iface with (0.0.0.0/0, bridge): {n} bridges"
              + (f", then {why}" if why else ""))
        for name, hybrid in (("as vnetfw writes it", False), ("hybrid with ipsets", True)):
            (t_small, _), (t_large, rules) = (add_one(small, a.reps, hybrid),
                                              add_one(large, a.reps, hybrid))
            print(f"{name:20s} rules at {large:,}: {rules:6,}  raw +1 at {small}: "
                  f"{t_small:6.1f} ms, at {large:,}: {t_large:6.1f} ms ({t_large / t_small:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
