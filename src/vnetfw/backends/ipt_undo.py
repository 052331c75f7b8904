"""Undo a failed iptables change exactly where it wrote, and nowhere else (pure).

iptables-restore commits table by table, so a change that fails half-way (its second table,
or IPv6 after IPv4) leaves some tables committed. Restoring those tables whole from the
snapshot vnetfw diffed against would put them back byte for byte, but it also throws away
whatever anyone else wrote to them since that snapshot: a rule libvirt or Docker added while
vnetfw planned and committed, and every counter traffic moved. So the undo of one table is
computed from the table as vnetfw read it (``before``), the edit it tried (``edit``) and the
table as it is now (``now``, read again with counters after the failure):

1. The edit is played on ``before`` the way iptables-restore plays it: that gives the table
   the edit meant (``meant``), each rule marked as ``before``'s (with its index) or the
   edit's own.
2. Did this table commit? The restore says so where it can: one that succeeded committed
   every table; one that failed names the input line it failed at, and every table whose
   ``COMMIT`` came before that line committed, the others did not (iptables-restore
   commits a table at its ``COMMIT`` or not at all). Where it cannot (an interrupt, a
   timeout), the tables tell: the table committed if ``now``'s touched chains are fewer
   rules away from ``meant``'s than from ``before``'s, lined up along a common
   subsequence. That is a judgement: a writer that made or reversed the very change the
   edit made meanwhile can tip it.
3. If it did, in each chain the edit touched: the edit's own rules still in ``now`` (lined
   up with ``meant``'s, or of the same text where the line-up left one over) are deleted,
   by their text (never by a position: positions are resolved when
   the restore commits, and someone's insert could shift ours onto their rule); the rules
   of ``before`` that the edit deleted go back right after the rule of ``before`` they
   followed, with their counters. Chains the edit created go; chains it deleted come back
   whole. Every other rule stays where ``now`` has it, with its counters: rules others
   added or deleted since stay so, in vnetfw's chains, libvirt's and the builtin ones alike.

Copies of one rule cannot be told apart by their text: where one copy of a rule goes and
another stays, every copy is deleted and the staying ones are put back in their places, with
their counters, in the same transaction. A rule put back names its position; a writer at
that very moment can shift it (it would stand a place off, or the undo is refused, which
is reported); no other rule is touched either way.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from functools import lru_cache
from typing import Optional, Sequence

from .iptables import TableDump, TableEdit, tokens

Key = tuple[str, ...]
Item = tuple[Optional[int], str]    # (index in ``before``'s chain, or None: the edit's), text


@lru_cache(maxsize=1 << 16)
def _key(text: str) -> Key:
    """What iptables calls the same rule, as far as spelling goes: quotes are spelling
    (vnetfw writes ``--comment "vnetfw"``, iptables-save prints ``--comment vnetfw``)."""
    tok = tokens(text)
    return (text,) if tok is None else tuple(tok)


def counters(text: str) -> dict[str, list[str]]:
    """Per chain, the ``[packets:bytes] `` prefix of each rule of an ``iptables-save -c``
    table text, in order ('' where the text has none)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        prefix = ""
        if line.startswith("["):
            head, sep, rest = line.partition("] ")
            if sep:
                prefix, line = head + "] ", rest
        if line.startswith("-A "):
            chain = line[3:].partition(" ")[0]
            out.setdefault(chain, []).append(prefix)
    return out


# The forms in which iptables-restore (legacy and nft, 1.8) names the input line it failed
# at; only these, so that a "line 1" quoted from the input is not taken for one.
_LINE = re.compile(r"^line (\d+):|\bline (\d+) failed|Error occurred at line: (\d+)"
                   r"|COMMIT expected at line (\d+)", re.M)


