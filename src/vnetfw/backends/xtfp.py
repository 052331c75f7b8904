"""A fingerprint of iptables-legacy's tables, read from the kernel: no process, ~1 ms a table.

x_tables (iptables-legacy) has no generation counter like nf_tables. But each table is one
blob in the kernel, replaced whole by every change (``iptables-legacy-restore`` and every
single ``iptables-legacy`` command alike), and the kernel hands it out with two
``getsockopt`` calls (``IPT_SO_GET_INFO``, ``IPT_SO_GET_ENTRIES``; ``iptables-save`` reads
it the same way). A hash of the blobs of the filter, nat and mangle tables of both families,
with each rule's packet and byte counters zeroed (traffic moves them), changes exactly when
a rule, chain or policy changes. vnetfw records it after each of its own commits, and while
it stays the same, nothing has changed since: a re-apply, check or status needs no
``iptables-save`` and no parsing, and adding a network needs no readback (the same role
nf_tables' generation id plays, see ``nfgen``).

Netfilter facts this relies on:
- ``struct ipt_entry``/``ip6t_entry``: ``ipt_ip`` (84 bytes) or ``ip6t_ip6`` (136), then
  ``nfcache`` (u32), ``target_offset`` (u16), ``next_offset`` (u16), ``comefrom`` (u32),
  ``struct xt_counters`` (two u64); IPv4: next_offset at 90, counters at 96; IPv6: 142 and
  152 (4 bytes of padding align the counters). Entries follow each other by ``next_offset``.
  That is the layout of 64-bit kernels (x86-64, arm64). The walk must land exactly on the
  table's end after as many entries as GET_INFO counted; where it does not (another layout),
  there is no fingerprint, and vnetfw reads the tables every time, as before. Since Linux 4.11 the copy to user space carries no kernel
  pointers, so equal rules give equal bytes.
- Asking for a table that is not loaded makes the kernel load it (``iptable_nat`` ...):
  only tables listed in ``/proc/thread-self/net/ip(6)_tables_names`` are read, so reading
  creates nothing. (``thread-self``: the namespace is entered by one thread only.)
- GET_ENTRIES fails with EAGAIN when the table was replaced after GET_INFO (sizes differ):
  read again.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import socket
import struct

from ..ruleset import TABLES                    # the tables vnetfw writes
from .nfgen import Generation, _boot_id, in_netns, netns_cookie
from .runner import LIBC

SO_GET_INFO, SO_GET_ENTRIES = 64, 65            # IPT_ and IP6T_ alike
# family -> (address family, sockopt level, /proc name list, offsets of next_offset and of
# the counters in an entry; IPv6: 4 bytes of padding align the u64 counters)
_FAMILY = {4: (socket.AF_INET, socket.IPPROTO_IP, "ip_tables_names", (90, 96)),
           6: (socket.AF_INET6, socket.IPPROTO_IPV6, "ip6_tables_names", (142, 152))}
_INFO = struct.Struct("=32sI5I5III")             # struct ipt_getinfo: 84 bytes
_ENTRIES_HEAD = 40                               # struct ipt_get_entries: name, size, pad



def _getsockopt(fd: int, level: int, opt: int, buf: ctypes.Array) -> None:
    """getsockopt(2) with an input buffer (Python's socket.getsockopt cannot pass one)."""
    n = ctypes.c_uint(len(buf))
    if LIBC.getsockopt(fd, level, opt, buf, ctypes.byref(n)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"getsockopt {opt}: {errno.errorcode.get(e, e)}")


def _zero_counters(blob: bytearray, start: int, at: tuple[int, int], num_entries: int,
                   name: str) -> None:
    """Zero the counters of the entries from ``start`` to the end of ``blob``, in place.
    Raises OSError unless the walk by ``next_offset`` lands exactly on the end after
    ``num_entries`` entries (another layout than the one this module knows)."""
    next_at, counters_at = at
    # Entries are 8-byte aligned (and so is ``start``): index the blob as u16 for
    # next_offset and as u64 for the two counters, cheaper than slicing per entry.
    if (len(blob) - start) % 8 or start % 8:
        raise OSError(errno.EINVAL, f"unexpected x_tables entry layout in {name}")
    u16, u64 = memoryview(blob).cast("H"), memoryview(blob).cast("Q")
    off, end, n = start, len(blob), 0
    try:
        while off < end:
            c = (off + counters_at) >> 3
            u64[c] = u64[c + 1] = 0
            step = u16[(off + next_at) >> 1]
            if step == 0 or step % 8:
                break
            off += step
            n += 1
    except IndexError:              # an entry ran past the end
        off = -1
    finally:
        u16.release()
        u64.release()
    if off != end or n != num_entries:
        raise OSError(errno.EINVAL, f"unexpected x_tables entry layout in {name}")


def _hash_table(h, s: socket.socket, level: int, name: str, at: tuple[int, int]) -> None:
    """Feed ``h`` one table's hook layout and rules, counters zeroed. (Buffers are shared,
    not copied: the filter table of 1,000 networks is ~5 MB.)"""
    for _ in range(5):
        info = ctypes.create_string_buffer(name.encode(), _INFO.size)
        _getsockopt(s.fileno(), level, SO_GET_INFO, info)
        num_entries, size = _INFO.unpack(info.raw)[-2:]
        blob = bytearray(_ENTRIES_HEAD + size)
        blob[:len(name)] = name.encode()
        struct.pack_into("=I", blob, 32, size)
        try:
            _getsockopt(s.fileno(), level, SO_GET_ENTRIES,
                        (ctypes.c_char * len(blob)).from_buffer(blob))
        except OSError as e:
            if e.errno == errno.EAGAIN:        # replaced in between: read it again
                continue
            raise
        _zero_counters(blob, _ENTRIES_HEAD, at, num_entries, name)
        h.update(info.raw[32:])
        h.update(memoryview(blob)[_ENTRIES_HEAD:])
        return
    raise OSError(errno.EAGAIN, f"table {name} kept changing while read")


def _loaded(names_file: str) -> set[str]:
    """The x_tables tables of one family loaded in the calling thread's namespace."""
    try:
        with open(f"/proc/thread-self/net/{names_file}") as f:
            return set(f.read().split())
    except FileNotFoundError:                   # x_tables of this family not built in
        return set()


def loaded_tables(netns_path: str | None = None) -> dict[int, set[str]]:
    """Family -> the x_tables tables loaded in our namespace or the one at ``netns_path``
    (reading this list loads nothing)."""
    return in_netns(netns_path, lambda: {fam: _loaded(spec[2])
                                         for fam, spec in _FAMILY.items()})


def _fingerprint_here() -> Generation:
    h = hashlib.sha256()            # SHA extensions: ~2 GB/s here, blake2b ~1.4
    cookie = None
    for fam, (af, level, names_file, at) in _FAMILY.items():
        loaded = _loaded(names_file)
        if not loaded & set(TABLES):
            h.update(f"|{fam} none|".encode())  # nothing to read (nor a socket to open:
            continue                            # with IPv6 disabled there is none)
        s = socket.socket(af, socket.SOCK_RAW, socket.IPPROTO_RAW)
        try:
            cookie = netns_cookie(s)
            for table in TABLES:
                h.update(f"|{fam}{table}|".encode())
                if table in loaded:
                    _hash_table(h, s, level, table, at)
        finally:
            s.close()
    if cookie is None:              # no table loaded at all: still a namespace to name
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        with s:
            cookie = netns_cookie(s)
    return Generation(int.from_bytes(h.digest()[:8], "big"), cookie, _boot_id())


def fingerprint(netns_path: str | None = None) -> Generation:
    """The fingerprint of the legacy filter/nat/mangle tables of our namespace or of the
    one at ``netns_path``, as a ``Generation`` (equal: no rule, chain or policy changed in
    them; the id does not count anything). Raises OSError if the kernel does not answer."""
    return in_netns(netns_path, _fingerprint_here)
