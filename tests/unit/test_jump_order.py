"""The FORWARD jump placement of the iptables backend (pure): our own order, admin rules
left in place, and the stage order across another layout's jumps (libvirt's)."""

from __future__ import annotations

import itertools
import random
import shlex

import pytest

from vnetfw.backends.iptables import _jump_edits, jump_args

OURS = ["VNETFW_FWX", "VNETFW_FWI", "VNETFW_FWO"]
LV = ["-j LIBVIRT_FWX", "-j LIBVIRT_FWI", "-j LIBVIRT_FWO"]
ADMIN = "-s 198.51.100.7/32 -j DROP"


def apply(rules: list[str], lines: list[str]) -> list[str]:
    """Play -D/-I lines on a list the way iptables-restore would (``-D CHAIN rule``
    deletes the first equal rule)."""
    out = list(rules)
    for line in lines:
        op, chain, rest = line.split(" ", 2)
        num, _, args = rest.partition(" ")
        if op == "-D":
            del out[int(num) - 1 if num.isdigit() else out.index(rest)]
        else:
            out.insert(int(num) - 1, args)
    return out


def targets(rules: list[str]) -> list[str]:
    return [r.rsplit("-j ", 1)[1] for r in rules if "_FW" in r]


def stage_sorted(ts: list[str]) -> bool:
    st = [("FWX", "FWI", "FWO").index(t[-3:]) for t in ts]
    return st == sorted(st)


def edits(rules):
    items = []
    lines = _jump_edits(rules, "FORWARD", OURS, 4, "filter", items)
    return lines, items, apply(rules, lines)


def test_empty_chain_gets_the_three_jumps_at_the_top_in_order():
    lines, _, after = edits([ADMIN])
    assert targets(after) == OURS and after[3] == ADMIN


def test_admin_rule_above_correct_jumps_stays_and_nothing_changes():
    rules = [ADMIN] + [jump_args(t) for t in OURS]
    assert edits(rules)[0] == []


def test_libvirt_restarted_above_us_is_reordered_without_moving_libvirt():
    rules = LV + [jump_args(t) for t in OURS]
    lines, items, after = edits(rules)
    assert lines and stage_sorted(targets(after))
    assert [t for t in targets(after) if t.startswith("LIBVIRT")] == [l[3:] for l in LV]
    assert all("VNETFW" in i.detail for i in items)
    assert edits(after)[0] == [], "the repaired chain is stable"


@pytest.mark.parametrize("perm", list(itertools.permutations(range(6))))
def test_any_interleaving_ends_stage_sorted_and_stable(perm):
    pool = LV + [jump_args(t) for t in OURS]
    rules = [pool[i] for i in perm]
    lv_order = [r for r in rules if "LIBVIRT" in r]
    lines, _, after = edits(rules)
    if stage_sorted([r[3:] if r.startswith("-j ") else r.rsplit(" ", 1)[1] for r in lv_order]):
        assert stage_sorted(targets(after)), (rules, after)
    assert [r for r in after if "LIBVIRT" in r] == lv_order      # never moved
    assert edits(after)[0] == []


def test_missing_jumps_are_placed_between_libvirt_stages():
    _, _, after = edits(list(LV))
    assert targets(after) == ["VNETFW_FWX", "LIBVIRT_FWX", "VNETFW_FWI", "LIBVIRT_FWI",
                              "VNETFW_FWO", "LIBVIRT_FWO"]


@pytest.mark.parametrize("rules", [[], [ADMIN], [ADMIN, "-i eth0 -j ACCEPT", ADMIN]])
def test_jumps_into_a_chain_without_ours_refer_to_no_rule(rules):
    """Into a chain holding none of our jumps, every insert is at position 1: ``-I CHAIN n``
    with n > 1 names the rule now at n, which iptables-nft resolves to a handle at commit
    time, and which another writer may delete meanwhile (the load then fails)."""
    lines, _, after = edits(rules)
    assert [line.split(" ", 3)[:3] for line in lines] == [["-I", "FORWARD", "1"]] * 3
    assert targets(after) == OURS and after[3:] == rules


