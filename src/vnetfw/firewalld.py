"""firewalld integration: each managed bridge goes into a firewalld zone, over D-Bus.

Why: when firewalld runs, its own tables filter the host's INPUT and FORWARD too. A bridge in
no zone falls into the default zone (``public`` usually), which rejects the guests' DHCP and
DNS and, with firewalld >= 0.9, their forwarded traffic. libvirt therefore puts its bridges
into its ``libvirt`` zone; vnetfw does the same: zone ``--firewalld-zone`` /
``$VNETFW_FIREWALLD_ZONE`` if given, else ``libvirt`` when that zone exists (libvirt ships
it), else ``trusted``.

Contract:
- ``firewalld_running(bus)``: is ``org.fedoraproject.FirewallD1`` owned on that bus.
- ``Firewalld(bus, zone)``: ``bind(bridges)`` puts each bridge into the zone (moving it from
  another zone, as libvirt does) and ``unbind(bridges)`` takes it out again, but only when
  it is still in vnetfw's zone (an admin's later choice is left alone). Both are idempotent
  and return one ``ZoneResult`` per bridge; a bridge firewalld refuses is a ``failed``
  result and the others are still done. Runtime bindings only: nothing is written to
  firewalld's permanent configuration.
- ``sync(before, after, netns=)``: the hook for the engine. ``before``/``after`` are the
  active networks (name -> Network) before and after a command; bridges that are gone are
  unbound, every current one is (re)bound. It never raises: it returns a ``SyncResult``
  whose ``warnings`` belong in the command's report. With firewalld not running, or no
  D-Bus, it does nothing and costs one failed connect or one NameHasOwner call.
- ``firewall-cmd --reload`` (and a firewalld restart) drops every runtime binding, so the
  bindings have to be made again after firewalld's ``Reloaded`` signal (or a new owner of
  its name): ``vnetfw watch`` does that, and so does ``vnetfw reload`` once wired in.
  Measured with firewalld 1.3 in a test namespace: the reload (and start) also runs
  iptables-restore and flushes the iptables(-nft) tables, with either FirewallBackend, so
  vnetfw's iptables rules are gone too; the watcher repairs them from the nf_tables
  notifications of that flush.

Namespaces: the system bus's firewalld manages the *host* namespace. With ``--netns`` the
integration is off unless a bus address is given explicitly (``--firewalld-bus`` /
``$VNETFW_FIREWALLD_BUS``): that is how the tests talk to a firewalld running inside a test
namespace on a private bus, and never to the host's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from .model import Network
from .linux.dbus import NO_AUTO_START, Bus, DBusError, DBusTransportError

FWD_NAME = "org.fedoraproject.FirewallD1"
FWD_PATH = "/org/fedoraproject/FirewallD1"
FWD_ZONE = FWD_NAME + ".zone"
DEFAULT_ZONES = ("libvirt", "trusted")           # first one that exists
CALL_TIMEOUT = 10.0                              # firewalld answers slowly while reloading

ENV_MODE = "VNETFW_FIREWALLD"                    # auto (default) | off
ENV_ZONE = "VNETFW_FIREWALLD_ZONE"
ENV_BUS = "VNETFW_FIREWALLD_BUS"


class FirewalldError(Exception):
    """firewalld refused or could not be asked; the message says which bridge and why."""


@dataclass(frozen=True)
class FirewalldConfig:
    """How vnetfw talks to firewalld: ``mode`` auto/off, the zone, the bus address."""

    mode: str = "auto"
    zone: str | None = None
    bus: str | None = None          # D-Bus address; None: the system bus

    @classmethod
    def from_env(cls, mode: str | None = None, zone: str | None = None,
                 bus: str | None = None) -> "FirewalldConfig":
        """Explicit values win over $VNETFW_FIREWALLD, $VNETFW_FIREWALLD_ZONE, ..._BUS."""
        mode = mode or os.environ.get(ENV_MODE) or "auto"
        if mode not in ("auto", "off"):
            raise ValueError(f"firewalld mode must be auto or off, not {mode!r}")
        return cls(mode, zone or os.environ.get(ENV_ZONE) or None,
                   bus or os.environ.get(ENV_BUS) or None)

    def enabled_for(self, netns: str | None) -> bool:
        """Off when asked, and for a namespace unless a bus was named (see module doc)."""
        return self.mode != "off" and (netns is None or self.bus is not None)

    def connect(self, timeout: float = 5.0) -> Bus:
        return Bus(self.bus, timeout=timeout)


@dataclass(frozen=True)
class ZoneResult:
    bridge: str
    zone: str               # the zone the bridge is in afterwards ("" for none)
    action: str             # added | moved | unchanged | removed | kept | absent | failed
    previous: str = ""      # the zone before (moved, kept)
    error: str = ""         # why (failed)

    def __str__(self) -> str:
        return {
            "added": f"{self.bridge}: added to firewalld zone {self.zone}",
            "moved": f"{self.bridge}: moved from firewalld zone {self.previous} to {self.zone}",
            "unchanged": f"{self.bridge}: already in firewalld zone {self.zone}",
            "removed": f"{self.bridge}: removed from firewalld zone {self.previous}",
            "kept": f"{self.bridge}: left in firewalld zone {self.previous} (not vnetfw's zone)",
            "absent": f"{self.bridge}: in no firewalld zone",
            "failed": f"{self.bridge}: {self.error}",
        }.get(self.action, f"{self.bridge}: {self.action} {self.zone}")

    @property
    def changed(self) -> bool:
        return self.action in ("added", "moved", "removed")


def firewalld_running(bus: Bus) -> bool:
    """True if firewalld owns its name on ``bus`` (never starts it)."""
    return bus.name_has_owner(FWD_NAME)


def bridges_of(networks: Iterable[Network]) -> list[str]:
    """The bridges vnetfw firewalls (nat, route, isolated networks), sorted, unique."""
    return sorted({n.bridge for n in networks if n.bridge and n.mode.firewalled})


def _exc_code(e: DBusError) -> str:
    # firewalld's errors are org.fedoraproject.FirewallD1.Exception with "CODE: text".
    return e.message.split(":", 1)[0].strip()


class Firewalld:
    """Zone bindings through one bus connection to a running firewalld."""

    def __init__(self, bus: Bus, zone: str | None = None) -> None:
        self.bus = bus
        self.configured_zone = zone

    def _call(self, member: str, sig: str = "", args: tuple = ()) -> tuple:
        return self.bus.call(FWD_NAME, FWD_PATH, FWD_ZONE, member, sig, args,
                             timeout=CALL_TIMEOUT, flags=NO_AUTO_START)

    def zones(self) -> list[str]:
        return list(self._call("getZones")[0])

    def pick_zone(self) -> str:
        zones = self.zones()
        if self.configured_zone is not None:
            if self.configured_zone not in zones:
                raise FirewalldError(f"firewalld has no zone {self.configured_zone!r} "
                                     f"(zones: {', '.join(zones)})")
            return self.configured_zone
        for z in DEFAULT_ZONES:
            if z in zones:
                return z
        raise FirewalldError(f"firewalld has neither of the zones {', '.join(DEFAULT_ZONES)}; "
                             "name one with --firewalld-zone")

    def zone_of(self, iface: str) -> str:
        """The zone ``iface`` is bound to ("" when none; the default zone is not reported)."""
        return str(self._call("getZoneOfInterface", "s", (iface,))[0])

    def bind(self, bridges: Iterable[str], zone: str | None = None) -> list[ZoneResult]:
        """Raises FirewalldError only when no zone can be chosen; per bridge: results."""
        zone = zone or self.pick_zone()
        out = []
        for br in bridges:
            try:
                cur = self.zone_of(br)
                if cur == zone:
                    out.append(ZoneResult(br, zone, "unchanged"))
                    continue
                try:
                    # changeZoneOfInterface binds an unbound interface too; firewalld < 0.9
                    # raises ZONE_ALREADY_SET when it already is in that zone (1.x does not).
                    self._call("changeZoneOfInterface", "ss", (zone, br))
                except DBusError as e:
                    if _exc_code(e) != "ZONE_ALREADY_SET":
                        raise
                out.append(ZoneResult(br, zone, "moved" if cur else "added", cur))
            except DBusError as e:
                out.append(ZoneResult(br, "", "failed", error=f"firewalld refused zone {zone}: "
                                                              f"{e.message or e}"))
        return out

    def unbind(self, bridges: Iterable[str], zone: str | None = None) -> list[ZoneResult]:
        if zone is None:
            try:
                zone = self.pick_zone()
            except FirewalldError:
                zone = None
        out = []
        for br in bridges:
            try:
                cur = self.zone_of(br)
                if not cur:
                    out.append(ZoneResult(br, "", "absent"))
                elif zone is None or cur != zone:
                    # Not in vnetfw's zone (or vnetfw has no zone it could have used, so it
                    # never bound it): an admin's binding, left alone.
                    out.append(ZoneResult(br, cur, "kept", cur))
                else:
                    try:
                        self._call("removeInterface", "ss", (cur, br))
                    except DBusError as e:   # gone meanwhile
                        if _exc_code(e) not in ("UNKNOWN_INTERFACE", "NOT_ENABLED"):
                            raise
                    out.append(ZoneResult(br, "", "removed", cur))
            except DBusError as e:
                out.append(ZoneResult(br, "", "failed",
                                      error=f"firewalld refused to unbind it: {e.message or e}"))
        return out


@dataclass
class SyncResult:
    running: bool = False
    results: list[ZoneResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def notes(self) -> list[str]:
        return [str(r) for r in self.results if r.changed or r.action == "kept"]


def _open(config: FirewalldConfig) -> Bus | None:
    """A connection when firewalld runs there, else None (no bus, or nobody owns the name)."""
    try:
        bus = config.connect()
    except (DBusTransportError, OSError):
        return None
    try:
        if firewalld_running(bus):
            return bus
    except (DBusError, DBusTransportError):
        pass
    bus.close()
    return None


def sync(before: Mapping[str, Network], after: Mapping[str, Network], *,
         netns: str | None = None, config: FirewalldConfig | None = None) -> SyncResult:
    """The engine hook: unbind the bridges that went away, (re)bind the current ones."""
    res = SyncResult()
    try:
        config = config or FirewalldConfig.from_env()
    except ValueError as e:
        res.warnings.append(f"firewalld: {e}")
        return res
    keep = set(bridges_of(after.values()))
    gone = [b for b in bridges_of(before.values()) if b not in keep]
    if not config.enabled_for(netns) or not (keep or gone):
        return res
    bus = _open(config)
    if bus is None:
        return res
    res.running = True
    with bus:
        fw = Firewalld(bus, config.zone)
        try:
            if gone:
                res.results += fw.unbind(gone)
            if keep:
                res.results += fw.bind(sorted(keep))
        except (FirewalldError, DBusError, DBusTransportError) as e:
            res.warnings.append(f"firewalld: {e}")
        res.warnings += [f"firewalld: {r}" for r in res.results if r.action == "failed"]
    return res


def bind_bridges(names: Iterable[str], *, zone: str | None = None,
                 bus_address: str | None = None) -> list[ZoneResult] | None:
    """Bind ``names`` now; None when firewalld is not running. Raises FirewalldError when
    no zone can be chosen; a refused bridge is a ``failed`` result."""
    bus = _open(FirewalldConfig(zone=zone, bus=bus_address))
    if bus is None:
        return None
    with bus:
        return Firewalld(bus, zone).bind(list(names))


def unbind_bridges(names: Iterable[str], *, zone: str | None = None,
                   bus_address: str | None = None) -> list[ZoneResult] | None:
    """Unbind ``names`` now; None when firewalld is not running."""
    bus = _open(FirewalldConfig(zone=zone, bus=bus_address))
    if bus is None:
        return None
    with bus:
        return Firewalld(bus, zone).unbind(list(names))
