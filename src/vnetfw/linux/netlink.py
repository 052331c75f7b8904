"""nf_tables over netlink (nfnetlink): the message and attribute walk, once. Pure: no sockets.

Contract: ``messages(data)`` yields ``(type, start, end)`` for every complete netlink message
in a datagram (``start``..``end``: its payload, after the 16-byte nlmsghdr), stopping at a
truncated tail; ``attrs(data, start, end)`` maps each attribute type to its payload (the
NESTED/BYTEORDER bits dropped, the first of a repeated type kept); ``message()`` builds one
request; ``be32()`` reads a big-endian u32 attribute (nf_tables sends numbers in network
order). The generation id (``backends.nfgen``) and watch's change notifications
(``watch_nl``) both read their messages with these.
"""

from __future__ import annotations

import struct
from typing import Iterator

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NLM_F_REQUEST = 1
# enum nf_tables_msg_types: the generation messages (linux/netfilter/nf_tables.h)
NFT_MSG_NEWGEN, NFT_MSG_GETGEN = 15, 16
NFTA_GEN_ID, NFTA_GEN_PROC_PID, NFTA_GEN_PROC_NAME = 1, 2, 3
NLMSG_HDRLEN = 16
NFGENMSG_LEN = 4                 # struct nfgenmsg: family, version, resource id


def messages(data: bytes) -> Iterator[tuple[int, int, int]]:
    pos = 0
    while pos + NLMSG_HDRLEN <= len(data):
        mlen, mtype = struct.unpack_from("=IH", data, pos)
        if mlen < NLMSG_HDRLEN or pos + mlen > len(data):
            break
        yield mtype, pos + NLMSG_HDRLEN, pos + mlen
        pos += (mlen + 3) & ~3


def attrs(data: bytes, pos: int, end: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while pos + 4 <= end:
        alen, atype = struct.unpack_from("=HH", data, pos)
        if alen < 4:
            break
        out.setdefault(atype & 0x3FFF, data[pos + 4:pos + alen])   # drop NESTED/BYTEORDER bits
        pos += (alen + 3) & ~3
    return out


def message(msgtype: int, flags: int, seq: int, body: bytes) -> bytes:
    return struct.pack("=IHHII", NLMSG_HDRLEN + len(body), msgtype, flags, seq, 0) + body


def be32(value: bytes | None) -> int | None:
    return struct.unpack(">I", value)[0] if value is not None and len(value) == 4 else None
