"""The undo of a failed iptables change (pure): it reverses what the change wrote, as far as
the table still shows it, and leaves alone whatever others wrote since the snapshot."""

from __future__ import annotations

import random
import shlex

from vnetfw.backends.iptables import TableDump, TableEdit, _jump_edits, jump_args
from vnetfw.backends.ipt_undo import committed_tables, counters, undo_table

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


def undo(before: dict, now: dict, edit: TableEdit, text: str = "", now_text: str = ""):
    return undo_table(TableDump(text, {}, before), TableDump(now_text, {}, now), edit)


def test_an_edit_that_did_not_commit_needs_no_undo():
    before = {"FORWARD": ["-i eth9 -j ACCEPT"], "VNETFW_FWX": []}
    edit = TableEdit(["VNETFW_FWI"], ["-A VNETFW_FWX -i vbr0 -o vbr0 -j ACCEPT",
                                      "-I FORWARD 1 -j VNETFW_FWI"])
    assert undo(before, before, edit).empty


def test_a_table_that_did_not_exist_is_emptied_of_ours():
    edit = TableEdit(["VNETFW_PRT"], ["-A VNETFW_PRT -s 10.0.0.0/24 -j MASQUERADE",
                                      '-I POSTROUTING 1 -m comment --comment "vnetfw" '
                                      "-j VNETFW_PRT"])
    empty = {"PREROUTING": [], "INPUT": [], "OUTPUT": [], "POSTROUTING": []}
    now = play(empty, edit)
    assert play(now, undo({}, now, edit)) == empty


def test_only_the_edits_rules_move_and_counters_stay():
    """An appended rule is deleted, nothing else in the chain is rewritten (its rules keep
    the counters traffic gave them since); a deleted rule comes back with its counters."""
    text = ("*filter\n:FORWARD ACCEPT [0:0]\n:VNETFW_FWX - [0:0]\n"
            "[5:300] -A FORWARD -j VNETFW_FWX\n[7:420] -A VNETFW_FWX -i a -o a -j ACCEPT\n"
            "[9:540] -A VNETFW_FWX -i b -o b -j ACCEPT\nCOMMIT\n")
    assert counters(text) == {"FORWARD": ["[5:300] "],
                              "VNETFW_FWX": ["[7:420] ", "[9:540] "]}
    before = {"FORWARD": ["-j VNETFW_FWX"],
              "VNETFW_FWX": ["-i a -o a -j ACCEPT", "-i b -o b -j ACCEPT"]}
    edit = TableEdit([], ["-A VNETFW_FWX -i c -o c -j ACCEPT", "-D VNETFW_FWX 1",
                          "-D FORWARD -j VNETFW_FWX"])
    now = play(before, edit)
    lines = undo(before, now, edit, text).lines
    assert lines[0] == "-D VNETFW_FWX -i c -o c -j ACCEPT"
    assert sorted(lines[1:]) == ["[5:300] -I FORWARD 1 -j VNETFW_FWX",
                                 "[7:420] -I VNETFW_FWX 1 -i a -o a -j ACCEPT"]


def test_a_duplicate_that_must_stay_goes_back_where_it_was_with_its_counters():
    """The edit appended a second copy of a rule that stood above a foreign one: deleting
    'the' copy by its text would take the first, moving the survivor below the foreign
    rule. All copies go, the one from before comes back in its place, counted as now."""
    before = {"FORWARD": ["-j VNETFW_FWX", "-j DROP"], "VNETFW_FWX": []}
    edit = TableEdit([], ["-A FORWARD -j VNETFW_FWX"])
    now = play(before, edit)
    u = undo(before, now, edit, "", "[3:9] -A FORWARD -j VNETFW_FWX\n-A FORWARD -j DROP\n"
             "-A FORWARD -j VNETFW_FWX\n")
    assert play(now, u) == before
    assert "[3:9] -I FORWARD 1 -j VNETFW_FWX" in u.lines


