"""The x_tables fingerprint's walk over a table blob (pure part of ``backends/xtfp.py``).

The real-kernel side (traffic does not move the fingerprint, any edit does) is in
tests/netns/test_engine.py; here synthetic blobs check that only counters are zeroed and
that any other layout gives no fingerprint rather than a wrong one.
"""

from __future__ import annotations

import struct

import pytest

from vnetfw.backends.xtfp import _FAMILY, _zero_counters

V4, V6 = _FAMILY[4][3], _FAMILY[6][3]


def table(sizes: list[int], at: tuple[int, int], start: int = 8) -> bytearray:
    """A blob of entries of ``sizes`` bytes after ``start`` header bytes; every byte 0xAB,
    next_offset set, counters 0x11."""
    next_at, counters_at = at
    blob = bytearray(b"\xab" * (start + sum(sizes)))
    off = start
    for size in sizes:
        struct.pack_into("=H", blob, off + next_at, size)
        blob[off + counters_at:off + counters_at + 16] = b"\x11" * 16
        off += size
    return blob


@pytest.mark.parametrize("at, sizes", [(V4, [152, 152, 200, 112 + 40]),
                                       (V6, [208, 176, 248])])
def test_only_the_counters_are_zeroed(at, sizes):
    blob = table(sizes, at)
    before = bytes(blob)
    _zero_counters(blob, 8, at, len(sizes), "filter")
    changed = [i for i in range(len(blob)) if blob[i] != before[i]]
    off, expected = 8, []
    for size in sizes:
        expected += range(off + at[1], off + at[1] + 16)
        off += size
    assert changed == expected and all(blob[i] == 0 for i in changed)


def with_next(blob: bytearray, entry_at: int, value: int) -> bytearray:
    struct.pack_into("=H", blob, entry_at + V4[0], value)
    return blob


@pytest.mark.parametrize("why, blob, n", [
    ("count differs", table([152, 152], V4), 3),
    ("size not 8-aligned", table([152, 152], V4) + b"\0\0\0\0", 2),
    ("entry runs past the end", table([152, 152], V4)[:-48], 2),
    ("next_offset zero", with_next(table([152, 152], V4), 8 + 152, 0), 2),
    ("next_offset not aligned", table([150, 154], V4), 2),
    ("IPv4 blob read as IPv6", table([152, 152], V4), 2),
])
def test_another_layout_gives_no_fingerprint(why, blob, n):
    at = V6 if "IPv6" in why else V4
    with pytest.raises(OSError, match="unexpected x_tables entry layout"):
        _zero_counters(blob, 8, at, n, "filter")
