"""nftables: computing a change from vnetfw's last commit instead of reading the firewall.

``assumed_live(old)`` must be exactly what ``read()`` returns after ``old`` was committed,
as far as any change computation can tell: both give the same script for every next step.
The engine only uses it while the nf_tables generation proves nothing changed since.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tests.conftest import nsrun
from tests.netns.test_engine import engine
from vnetfw.backends.nftables import NftablesBackend
from vnetfw.backends.runner import Runner
from vnetfw.plan import PROFILES, plan
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


def test_engine_adds_a_network_without_reading_when_untouched(make_netns, tmp_path,
                                                               monkeypatch):
    ns, ref = make_netns("a"), make_netns("ref")
    eng = engine(ns, "nftables", tmp_path / "a")
    eng.apply(MIXED[1:])
    reads = []
    real_read = NftablesBackend.read
    monkeypatch.setattr(NftablesBackend, "read",
                        lambda self: (self.runner.netns == ns and reads.append(1))
                        or real_read(self))
    rep = eng.apply(MIXED[:1])
    assert rep.changed and reads == [], "read the firewall although nothing had changed"
    assert eng.store.load().generation is not None, "the commit was not verified"
    engine(ref, "nftables", tmp_path / "b").apply(MIXED)
    assert sorted(nsrun(ns, "nft", "list", "ruleset").splitlines()) == \
        sorted(nsrun(ref, "nft", "list", "ruleset").splitlines())
    # someone else's change: the next one reads again
    nsrun(ns, "nft", "add", "table", "inet", "other")
    eng.remove([MIXED[0].name])
    assert reads == [1]
