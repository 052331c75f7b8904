"""A minimal D-Bus client on the standard library (for ``watch`` and the firewalld adapter).

Contract: ``Bus(address)`` connects to a bus over a unix socket, authenticates with EXTERNAL
(our uid) and says Hello. ``call()`` sends a method call and blocks (with a timeout) for its
reply, returning the reply's arguments as a tuple or raising ``DBusError`` (a D-Bus error
reply) / ``DBusTransportError`` (socket, auth or framing trouble). ``add_match()`` subscribes
to signals; signals (and method calls, for test services) that arrive are queued and handed
out by ``poll_messages()``, which never blocks, so the caller can put ``fileno()`` into its
own select/poll loop. ``Bus`` also has the few calls a service needs (``request_name``,
``reply``, ``reply_error``, ``emit``): the tests use them to run a fake FirewallD1.

Why not a library: dbus-python and PyGObject are C extensions bound to the system Python
(the venv cannot import them), jeepney would be a new dependency, and shelling out to
``busctl``/``gdbus`` per call costs a process each and cannot sit in a poll loop. vnetfw needs
a dozen method calls and two signals, which is this much code.

Scope: unix-socket addresses (``unix:path=`` and ``unix:abstract=``; the first usable entry
of a ``;``-separated list), no fd passing, little-endian outgoing messages (incoming ones in
either byte order). Types: every basic type, arrays, structs, dict entries and variants.
Variants decode to their value; to *send* a variant, pass ``Variant(signature, value)``.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterator

SYSTEM_BUS_DEFAULT = "unix:path=/run/dbus/system_bus_socket"
BUS_NAME = "org.freedesktop.DBus"
BUS_PATH = "/org/freedesktop/DBus"

METHOD_CALL, METHOD_RETURN, ERROR, SIGNAL = 1, 2, 3, 4
NO_REPLY_EXPECTED = 0x1
# A call to a name nobody owns makes the bus *start* its service (D-Bus activation): Debian's
# firewalld package installs dbus-org.fedoraproject.FirewallD1.service, so a plain call would
# start firewalld on a host whose admin stopped it. Calls to services we only talk to when
# they already run carry this flag.
NO_AUTO_START = 0x2

# Header field codes and their fixed types (D-Bus specification, "Message Format").
F_PATH, F_INTERFACE, F_MEMBER, F_ERROR_NAME, F_REPLY_SERIAL = 1, 2, 3, 4, 5
F_DESTINATION, F_SENDER, F_SIGNATURE, F_UNIX_FDS = 6, 7, 8, 9
_FIELD_SIG = {F_PATH: "o", F_INTERFACE: "s", F_MEMBER: "s", F_ERROR_NAME: "s",
              F_REPLY_SERIAL: "u", F_DESTINATION: "s", F_SENDER: "s", F_SIGNATURE: "g",
              F_UNIX_FDS: "u"}

MAX_MESSAGE = 128 * 1024 * 1024        # the specification's limit


class DBusTransportError(OSError):
    """The connection cannot be used (refused, authentication failed, closed, garbled)."""


class DBusError(Exception):
    """An error reply: ``name`` (e.g. org.fedoraproject.FirewallD1.Exception) and text."""

    def __init__(self, name: str, message: str = "") -> None:
        self.name = name
        self.message = message
        super().__init__(f"{name}: {message}" if message else name)


@dataclass(frozen=True)
class Variant:
    """A value to send as a D-Bus variant, with its signature."""

    signature: str
    value: Any


@dataclass
class Message:
    type: int
    serial: int
    flags: int = 0
    path: str | None = None
    interface: str | None = None
    member: str | None = None
    error_name: str | None = None
    reply_serial: int | None = None
    destination: str | None = None
    sender: str | None = None
    signature: str = ""
    body: tuple = field(default_factory=tuple)


# ---------------------------------------------------------------------------------------
# Signatures

_ALIGN = {"y": 1, "b": 4, "n": 2, "q": 2, "i": 4, "u": 4, "x": 8, "t": 8, "d": 8, "h": 4,
          "s": 4, "o": 4, "g": 1, "a": 4, "(": 8, "{": 8, "v": 1}
_FIXED = {"y": "B", "b": "I", "n": "h", "q": "H", "i": "i", "u": "I", "x": "q", "t": "Q",
          "d": "d", "h": "I"}


def split_signature(sig: str) -> list[str]:
    """``"sa{sv}(ii)"`` -> ``["s", "a{sv}", "(ii)"]``; ValueError when malformed."""
    out, i = [], 0
    while i < len(sig):
        j = _complete_type_end(sig, i)
        out.append(sig[i:j])
        i = j
    return out


def _complete_type_end(sig: str, i: int) -> int:
    if i >= len(sig):
        raise ValueError(f"incomplete signature {sig!r}")
    c = sig[i]
    if c in _FIXED or c in "sogv":
        return i + 1
    if c == "a":
        return _complete_type_end(sig, i + 1)
    if c in "({":
        close = ")" if c == "(" else "}"
        j = i + 1
        while j < len(sig) and sig[j] != close:
            j = _complete_type_end(sig, j)
        if j >= len(sig) or j == i + 1:
            raise ValueError(f"unbalanced or empty container in signature {sig!r}")
        return j + 1
    raise ValueError(f"unknown type code {c!r} in signature {sig!r}")


# ---------------------------------------------------------------------------------------
# Marshalling (we always write little-endian)


class _Writer:
    def __init__(self) -> None:
        self.buf = bytearray()

    def align(self, n: int) -> None:
        self.buf += b"\0" * (-len(self.buf) % n)

    def write(self, sig: str, value: Any) -> None:
        c = sig[0]
        self.align(_ALIGN[c])
        if c in _FIXED:
            if c == "b":
                value = 1 if value else 0
            self.buf += struct.pack("<" + _FIXED[c], value)
        elif c in "so":
            data = value.encode()
            self.buf += struct.pack("<I", len(data)) + data + b"\0"
        elif c == "g":
            data = value.encode()
            self.buf += struct.pack("<B", len(data)) + data + b"\0"
        elif c == "v":
            if not isinstance(value, Variant):
                raise TypeError("pass Variant(signature, value) to send a variant")
            self.write("g", value.signature)
            self.write(value.signature, value.value)
        elif c == "a":
            elem = sig[1:]
            at = len(self.buf)
            self.buf += b"\0\0\0\0"
            self.align(_ALIGN[elem[0]])         # padding before the first element is not counted
            start = len(self.buf)
            items = value.items() if elem[0] == "{" else value
            for item in items:
                self.write(elem, item)
            struct.pack_into("<I", self.buf, at, len(self.buf) - start)
        elif c in "({":
            for s, v in zip(split_signature(sig[1:-1]), value, strict=True):
                self.write(s, v)
        else:  # pragma: no cover - split_signature rejects these
            raise ValueError(sig)


def marshal_body(signature: str, args: tuple | list) -> bytes:
    """The body bytes for ``args`` of ``signature`` (starting 8-aligned, as bodies do)."""
    w = _Writer()
    for s, v in zip(split_signature(signature), args, strict=True):
        w.write(s, v)
    return bytes(w.buf)


class _Reader:
    def __init__(self, data: bytes, pos: int, endian: str) -> None:
        self.data = data
        self.pos = pos
        self.e = endian

    def align(self, n: int) -> None:
        self.pos += -self.pos % n

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("message truncated")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def read(self, sig: str) -> Any:
        c = sig[0]
        self.align(_ALIGN[c])
        if c in _FIXED:
            fmt = self.e + _FIXED[c]
            (v,) = struct.unpack(fmt, self._take(struct.calcsize(fmt)))
            return bool(v) if c == "b" else v
        if c in "so":
            (n,) = struct.unpack(self.e + "I", self._take(4))
            s = self._take(n + 1)
            return s[:-1].decode()
        if c == "g":
            (n,) = struct.unpack("B", self._take(1))
            return self._take(n + 1)[:-1].decode()
        if c == "v":
            inner = self.read("g")
            if len(split_signature(inner)) != 1:
                raise ValueError(f"variant signature {inner!r} is not one complete type")
            return self.read(inner)
        if c == "a":
            (n,) = struct.unpack(self.e + "I", self._take(4))
            if n > MAX_MESSAGE:
                raise ValueError("array too long")
            elem = sig[1:]
            self.align(_ALIGN[elem[0]])
            end = self.pos + n
            if end > len(self.data):
                raise ValueError("message truncated")
            items = []
            while self.pos < end:
                items.append(self.read(elem))
            if self.pos != end:
                raise ValueError("array length does not match its elements")
            return dict(items) if elem[0] == "{" else items
        if c in "({":
            return tuple(self.read(s) for s in split_signature(sig[1:-1]))
        raise ValueError(sig)  # pragma: no cover


def unmarshal_body(signature: str, data: bytes, endian: str = "<") -> tuple:
    r = _Reader(data, 0, endian)
    return tuple(r.read(s) for s in split_signature(signature))


# ---------------------------------------------------------------------------------------
# Messages


def encode_message(msg: Message) -> bytes:
    body = marshal_body(msg.signature, msg.body) if msg.signature else b""
    fields: list[tuple[int, Variant]] = []
    for code, val in ((F_PATH, msg.path), (F_INTERFACE, msg.interface), (F_MEMBER, msg.member),
                      (F_ERROR_NAME, msg.error_name), (F_REPLY_SERIAL, msg.reply_serial),
                      (F_DESTINATION, msg.destination), (F_SENDER, msg.sender),
                      (F_SIGNATURE, msg.signature or None)):
        if val is not None:
            fields.append((code, Variant(_FIELD_SIG[code], val)))
    w = _Writer()
    for sig, v in (("y", ord("l")), ("y", msg.type), ("y", msg.flags), ("y", 1),
                   ("u", len(body)), ("u", msg.serial), ("a(yv)", fields)):
        w.write(sig, v)
    w.align(8)
    return bytes(w.buf) + body


def message_length(head: bytes) -> int | None:
    """Total length of the message whose first 16 bytes are ``head`` (None: need more)."""
    if len(head) < 16:
        return None
    e = {ord("l"): "<", ord("B"): ">"}.get(head[0])
    if e is None:
        raise ValueError(f"bad endianness byte {head[0]!r}")
    body_len, _serial, fields_len = struct.unpack(e + "III", head[4:16])
    total = 16 + fields_len + (-(16 + fields_len) % 8) + body_len
    if total > MAX_MESSAGE:
        raise ValueError("message too long")
    return total


def decode_message(data: bytes) -> Message:
    e = {ord("l"): "<", ord("B"): ">"}.get(data[0])
    if e is None:
        raise ValueError(f"bad endianness byte {data[0]!r}")
    r = _Reader(data, 1, e)
    mtype, flags, _version = r.read("y"), r.read("y"), r.read("y")
    body_len, serial = r.read("u"), r.read("u")
    fields = dict(r.read("a(yv)"))
    r.align(8)
    msg = Message(mtype, serial, flags, path=fields.get(F_PATH),
                  interface=fields.get(F_INTERFACE), member=fields.get(F_MEMBER),
                  error_name=fields.get(F_ERROR_NAME), reply_serial=fields.get(F_REPLY_SERIAL),
                  destination=fields.get(F_DESTINATION), sender=fields.get(F_SENDER),
                  signature=fields.get(F_SIGNATURE, ""))
    body = data[r.pos:r.pos + body_len]
    if len(body) != body_len:
        raise ValueError("message truncated")
    msg.body = unmarshal_body(msg.signature, body, e) if msg.signature else ()
    return msg


# ---------------------------------------------------------------------------------------
# Addresses and the connection


def system_bus_address() -> str:
    return os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or SYSTEM_BUS_DEFAULT


def _unescape(v: str) -> str:
    out, i = bytearray(), 0
    while i < len(v):
        if v[i] == "%" and i + 2 < len(v):
            out += bytes.fromhex(v[i + 1:i + 3])
            i += 3
        else:
            out += v[i].encode()
            i += 1
    return out.decode()


def parse_address(address: str) -> list[str | bytes]:
    """Socket addresses to try, in order, for a D-Bus address string (unix only)."""
    out: list[str | bytes] = []
    for entry in address.split(";"):
        if not entry.strip():
            continue
        transport, _, params = entry.partition(":")
        kv = dict(p.split("=", 1) for p in params.split(",") if "=" in p)
        if transport != "unix":
            continue
        if "path" in kv:
            out.append(_unescape(kv["path"]))
        elif "abstract" in kv:
            out.append(b"\0" + _unescape(kv["abstract"]).encode())
    if not out:
        raise DBusTransportError(f"no usable unix socket in D-Bus address {address!r}")
    return out


class Bus:
    """One authenticated connection to a message bus."""

    def __init__(self, address: str | None = None, timeout: float = 5.0) -> None:
        self.address = address or system_bus_address()
        self.timeout = timeout
        self._serial = 0
        self._rbuf = bytearray()
        self._queue: deque[Message] = deque()
        self.sock: socket.socket | None = None
        last: OSError | None = None
        for sa in parse_address(self.address):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            s.settimeout(timeout)
            try:
                s.connect(sa)
            except OSError as e:
                s.close()
                last = e
                continue
            self.sock = s
            break
        if self.sock is None:
            raise DBusTransportError(f"cannot connect to D-Bus at {self.address}: "
                                     f"{getattr(last, 'strerror', None) or last}")
        try:
            self._authenticate()
            self.sock.setblocking(False)
            (self.unique_name,) = self.call(BUS_NAME, BUS_PATH, BUS_NAME, "Hello")
        except BaseException:
            self.close()
            raise

    # -- plumbing -----------------------------------------------------------------------
    def _authenticate(self) -> None:
        assert self.sock is not None
        uid = str(os.geteuid()).encode().hex()
        try:
            self.sock.sendall(b"\0AUTH EXTERNAL " + uid.encode() + b"\r\n")
            line = b""
            while not line.endswith(b"\r\n"):
                chunk = self.sock.recv(256)
                if not chunk:
                    raise DBusTransportError("bus closed the connection during authentication")
                line += chunk
            if not line.startswith(b"OK "):
                raise DBusTransportError(f"bus refused authentication: {line.strip().decode()!r}")
            self.sock.sendall(b"BEGIN\r\n")
        except socket.timeout:
            raise DBusTransportError("bus did not answer the authentication in time") from None

    def fileno(self) -> int:
        if self.sock is None:
            raise DBusTransportError("connection closed")
        return self.sock.fileno()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    @property
    def closed(self) -> bool:
        return self.sock is None

    def __enter__(self) -> "Bus":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def next_serial(self) -> int:
        self._serial = self._serial % 0xFFFFFFFF + 1
        return self._serial

    def send(self, msg: Message) -> int:
        if self.sock is None:
            raise DBusTransportError("connection closed")
        if not msg.serial:
            msg.serial = self.next_serial()
        data = memoryview(encode_message(msg))
        deadline = time.monotonic() + self.timeout
        while data:
            try:
                n = self.sock.send(data)
                data = data[n:]
            except BlockingIOError:
                if not select.select([], [self.sock], [], max(0.0, deadline - time.monotonic()))[1]:
                    raise DBusTransportError("timed out sending to the bus") from None
            except OSError as e:
                self.close()
                raise DBusTransportError(f"bus connection lost: {e.strerror or e}") from None
        return msg.serial

    def _fill(self) -> bool:
        """Read what the socket has (non-blocking); parse complete messages into the queue.
        Returns False when nothing could be read."""
        if self.sock is None:
            raise DBusTransportError("connection closed")
        got = False
        while True:
            try:
                chunk = self.sock.recv(65536)
            except BlockingIOError:
                break
            except OSError as e:
                self.close()
                raise DBusTransportError(f"bus connection lost: {e.strerror or e}") from None
            if not chunk:
                self.close()
                raise DBusTransportError("the bus closed the connection")
            self._rbuf += chunk
            got = True
        while True:
            try:
                total = message_length(bytes(self._rbuf[:16]))
                if total is None or len(self._rbuf) < total:
                    break
                msg = decode_message(bytes(self._rbuf[:total]))
            except (ValueError, struct.error, UnicodeDecodeError) as e:
                self.close()
                raise DBusTransportError(f"garbled message from the bus: {e}") from None
            del self._rbuf[:total]
            self._queue.append(msg)
        return got

    # -- client -------------------------------------------------------------------------
    def call(self, destination: str, path: str, interface: str, member: str,
             signature: str = "", args: tuple | list = (), timeout: float | None = None,
             flags: int = 0) -> tuple:
        """Call a method and wait for its reply; messages that arrive meanwhile are kept."""
        serial = self.send(Message(METHOD_CALL, 0, flags, path=path, interface=interface,
                                   member=member, destination=destination,
                                   signature=signature, body=tuple(args)))
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            for m in list(self._queue):
                if m.type in (METHOD_RETURN, ERROR) and m.reply_serial == serial:
                    self._queue.remove(m)
                    if m.type == ERROR:
                        raise DBusError(m.error_name or "?", str(m.body[0]) if m.body else "")
                    return m.body
            left = deadline - time.monotonic()
            if left <= 0:
                raise DBusTransportError(f"no reply to {interface}.{member} from {destination} "
                                         "in time")
            select.select([self.sock], [], [], left)
            self._fill()

    def add_match(self, **rule: str) -> None:
        """Subscribe: ``add_match(type="signal", interface=..., member=...)``."""
        text = ",".join(f"{k}='{v}'" for k, v in rule.items())
        self.call(BUS_NAME, BUS_PATH, BUS_NAME, "AddMatch", "s", (text,))

    def name_has_owner(self, name: str) -> bool:
        return bool(self.call(BUS_NAME, BUS_PATH, BUS_NAME, "NameHasOwner", "s", (name,))[0])

    def poll_messages(self) -> Iterator[Message]:
        """Every queued or readable incoming message other than replies (never blocks)."""
        self._fill()
        while self._queue:
            m = self._queue.popleft()
            if m.type in (METHOD_RETURN, ERROR):
                continue                    # a reply to a call that timed out: drop it
            yield m

    # -- service side (used by the tests' fake firewalld) -------------------------------
    def request_name(self, name: str) -> None:
        (r,) = self.call(BUS_NAME, BUS_PATH, BUS_NAME, "RequestName", "su", (name, 4))
        if r not in (1, 4):         # primary owner / already owner
            raise DBusError("RequestName", f"could not own {name} (result {r})")

    def reply(self, call: Message, signature: str = "", args: tuple | list = ()) -> None:
        if call.flags & NO_REPLY_EXPECTED:
            return
        self.send(Message(METHOD_RETURN, 0, reply_serial=call.serial, destination=call.sender,
                          signature=signature, body=tuple(args)))

    def reply_error(self, call: Message, name: str, text: str) -> None:
        if call.flags & NO_REPLY_EXPECTED:
            return
        self.send(Message(ERROR, 0, error_name=name, reply_serial=call.serial,
                          destination=call.sender, signature="s", body=(text,)))

    def emit(self, path: str, interface: str, member: str, signature: str = "",
             args: tuple | list = ()) -> None:
        self.send(Message(SIGNAL, 0, path=path, interface=interface, member=member,
                          signature=signature, body=tuple(args)))
