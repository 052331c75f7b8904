"""The undo of a failed iptables change (pure): it reverses what the change wrote, as far as
the table still shows it, and leaves alone whatever others wrote since the snapshot."""

from __future__ import annotations

import random
import shlex

from vnetfw.backends.iptables import BUILTINS, TableDump, TableEdit, _jump_args, _jump_edits
from vnetfw.backends.ipt_undo import counters, undo_table

OURS = ["VNETFW_FWX", "VNETFW_FWI", "VNETFW_FWO"]
FOREIGN = ["-s 203.0.113.0/24 -j DROP", "-i eth9 -o eth8 -j ACCEPT", "-j LIBVIRT_FWX",
           "-p tcp --dport 22 -j ACCEPT", "-i eth9 -o eth8 -j ACCEPT"]


def canon(text: str) -> str:
    """How iptables-save spells a rule (no quotes where none are needed)."""
    return shlex.join(shlex.split(text))


def play(chains: dict[str, list[str]], edit: TableEdit) -> dict[str, list[str]]:
    """Run an edit the way ``iptables-restore --noflush`` would, on {chain: rules}."""
    out = {c: list(r) for c, r in chains.items()}
    for c in edit.new_chains:
        out[c] = []                 # declaring an existing chain flushes it
    for line in edit.lines:
        if line.startswith("["):
            line = line.split("] ", 1)[1]
        op, chain, rest = (line.split(" ", 2) + [""])[:3]
        num, _, args = rest.partition(" ")
        rules = out[chain]
        if op == "-A":
            rules.append(canon(rest))
        elif op == "-I":
            assert 0 < int(num) <= len(rules) + 1, (line, rules)
            rules.insert(int(num) - 1, canon(args))
        elif op == "-D" and num.isdigit():
            del rules[int(num) - 1]
        elif op == "-D":
            del rules[next(i for i, r in enumerate(rules)
                           if shlex.split(r) == shlex.split(rest))]
        elif op == "-F":
            rules.clear()
        elif op == "-X":
            assert not rules and not any(f"-j {chain}" in r for rs in out.values() for r in rs)
            del out[chain]
    return out


def dump(chains: dict[str, list[str]]) -> TableDump:
    return TableDump("", {}, {c: list(r) for c, r in chains.items()})


def test_an_edit_that_did_not_commit_needs_no_undo():
    before = {"FORWARD": ["-i eth9 -j ACCEPT"], "VNETFW_FWX": []}
    edit = TableEdit(["VNETFW_FWI"], ["-A VNETFW_FWX -i vbr0 -o vbr0 -j ACCEPT",
                                      "-I FORWARD 1 -j VNETFW_FWI"])
    assert undo_table(dump(before), dump(before), edit, BUILTINS["filter"]).empty


def test_a_table_that_did_not_exist_is_emptied_of_ours():
    edit = TableEdit(["VNETFW_PRT"], ["-A VNETFW_PRT -s 10.0.0.0/24 -j MASQUERADE",
                                      '-I POSTROUTING 1 -m comment --comment "vnetfw" '
                                      "-j VNETFW_PRT"])
    now = play({"PREROUTING": [], "INPUT": [], "OUTPUT": [], "POSTROUTING": []}, edit)
    undo = undo_table(TableDump(), dump(now), edit, BUILTINS["nat"])
    assert play(now, undo) == {"PREROUTING": [], "INPUT": [], "OUTPUT": [], "POSTROUTING": []}


def test_counters_of_rules_put_back_are_theirs():
    text = ("*filter\n:FORWARD ACCEPT [0:0]\n:VNETFW_FWX - [0:0]\n"
            "[5:300] -A FORWARD -j VNETFW_FWX\n[7:420] -A VNETFW_FWX -i a -o a -j ACCEPT\n"
            "COMMIT\n")
    assert counters(text) == {"FORWARD": ["[5:300] "], "VNETFW_FWX": ["[7:420] "]}
    before = TableDump(text, {}, {"FORWARD": ["-j VNETFW_FWX"],
                                  "VNETFW_FWX": ["-i a -o a -j ACCEPT"]})
    edit = TableEdit([], ["-D FORWARD -j VNETFW_FWX", "-D VNETFW_FWX 1"])
    now = play(before.chains, edit)
    undo = undo_table(before, dump(now), edit, BUILTINS["filter"])
    assert undo.lines == ["-F VNETFW_FWX", "[7:420] -A VNETFW_FWX -i a -o a -j ACCEPT",
                          "[5:300] -I FORWARD 1 -j VNETFW_FWX"]