@pytest.mark.parametrize("rules", [
    [ADMIN, jump_args("VNETFW_FWO"), jump_args("VNETFW_FWX"), jump_args("VNETFW_FWI")],
    [jump_args("VNETFW_FWX"), ADMIN, jump_args("VNETFW_FWX"), jump_args("VNETFW_FWI"),
     jump_args("VNETFW_FWO"), jump_args("VNETFW_FWI")],
    [LV[0], jump_args("VNETFW_FWI"), LV[1], jump_args("VNETFW_FWX"), LV[2],
     jump_args("VNETFW_FWO")],
])
def test_our_jumps_are_deleted_by_their_text_never_by_position(rules):
    """A repair deletes our jumps by their text: "-D FORWARD 3" is resolved when the restore
    commits, and a rule inserted above since vnetfw read the chain would make it someone
    else's. The result is the same as before: our jumps once each, in stage order, the
    others where they were."""
    lines, _, after = edits(rules)
    assert lines and not any(line.split(" ", 3)[2].isdigit() for line in lines
                             if line.startswith("-D"))
    assert targets([r for r in after if "VNETFW" in r]) == OURS
    assert [r for r in after if "VNETFW" not in r] == [r for r in rules if "VNETFW" not in r]
    assert edits(after)[0] == []


def _play_semantic(rules: list[str], lines: list[str]) -> list[str]:
    """Like ``apply``, but ``-D CHAIN rule`` deletes the first rule that iptables would
    call the same (quotes are spelling: ``--comment vnetfw`` is ``--comment "vnetfw"``)."""
    out = list(rules)
    for line in lines:
        op, _chain, rest = line.split(" ", 2)
        num, _, args = rest.partition(" ")
        if op == "-D" and not num.isdigit():
            del out[next(i for i, r in enumerate(out) if shlex.split(r) == shlex.split(rest))]
        elif op == "-D":
            del out[int(num) - 1]
        else:
            assert 0 < int(num) <= len(out) + 1, (line, out)
            out.insert(int(num) - 1, args)
    return out


def test_random_chains_end_with_our_jumps_once_in_order_and_nothing_else_moved():
    """3,000 random FORWARD chains of our jumps (commented either way, or plain), another
    layout's staged jumps, and admin rules, played as iptables would: each of our jumps
    once, stage order across layouts (when the other layout is in order itself), every
    other rule unchanged and in place, and a second run changes nothing."""
    pool = [jump_args(t) for t in OURS] + [f"-m comment --comment vnetfw -j {t}" for t in OURS] \
        + [f"-j {t}" for t in OURS] + LV + [ADMIN, "-i eth0 -j ACCEPT"]
    stage = {"FWX": 0, "FWI": 1, "FWO": 2}
    rnd = random.Random(7)
    for _ in range(3000):
        rules = [rnd.choice(pool) for _ in range(rnd.randint(0, 8))]
        lines = _jump_edits(rules, "FORWARD", OURS, 4, "filter", [])
        after = _play_semantic(rules, lines)
        ts = [r.rsplit("-j ", 1)[1] for r in after if "_FW" in r]
        assert [t for t in ts if t.startswith("VNETFW")] == OURS, (rules, lines, after)
        assert [r for r in after if "VNETFW" not in r] == [r for r in rules if "VNETFW" not in r]
        lv = [stage[t[-3:]] for t in ts if t.startswith("LIBVIRT")]
        if lv == sorted(lv):
            assert [stage[t[-3:]] for t in ts] == sorted(stage[t[-3:]] for t in ts), after
        assert _jump_edits(after, "FORWARD", OURS, 4, "filter", []) == [], (rules, after)


FEATURED = ["VNETFW_ALW", "VNETFW_FWX", "VNETFW_FWD", "VNETFW_FWI", "VNETFW_FWO"]


@pytest.mark.parametrize("live", [
    [],
    [jump_args(t) for t in OURS],
    LV + [jump_args(t) for t in OURS],
    [LV[0], jump_args(OURS[0]), LV[1], jump_args(OURS[1]), LV[2], jump_args(OURS[2])],
    [ADMIN, jump_args(OURS[0]), LV[0], jump_args(OURS[1]), LV[1], LV[2], jump_args(OURS[2])],
])
def test_forwards_and_allows_jumps_go_in_between_the_stages(live):
    """Allows before every cross stage, forwards' accepts after every cross stage (ours and
    libvirt's) and before every incoming one; nothing else moves, and a second run is
    silent."""
    lines = _jump_edits(live, "FORWARD", FEATURED, 4, "filter", [])
    after = apply(live, lines)
    ts = [r.rsplit("-j ", 1)[1] for r in after if "-j " in r and r != ADMIN]
    stage = {"ALW": -0.5, "FWX": 0, "FWD": 0.5, "FWI": 1, "FWO": 2}
    st = [stage[t.rsplit("_", 1)[1]] for t in ts]
    assert st == sorted(st), ts
    assert [t for t in ts if t.startswith("VNETFW_")] == FEATURED
    assert [r for r in after if r not in map(jump_args, FEATURED)] == \
        [r for r in live if r not in map(jump_args, FEATURED)]
    assert _jump_edits(after, "FORWARD", FEATURED, 4, "filter", []) == []