def committed_tables(script: str, error: str | None) -> dict[str, bool] | None:
    """Which tables of one restore's input committed: all if it succeeded (``error`` None);
    else those whose ``COMMIT`` comes before the input line its error names (iptables
    says "line 6 failed", "line 5: CHAIN_DEL failed ...", "Error occurred at line: 2",
    "COMMIT expected at line 3"); None if it names no line of the input."""
    tables: list[tuple[str, int]] = []         # (table, line of its COMMIT)
    current = ""
    for n, line in enumerate(script.splitlines(), start=1):
        if line.startswith("*"):
            current = line[1:].strip()
        elif line == "COMMIT":
            tables.append((current, n))
    if error is None:
        return {t: True for t, _ in tables}
    m = _LINE.search(error)
    line = int(next(g for g in m.groups() if g is not None)) if m else 0
    if not 0 < line <= len(script.splitlines()) + 1:
        return None
    return {t: at < line for t, at in tables}


def _split(line: str) -> tuple[str, str, int | None, str]:
    """``-I CHAIN 3 args`` -> ("-I", "CHAIN", 3, "args"); no number -> None."""
    op, chain, rest = (line.split(" ", 2) + ["", ""])[:3]
    num, _, args = rest.partition(" ")
    if num.isdigit():
        return op, chain, int(num), args
    return op, chain, None, rest


def play(chains: dict[str, list[str]], edit: TableEdit) -> dict[str, list[Item] | None]:
    """The chains the edit names, after it, as iptables-restore --noflush plays it on
    ``chains``: declaring a chain creates (or flushes) it, ``-D CHAIN rule`` takes the first
    same rule, ``-D CHAIN n`` the n-th; a chain that ``-X`` deletes maps to None."""
    out: dict[str, list[Item]] = {}

    def chain_of(name: str) -> list[Item]:
        if name not in out:
            out[name] = list(enumerate(chains.get(name, [])))
        return out[name]

    for name in edit.new_chains:
        out[name] = []
    gone: set[str] = set()
    for line in edit.lines:
        op, name, num, args = _split(line)
        rules = chain_of(name)
        if op == "-A":
            rules.append((None, args))
        elif op == "-I":
            rules.insert(0 if num is None else min(max(num - 1, 0), len(rules)), (None, args))
        elif op == "-D" and num is not None:
            if 0 < num <= len(rules):
                del rules[num - 1]
        elif op == "-D":
            key = _key(args)
            at = next((i for i, (_, r) in enumerate(rules) if _key(r) == key), None)
            if at is not None:
                del rules[at]
        elif op == "-F":
            rules.clear()
        elif op == "-X":
            gone.add(name)
    return {name: None if name in gone else rules for name, rules in out.items()}


def _common(a: Sequence, b: Sequence) -> list[tuple[int, int]]:
    """A common subsequence of ``a`` and ``b``, as index pairs, ascending: a longest one
    wherever that is affordable.

    Common heads and tails are matched first; what is left is solved exactly where it is
    small (a table of len(a) x len(b)); large, as a chain of 1,000 networks can be, it is
    split at the elements that occur once in each and line up (patience diff) and each gap
    solved the same way (a work list, not recursion); a large gap without such elements
    (thousands of copies of a few rules), or left once the splitting has scanned 40 times
    the input (nested shapes that peel one anchor at a time), is matched greedily, in
    order."""
    out: list[tuple[int, int]] = []
    work = [(0, len(a), 0, len(b))]
    budget = 40 * (len(a) + len(b))     # elements the anchor search may scan, in all
    while work:
        a0, a1, b0, b1 = work.pop()
        while a0 < a1 and b0 < b1 and a[a0] == b[b0]:
            out.append((a0, b0))
            a0, b0 = a0 + 1, b0 + 1
        while a0 < a1 and b0 < b1 and a[a1 - 1] == b[b1 - 1]:
            a1, b1 = a1 - 1, b1 - 1
            out.append((a1, b1))
        if a0 == a1 or b0 == b1:
            continue
        if (a1 - a0) * (b1 - b0) <= 250_000:
            out += [(a0 + x, b0 + y) for x, y in _exact(a[a0:a1], b[b0:b1])]
            continue
        budget -= (a1 - a0) + (b1 - b0)
        anchors = _unique_anchors(a[a0:a1], b[b0:b1]) if budget > 0 else []
        if not anchors:
            out += [(a0 + x, b0 + y) for x, y in _greedy(a[a0:a1], b[b0:b1])]
            continue
        last_x, last_y = a0, b0
        for x, y in anchors:
            out.append((a0 + x, b0 + y))
            work.append((last_x, a0 + x, last_y, b0 + y))
            last_x, last_y = a0 + x + 1, b0 + y + 1
        work.append((last_x, a1, last_y, b1))
    return sorted(out)


