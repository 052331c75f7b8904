"""D-Bus for ``watch``, the firewalld integration and ``doctor``: a thin adapter over jeepney.

Contract: ``Bus(address)`` connects to a bus over a unix socket, authenticates with EXTERNAL
(our uid) and says Hello. ``call()`` sends a method call and blocks (with a timeout) for its
reply, returning the reply's arguments as a tuple or raising ``DBusError`` (a D-Bus error
reply) / ``DBusTransportError`` (socket, auth or framing trouble). ``add_match()`` subscribes
to signals; signals (and method calls, for test services) that arrive are queued and handed
out by ``poll_messages()``, which never blocks, so the caller can put ``fileno()`` into its
own poll loop. ``Bus`` also has the few calls a service needs (``request_name``, ``reply``,
``reply_error``, ``emit``): the tests use them to run a fake FirewallD1.

What is jeepney's and what is ours: jeepney (pure Python, no dependencies) does the protocol:
signatures, marshalling, message headers, the EXTERNAL handshake, bus addresses and match
rules. This module does the socket: a non-blocking one that an outside poll loop can watch,
with a time limit on every wait, and a cap on the size a message may claim. jeepney's own
blocking connection waits without a limit for its Hello and cannot hand out what arrived
without waiting, so it is not used.

Values: variants decode to their value; to *send* one, pass ``Variant(signature, value)``.
Arrays decode to lists (``ay`` too), dict-entry arrays to dicts, structs to tuples.

Cost: jeepney (~3 ms to import, compiled) is loaded when a connection is first tried or a
message built, not with this module: ``apply`` imports this module on every change, to ask
firewalld, but loads jeepney only when the integration is on (not ``VNETFW_FIREWALLD=off``,
not ``--netns`` without a bus named). ``--help``, ``status`` and ``check`` never import this
module.
"""

from __future__ import annotations

import functools
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


_FIELDS = ("path", "interface", "member", "error_name", "reply_serial", "destination",
           "sender")


# ---------------------------------------------------------------------------------------
# Signatures and values: jeepney's types, our value conventions


@functools.lru_cache(maxsize=256)
def _types(sig: str) -> tuple:
    """``sig`` as (complete type text, jeepney type) pairs; ValueError when malformed."""
    from jeepney.low_level import parse_signature
    chars, out = list(sig), []
    while chars:
        left = len(chars)
        try:
            t = parse_signature(chars)
        except (IndexError, KeyError, TypeError, ValueError):
            raise ValueError(f"malformed D-Bus signature {sig!r}") from None
        out.append((sig[len(sig) - left:len(sig) - len(chars)], t))
    if "()" in sig:                     # jeepney takes it; the specification does not
        raise ValueError(f"empty struct in D-Bus signature {sig!r}")
    return tuple(out)


def split_signature(sig: str) -> list[str]:
    """``"sa{sv}(ii)"`` -> ``["s", "a{sv}", "(ii)"]``; ValueError when malformed."""
    return [s for s, _ in _types(sig)]


def _one_type(sig: str) -> Any:
    types = _types(sig)
    if len(types) != 1:
        raise ValueError(f"variant signature {sig!r} is not one complete type")
    return types[0][1]


def _outgoing(t: Any, v: Any) -> Any:
    """Our value -> what jeepney serialises (variants as (signature, value), lists)."""
    from jeepney import low_level as jl
    if isinstance(t, jl.Variant):
        if not isinstance(v, Variant):
            raise TypeError("pass Variant(signature, value) to send a variant")
        return (v.signature, _outgoing(_one_type(v.signature), v.value))
    if isinstance(t, jl.Array):
        e = t.elt_type
        if isinstance(e, jl.DictEntry):
            kt, vt = e.fields
            items = v.items() if hasattr(v, "items") else v
            return {_outgoing(kt, k): _outgoing(vt, x) for k, x in items}
        return [_outgoing(e, x) for x in v]
    if isinstance(t, jl.Struct):
        return tuple(_outgoing(f, x) for f, x in zip(t.fields, v, strict=True))
    if isinstance(t, jl.Boolean):
        return bool(v)
    return v


def _incoming(t: Any, v: Any) -> Any:
    """What jeepney parsed -> our value (variants unwrapped, ``ay`` as a list)."""
    from jeepney import low_level as jl
    if isinstance(t, jl.Variant):
        sig, inner = v
        return _incoming(_one_type(sig), inner)
    if isinstance(t, jl.Array):
        e = t.elt_type
        if isinstance(e, jl.DictEntry):
            kt, vt = e.fields
            return {_incoming(kt, k): _incoming(vt, x) for k, x in v.items()}
        if isinstance(v, bytes):
            return list(v)
        return [_incoming(e, x) for x in v]
    if isinstance(t, jl.Struct):
        return tuple(_incoming(f, x) for f, x in zip(t.fields, v))
    return v


