"""``vnetfw watch``: notice drift by itself and repair it within a second.

Contract: ``Watcher(...).run()`` blocks until SIGTERM/SIGINT (then returns 0) and keeps the
live firewall equal to the desired state: whenever something may have changed it runs the
engine's read-only ``check()`` and, only if that finds drift, one ``reload()`` (the same
atomic repair as ``vnetfw reload``, hooks included). Each repair is logged as one line
``repaired N difference(s) after TRIGGER: ...``; nothing else says "repaired".

Triggers (what "may have changed" means):
- nf_tables notifications (``watch_nl``) about the tables the active backend uses
  (``filter``/``nat``/``mangle`` of ip/ip6 for iptables-nft, vnetfw's ``inet`` tables for
  nftables). A burst (``nft flush ruleset`` is dozens of notifications; a script of
  iptables commands is several transactions) is coalesced: the check runs once the burst
  has been quiet for ``debounce`` seconds, at most ``max_delay`` after its first event.
- firewalld's ``Reloaded`` signal and firewalld starting or stopping (NameOwnerChanged), when
  firewalld is reachable: the bridges are put back into their zone (``firewall-cmd --reload``
  drops runtime bindings) and the firewall is checked (firewalld's iptables backend flushes
  the builtin chains on reload).
- a periodic check every ``interval`` seconds (0: never), the fallback for everything the
  kernel does not announce: iptables-legacy changes have no notifications at all.
- SIGHUP: check now.

Our own repair notifies too. Those notifications are queued on the netlink socket before
``reload()`` returns (see ``watch_nl``), so right after a repair the watcher drains them and
ignores them, then runs one read-only verification check: it catches a change someone made
*during* the repair (that is a new drift, repaired and logged as such), and a repair that
did not hold (the same drift again) is logged as an error and retried with back-off instead
of looping. A repair is never run twice for one drift: every repair is preceded by a check
that saw drift, and ``reload()`` itself runs under the state lock and recomputes.

The watcher follows the state file: networks applied or removed by ``vnetfw`` commands while
it runs are picked up at the next check; with no active networks there is nothing to guard.
It never changes backend or profile: an explicit ``--backend``/``--profile`` that disagrees
with the active networks stops it from repairing (reload would migrate them) and says so.

Logging: one line per event on stderr, no colours; when stderr is not a terminal each line
starts with a syslog priority (``<5>``), which journald turns into the entry's priority.
Under systemd (``Type=notify``) it reports READY=1 after the first check, STOPPING=1, and
WATCHDOG=1 when ``WatchdogSec=`` is set. Idle, it sleeps in poll(2): no timer fires more
often than the periodic check (or half the watchdog period).
"""

from __future__ import annotations

import functools
import math
import os
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from .backends import Backend, get_backend
from .backends.registry import NAMES
from .backends.runner import Runner
from .engine import Engine, drift_text
from .errors import VnetfwError
from .firewalld import (FWD_NAME, Firewalld, FirewalldConfig, FirewalldError, bridges_of,
                        firewalld_running)
from .inflight import ChangeWindow
from .state import State, StateStore, default_state_dir
from .linux.dbus import (BUS_NAME, SIGNAL, Bus, DBusError, DBusTransportError)
from .watch_nl import NftEvent, NftEvents

ERR, WARNING, NOTICE, INFO, DEBUG = 3, 4, 5, 6, 7
DEFAULT_INTERVAL = 30.0
# A burst ends after DEFAULT_DEBOUNCE of quiet, and is checked at most MAX_DELAY after its
# first notification. Measured: a firewalld reload with its iptables backend is ~30
# transactions (iptables-, ip6tables-, ebtables-restore, twice over) spread over ~280 ms with
# gaps up to ~80 ms; quieter than 100 ms, a check would land mid-reload and repair twice.
DEFAULT_DEBOUNCE = 0.1
MAX_DELAY = 0.5
MAX_BACKOFF = 60.0
MAX_ROUNDS = 4                  # repair + verify rounds per trigger


