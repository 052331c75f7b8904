"""The engine's decisions, against fakes (tests/fakes.py): which path a command takes, and
what the firewall holds after it. The same behaviour on the real kernel is tested in
tests/netns; these run in milliseconds and reach branches a kernel rarely shows."""

from __future__ import annotations

import pytest

from tests.fakes import FakeFirewall, fake_engine
from vnetfw.errors import BackendError, DefinitionError, RollbackIncomplete
from vnetfw.plan import PROFILES, plan
from vnetfw.sources.toml import parse_toml


def nets(*idx: int):
    """NAT networks with DHCP (one optional CHECKSUM rule each) and IPv6."""
    return parse_toml("".join(f"""
[[network]]
name = "n{i}"
bridge = "vbr-n{i}"
mode = "nat"
nat = {{ ipv6 = true }}
ip = [{{ address = "10.30.{i}.1", prefix = 24, dhcp = true }},
      {{ address = "fd00:30:{i}::1", prefix = 64 }}]
""" for i in idx), "nets.toml")


def want(*idx: int, optional: bool = True) -> set:
    return {r for r in plan(nets(*idx), PROFILES["default"]).rules if optional or not r.optional}


@pytest.fixture
def fw() -> FakeFirewall:
    return FakeFirewall()


def test_first_apply_loads_the_vacant_firewall_while_planning(fw, tmp_path, monkeypatch):
    eng = fake_engine(tmp_path, fw, monkeypatch=monkeypatch)
    rep = eng.apply(nets(1, 2))
    b = fw.backend("fake")
    assert b.calls == ["read", "load_fresh"]
    assert fw.rules("fake") == want(1, 2) and rep.changed
    assert eng.store.load().generation is not None


def test_unchanged_reapply_reads_nothing_and_commits_nothing(fw, tmp_path, monkeypatch):
    fake_engine(tmp_path, fw, monkeypatch=monkeypatch).apply(nets(1, 2))
    b = fw.backend("fake")
    b.calls.clear()
    rep = fake_engine(tmp_path, fw, monkeypatch=monkeypatch).apply(nets(1, 2))
    assert b.calls == [] and not rep.changed


def test_adding_one_commits_from_the_last_commit_without_a_readback(fw, tmp_path,
                                                                    monkeypatch):
    fake_engine(tmp_path, fw, monkeypatch=monkeypatch).apply(nets(1, 2))
    b = fw.backend("fake")
    b.calls.clear()
    rep = fake_engine(tmp_path, fw, monkeypatch=monkeypatch).apply(nets(3))
    assert b.calls == ["assumed_live", "commit"]
    assert fw.rules("fake") == want(1, 2, 3)
    assert {c.network for c in rep.changes} == {"n3"}


def test_a_moved_generation_means_a_readback(fw, tmp_path, monkeypatch):
    fake_engine(tmp_path, fw, monkeypatch=monkeypatch).apply(nets(1))
    fw.touch()                                  # someone else committed meanwhile
    b = fw.backend("fake")
    b.calls.clear()
    fake_engine(tmp_path, fw, monkeypatch=monkeypatch).apply(nets(2))
    assert b.calls == ["read", "commit"] and fw.rules("fake") == want(1, 2)


# -- the optional-rule retry -------------------------------------------------------------

def test_a_refusal_of_the_moment_is_a_failed_change_that_keeps_every_rule(
        fw, tmp_path, monkeypatch):
    """Both paths of an add refused for a reason that is not the optional target's: the
    command fails, nothing changes, and no CHECKSUM rule is dropped (before the fix: the
    engine committed again without optional rules, deleting every network's)."""
    fake_engine(tmp_path, fw, monkeypatch=monkeypatch).apply(nets(1, 2, 3))
    before, state = fw.dump(), (tmp_path / "state" / "state.json").read_bytes()
    fw.refuse = ["transient failure", "transient failure"]
    with pytest.raises(BackendError, match="transient failure"):
        fake_engine(tmp_path, fw, monkeypatch=monkeypatch).apply(nets(4))
    assert fw.dump() == before and fw.refuse == []
    assert (tmp_path / "state" / "state.json").read_bytes() == state
    assert "lacks_optional" in fw.backend("fake").calls       # asked, and it said no
    assert fake_engine(tmp_path, fw, monkeypatch=monkeypatch).check() == []


