"""Undo a failed iptables change exactly where it wrote, and nowhere else (pure).

iptables-restore commits table by table, so a change that fails half-way (its second table,
or IPv6 after IPv4) leaves some tables committed. Restoring those tables whole from the
snapshot vnetfw diffed against would put them back byte for byte, but it also throws away
whatever anyone else wrote to them since that snapshot: a rule libvirt or Docker added while
vnetfw planned and committed, and every counter traffic moved. So the undo is computed from
three things: the table as vnetfw read it (``before``), the edit it tried (``edit``) and the
table as it is now (``now``, read again after the failure), and touches only what the edit
touched:

- Chains that are not builtin (vnetfw's own, or libvirt's that a migration deletes) are
  written by the edit as a whole: each that differs from ``before`` gets ``before``'s rules
  back, with their counters (or goes, if ``before`` had no such chain).
- In the builtin chains, which others write too, only the rules the edit added, deleted or
  moved are put back where ``before`` had them, relative to the other rules, which stay
  where ``now`` has them: rules others added or deleted since stay so. The edit's own rules
  are deleted by their text, never by a position (positions are resolved when the restore
  commits, and someone's insert could shift ours onto their rule); a rule put back names
  its position, which a writer at that very moment could shift: it would stand a place
  off, and no other rule would be touched.

Where the edit did not commit (its table's restore failed), ``now`` shows nothing of it and
the undo is empty.
"""

from __future__ import annotations

import shlex
from functools import lru_cache
from typing import Iterable

from .iptables import TableDump, TableEdit


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


def _split(line: str) -> tuple[str, str, int | None, str]:
    """``-I CHAIN 3 args`` -> ("-I", "CHAIN", 3, "args"); no number -> None."""
    op, chain, rest = (line.split(" ", 2) + ["", ""])[:3]
    num, _, args = rest.partition(" ")
    if num.isdigit():
        return op, chain, int(num), args
    return op, chain, None, rest


@lru_cache(maxsize=4096)
def _key(text: str) -> tuple[str, ...]:
    """What iptables calls the same rule, as far as spelling goes: quotes are spelling
    (vnetfw writes ``--comment "vnetfw"``, iptables-save prints ``--comment vnetfw``)."""
    try:
        return tuple(shlex.split(text))
    except ValueError:
        return (text,)


def _touched(rules: list[str], lines: Iterable[tuple[str, int | None, str]]
             ) -> set[tuple[str, ...]]:
    """The rules (keys) that the edit's lines for one chain add, delete or move, played the
    way iptables-restore plays them on the chain as it was read (``-D CHAIN n`` names the
    rule at that place then)."""
    out = [_key(r) for r in rules]
    keys: set[tuple[str, ...]] = set()
    for op, num, args in lines:
        if op == "-D" and num is not None:
            if 0 < num <= len(out):
                keys.add(out.pop(num - 1))
            continue
        key = _key(args)
        keys.add(key)
        if op == "-D":
            if key in out:
                out.remove(key)
        elif op == "-I":
            out.insert(0 if num is None else min(max(num - 1, 0), len(out)), key)
        elif op == "-A":
            out.append(key)
    return keys


def _common(a: list, b: list) -> list[tuple[int, int]]:
    """A longest common subsequence of ``a`` and ``b``, as index pairs. (Exact, unlike
    difflib's, which may leave copies of a repeated rule unmatched. The common head and tail
    are matched first, so the table is only as large as what differs.)"""
    head = 0
    while head < min(len(a), len(b)) and a[head] == b[head]:
        head += 1
    tail = 0
    while tail < min(len(a), len(b)) - head and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    ma, mb = a[head:len(a) - tail], b[head:len(b) - tail]
    # lengths[x][y]: LCS length of ma[x:] and mb[y:]
    lengths = [[0] * (len(mb) + 1) for _ in range(len(ma) + 1)]
    for x in range(len(ma) - 1, -1, -1):
        row, below = lengths[x], lengths[x + 1]
        for y in range(len(mb) - 1, -1, -1):
            row[y] = below[y + 1] + 1 if ma[x] == mb[y] else max(below[y], row[y + 1])
    pairs = [(k, k) for k in range(head)]
    x = y = 0
    while x < len(ma) and y < len(mb):
        if ma[x] == mb[y]:
            pairs.append((head + x, head + y))
            x, y = x + 1, y + 1
        elif lengths[x + 1][y] >= lengths[x][y + 1]:
            x += 1
        else:
            y += 1
    return pairs + [(len(a) - tail + k, len(b) - tail + k) for k in range(tail)]