class Log:
    """journald-friendly lines: ``<priority>text`` when not on a terminal."""

    def __init__(self, stream: TextIO | None = None, verbose: bool = False,
                 prefix: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.verbose = verbose
        self.prefix = (not self.stream.isatty()) if prefix is None else prefix

    def __call__(self, level: int, text: str) -> None:
        if level >= DEBUG and not self.verbose:
            return
        line = " ".join(text.split("\n"))
        try:
            self.stream.write(f"<{level}>{line}\n" if self.prefix else f"{line}\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass                        # a closed log must not stop the watcher


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) something; a no-op when not started by systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(message.encode())
    except OSError:
        pass


@dataclass
class WatchOptions:
    interval: float = DEFAULT_INTERVAL      # periodic check; 0 = never
    debounce: float = DEFAULT_DEBOUNCE
    max_delay: float = MAX_DELAY
    events: bool = True                     # subscribe to nf_tables notifications
    firewalld: FirewalldConfig = field(default_factory=FirewalldConfig)
    backend: str = "auto"                   # as given on the command line
    profile: str | None = None


def relevant(ev: NftEvent, backend: str | None) -> bool:
    """Does this notification concern the tables ``backend`` writes? The backend says; one
    not known yet (None, ``auto``) may write any."""
    if ev.what == "gen":
        return False
    if backend not in NAMES:
        return True
    return _named(backend).writes_nf_table(ev.family, ev.table)


@functools.lru_cache(maxsize=None)
def _named(backend: str) -> Backend:
    return get_backend(backend, Runner(None))       # no process: only names are asked


class Watcher:
    def __init__(self, *, netns: str | None = None, state_dir: str | Path | None = None,
                 hooks_dir: str | Path | None = None, options: WatchOptions | None = None,
                 log: Log | None = None) -> None:
        self.netns = netns
        self.state_dir = state_dir
        self.hooks_dir = hooks_dir
        self.opt = options or WatchOptions()
        self.log = log or Log()
        self.store = StateStore(state_dir if state_dir is not None else default_state_dir(netns))
        self.repairs = 0
        self.rebinds = 0
        self._engine: Engine | None = None
        self._engine_key: tuple | None = None
        self._said: set[str] = set()        # one-time messages already logged
        self._stop = False
        self._hup = False
        self._pending: str | None = None    # reason of a coalescing burst
        self._first = self._deadline = 0.0
        self._hold_until = 0.0              # back-off after an error
        self._backoff = 0.0
        self._next_periodic = math.inf
        self.nl: NftEvents | None = None
        self.bus: Bus | None = None
        self.fw_running = False
        self._bus_retry = 0.0

    # -- helpers -----------------------------------------------------------------------
    def _once(self, key: str, level: int, text: str) -> None:
        if key not in self._said:
            self._said.add(key)
            self.log(level, text)

    def _engine_for(self, state: State) -> Engine | None:
        if self.opt.backend != "auto" and state.backend and state.backend != self.opt.backend:
            self._once(f"backend:{state.backend}", ERR,
                       f"the active networks use backend {state.backend}, but watch was started "
                       f"with --backend {self.opt.backend}: not repairing (a reload would move "
                       "them); restart watch without --backend")
            return None
        if self.opt.profile and state.profile and state.profile != self.opt.profile:
            self._once(f"profile:{state.profile}", ERR,
                       f"the active networks use profile {state.profile}, but watch was started "
                       f"with --profile {self.opt.profile}: not repairing")
            return None
        key = (state.backend, state.profile, state.prefix)
        if self._engine is None or key != self._engine_key:
            # backend "auto" and no profile: the engine keeps what the networks were applied
            # with. A new engine when that changes, since an Engine caches its backend.
            self._engine = Engine(backend="auto", profile=None, netns=self.netns,
                                  state_dir=self.store.dir, hooks_dir=self.hooks_dir)
            # a check that waits for another vnetfw's commit says so in the log
            self._engine.waiting = lambda text: self.log(INFO, text.removeprefix("vnetfw: "))
            self._engine_key = key
        return self._engine

    def _schedule(self, reason: str, now: float, delay: float | None = None) -> None:
        """Coalesce: check once things have been quiet for ``debounce``."""
        d = self.opt.debounce if delay is None else delay
        if self._pending is None:
            self._pending, self._first = reason, now
        self._deadline = min(now + d, self._first + self.opt.max_delay)

    def _fail(self, text: str) -> None:
        self._backoff = min(MAX_BACKOFF, max(1.0, self._backoff * 2))
        self._hold_until = time.monotonic() + self._backoff
        self.log(ERR, f"{text}; retrying in {self._backoff:.0f}s")

    # -- checking and repairing -------------------------------------------------------
    def evaluate(self, reason: str) -> None:
        """Check; repair if drifted; verify. Errors are logged and retried with back-off."""
        try:
            self._evaluate(reason)
        except VnetfwError as e:
            self._fail(f"check/repair after {reason} failed: {e}")
        except OSError as e:
            self._fail(f"check/repair after {reason} failed: {e.strerror or e}")

    def _evaluate(self, reason: str) -> None:
        state = self.store.load()
        if ChangeWindow(self.store.dir).pending() is not None:
            # A vnetfw killed half-way through a change (``inflight``): the reload that
            # finishes or undoes it is a repair like any other, and clears the record even
            # where the change left nothing (check only reports the drift one left; with
            # no active networks it would not look at all).
            eng = self._engine_for(state)
            if eng is not None:
                rep = eng.reload()
                for w in rep.warnings:
                    self.log(NOTICE, f"repair: {w}")
                state = self.store.load()
        if not state.networks:
            self._once("idle", INFO, "no active networks: nothing to guard until "
                                     "'vnetfw apply' (the state file is re-read at every check)")
            return
        self._said.discard("idle")
        eng = self._engine_for(state)
        if eng is None:
            return
        before: list[str] | None = None
        for _round in range(MAX_ROUNDS):
            drift = eng.check()
            if not drift:
                self.log(DEBUG, f"in sync after {reason}")
                self._backoff = 0.0
                return
            texts = [drift_text(c) for c in drift]
            if texts == before:
                self._fail(f"the repair did not hold: the same {len(texts)} difference(s) are "
                           f"back right after it: {_summary(texts)}")
                return
            rep = eng.reload()
            for w in rep.warnings:
                self.log(WARNING, f"repair: {w}")
            for h in rep.hook_failures:
                self.log(WARNING, f"hook failed: {h}")
            if not rep.changes:
                self.log(INFO, f"drift seen after {reason} was gone before the repair "
                               "(another vnetfw command fixed it)")
                return
            self.repairs += 1
            self.log(NOTICE, f"repaired {len(rep.changes)} difference(s) after {reason} "
                             f"({rep.backend}): {_summary([drift_text(c) for c in rep.changes])}")
            sd_notify(f"STATUS=guarding {len(state.networks)} network(s); "
                      f"{self.repairs} repair(s) so far")
            own = self._drain_nl()
            if own:
                self.log(DEBUG, f"ignored {len(own)} notification(s) of our own repair")
            # Verify (next round): a change made while we repaired is a new drift; the same
            # drift again means the repair does not hold, which must not loop.
            before = texts
            reason = "a change made during the repair"
        self._fail(f"drift came back {MAX_ROUNDS} times in a row")

    def _drain_nl(self) -> list[NftEvent]:
        if self.nl is None:
            return []
        evs = self.nl.read()
        self.nl.overflow = False
        return evs

    # -- firewalld ----------------------------------------------------------------------
    def _bus_connect(self, now: float) -> None:
        cfg = self.opt.firewalld
        if self.bus is not None or not cfg.enabled_for(self.netns) or now < self._bus_retry:
            return
        try:
            bus = cfg.connect()
            bus.add_match(type="signal", interface=FWD_NAME, member="Reloaded")
            bus.add_match(type="signal", sender=BUS_NAME, interface=BUS_NAME,
                          member="NameOwnerChanged", arg0=FWD_NAME)
            self.fw_running = firewalld_running(bus)
        except (DBusTransportError, DBusError, OSError) as e:
            self._bus_retry = now + max(5.0, min(self.opt.interval or 30.0, 60.0))
            self._once("nobus", INFO, f"firewalld integration waits for D-Bus "
                                      f"({cfg.bus or 'system bus'}): {e}")
            return
        self._said.discard("nobus")
        self.bus = bus
        self.log(INFO, f"firewalld {'is running' if self.fw_running else 'is not running'} "
                       f"on {cfg.bus or 'the system bus'}")
        if self.fw_running:
            self.rebind("start")

    def rebind(self, reason: str) -> None:
        if self.bus is None or not self.fw_running:
            return
        try:
            nets = self.store.load().networks
            bridges = bridges_of(nets.values())
            if not bridges:
                return
            for r in Firewalld(self.bus, self.opt.firewalld.zone).bind(bridges):
                if r.changed:
                    self.rebinds += 1
                    self.log(NOTICE, f"rebound {r} (after {reason})")
                elif r.action == "failed":
                    self.log(ERR, f"firewalld zone binding after {reason} failed: {r}")
        except (FirewalldError, DBusError) as e:
            self.log(ERR, f"firewalld zone binding after {reason} failed: {e}")
        except DBusTransportError as e:
            self._bus_lost(e)
        except VnetfwError as e:
            self.log(ERR, f"firewalld zone binding after {reason}: {e}")

    def _bus_lost(self, e: Exception) -> None:
        self.log(WARNING, f"lost the D-Bus connection ({e}); reconnecting")
        if self.bus is not None:
            self.bus.close()
        self.bus = None
        self.fw_running = False
        self._bus_retry = time.monotonic() + 1.0

    def _handle_bus(self, now: float) -> None:
        if self.bus is None:
            return
        try:
            for m in self.bus.poll_messages():
                if m.type != SIGNAL:
                    continue
                if m.interface == FWD_NAME and m.member == "Reloaded":
                    self.log(INFO, "firewalld reloaded")
                    self.fw_running = True
                    self.rebind("firewalld reload")
                    self._schedule("firewalld reload", now, 0.0)
                elif m.member == "NameOwnerChanged" and m.body[:1] == (FWD_NAME,):
                    started = bool(m.body[2])
                    self.fw_running = started
                    self.log(INFO, f"firewalld {'started' if started else 'stopped'}")
                    if started:
                        self.rebind("firewalld start")
                    self._schedule(f"firewalld {'start' if started else 'stop'}", now, 0.0)
        except DBusTransportError as e:
            self._bus_lost(e)

    # -- the loop -----------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGHUP:
            self._hup = True
        else:
            self._stop = True

    def setup(self) -> None:
        """Subscribe to every source, then check once (so nothing between is missed)."""
        now = time.monotonic()
        if self.opt.events:
            try:
                self.nl = NftEvents(self.netns)
            except VnetfwError as e:
                self.log(WARNING, f"no nftables notifications ({e}); periodic checks only")
        self._bus_connect(now)
        self.evaluate("start")
        sources = []
        if self.nl is not None:
            backend = self._engine_key[0] if self._engine_key else None
            sources.append("nftables notifications" + (
                " (iptables-legacy sends none)" if backend == "iptables-legacy" else ""))
        if self.bus is not None:
            sources.append("firewalld signals")
        if self.opt.interval > 0:
            sources.append(f"a check every {self.opt.interval:g}s")
        where = f"namespace {self.netns}" if self.netns else "the host namespace"
        self.log(INFO, f"watching {where} (state {self.store.dir}) with "
                       f"{', '.join(sources) or 'no source at all'}")
        if self.nl is None and self.opt.interval <= 0:
            self.log(WARNING, "no notifications and --interval 0: drift will never be noticed")

    def run(self) -> int:
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        old_fd = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        old = {s: signal.signal(s, self._on_signal)
               for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        try:
            self.setup()
            sd_notify("READY=1")
            self._loop(wake_r)
            self.log(INFO, f"stopping ({self.repairs} repair(s), {self.rebinds} zone "
                           "rebinding(s) while running)")
            sd_notify("STOPPING=1")
            return 0
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            signal.set_wakeup_fd(old_fd)
            wake_r.close()
            wake_w.close()
            if self.nl is not None:
                self.nl.close()
            if self.bus is not None:
                self.bus.close()

    def _loop(self, wake: socket.socket) -> None:
        wd_usec = os.environ.get("WATCHDOG_USEC", "")
        wd = int(wd_usec) / 2e6 if wd_usec.isdigit() and int(wd_usec) > 0 else 0.0
        if os.environ.get("WATCHDOG_PID", str(os.getpid())) != str(os.getpid()):
            wd = 0.0                                # meant for another process (sd_watchdog_enabled)
        now = time.monotonic()
        self._next_periodic = now + self.opt.interval if self.opt.interval > 0 else math.inf
        next_wd = now + wd if wd else math.inf
        bus_fd = None
        poller = select.poll()
        poller.register(wake, select.POLLIN)
        if self.nl is not None:
            poller.register(self.nl, select.POLLIN)
        while not self._stop:
            # Keep the bus socket registered exactly while we have one: a closed fd left in
            # the poll set would report POLLNVAL at once, forever (a busy loop).
            cur = self.bus.fileno() if self.bus is not None else None
            if cur != bus_fd:
                if bus_fd is not None:
                    poller.unregister(bus_fd)
                if cur is not None:
                    poller.register(cur, select.POLLIN)
                bus_fd = cur
            now = time.monotonic()
            wakeups = [self._next_periodic, next_wd]
            if self._pending is not None:
                wakeups.append(max(self._deadline, self._hold_until))
            if self.bus is None and self.opt.firewalld.enabled_for(self.netns):
                wakeups.append(self._bus_retry)
            timeout = min(wakeups) - now
            ms = None if timeout == math.inf else max(0, math.ceil(timeout * 1000))
            ready = poller.poll(ms)
            now = time.monotonic()
            for fd, _ev in ready:
                if fd == wake.fileno():
                    try:
                        wake.recv(4096)
                    except BlockingIOError:
                        pass
                elif self.nl is not None and fd == self.nl.fileno():
                    evs = self.nl.read()
                    backend = self._engine_key[0] if self._engine_key else self.opt.backend
                    hits = [e for e in evs if relevant(e, backend)]
                    if self.nl.overflow:
                        self.nl.overflow = False
                        self._schedule("lost nftables notifications (overflow)", now)
                    elif hits:
                        gens = [e for e in evs if e.what == "gen"]
                        by = f" ({gens[-1]})" if gens else ""
                        self._schedule(f"nftables change: {hits[0]}{by}", now)
            # Bus messages: read whenever the socket is readable (or hung up: the read notices
            # and drops the connection), and also when a method call queued signals meanwhile.
            self._handle_bus(now)
            if self._stop:
                break
            if self._hup:
                self._hup = False
                self.log(INFO, "SIGHUP: checking now")
                self._schedule("SIGHUP", now, 0.0)
            if now >= next_wd:
                sd_notify("WATCHDOG=1")
                next_wd = now + wd
            if self.bus is None:
                self._bus_connect(now)
            if now >= self._next_periodic:
                self._next_periodic = now + self.opt.interval
                self.rebind("periodic check")
                if self._pending is None:
                    self._pending, self._first, self._deadline = "periodic check", now, now
            if self._pending is not None and now >= self._deadline and now >= self._hold_until:
                reason, self._pending = self._pending, None
                self.evaluate(reason)


def _summary(texts: list[str], limit: int = 6) -> str:
    shown = "; ".join(texts[:limit])
    return shown + (f"; and {len(texts) - limit} more" if len(texts) > limit else "")


def run_once(watcher: Watcher) -> int:
    """``watch --once``: bind firewalld zones, check, repair if needed; 0 unless it failed."""
    watcher._bus_connect(time.monotonic())
    watcher.evaluate("start")
    if watcher.bus is not None:
        watcher.bus.close()
    return 1 if watcher._backoff else 0
