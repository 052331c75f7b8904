"""The one netlink walk (``linux.netlink``) as the generation id reads it; watch's
notifications are parsed with it in test_watch_logic."""

from __future__ import annotations

import struct

from vnetfw.backends.nfgen import genid_of
from vnetfw.linux import netlink as nl


def _attr(atype: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, atype) + payload + b"\0" * (-n % 4)


def _newgen(gen: int) -> bytes:
    body = struct.pack("BBH", 0, 0, 0) + _attr(nl.NFTA_GEN_ID, struct.pack(">I", gen)) \
        + _attr(nl.NFTA_GEN_PROC_PID, struct.pack(">I", 77))
    return nl.message((nl.NFNL_SUBSYS_NFTABLES << 8) | nl.NFT_MSG_NEWGEN, 0, 1, body)


def test_the_generation_is_read_from_the_newgen_answer():
    assert genid_of(_newgen(4242)) == 4242


def test_an_error_answer_has_no_generation_even_with_an_attribute_1_inside():
    # Not a NEWGEN message (here NLMSG_ERROR): whatever its bytes look like, no generation
    err = nl.message(2, 0, 1, struct.pack("=i", -1) + _attr(nl.NFTA_GEN_ID, b"\0\0\0\7"))
    assert genid_of(err) is None
    assert genid_of(err + _newgen(9)) == 9          # the walk goes on to the next message


def test_a_truncated_answer_has_no_generation():
    assert genid_of(_newgen(5)[:-3]) is None
    assert list(nl.messages(b"\x10\0\0")) == []