def _exact(a: Sequence, b: Sequence) -> list[tuple[int, int]]:
    """A longest common subsequence, by the textbook table."""
    # lengths[x][y]: the length of a longest common subsequence of a[x:] and b[y:]
    lengths = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for x in range(len(a) - 1, -1, -1):
        row, below = lengths[x], lengths[x + 1]
        for y in range(len(b) - 1, -1, -1):
            row[y] = below[y + 1] + 1 if a[x] == b[y] else max(below[y], row[y + 1])
    out, x, y = [], 0, 0
    while x < len(a) and y < len(b):
        if a[x] == b[y]:
            out.append((x, y))
            x, y = x + 1, y + 1
        elif lengths[x + 1][y] >= lengths[x][y + 1]:
            x += 1
        else:
            y += 1
    return out


def _greedy(a: Sequence, b: Sequence) -> list[tuple[int, int]]:
    """Each element of ``a`` matched to the first equal one of ``b`` after the last match."""
    where: dict = {}
    for y, k in enumerate(b):
        where.setdefault(k, []).append(y)
    out, last = [], -1
    for x, k in enumerate(a):
        ys = where.get(k)
        if ys:
            at = bisect_left(ys, last + 1)
            if at < len(ys):
                last = ys[at]
                out.append((x, last))
    return out


def _unique_anchors(a: Sequence, b: Sequence) -> list[tuple[int, int]]:
    """The pairs of elements that occur once in ``a`` and once in ``b``, as many as line up
    in order (a longest increasing subsequence of their positions in ``b``)."""
    count_a: dict = {}
    count_b: dict = {}
    for k in a:
        count_a[k] = count_a.get(k, 0) + 1
    for k in b:
        count_b[k] = count_b.get(k, 0) + 1
    where_b = {k: y for y, k in enumerate(b) if count_b[k] == 1}
    cand = [(x, where_b[k]) for x, k in enumerate(a) if count_a[k] == 1 and k in where_b]
    # patience sorting: tails[n] = index in cand of the smallest tail of a run of n + 1
    tails: list[int] = []
    back: list[int] = []
    ys: list[int] = []
    for n, (_, y) in enumerate(cand):
        at = bisect_left(ys, y)
        back.append(tails[at - 1] if at else -1)
        if at == len(ys):
            ys.append(y)
            tails.append(n)
        else:
            ys[at] = y
            tails[at] = n
    out = []
    n = tails[-1] if tails else -1
    while n >= 0:
        out.append(cand[n])
        n = back[n]
    return out[::-1]


def _committed(before: TableDump, meant: dict[str, list[Item] | None], now: TableDump
               ) -> bool:
    """Does ``now`` show the edit? In the chains it touched, ``now`` is fewer rules away
    from ``meant`` than from ``before`` (rules to delete and insert to get from one to the
    other, along a longest common subsequence; a chain that should or should not exist
    counts one)."""
    towards = away = 0
    for name, rules in meant.items():
        has = [_key(t) for t in now.chains.get(name, [])]
        was = [_key(t) for t in before.chains.get(name, [])]
        want = [_key(t) for _, t in rules or []]
        exists = name in now.chains
        towards += len(has) + len(want) - 2 * len(_common(want, has)) + \
            (exists != (rules is not None))
        away += len(has) + len(was) - 2 * len(_common(was, has)) + \
            (exists != (name in before.chains))
    return towards < away


