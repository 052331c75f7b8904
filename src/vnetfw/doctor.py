"""``vnetfw doctor``: what on this host (or in ``--netns``) will break virtual networks.

Contract: ``doctor(netns, state_dir, networks)`` gathers read-only facts
(``doctor_facts``), runs the pure checks (``doctor_checks``) and returns a ``DoctorReport``;
``run_doctor(args)`` is the CLI entry: human text (one block per finding: what, why, fix)
or ``--json``, exit status 0 when nothing will break (notes allowed), 1 when at least one
problem was found. doctor never modifies anything: no rule, sysctl, state file or lock.

The networks checked are the ones given as PATHs, else the active networks of vnetfw's
state for that namespace; the backend and chain prefix in use come from the state.
"""

from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .doctor_checks import Finding, run_checks
from .doctor_facts import Facts, gather
from .model import Network


@dataclass
class DoctorReport:
    facts: Facts
    findings: list[Finding] = field(default_factory=list)

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "problem"]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        f = self.facts
        return {"ok": self.ok, "problems": len(self.problems),
                "notes": len(self.findings) - len(self.problems),
                "netns": f.netns, "backend": f.backend, "prefix": f.prefix,
                "networks": [n.name for n in f.networks], "networks_from": f.networks_from,
                "findings": [x.to_json() for x in self.findings],
                "not_checked": f.not_checked}


def doctor(netns: str | None = None, state_dir: str | Path | None = None,
           networks: list[Network] | None = None) -> DoctorReport:
    facts = gather(netns, state_dir, networks)
    return DoctorReport(facts, run_checks(facts))


def _block(label: str, text: str) -> str:
    return textwrap.fill(text, width=96, initial_indent=f"  {label:<6}",
                         subsequent_indent=" " * 8, break_on_hyphens=False,
                         break_long_words=False)


def print_human(rep: DoctorReport, out=None) -> None:
    out = out if out is not None else sys.stdout
    f = rep.facts
    where = f"namespace {f.netns}" if f.netns else "this host"
    nets = ", ".join(n.name for n in f.networks) or "none"
    print(f"vnetfw doctor: {where}; networks checked ({f.networks_from}): {nets}", file=out)
    if not rep.findings:
        # Never "all is well" about what could not be read: say how much that was.
        print("nothing found that would break the virtual networks" if not f.not_checked
              else f"nothing found that would break the virtual networks in what was "
                   f"checked; {len(f.not_checked)} thing(s) could not be checked (below)",
              file=out)
    for x in rep.findings:
        print(file=out)
        print(("PROBLEM: " if x.severity == "problem" else "note: ") + x.what.split("\n")[0],
              file=out)
        print(_block("why", x.why), file=out)
        print(_block("fix", x.fix), file=out)
        for d in x.details:
            print(f"        | {d}", file=out)
    if f.not_checked:
        print(file=out)
        print("not checked:", file=out)
        for n in f.not_checked:
            print(f"  - {n}", file=out)
    print(file=out)
    n = len(rep.problems)
    unchecked = f", {len(f.not_checked)} not checked" if f.not_checked else ""
    print(f"{n} problem(s), {len(rep.findings) - n} note(s){unchecked}", file=out)


def run_doctor(a) -> int:
    nets = None
    if getattr(a, "paths", None):
        from .sources import load_paths
        nets = list(load_paths(a.paths))
    rep = doctor(a.netns, a.state_dir, nets)
    from . import output
    if a.json:
        output.emit_json(output.document("doctor", **rep.to_json()))
    else:
        output.guarded(lambda: print_human(rep))
    return 0 if rep.ok else 1