def test_libvirt_writing_its_chain_meanwhile_keeps_its_rule():
    """migrate deletes a rule from a libvirt chain that stays; libvirtd adds one there
    meanwhile: committed or not, libvirt's new rule stays."""
    before = {"FORWARD": ["-j LIBVIRT_FWI"],
              "LIBVIRT_FWI": ["-o virbr0 -j REJECT", "-o virbr1 -j REJECT"]}
    edit = TableEdit([], ["-D LIBVIRT_FWI -o virbr0 -j REJECT"])
    for committed in (False, True):
        now = play(before, edit) if committed else {c: list(r) for c, r in before.items()}
        now["LIBVIRT_FWI"].insert(0, "-o virbr2 -j REJECT")
        u = undo(before, now, edit)
        assert u.empty is not committed
        assert play(now, u)["LIBVIRT_FWI"] == ["-o virbr2 -j REJECT", "-o virbr0 -j REJECT",
                                               "-o virbr1 -j REJECT"]


def test_another_writer_touching_the_same_rule_keeps_its_doing():
    """The edit deletes a rule (R) that another writer also adds or deletes meanwhile: where
    the edit did not commit, nothing is undone, so the other's copy or deletion stands;
    where it did, R comes back in its place and the other's copy stays."""
    r = "-i virbr0 -j REJECT"
    before = {"FORWARD": ["-s 203.0.113.0/24 -j DROP", r]}
    edit = TableEdit([], [f"-D FORWARD {r}"])
    added = {"FORWARD": [r, "-s 203.0.113.0/24 -j DROP", r]}
    assert undo(before, added, edit).empty                   # not committed, copy added
    assert undo(before, {"FORWARD": ["-s 203.0.113.0/24 -j DROP"]}, edit).empty is False
    committed = {"FORWARD": [r, "-s 203.0.113.0/24 -j DROP"]}   # and a copy added
    assert play(committed, undo(before, committed, edit))["FORWARD"] == added["FORWARD"]


def _random_case(rnd: random.Random):
    """A filter table as read, an edit like vnetfw's (migrate-style deletions of foreign
    rules, from FORWARD and from a libvirt chain that stays; a libvirt chain dropped; our
    chains edited by position; a new chain; jump repairs), and whether it committed."""
    pool = FOREIGN + [jump_args(t) for t in OURS] + [f"-j {t}" for t in OURS]
    fwd = [canon(rnd.choice(pool)) for _ in range(rnd.randint(0, 8))]
    admin = [r for r in FOREIGN if "LIBVIRT" not in r]
    before = {"INPUT": [canon(rnd.choice(admin)) for _ in range(rnd.randint(0, 3))],
              "FORWARD": fwd, "OUTPUT": [],
              "LIBVIRT_FWX": [f"-i virbr{k} -o virbr{k} -j ACCEPT"
                              for k in range(rnd.randint(1, 3))],
              "LIBVIRT_FWI": [f"-o virbr{k} -j REJECT" for k in range(rnd.randint(0, 3))]}
    for t in OURS:
        before[t] = [f"-i vbr{k} -j REJECT" for k in range(rnd.randint(0, 3))]
    lines = []
    doomed = [r for r in fwd if r in FOREIGN and rnd.random() < 0.3]
    lines += [f"-D FORWARD {r}" for r in doomed]
    lines += [f"-D LIBVIRT_FWI {r}" for r in before["LIBVIRT_FWI"] if rnd.random() < 0.4]
    if rnd.random() < 0.3 and "-j LIBVIRT_FWX" not in doomed:
        lines += ["-D FORWARD -j LIBVIRT_FWX"] * fwd.count("-j LIBVIRT_FWX")
        lines += ["-F LIBVIRT_FWX", "-X LIBVIRT_FWX"]
    mid = play(before, TableEdit([], lines))
    lines += _jump_edits(mid["FORWARD"], "FORWARD", OURS, 4, "filter", [])
    for t in OURS:
        if rnd.random() < 0.5:
            lines += [f"-D {t} {rnd.randint(1, len(before[t]))}"] if before[t] else []
            lines.append(f"-A {t} -i vbr9 -j REJECT")
    new = []
    if rnd.random() < 0.3:
        new = ["VNETFW_INP"]
        lines += ["-A VNETFW_INP -i vbr9 -p udp --dport 67 -j ACCEPT",
                  '-I INPUT 1 -m comment --comment "vnetfw" -j VNETFW_INP']
    return before, TableEdit(new, lines), rnd.random() < 0.8