def _builtin_undo(chain: str, before: list[str], now: list[str],
                  touched: set[tuple[str, ...]], counted: list[str]) -> list[str]:
    """Lines that give, in a builtin chain, the rules the edit added, deleted or moved
    (``touched``) back the places ``before`` had them, leaving every other rule where
    ``now`` has it.

    The other rules are the frame: ``before``'s and ``now``'s are lined up (longest common
    subsequence; someone may have added or deleted some since). Between two rules of the
    frame, if the touched rules stand in ``now`` as in ``before``, nothing changes there
    (so where the edit did not commit, nothing changes at all); else ``now``'s go and
    ``before``'s come back right after the upper rule of the frame. Copies of a rule cannot
    be told apart by their text, so where one copy goes and another stays, every copy goes
    and the staying ones are put back, in the same transaction."""
    was, has = [_key(t) for t in before], [_key(t) for t in now]
    fw = [i for i, k in enumerate(was) if k not in touched]
    fn = [j for j, k in enumerate(has) if k not in touched]
    frame = [(fw[a], fn[b]) for a, b in _common([was[i] for i in fw], [has[j] for j in fn])]
    # The chain as it should be, as items ("n", j) of ``now`` and ("b", i) of ``before``.
    want: list[tuple[str, int]] = []
    drop: set[int] = set()
    from_before: dict[int, int] = {}       # j of a touched rule in place -> its i
    bounds = [(-1, -1)] + frame + [(len(was), len(has))]
    for (i0, j0), (i1, j1) in zip(bounds, bounds[1:]):
        if j0 >= 0:
            want.append(("n", j0))
        tb = [i for i in range(i0 + 1, i1) if was[i] in touched]
        tn = [j for j in range(j0 + 1, j1) if has[j] in touched]
        if [was[i] for i in tb] == [has[j] for j in tn]:
            from_before.update(zip(tn, tb))
            want += [("n", j) for j in range(j0 + 1, j1)]
        else:
            drop.update(tn)
            want += [("b", i) for i in tb]
            want += [("n", j) for j in range(j0 + 1, j1) if j not in tn]
    if not drop and not any(kind == "b" for kind, _ in want):
        return []               # the edit did not commit (or it is undone already)
    wiped = {has[j] for j in drop} | {was[i] for kind, i in want if kind == "b"}
    lines = [f"-D {chain} {now[j]}" for j in range(len(has)) if has[j] in wiped]
    cur = [("n", j) for j in range(len(has)) if has[j] not in wiped]
    p = 0
    for item in want:
        if p < len(cur) and cur[p] == item:
            p += 1
            continue
        kind, n = item
        i = n if kind == "b" else from_before.get(n)
        mark = counted[i] if i is not None and i < len(counted) else ""
        lines.append(f"{mark}-I {chain} {p + 1} {before[n] if kind == 'b' else now[n]}")
        cur.insert(p, item)
        p += 1
    return lines


def undo_table(before: TableDump, now: TableDump, edit: TableEdit,
               builtins: Iterable[str]) -> TableEdit:
    """The restore lines (for ``iptables-restore -c --noflush``) that take ``now`` back to
    ``before`` wherever ``edit`` wrote, leaving everything else as ``now`` has it. Empty if
    ``now`` shows nothing of the edit. Order: missing chains declared; builtin chains'
    additions deleted; other chains rewritten; builtin chains' deletions put back; chains
    ``before`` did not have flushed and deleted (nothing refers to them any more)."""
    builtin = set(builtins)
    by_chain: dict[str, list[tuple[str, int | None, str]]] = {}
    for line in edit.lines:
        op, chain, num, args = _split(line)
        by_chain.setdefault(chain, []).append((op, num, args))
    chains = list(dict.fromkeys([*edit.new_chains, *by_chain]))
    counted = counters(before.text)
    out = TableEdit()
    take_out: list[str] = []
    put_back: list[str] = []
    rewrite: list[str] = []
    drop: list[str] = []
    for chain in chains:
        was, has = before.chains.get(chain), now.chains.get(chain)
        if chain in builtin:        # (a table that did not exist had them empty)
            lines = _builtin_undo(chain, was or [], has or [],
                                  _touched(was or [], by_chain.get(chain, [])),
                                  counted.get(chain, []))
            take_out += [ln for ln in lines if ln.startswith("-D ")]
            put_back += [ln for ln in lines if not ln.startswith("-D ")]
        elif was is not None:
            if has == was:
                continue
            if has is None:
                out.new_chains.append(chain)
            else:
                rewrite.append(f"-F {chain}")
            marks = counted.get(chain, [])
            rewrite += [f"{marks[i] if i < len(marks) else ''}-A {chain} {r}"
                        for i, r in enumerate(was)]
        elif has is not None:
            drop += [f"-F {chain}", f"-X {chain}"]
    drop = [ln for ln in drop if ln.startswith("-F ")] + [ln for ln in drop
                                                          if ln.startswith("-X ")]
    out.lines = take_out + rewrite + put_back + drop
    return out
