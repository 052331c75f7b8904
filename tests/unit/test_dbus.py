"""The D-Bus adapter (jeepney underneath): wire format against the specification, then a real
dbus-daemon.

Byte vectors are worked out by hand from the D-Bus specification (alignment, array lengths
that exclude the padding before the first element, padding present even for empty arrays).
The live tests run a private ``dbus-daemon`` (no root needed), which validates every message
it routes and drops the connection of a client that sends a malformed one, and cross-check
with ``gdbus``/``dbus-send`` (GLib's and libdbus's implementations) where installed.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import threading
import time

import pytest

from tests.netns.test_firewalld import BUS_CONF   # one private-bus config for both
from hypothesis import given, settings
from hypothesis import strategies as st

from vnetfw.linux.dbus import (METHOD_CALL, NO_AUTO_START, SIGNAL, Bus, DBusError, DBusTransportError, Message,
                               Variant, decode_message, encode_message, marshal_body,
                               message_length, parse_address, split_signature, unmarshal_body)



# -- wire format ---------------------------------------------------------------------------

def test_string_and_string_array_bytes():
    assert marshal_body("s", ["abc"]) == b"\x03\0\0\0abc\0"
    # "a" (len 1 + NUL = 6 bytes), pad 2 to align the next u32, "bc" (7 bytes): length 15
    assert marshal_body("as", [["a", "bc"]]) == (
        b"\x0f\0\0\0" + b"\x01\0\0\0a\0" + b"\0\0" + b"\x02\0\0\0bc\0")


def test_array_padding_is_not_counted_and_present_when_empty():
    # u32 length at 0, padding to 8 at 4..8 (not counted), one uint64 at 8
    assert marshal_body("at", [[7]]) == b"\x08\0\0\0" + b"\0" * 4 + struct.pack("<Q", 7)
    assert marshal_body("at", [[]]) == b"\0\0\0\0" + b"\0" * 4
    assert unmarshal_body("at", b"\0\0\0\0" + b"\0" * 4) == ([],)


def test_struct_alignment_and_variant():
    # (yt): byte at 0, uint64 aligned to 8
    assert marshal_body("(yt)", [(1, 2)]) == b"\x01" + b"\0" * 7 + struct.pack("<Q", 2)
    # v: signature "u" (len byte, "u", NUL), pad to 4, the uint32
    assert marshal_body("v", [Variant("u", 5)]) == b"\x01u\0\0" + struct.pack("<I", 5)
    assert unmarshal_body("v", b"\x01u\0\0" + struct.pack("<I", 5)) == (5,)


def test_big_endian_input():
    assert unmarshal_body("us", b"\0\0\0\x05" + b"\0\0\0\x02hi\0", ">") == (5, "hi")


def test_signatures():
    assert split_signature("sa{sv}(ii)as") == ["s", "a{sv}", "(ii)", "as"]
    assert split_signature("aa(sa{sv})") == ["aa(sa{sv})"]
    for bad in ("a", "(s", "()", "z", "a{s"):
        with pytest.raises(ValueError):
            split_signature(bad)


def test_message_roundtrip_and_length():
    m = Message(METHOD_CALL, 7, path="/org/x", interface="org.x.Y", member="Do",
                destination="org.x", signature="sa{sv}",
                body=("zone", {"a": Variant("s", "b"), "n": Variant("as", ["c"])}))
    data = encode_message(m)
    assert data[:4] == b"l\x01\x00\x01"
    assert len(data) % 8 == message_length(data[:16]) % 8
    assert message_length(data[:16]) == len(data)
    back = decode_message(data)
    assert (back.type, back.serial, back.path, back.interface, back.member, back.destination,
            back.signature) == (METHOD_CALL, 7, "/org/x", "org.x.Y", "Do", "org.x", "sa{sv}")
    assert back.body == ("zone", {"a": "b", "n": ["c"]})


values = st.recursive(
    st.one_of(st.tuples(st.just("s"), st.text(alphabet=st.characters(blacklist_characters="\0",
                                                                       blacklist_categories=("Cs",)))),
              st.tuples(st.just("u"), st.integers(0, 2**32 - 1)),
              st.tuples(st.just("x"), st.integers(-2**63, 2**63 - 1)),
              st.tuples(st.just("y"), st.integers(0, 255)),
              st.tuples(st.just("b"), st.booleans()),
              st.tuples(st.just("d"), st.floats(allow_nan=False))),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(
            lambda xs: ("(" + "".join(s for s, _ in xs) + ")", tuple(v for _, v in xs))
            if xs else ("(y)", (0,))),
        inner.flatmap(lambda sv: st.lists(st.just(sv[1]), max_size=3).map(
            lambda vs: ("a" + sv[0], vs)))),
    max_leaves=6)


@settings(max_examples=200, deadline=None)
@given(st.lists(values, max_size=4), st.integers(0, 7))
def test_marshal_roundtrip_property(items, lead):
    # A leading run of bytes shifts everything after it off alignment: exercises the padding.
    sig = "y" * lead + "".join(s for s, _ in items)
    args = [1] * lead + [v for _, v in items]
    body = marshal_body(sig, args)
    assert unmarshal_body(sig, body) == tuple(args)


def test_addresses():
    assert parse_address("unix:path=/run/dbus/system_bus_socket") == ["/run/dbus/system_bus_socket"]
    assert parse_address("tcp:host=x;unix:path=/a%20b,guid=1") == ["/a b"]
    assert parse_address("unix:abstract=/tmp/dbus-X") == ["\0/tmp/dbus-X"]
    with pytest.raises(DBusTransportError):
        parse_address("tcp:host=localhost,port=1")


# -- a real bus ----------------------------------------------------------------------------

@pytest.fixture
def private_bus(tmp_path):
    if shutil.which("dbus-daemon") is None:
        pytest.skip("dbus-daemon is not installed")
    sock = tmp_path / "bus"
    conf = tmp_path / "bus.conf"
    conf.write_text(BUS_CONF.format(path=sock, servicedir=""))
    p = subprocess.Popen(["dbus-daemon", f"--config-file={conf}", "--nofork", "--print-address"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        addr = p.stdout.readline().strip()       # printed once it listens
        assert addr.startswith("unix:"), addr
        yield addr
    finally:
        p.terminate()
        p.wait(5)


def rewrap(sig: str, value):
    """Decoded variants lose their type; give them back a guessed one (test values only)."""
    from vnetfw.linux.dbus import split_signature as split
    c = sig[0]
    if c == "v":
        if isinstance(value, bool):
            return Variant("b", value)
        if isinstance(value, int):
            return Variant("u", value)
        if isinstance(value, list):
            return Variant("as", value)
        return Variant("s", value)
    if c == "a" and sig[1] == "{":
        ks, vs = split(sig[2:-1])
        return {rewrap(ks, k): rewrap(vs, v) for k, v in value.items()}
    if c == "a":
        return [rewrap(sig[1:], v) for v in value]
    if c == "(":
        return tuple(rewrap(s, v) for s, v in zip(split(sig[1:-1]), value))
    return value


class EchoService:
    """A tiny service on our own client: org.test.Echo.Echo(v) -> the same, plus errors."""

    def __init__(self, addr: str) -> None:
        self.bus = Bus(addr)
        self.bus.request_name("org.test.Echo")
        self.stop = False
        self.t = threading.Thread(target=self.serve, daemon=True)
        self.t.start()

    def serve(self) -> None:
        import select
        while not self.stop:
            select.select([self.bus], [], [], 0.05)
            for m in self.bus.poll_messages():
                if m.type != METHOD_CALL:
                    continue
                if m.member == "Echo":
                    self.bus.reply(m, m.signature, [rewrap(s, v) for s, v in
                                                    zip(split_signature(m.signature), m.body)])
                elif m.member == "Fail":
                    self.bus.reply_error(m, "org.test.Error", "BAD_THING: it failed")
                elif m.member == "Shout":
                    self.bus.emit("/org/test", "org.test.Echo", "Shouted", "s", (m.body[0],))
                    self.bus.reply(m)

    def close(self) -> None:
        self.stop = True
        self.t.join(2)
        self.bus.close()


def test_call_reply_error_and_signals(private_bus):
    svc = EchoService(private_bus)
    try:
        with Bus(private_bus) as c:
            assert c.unique_name.startswith(":")
            assert c.name_has_owner("org.test.Echo") and not c.name_has_owner("org.test.Nope")
            body = ("zone", ["a", "b"], {"k": Variant("as", ["x"])}, (1, 2**40))
            got = c.call("org.test.Echo", "/org/test", "org.test.Echo", "Echo",
                         "sasa{sv}(ut)", body)
            assert got == ("zone", ["a", "b"], {"k": ["x"]}, (1, 2**40))
            with pytest.raises(DBusError) as ei:
                c.call("org.test.Echo", "/org/test", "org.test.Echo", "Fail")
            assert ei.value.name == "org.test.Error" and ei.value.message.startswith("BAD_THING")
            # The daemon's own errors for a missing name: with NO_AUTO_START it does not even
            # look for a service to activate (what keeps vnetfw from starting firewalld).
            with pytest.raises(DBusError) as ei:
                c.call("org.test.Nope", "/", "org.test.Nope", "X", flags=NO_AUTO_START)
            assert ei.value.name == "org.freedesktop.DBus.Error.NameHasNoOwner"
            with pytest.raises(DBusError) as ei:
                c.call("org.test.Nope", "/", "org.test.Nope", "X")
            assert ei.value.name == "org.freedesktop.DBus.Error.ServiceUnknown"
            c.add_match(type="signal", interface="org.test.Echo", member="Shouted")
            # The signal arrives while we wait for the reply: it must be kept, not lost.
            c.call("org.test.Echo", "/org/test", "org.test.Echo", "Shout", "s", ("hi",))
            sigs = [m for m in c.poll_messages() if m.type == SIGNAL and m.member == "Shouted"]
            assert [m.body for m in sigs] == [("hi",)]
    finally:
        svc.close()


def test_other_implementations_understand_us(private_bus):
    svc = EchoService(private_bus)
    try:
        if shutil.which("gdbus"):
            out = subprocess.run(
                ["gdbus", "call", "--address", private_bus, "--dest", "org.test.Echo",
                 "--object-path", "/org/test", "--method", "org.test.Echo.Echo",
                 "['a', 'bc']", "{'k': <uint32 5>}", "(byte 1, uint64 7)"],
                capture_output=True, text=True, check=True).stdout.strip()
            assert out == "(['a', 'bc'], {'k': <uint32 5>}, (byte 0x01, uint64 7))"
        if shutil.which("dbus-send"):
            out = subprocess.run(
                ["dbus-send", f"--bus={private_bus}", "--print-reply", "--dest=org.test.Echo",
                 "/org/test", "org.test.Echo.Echo", "string:hello", "uint32:42"],
                capture_output=True, text=True, check=True).stdout
            assert 'string "hello"' in out and "uint32 42" in out
    finally:
        svc.close()


def test_closed_connection_is_reported(private_bus):
    c = Bus(private_bus)
    c.sock.shutdown(2)
    with pytest.raises(DBusTransportError):
        list(c.poll_messages())
    assert c.closed


def test_no_bus():
    t = time.monotonic()
    with pytest.raises(DBusTransportError):
        Bus("unix:path=/nonexistent/bus")
    assert time.monotonic() - t < 1