def test_one_refusal_is_met_by_the_readback_path_with_every_rule(fw, tmp_path,
                                                                 monkeypatch):
    fake_engine(tmp_path, fw, monkeypatch=monkeypatch).apply(nets(1, 2))
    fw.refuse = ["transient failure"]
    rep = fake_engine(tmp_path, fw, monkeypatch=monkeypatch).apply(nets(3))
    assert rep.warnings == [] and fw.rules("fake") == want(1, 2, 3)


def test_a_kernel_without_the_target_gets_every_other_rule_with_a_warning(
        fw, tmp_path, monkeypatch):
    fw.lacks = "Warning: Extension CHECKSUM revision 0 not supported"
    rep = fake_engine(tmp_path, fw, monkeypatch=monkeypatch).apply(nets(1, 2))
    assert fw.rules("fake") == want(1, 2, optional=False)
    assert rep.warnings == ["optional rules (CHECKSUM fix-up) left out: " + fw.lacks]
    eng = fake_engine(tmp_path, fw, monkeypatch=monkeypatch)
    assert eng.store.load().generation is None
    # what the kernel cannot hold is no drift (before: every CHECKSUM rule, forever)
    assert eng.check() == [] and eng.status()["in_sync"]


def test_a_missing_optional_rule_is_drift_where_the_kernel_has_the_target(
        fw, tmp_path, monkeypatch):
    fake_engine(tmp_path, fw, monkeypatch=monkeypatch).apply(nets(1))
    fw.tables["fake"]["VNETFW"] -= {r for r in want(1) if r.optional}   # someone deletes it
    fw.touch()
    drift = fake_engine(tmp_path, fw, monkeypatch=monkeypatch).check()
    assert [(c.what, c.rule.optional) for c in drift] == [("add", True)]


def test_optional_rules_that_are_live_stay_when_the_target_goes_missing(
        fw, tmp_path, monkeypatch):
    """Evidence that the target is missing never costs a rule that is live and working."""
    fake_engine(tmp_path, fw, monkeypatch=monkeypatch).apply(nets(1, 2))
    fw.lacks = "Extension CHECKSUM is not supported"
    fake_engine(tmp_path, fw, monkeypatch=monkeypatch).apply(nets(3))
    assert fw.rules("fake") == want(1, 2) | want(3, optional=False)


def test_a_backend_without_optional_rules_never_retries(fw, tmp_path, monkeypatch):
    """nftables implements no optional rule: a refusal stands, nothing is asked."""
    fw.backend("nft", optional=False, shares_chains=False)
    fw.refuse = ["refused"]
    with pytest.raises(BackendError, match="refused"):
        fake_engine(tmp_path, fw, backend="nft", monkeypatch=monkeypatch).apply(nets(1))
    assert fw.dump() == "" and "lacks_optional" not in fw.backend("nft").calls


def test_a_refused_vacant_load_goes_once_more_the_ordinary_way_where_chains_are_shared(
        fw, tmp_path, monkeypatch):
    fw.backend("ipt", shares_chains=True)
    fw.refuse = ["a writer in the way"]
    rep = fake_engine(tmp_path, fw, backend="ipt", monkeypatch=monkeypatch).apply(nets(1))
    assert fw.backend("ipt").calls == ["read", "load_fresh", "read", "commit"]
    assert rep.warnings == [] and fw.rules("ipt") == want(1)