def test_a_duplicate_that_must_stay_goes_back_where_it_was():
    """The edit appended a second copy of a rule that stood above a foreign one: deleting
    'the' copy by its text would take the first, moving the survivor below the foreign
    rule. All copies go, the one from before comes back in its place."""
    before = {"FORWARD": ["-j VNETFW_FWX", "-j DROP"], "VNETFW_FWX": []}
    edit = TableEdit([], ["-A FORWARD -j VNETFW_FWX"])
    now = play(before, edit)
    assert play(now, undo_table(dump(before), dump(now), edit, BUILTINS["filter"])) == before


def _random_case(rnd: random.Random):
    """A filter table as read, an edit like vnetfw's (migrate-style deletions of foreign
    rules, a libvirt chain dropped, our chains rewritten, a new chain, jump repairs), and
    whether it committed."""
    pool = FOREIGN + [_jump_args(t) for t in OURS] + [f"-j {t}" for t in OURS]
    fwd = [canon(rnd.choice(pool)) for _ in range(rnd.randint(0, 8))]
    admin = [r for r in FOREIGN if "LIBVIRT" not in r]
    before = {"INPUT": [canon(rnd.choice(admin)) for _ in range(rnd.randint(0, 3))],
              "FORWARD": fwd, "OUTPUT": [],
              "LIBVIRT_FWX": ["-i virbr0 -o virbr0 -j ACCEPT"]}
    for t in OURS:
        before[t] = [f"-i vbr{k} -j REJECT" for k in range(rnd.randint(0, 3))]
    lines = []
    # migrate-style: some foreign rules deleted by their text, first
    doomed = [r for r in fwd if r in FOREIGN and rnd.random() < 0.3]
    lines += [f"-D FORWARD {r}" for r in doomed]
    if rnd.random() < 0.3 and "-j LIBVIRT_FWX" not in doomed:
        lines += ["-D FORWARD -j LIBVIRT_FWX"] * fwd.count("-j LIBVIRT_FWX")
        lines += ["-F LIBVIRT_FWX", "-X LIBVIRT_FWX"]
    mid = play(before, TableEdit([], lines))
    lines += _jump_edits(mid["FORWARD"], "FORWARD", OURS, 4, "filter", [])
    for t in OURS:
        if rnd.random() < 0.5:
            lines += [f"-D {t} 1"] if before[t] else []
            lines.append(f"-A {t} -i vbr9 -j REJECT")
    new = []
    if rnd.random() < 0.3:
        new = ["VNETFW_INP"]
        lines += ["-A VNETFW_INP -i vbr9 -p udp --dport 67 -j ACCEPT",
                  '-I INPUT 1 -m comment --comment "vnetfw" -j VNETFW_INP']
    return before, TableEdit(new, lines), rnd.random() < 0.8


def test_random_failed_edits_are_undone_and_others_writes_stay():
    """2,000 random tables and edits, committed or not, with someone else inserting and
    deleting rules in the builtin chains after the snapshot: the undo leaves every chain
    that is not builtin as it was read, and the builtin chains as they were read, plus what
    the other writer inserted (in the same order) and minus what it deleted."""
    rnd = random.Random(11)
    for n in range(2000):
        before, edit, committed = _random_case(rnd)
        now = play(before, edit) if committed else {c: list(r) for c, r in before.items()}
        theirs: list[str] = []
        gone: dict[str, list[str]] = {}
        for chain in ("INPUT", "FORWARD"):
            rules = now[chain]
            touched = {shlex.join(shlex.split(ln.split(" ", 2)[2])) for ln in edit.lines
                       if ln.split(" ", 2)[1] == chain and not ln.startswith("-I")}
            lone = [r for r in rules if rules.count(r) == 1 and before[chain].count(r) == 1
                    and r in FOREIGN and r not in touched]
            if lone and rnd.random() < 0.3:
                rules.remove(victim := rnd.choice(lone))
                gone.setdefault(chain, []).append(victim)
            if rnd.random() < 0.5:
                theirs.append(f"-s 198.51.100.{n % 250}/32 -j DROP")
                rules.insert(rnd.randint(0, len(rules)), theirs[-1])
        undo = undo_table(dump(before), dump(now), edit, BUILTINS["filter"])
        if not committed:
            assert undo.empty, (before, edit, undo)
        result = play(now, undo)
        case = (before, edit.lines, now, undo.lines, result)
        for chain, rules in before.items():
            if chain in BUILTINS["filter"]:
                assert [r for r in result[chain] if r not in theirs] == \
                    [r for r in rules if r not in gone.get(chain, [])], case
                assert [r for r in result[chain] if r in theirs] == \
                    [r for r in now[chain] if r in theirs], case
            else:
                assert result.get(chain) == rules, case
        assert set(result) == set(before), case