def test_random_failed_edits_are_undone_and_others_writes_stay():
    """3,000 random tables and edits, committed or not, with someone else inserting and
    deleting rules in the builtin chains and inserting into libvirt's after the snapshot:
    where the edit did not commit nothing is undone; every chain ends as it was read, plus
    what the other writer inserted (in the same order) and minus what it deleted."""
    rnd = random.Random(11)
    for n in range(3000):
        before, edit, committed = _random_case(rnd)
        now = play(before, edit) if committed else {c: list(r) for c, r in before.items()}
        theirs: list[str] = []
        gone: dict[str, list[str]] = {}
        for chain in ("INPUT", "FORWARD", "LIBVIRT_FWI"):
            rules = now.get(chain)
            if rules is None:
                continue
            touched = {shlex.join(shlex.split(ln.split(" ", 2)[2])) for ln in edit.lines
                       if ln.split(" ", 2)[1] == chain and not ln.startswith("-I")}
            lone = [r for r in rules if rules.count(r) == 1 and before[chain].count(r) == 1
                    and r in FOREIGN and r not in touched]
            if lone and rnd.random() < 0.3:
                rules.remove(victim := rnd.choice(lone))
                gone.setdefault(chain, []).append(victim)
            if rnd.random() < 0.5:
                theirs.append(f"-s 198.51.100.{n % 250}/32 -m comment --comment {chain}-{n} "
                              "-j DROP")
                rules.insert(rnd.randint(0, len(rules)), theirs[-1])
        u = undo_table(dump(before), dump(now), edit)
        if not committed:
            assert u.empty, (before, edit, now, u)
        result = play(now, u)
        case = (before, edit.lines, now, u.lines, result)
        assert set(result) == set(before), case
        for chain, rules in before.items():
            assert [r for r in result[chain] if r not in theirs] == \
                [r for r in rules if r not in gone.get(chain, [])], case
            assert [r for r in result[chain] if r in theirs] == \
                [r for r in now.get(chain, []) if r in theirs], case


def test_which_tables_committed_is_read_off_the_restores_error():
    script = ("*filter\n:VNETFW_FWX - [0:0]\n-A VNETFW_FWX -j ACCEPT\nCOMMIT\n"
              "*nat\n-D POSTROUTING -o eth5 -j RETURN\nCOMMIT\n*mangle\nCOMMIT\n")
    assert committed_tables(script, None) == {"filter": True, "nat": True, "mangle": True}
    for said in ("iptables-restore: line 6 failed",                       # legacy
                 "iptables-nft-restore: line 6 failed: Bad rule (does a matching rule "
                 "exist in that chain?).",
                 "iptables-nft-restore v1.8.9 (nf_tables):\nline 6: CHAIN_DEL failed "
                 "(Device or resource busy): chain X",
                 "iptables-restore v1.8.9 (legacy): unknown option \"--bogus\"\n"
                 "Error occurred at line: 6"):
        assert committed_tables(script, said) == \
            {"filter": True, "nat": False, "mangle": False}, said
    assert committed_tables(script, "iptables-restore: line 2 failed")["filter"] is False
    # a "line 1" that iptables quotes from the input is not the line it names
    assert committed_tables(script, "iptables-restore v1.8.9 (legacy): weird character in "
                            "interface `line 1'\nError occurred at line: 6")["filter"] is True
    assert committed_tables(script, "iptables-restore: unable to initialize table") is None


def test_a_table_known_not_committed_is_left_alone_though_it_looks_committed():
    """The typical race: a deletion fails because someone else deleted that rule first.
    The table then looks as if the edit committed; the restore's error says it did not,
    and nothing is put back."""
    r1, r2 = "-s 192.168.100.0/24 -i virbr1 -j ACCEPT", "-i virbr1 -o virbr1 -j ACCEPT"
    before = {"LIBVIRT_FWX": [r1, r2, "-i virbr0 -o virbr0 -j ACCEPT"]}
    edit = TableEdit([], [f"-D LIBVIRT_FWX {r1}", f"-D LIBVIRT_FWX {r2}"])
    now = play(before, edit)                # libvirt deleted both itself, first
    assert not undo_table(dump(before), dump(now), edit).empty       # judged: committed
    assert undo_table(dump(before), dump(now), edit, committed=False).empty