def _endianness(code: str) -> Any:
    from jeepney.low_level import Endianness
    return Endianness.little if code == "<" else Endianness.big


def marshal_body(signature: str, args: tuple | list) -> bytes:
    """The body bytes for ``args`` of ``signature`` (little-endian, starting 8-aligned)."""
    e, buf = _endianness("<"), b""
    for (_, t), v in zip(_types(signature), args, strict=True):
        buf += t.serialise(_outgoing(t, v), len(buf), e)
    return buf


def unmarshal_body(signature: str, data: bytes, endian: str = "<") -> tuple:
    e, pos, out = _endianness(endian), 0, []
    try:
        for _, t in _types(signature):
            v, pos = t.parse_data(data, pos, e)
            out.append(_incoming(t, v))
    except (IndexError, KeyError, AssertionError, TypeError, ValueError, struct.error) as err:
        raise ValueError(f"bad message body for signature {signature!r}: {err}") from None
    return tuple(out)


# ---------------------------------------------------------------------------------------
# Messages


def encode_message(msg: Message) -> bytes:
    from jeepney.low_level import Header, HeaderFields, Message as JMessage
    fields = {HeaderFields[name]: getattr(msg, name) for name in _FIELDS
              if getattr(msg, name) is not None}
    if msg.signature:
        fields[HeaderFields.signature] = msg.signature
    body = tuple(_outgoing(t, v) for (_, t), v in
                 zip(_types(msg.signature), msg.body, strict=True))
    header = Header(_endianness("<"), msg.type, msg.flags, 1, 0, msg.serial, fields)
    return JMessage(header, body).serialise()


def message_length(head: bytes) -> int | None:
    """Total length of the message whose first 16 bytes are ``head`` (None: need more)."""
    if len(head) < 16:
        return None
    if head[:1] not in (b"l", b"B"):
        raise ValueError(f"bad endianness byte {head[0]!r}")
    from jeepney.low_level import calc_msg_size
    total = calc_msg_size(head)
    if total > MAX_MESSAGE:
        raise ValueError("message too long")
    return total


def decode_message(data: bytes) -> Message:
    from jeepney.low_level import HeaderFields, Message as JMessage
    if data[:1] not in (b"l", b"B"):
        raise ValueError(f"bad endianness byte {data[:1]!r}")
    try:
        jm = JMessage.from_buffer(data)
    except (IndexError, KeyError, AssertionError, TypeError, struct.error) as err:
        raise ValueError(f"garbled message: {err!r}") from None
    h = jm.header.fields
    sig = h.get(HeaderFields.signature, "")
    body = tuple(_incoming(t, v) for (_, t), v in zip(_types(sig), jm.body))
    return Message(jm.header.message_type.value, jm.header.serial, int(jm.header.flags),
                   signature=sig, body=body,
                   **{name: h.get(HeaderFields[name]) for name in _FIELDS})


# ---------------------------------------------------------------------------------------
# Addresses and the connection


def system_bus_address() -> str:
    return os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or SYSTEM_BUS_DEFAULT


def parse_address(address: str) -> list[str]:
    """Socket addresses to try, in order, for a D-Bus address string (unix only; an abstract
    socket's name starts with NUL)."""
    from jeepney.bus import get_connectable_addresses
    try:
        return list(get_connectable_addresses(address))
    except (RuntimeError, ValueError):
        raise DBusTransportError(f"no usable unix socket in D-Bus address {address!r}") from None


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
        from jeepney.auth import BEGIN, AuthenticationError, Authenticator
        assert self.sock is not None
        auth = Authenticator()              # sends the NUL byte, then AUTH EXTERNAL <uid>
        try:
            for line in auth:
                self.sock.sendall(line)
                chunk = self.sock.recv(1024)
                if not chunk:
                    raise DBusTransportError("bus closed the connection during authentication")
                auth.feed(chunk)
            self.sock.sendall(BEGIN)
        except AuthenticationError as e:
            raise DBusTransportError(f"bus refused authentication: {e}") from None
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
            except (ValueError, UnicodeDecodeError) as e:
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
        """Subscribe: ``add_match(type="signal", interface=..., member=..., arg0=...)``."""
        from jeepney.bus_messages import MatchRule
        match = MatchRule(**{k: v for k, v in rule.items() if not k.startswith("arg")})
        for k, v in rule.items():
            if k.startswith("arg"):
                match.add_arg_condition(int(k[3:]), v)
        self.call(BUS_NAME, BUS_PATH, BUS_NAME, "AddMatch", "s", (match.serialise(),))

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
