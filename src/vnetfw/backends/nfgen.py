"""nf_tables' ruleset generation id, read over netlink: no process, about 0.1 ms.

The kernel bumps a namespace's generation id on every committed nf_tables transaction:
every ``nft -f`` batch and every table COMMIT of ``iptables-nft-restore`` (one restore of
three tables moves it by three). iptables-legacy (x_tables) has no such counter.

vnetfw uses it as the cheapest exact answer to "is the live ruleset still what we left?":
after a commit whose generation moved by exactly the number of transactions vnetfw sent
(counted from the generation read *before* the readback the change was computed from), the
live ruleset is exactly the desired one; while the generation stays there, nothing at all
has changed, and a re-apply, check or status needs no readback.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import threading
from typing import Callable, NamedTuple, TypeVar

from ..linux import netlink as nl
from .runner import CLONE_NEWNET, LIBC

T = TypeVar("T")

SO_NETNS_COOKIE = 71            # Linux >= 5.14


def _boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


class Generation(NamedTuple):
    """A generation id together with what makes it unique. The counter alone repeats: it
    starts again in every new namespace, and after a reboot. The namespace cookie is never
    reused within one boot (unlike a namespace's inode number), and the boot id tells boots
    apart, so equal Generations mean: same namespace, same boot, no transaction since."""

    id: int
    netns_cookie: int
    boot_id: str


def _genid_here() -> Generation:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, nl.NETLINK_NETFILTER)
    try:
        # The socket belongs to the namespace it was created in: its cookie is that one's.
        cookie = netns_cookie(s)
        s.bind((0, 0))
        s.settimeout(2.0)
        body = struct.pack("BBH", socket.AF_UNSPEC, 0, 0)          # struct nfgenmsg
        s.send(nl.message((nl.NFNL_SUBSYS_NFTABLES << 8) | nl.NFT_MSG_GETGEN,
                          nl.NLM_F_REQUEST, 1, body))
        gen = genid_of(s.recv(65536))
        if gen is None:
            raise OSError("no generation id in the kernel's answer")
        return Generation(gen, cookie, _boot_id())
    finally:
        s.close()


def genid_of(data: bytes) -> int | None:
    """The generation id in the kernel's answer to NFT_MSG_GETGEN (None: not there)."""
    for mtype, start, end in nl.messages(data):
        if mtype == (nl.NFNL_SUBSYS_NFTABLES << 8) | nl.NFT_MSG_NEWGEN:
            return nl.be32(nl.attrs(data, start + nl.NFGENMSG_LEN, end).get(nl.NFTA_GEN_ID))
    return None


def genid(netns_path: str | None = None) -> Generation:
    """Generation id of our own namespace, or of the one at ``netns_path``. Raises OSError
    if the kernel does not answer."""
    return in_netns(netns_path, _genid_here)


def netns_cookie(s: socket.socket) -> int:
    """The cookie of the namespace a socket was created in (never reused within a boot)."""
    return struct.unpack("=Q", s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]


def in_netns(netns_path: str | None, fn: Callable[[], T]) -> T:
    """``fn()`` in our own namespace, or in the one at ``netns_path``: entered by a
    short-lived helper thread only (setns(2) changes the calling thread's namespace, not
    the process's). Sockets ``fn`` creates belong to that namespace."""
    if netns_path is None:
        return fn()
    out: dict = {}

    def worker() -> None:
        fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if LIBC.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            out["v"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            out["e"] = e
        finally:
            os.close(fd)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    if "e" in out:
        raise out["e"]
    return out["v"]