def test_an_own_rule_that_landed_elsewhere_is_still_taken_out():
    """A writer deleted the rule above the edit's insert position before the restore
    committed: the new jump landed a place lower than meant. It is still the edit's, and
    it goes (else the chain it jumps to could not be deleted)."""
    jx, jo, ji = (f"-m comment --comment vnetfw -j VNETFW_{s}" for s in ("FWX", "FWO", "FWI"))
    before = {"FORWARD": ["-o virbr1 -j REJECT", jx, jo, "-j DROP"]}
    edit = TableEdit(["VNETFW_FWI"], ["-A VNETFW_FWI -o vbr0 -j REJECT",
                                      '-I FORWARD 3 -m comment --comment "vnetfw" -j '
                                      "VNETFW_FWI"])
    now = play({"FORWARD": before["FORWARD"][1:]}, edit)
    assert now["FORWARD"] == [jx, jo, ji, "-j DROP"]
    result = play(now, undo_table(dump(before), dump(now), edit, committed=True))
    assert result == {"FORWARD": [jx, jo, "-j DROP"]}


def test_long_chains_of_any_shape_are_lined_up_by_a_common_subsequence():
    """Shapes that defeat each shortcut (unique rules, copies of a few rules, one nested
    anchor per level): what comes back is always a common subsequence, in order, and the
    obvious one where there is one."""
    from vnetfw.backends.ipt_undo import _common
    rnd = random.Random(3)
    shapes = {
        "unique": (list(range(12000)), [k for k in range(12000) if k % 997]),
        "few texts": ([rnd.randrange(2) for _ in range(12000)],
                      [rnd.randrange(2) for _ in range(12000)]),
        "nested": ([x for k in range(6000) for x in (f"u{k}", f"u{k - 1}")],
                   [x for k in range(6000) for x in (f"u{k - 1}", f"v{k}")]),
    }
    for name, (a, b) in shapes.items():
        pairs = _common(a, b)
        assert all(a[x] == b[y] for x, y in pairs), name
        assert all(p[0] < q[0] and p[1] < q[1] for p, q in zip(pairs, pairs[1:])), name
    a, b = shapes["unique"]
    assert len(_common(a, b)) == len(b)


def test_a_failed_change_that_made_the_forwards_chains_takes_them_and_their_jumps_out():
    """Adding the first forward creates the DNAT chain and its two jumps (PREROUTING, nat
    OUTPUT) and the ALW/FWD chains between the FORWARD stages: undone, every one goes, and
    an admin's rule written meanwhile stays."""
    from vnetfw.backends.iptables import IptablesBackend, IptLive
    from vnetfw.backends.runner import Runner
    from vnetfw.ruleset import Rule, Ruleset
    b = IptablesBackend(Runner(None), "iptables-nft")
    before = {"PREROUTING": ["-j LIBVIRT_PRE"], "OUTPUT": [], "POSTROUTING": [jump_args(
        "VNETFW_PRT")], "VNETFW_PRT": [], "LIBVIRT_PRE": []}
    fwd = Rule(4, "nat", "DNAT", "web", "DNAT", proto="tcp", dport=8080,
               to_addr="10.0.0.10", to_port=80)
    live = IptLive({4: {"nat": dump(before)}, 6: {}})
    edit = b.changes(live, Ruleset.canonical("VNETFW", [fwd]), "full").payload[4]["nat"]
    assert "VNETFW_DNAT" in edit.new_chains
    now = play(before, edit)
    assert canon(jump_args("VNETFW_DNAT")) in now["OUTPUT"]
    now["OUTPUT"].append("-p tcp --dport 22 -j ACCEPT")       # an admin's, meanwhile
    after = play(now, undo(before, now, edit))
    assert after == {**before, "OUTPUT": ["-p tcp --dport 22 -j ACCEPT"]}
