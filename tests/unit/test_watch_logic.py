"""watch without a kernel: netlink parsing, which events matter, and the repair/verify logic.

The repair logic runs against a stub engine whose live drift we script, so "never repair
twice for one drift", "a repair that does not hold is not retried in a loop" and "a change
made during the repair is a new drift" are checked exactly, not by timing.
"""

from __future__ import annotations

import io
import struct

import pytest

from vnetfw.backends import Change
from vnetfw.engine import Report
from vnetfw.model import Mode, Network
from vnetfw.state import State, StateStore
from vnetfw.watch import Log, WatchOptions, Watcher, relevant
from vnetfw.watch_nl import NftEvent, parse_messages


def nla(atype: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, atype) + payload + b"\0" * (-n % 4)


def nlmsg(msgtype: int, family: int, attrs: bytes) -> bytes:
    body = struct.pack("=BBH", family, 0, 0) + attrs
    n = 16 + len(body)
    return struct.pack("=IHHII", n, (10 << 8) | msgtype, 0, 0, 0) + body + b"\0" * (-n % 4)


def test_parse_nftables_notifications():
    data = (nlmsg(6, 2, nla(1, b"filter\0") + nla(2, b"FORWARD\0"))       # NEWRULE ip filter
            + nlmsg(2, 1, nla(1, b"vnetfw\0"))                           # DELTABLE inet vnetfw
            + nlmsg(15, 0, nla(1, struct.pack(">I", 42)) + nla(2, struct.pack(">I", 1234))
                    + nla(3, b"iptables-nft\0"))                          # NEWGEN
            + struct.pack("=IHHII", 20, (1 << 8) | 0, 0, 0, 0) + b"\0" * 4)  # conntrack: skipped
    evs = parse_messages(data)
    assert evs == [NftEvent("add rule", "ip", "filter"), NftEvent("delete table", "inet", "vnetfw"),
                   NftEvent("gen", genid=42, pid=1234, comm="iptables-nft")]
    assert str(evs[2]) == "generation 42 by iptables-nft[1234]"
    assert parse_messages(data[:-3]) == evs[:3]       # a truncated tail is ignored, not fatal


@pytest.mark.parametrize("ev,backend,want", [
    (NftEvent("delete rule", "ip", "filter"), "iptables-nft", True),
    (NftEvent("delete table", "ip6", "nat"), "iptables-nft", True),
    (NftEvent("add rule", "ip", "raw"), "iptables-nft", False),
    (NftEvent("add rule", "inet", "firewalld"), "iptables-nft", False),
    (NftEvent("delete rule", "ip", "filter"), "iptables-legacy", False),
    (NftEvent("gen", genid=1), "iptables-nft", False),
    (NftEvent("add element", "inet", "vnetfw"), "nftables", True),
    (NftEvent("delete table", "inet", "firewalld"), "nftables", False),
    (NftEvent("delete table", "ip", "filter"), "nftables", False),
    (NftEvent("add rule", "inet", "anything"), None, True),         # unknown backend: all
])
def test_relevant(ev, backend, want):
    if backend == "nftables":
        pytest.importorskip("vnetfw.backends.nft_layout")
    assert relevant(ev, backend) is want


# -- repair logic with a scripted engine --------------------------------------------------

class StubEngine:
    """``drifts``: what each successive check() sees; reload() 'repairs' the current drift."""

    def __init__(self, drifts: list[list[str]]) -> None:
        self.drifts = list(drifts)
        self.current: list[str] = []
        self.reloads = 0

    def check(self) -> list[Change]:
        self.current = self.drifts.pop(0) if self.drifts else []
        return [Change(4, "add", "filter X", d) for d in self.current]

    def reload(self) -> Report:
        self.reloads += 1
        return Report("reload", "stub", changes=[Change(4, "add", "filter X", d)
                                                 for d in self.current])


@pytest.fixture
def watcher(tmp_path):
    store = StateStore(tmp_path)
    store.save(State("iptables-nft", "default", "VNETFW",
                     {"n": Network("n", Mode.NAT, bridge="vbr0")}))
    out = io.StringIO()
    w = Watcher(state_dir=tmp_path, options=WatchOptions(events=False), log=Log(out, prefix=True))
    w.out = out
    return w


def run_with(w: Watcher, drifts: list[list[str]]) -> StubEngine:
    eng = StubEngine(drifts)
    w._engine_for = lambda state: eng            # type: ignore[method-assign]
    w.evaluate("test")
    return eng


def test_clean_means_no_repair(watcher):
    eng = run_with(watcher, [[]])
    assert eng.reloads == 0 and watcher.repairs == 0 and "repaired" not in watcher.out.getvalue()


def test_one_drift_one_repair_then_verified(watcher):
    eng = run_with(watcher, [["jump"], []])      # drift, then the verification check is clean
    assert eng.reloads == 1 and watcher.repairs == 1
    lines = watcher.out.getvalue().splitlines()
    assert [l for l in lines if "repaired" in l] == [
        "<5>repaired 1 difference(s) after test (stub): ipv4 filter X: missing jump"]


def test_repair_that_does_not_hold_is_not_looped(watcher):
    eng = run_with(watcher, [["jump"], ["jump"], ["jump"], ["jump"]])
    assert eng.reloads == 1                      # not once more for the same drift
    assert "the repair did not hold" in watcher.out.getvalue()
    assert watcher._hold_until > 0 and watcher._backoff >= 1


def test_change_during_repair_is_a_new_drift(watcher):
    eng = run_with(watcher, [["jump"], ["rule 2"], []])
    assert eng.reloads == 2 and watcher.repairs == 2
    assert "after a change made during the repair" in watcher.out.getvalue()


def test_no_networks_nothing_guarded(tmp_path):
    out = io.StringIO()
    w = Watcher(state_dir=tmp_path, options=WatchOptions(events=False), log=Log(out, prefix=False))
    w._engine_for = lambda state: pytest.fail("no engine without networks")  # type: ignore
    w.evaluate("test")
    w.evaluate("test")
    assert out.getvalue().count("no active networks") == 1


def test_explicit_backend_that_disagrees_refuses(tmp_path):
    StateStore(tmp_path).save(State("iptables-nft", "default", "VNETFW",
                                    {"n": Network("n", Mode.NAT, bridge="vbr0")}))
    out = io.StringIO()
    w = Watcher(state_dir=tmp_path, options=WatchOptions(events=False, backend="nftables"),
                log=Log(out, prefix=False))
    w.evaluate("test")
    assert "use backend iptables-nft" in out.getvalue() and w.repairs == 0


def test_debounce_coalesces_and_is_bounded(watcher):
    w = watcher
    w.opt.debounce, w.opt.max_delay = 0.05, 0.25        # explicit: not the defaults
    w._schedule("a", 10.0)
    assert (w._pending, w._deadline) == ("a", 10.05)
    w._schedule("b", 10.04)                      # still the first burst: reason kept, extended
    assert (w._pending, round(w._deadline, 3)) == ("a", 10.09)
    for t in (10.1, 10.15, 10.2, 10.3):           # a burst that never goes quiet ...
        w._schedule("c", t)
    assert w._deadline == 10.25                  # ... is checked at most max_delay after its start


def test_log_lines_are_single_and_prefixed():
    out = io.StringIO()
    Log(out, prefix=True)(5, "two\nlines")
    Log(out, verbose=False, prefix=True)(7, "debug is hidden")
    assert out.getvalue() == "<5>two lines\n"