def test_a_refused_vacant_load_stands_where_nothing_is_shared(fw, tmp_path, monkeypatch):
    fw.backend("nft", optional=False)
    fw.refuse = ["no"]
    with pytest.raises(BackendError, match="no"):
        fake_engine(tmp_path, fw, backend="nft", monkeypatch=monkeypatch).apply(nets(1))
    assert fw.backend("nft").calls == ["read", "load_fresh"] and fw.dump() == ""


def test_an_incomplete_rollback_is_never_retried(fw, tmp_path, monkeypatch):
    fake_engine(tmp_path, fw, monkeypatch=monkeypatch).apply(nets(1))
    fw.refuse, fw.undo_fails = ["boom"], True
    b = fw.backend("fake")
    b.calls.clear()
    with pytest.raises(RollbackIncomplete):
        fake_engine(tmp_path, fw, monkeypatch=monkeypatch).apply(nets(2))
    assert b.calls == ["assumed_live", "commit"]


def test_a_bad_definition_met_half_way_loads_nothing(fw, tmp_path, monkeypatch):
    def source():
        yield from nets(1)
        raise DefinitionError("b.toml", "bad")
    with pytest.raises(DefinitionError):
        fake_engine(tmp_path, fw, monkeypatch=monkeypatch).apply(source())
    assert fw.dump() == "" and fake_engine(tmp_path, fw, monkeypatch=monkeypatch) \
        .list_networks() == []


# -- backend switch, teardown, hooks -----------------------------------------------------

def test_naming_another_backend_moves_the_networks_new_rules_first(fw, tmp_path,
                                                                    monkeypatch):
    fake_engine(tmp_path, fw, backend="a", monkeypatch=monkeypatch).apply(nets(1, 2))
    order = []
    for name in ("a", "b"):
        real = fw.backend(name)._land
        fw.backend(name)._land = lambda d, real=real, name=name: (order.append(name),
                                                                  real(d))[1]
    rep = fake_engine(tmp_path, fw, backend="b", monkeypatch=monkeypatch).apply(nets(3))
    assert order == ["b", "a"]                          # the new rules before the old go
    assert fw.rules("b") == want(1, 2, 3) and "a" not in fw.dump().split()
    assert rep.backend == "b"
    again = fake_engine(tmp_path, fw, backend="auto", monkeypatch=monkeypatch)
    assert again.backend_for(again.store.load()).name == "b"


def test_teardown_removes_everything_and_forgets(fw, tmp_path, monkeypatch):
    fake_engine(tmp_path, fw, monkeypatch=monkeypatch).apply(nets(1, 2))
    fake_engine(tmp_path, fw, monkeypatch=monkeypatch).teardown()
    eng = fake_engine(tmp_path, fw, monkeypatch=monkeypatch)
    assert fw.dump() == "" and eng.list_networks() == []


def test_drift_is_seen_and_reload_repairs_it(fw, tmp_path, monkeypatch):
    fake_engine(tmp_path, fw, monkeypatch=monkeypatch).apply(nets(1, 2))
    fw.tables["fake"]["VNETFW"].pop()                   # someone deletes one of our rules
    fw.touch()
    eng = fake_engine(tmp_path, fw, monkeypatch=monkeypatch)
    assert [c.what for c in eng.check()] == ["add"]
    assert eng.reload().changed and fw.rules("fake") == want(1, 2)
    assert fake_engine(tmp_path, fw, monkeypatch=monkeypatch).check() == []


def test_a_failing_hook_is_reported_and_the_rules_stay_whole(fw, tmp_path, monkeypatch):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "10-fails").write_text("#!/bin/sh\necho nope >&2\nexit 3\n")
    (hooks / "10-fails").chmod(0o755)
    eng = fake_engine(tmp_path, fw, monkeypatch=monkeypatch, hooks_dir=hooks)
    rep = eng.apply(nets(1))
    assert rep.hook_failures == ["hook 10-fails n1 added: exit 3: nope"]
    assert fw.rules("fake") == want(1) and eng.store.load().networks.keys() == {"n1"}
