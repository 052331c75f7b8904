"""nftables change notifications from the kernel, for ``vnetfw watch``.

Contract: ``NftEvents(netns)`` opens a netlink socket subscribed to the nf_tables multicast
group (NFNLGRP_NFTABLES) inside network namespace ``netns`` (or our own when None).
``fileno()`` goes into the caller's poll loop; ``read()`` never blocks and returns the
events that arrived since the last call: every table/chain/rule/set/element/object change
with its family and table, and one ``gen`` event at the end of each committed transaction
(with the generation id and the pid/name of the process that committed it). ``overflow``
says the kernel dropped notifications (ENOBUFS): the caller must assume anything changed.

This is what ``nft monitor`` prints, taken from the kernel directly:
- iptables-nft is nf_tables underneath, so its changes (``iptables-nft -F`` ...) arrive here
  too; iptables-legacy changes never do (x_tables has no notifications at all).
- Notifications are queued on our socket during the committing process's own sendmsg, so
  once a commit we started has returned, every event it caused is already readable. ``nft
  monitor`` would add a process and a pipe between the kernel and us, with a delay we could
  not bound, and is missing on iptables-nft hosts without the nftables package.
- The socket belongs to the namespace it was created in. We create it in a short-lived
  thread (``nfgen.in_netns``) that setns(2)-es into ``/run/netns/NAME``: setns
  with CLONE_NEWNET changes the calling thread only, so the watch process itself never
  leaves its namespace and there is nothing to switch back.
- ``nft -c`` (check-only) batches are aborted by the kernel and notify nothing.
"""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass

from .backends.nfgen import in_netns
from .backends.runner import NETNS_DIR, netns_problem
from .errors import BackendError
from .linux import netlink as nl

NFNLGRP_NFTABLES = 7
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 2, 3, 4

# enum nf_tables_msg_types (linux/netfilter/nf_tables.h)
_MSG = {0: "add table", 2: "delete table", 3: "add chain", 5: "delete chain", 6: "add rule",
        8: "delete rule", 9: "add set", 11: "delete set", 12: "add element",
        14: "delete element", 15: "gen", 18: "add object", 20: "delete object",
        22: "add flowtable", 24: "delete flowtable", 26: "destroy table",
        27: "destroy chain", 28: "destroy rule", 29: "destroy set", 30: "destroy element",
        31: "destroy object", 32: "destroy flowtable"}
# Attribute 1 of every table/chain/rule/set/element/object/flowtable message is its table.
NFTA_X_TABLE = 1
NFPROTO = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}

RCVBUF = 8 * 1024 * 1024


@dataclass(frozen=True)
class NftEvent:
    what: str                   # "add rule", "delete table", ..., or "gen"
    family: str = ""
    table: str = ""
    genid: int | None = None    # gen events only
    pid: int | None = None
    comm: str = ""

    def __str__(self) -> str:
        if self.what == "gen":
            return f"generation {self.genid} by {self.comm or '?'}[{self.pid}]"
        return f"{self.what} {self.family} {self.table}".rstrip()


def _text(value: bytes | None) -> str:
    return (value or b"").split(b"\0")[0].decode(errors="replace")


def parse_messages(data: bytes) -> list[NftEvent]:
    """Netlink datagram(s) -> nf_tables events (other subsystems and types are skipped)."""
    events: list[NftEvent] = []
    for mtype, start, end in nl.messages(data):
        if mtype >> 8 != nl.NFNL_SUBSYS_NFTABLES or end - start < nl.NFGENMSG_LEN:
            continue
        kind = _MSG.get(mtype & 0xFF)
        if kind is None:
            continue
        a = nl.attrs(data, start + nl.NFGENMSG_LEN, end)
        if kind == "gen":
            events.append(NftEvent("gen", genid=nl.be32(a.get(nl.NFTA_GEN_ID)),
                                   pid=nl.be32(a.get(nl.NFTA_GEN_PROC_PID)),
                                   comm=_text(a.get(nl.NFTA_GEN_PROC_NAME))))
        else:
            events.append(NftEvent(kind, NFPROTO.get(data[start], str(data[start])),
                                   _text(a.get(NFTA_X_TABLE))))
    return events


def _open_socket() -> socket.socket:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC
                      | socket.SOCK_NONBLOCK, nl.NETLINK_NETFILTER)
    try:
        s.bind((0, 0))
        s.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
        # A flush of a large ruleset is one notification per object: make room so that an
        # overflow (ENOBUFS, handled anyway) stays rare. FORCE needs CAP_NET_ADMIN.
        try:
            s.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)        # SO_RCVBUFFORCE
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    except BaseException:
        s.close()
        raise
    return s


class NftEvents:
    """Subscription to nf_tables notifications in one network namespace."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self.overflow = False
        self._buf = bytearray(1 << 20)
        try:
            if netns is not None and (p := netns_problem(netns)) is not None:
                raise BackendError(p)
            # The socket belongs to the namespace it is created in.
            self.sock = in_netns(None if netns is None else os.path.join(NETNS_DIR, netns),
                                 _open_socket)
        except OSError as e:
            raise BackendError(f"cannot subscribe to nftables events: {e.strerror or e}") from None

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> list[NftEvent]:
        """Everything queued now (never blocks). Sets ``overflow`` if the kernel dropped some."""
        events: list[NftEvent] = []
        while True:
            try:
                n = self.sock.recv_into(self._buf)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self.overflow = True
                    continue
                raise
            events += parse_messages(bytes(self._buf[:n]))
        return events

    def close(self) -> None:
        self.sock.close()
