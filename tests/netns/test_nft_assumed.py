"""nftables: computing a change from vnetfw's last commit instead of reading the firewall.

``assumed_live(old)`` must be exactly what ``read()`` returns after ``old`` was committed,
as far as any change computation can tell: both give the same script for every next step,
and so must ``assumed_live`` of only the networks that change, against their new rules
(what the engine does). The engine only uses it while the nf_tables generation proves
nothing changed since (tests/netns/test_engine.py shows it reads nothing then).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from vnetfw.backends.nftables import NftablesBackend
from vnetfw.backends.runner import Runner
from vnetfw.plan import PROFILES, allowing, plan, plan_some
from vnetfw.sources import load_paths

pytestmark = pytest.mark.netns

MIXED = list(load_paths([Path(__file__).resolve().parent.parent / "fixtures" / "nft" /
                         "mixed.toml"]))


def steps():
    rest = MIXED[1:]
    changed = replace(rest[0], nat=replace(rest[0].nat, port_start=2000, port_end=3000))
    return {
        "nothing": rest,
        "add one": MIXED,
        "remove one": rest[1:],
        "change one": [changed] + rest[1:],
        "remove all": [],
    }


@pytest.mark.parametrize("profile", ["default", "libvirt"])
@pytest.mark.parametrize("step", list(steps()))
def test_assumed_live_gives_the_same_change_as_a_readback(netns, profile, step):
    b = NftablesBackend(Runner(netns))
    old = plan(MIXED[1:], PROFILES[profile])
    live = b.read()
    b.commit(live, b.changes(live, old, "full"))
    new = plan(steps()[step], PROFILES[profile])
    real = b.changes(b.read(), new, "full")
    assumed = b.changes(b.assumed_live(old), new, "full")
    def lines(script):      # map elements may be listed in another order: commas move
        return sorted(l.rstrip(",") for l in script.splitlines())
    assert lines(real.payload) == lines(assumed.payload)
    assert sorted(map(str, real.items)) == sorted(map(str, assumed.items))
    assert b.live_ruleset(b.assumed_live(old), old.prefix) == b.effective(old)
    # What the engine does: only the networks that differ, as committed and as wanted.
    before = {n.name: n for n in MIXED[1:]}
    after = {n.name: n for n in steps()[step]}
    names = {n for n in before.keys() | after.keys() if before.get(n) != after.get(n)}
    names |= allowing(names, before, after)     # their allows' rules change with them
    part = b.changes(b.assumed_live(plan_some(names, before, PROFILES[profile])),
                     plan_some(names, after, PROFILES[profile]), "full")
    assert lines(real.payload) == lines(part.payload)
    assert sorted(map(str, real.items)) == sorted(map(str, part.items))