def _chain_undo(name: str, before: list[str], meant: list[Item], now: list[str],
                marks_before: list[str], marks_now: list[str]) -> tuple[list[str], list[str]]:
    """(deletions, insertions) that reverse the edit in one chain: see the module's step 3."""
    has = [_key(t) for t in now]
    pairs = _common([_key(t) for _, t in meant], has)
    drop = {y for x, y in pairs if meant[x][0] is None}       # the edit's, still there
    where = {meant[x][0]: y for x, y in pairs if meant[x][0] is not None}
    # A rule of the edit's that lost a tie in the line-up (a writer deleted a rule above
    # it before the restore committed, so it landed elsewhere than meant) is still the
    # edit's: paired with a rule of ``now`` that nothing claimed, of the same text.
    unclaimed: dict[Key, list[int]] = {}
    taken = {y for _, y in pairs}
    for y in range(len(has)):
        if y not in taken:
            unclaimed.setdefault(has[y], []).append(y)
    matched = {x for x, _ in pairs}
    for x, (i, text) in enumerate(meant):
        if i is None and x not in matched and unclaimed.get(_key(text)):
            drop.add(unclaimed[_key(text)].pop(0))
    kept = {i for i, _ in meant if i is not None}
    # Each rule of ``before`` the edit deleted goes right after the nearest rule above it in
    # ``before`` that is still in place; with none above, right above the nearest one below
    # (a rule someone inserted at the top meanwhile stays at the top); with none, at the top.
    after: dict[int, list[int]] = {}
    ahead: dict[int, list[int]] = {}
    above, waiting = -1, []
    for i in range(len(before)):
        if i in kept and i in where:
            if above < 0 and waiting:
                ahead[where[i]] = waiting
                waiting = []
            above = where[i]
        elif i not in kept:
            if above >= 0:
                after.setdefault(above, []).append(i)
            else:
                waiting.append(i)
    if not drop and not after and not ahead and not waiting:
        return [], []
    # The chain as it must end, as ("n", y): now[y] stays, and ("b", i): before[i] comes
    # back. Then the lines that get there: every copy of a text the edit added goes (so
    # no copy that must stay is taken by mistake); walking ``want`` against what is left,
    # whatever is missing is inserted where it belongs.
    want: list[tuple[str, int]] = [("b", i) for i in waiting]
    for y in range(len(has)):
        want += [("b", i) for i in ahead.get(y, [])]
        if y not in drop:
            want.append(("n", y))
            want += [("b", i) for i in after.get(y, [])]
    wiped = {has[y] for y in drop}
    deletions = [f"-D {name} {now[y]}" for y in range(len(has)) if has[y] in wiped]
    cur = [("n", y) for y in range(len(has)) if has[y] not in wiped]
    insertions = []
    p = 0
    for item in want:
        if p < len(cur) and cur[p] == item:
            p += 1
            continue
        kind, n = item
        marks, text = (marks_before, before[n]) if kind == "b" else (marks_now, now[n])
        mark = marks[n] if n < len(marks) else ""
        insertions.append(f"{mark}-I {name} {p + 1} {text}")
        cur.insert(p, item)
        p += 1
    return deletions, insertions


def undo_table(before: TableDump, now: TableDump, edit: TableEdit,
               committed: bool | None = None) -> TableEdit:
    """The restore lines (for ``iptables-restore -c --noflush``) that reverse ``edit`` in
    ``now``, leaving everything else as ``now`` has it; empty if the edit did not commit.
    ``committed``: whether it did, if known (the restore's exit status and the line its
    error names tell); None: judged from the tables (``_committed``). Order: chains to
    bring back declared; rules deleted; rules inserted (and those of the chains brought
    back added); the chains the edit created flushed and deleted, last (their jumps are
    gone by then)."""
    meant = play(before.chains, edit)
    out = TableEdit()
    if committed is False or (committed is None and not _committed(before, meant, now)):
        return out
    marks_before, marks_now = counters(before.text), counters(now.text)
    deletions: list[str] = []
    insertions: list[str] = []
    drop: list[str] = []
    for name, rules in meant.items():
        was, has = before.chains.get(name), now.chains.get(name)
        if rules is None:                               # the edit deleted the chain
            if was is not None and has is None:
                out.new_chains.append(name)
                marks = marks_before.get(name, [])
                insertions += [f"{marks[i] if i < len(marks) else ''}-A {name} {r}"
                               for i, r in enumerate(was)]
        elif was is None and name in edit.new_chains:   # the edit created the chain
            if has is not None:
                drop.append(name)
        elif has is not None:
            d, i = _chain_undo(name, was or [], rules, has, marks_before.get(name, []),
                               marks_now.get(name, []))
            deletions += d
            insertions += i
    out.lines = deletions + insertions + [f"-F {c}" for c in drop] + [f"-X {c}" for c in drop]
    return out
