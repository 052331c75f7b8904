#!/usr/bin/env python3
"""Regenerate the planner golden files in tests/fixtures/golden/.

A golden file is the exact text the iptables backend renders for one input, one profile and
one family (what ``iptables-restore --noflush`` / ``ip6tables-restore --noflush`` would load
on an empty ruleset): ``golden/<profile>/<case>.v4`` and ``.v6``.

Inputs: every ``tests/fixtures/libvirt/*.xml`` (case = file stem) and every
``tests/fixtures/golden/inputs/*.toml`` (several networks at once).

    .venv/bin/python tests/tools/regen_golden.py          # rewrite; prints what changed
    .venv/bin/python tests/tools/regen_golden.py --check  # exit 1 if anything would change

After a rewrite, REVIEW `git diff tests/fixtures/golden` before committing: a golden file is
an expected output a human agreed with, not whatever the code printed last.
tests/unit/test_plan.py imports this module, so the test and the script never disagree on
what a golden file holds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vnetfw.backends.iptables import IptablesBackend
from vnetfw.backends.runner import Runner
from vnetfw.plan import PROFILES, plan
from vnetfw.sources import load_paths

TESTS = Path(__file__).resolve().parents[1]
LIBVIRT = TESTS / "fixtures" / "libvirt"
GOLDEN = TESTS / "fixtures" / "golden"
INPUTS = GOLDEN / "inputs"
PROFILE_NAMES = ("default", "libvirt")
FAMILIES = (4, 6)


def cases() -> dict[str, Path]:
    """Case name -> input file (a libvirt XML or a TOML file of several networks)."""
    out = {p.stem: p for p in sorted(LIBVIRT.glob("*.xml"))}
    for p in sorted(INPUTS.glob("*.toml")):
        assert p.stem not in out, f"golden input {p} clashes with a libvirt case"
        out[p.stem] = p
    return out


def golden_path(case: str, profile: str, family: int) -> Path:
    return GOLDEN / profile / f"{case}.v{family}"


def render(path: Path, profile: str, family: int) -> str:
    """What the golden file for (path, profile, family) must hold. Pure: renders only."""
    ruleset = plan(load_paths([path]), PROFILES[profile])
    return IptablesBackend(Runner()).render(ruleset, family)


def expected() -> dict[Path, str]:
    return {golden_path(case, profile, fam): render(path, profile, fam)
            for case, path in cases().items() for profile in PROFILE_NAMES for fam in FAMILIES}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 on any difference")
    args = ap.parse_args(argv)
    want = expected()
    have = {p for profile in PROFILE_NAMES for p in (GOLDEN / profile).glob("*.v[46]")}
    changed = [p for p, text in want.items() if not p.exists() or p.read_text() != text]
    stale = sorted(have - set(want))
    for p in changed:
        print(f"{'update' if p.exists() else 'create'} {p.relative_to(TESTS.parent)}")
    for p in stale:
        print(f"delete {p.relative_to(TESTS.parent)}")
    if args.check:
        return 1 if changed or stale else 0
    for p in changed:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(want[p])
    for p in stale:
        p.unlink()
    print(f"{len(want)} golden files, {len(changed)} written, {len(stale)} deleted"
          + ("; review: git diff tests/fixtures/golden" if changed or stale else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
