"""What ``vnetfw doctor`` looks at, gathered read-only into one ``Facts`` snapshot.

Contract: ``gather(netns, state_dir, networks)`` runs only commands that read
(``iptables-*-save``, ``nft -j list ruleset``, ``ip -j -d link show``, ``cat`` of sysctl
files, ``firewall-cmd`` queries) inside namespace ``netns`` (or the caller's own), and never
changes anything: no rule, no table, no sysctl, no state file, no lock. Anything it cannot
read is recorded in ``Facts.not_checked`` with the reason, and the checks that need it are
skipped, so doctor degrades instead of failing. ``doctor_checks`` is the pure half: it only
ever sees a ``Facts``.

Notes on reading a namespace: the runner enters only the network namespace, which is all
these need -- ``/proc/sys/net`` (forwarding, and br_netfilter's per-namespace
``bridge-nf-call-*`` since Linux 5.3) shows the namespace of the process that reads it.
firewalld is asked over D-Bus (``linux.dbus``; ``firewall-cmd`` when the system bus
cannot be reached that way). It runs in the host's namespace and manages only that one, so
with ``--netns`` it is asked only when ``$VNETFW_FIREWALLD_BUS`` names the bus of a firewalld
running in that namespace (as vnetfw's firewalld integration does); its nftables table, if
one is in the namespace, is seen either way.
iptables-legacy-save lists only the tables that exist (it never creates one), and
iptables-nft-save only reads.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backends.iptables import IptLive, flavour_of, parse_save
from .backends.registry import FLAVOURS, iptables_tool
from .backends.runner import CommandFailed, Runner
from .errors import BackendError, VnetfwError
from .firewalld import ENV_BUS as FIREWALLD_BUS_ENV
from .model import Network
from .state import StateStore, default_state_dir

SYSCTLS = {
    "net.ipv4.ip_forward": "/proc/sys/net/ipv4/ip_forward",
    "net.ipv6.conf.all.forwarding": "/proc/sys/net/ipv6/conf/all/forwarding",
    "net.bridge.bridge-nf-call-iptables": "/proc/sys/net/bridge/bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables": "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
}


@dataclass
class Link:
    name: str
    kind: str | None        # "bridge", "veth", ... (None: a plain device)
    up: bool


@dataclass
class Firewalld:
    """firewalld's view (host only): the zone each managed bridge is in, and zone targets."""

    running: bool
    backend: str | None = None                     # FirewallBackend from firewalld.conf
    default_zone: str | None = None
    zone_of: dict[str, str | None] = field(default_factory=dict)   # bridge -> zone or None
    target: dict[str, str] = field(default_factory=dict)           # zone -> target
    zones: list[str] = field(default_factory=list)


@dataclass
class Facts:
    netns: str | None = None
    networks: list[Network] = field(default_factory=list)
    networks_from: str = "state"                   # "state" or "arguments"
    backend: str | None = None                     # vnetfw backend of the active networks
    flavour: str | None = None                     # its iptables flavour, if iptables
    prefix: str | None = None
    sysctl: dict[str, str | None] = field(default_factory=dict)
    iptables: dict[str, IptLive] = field(default_factory=dict)
    nft: list[dict[str, Any]] | None = None        # ``nft -j list ruleset`` items
    links: dict[str, Link] | None = None
    firewalld: Firewalld | None = None
    not_checked: list[str] = field(default_factory=list)
    active: set[str] = field(default_factory=set)  # networks active in vnetfw's state
    libvirt: list[Any] = field(default_factory=list)  # doctor_libvirt.LibvirtView per daemon


def _ipt_cmd(flavour: str, fam: int) -> str:
    return iptables_tool(flavour, fam, "save")


def read_iptables(runner: Runner, flavour: str) -> IptLive | str:
    """Both families of one flavour, or why they could not be read."""
    out: dict = {}
    for fam in (4, 6):
        cmd = _ipt_cmd(flavour, fam)
        if runner.which(cmd) is None:
            return f"{cmd} not installed"
        try:
            out[fam] = parse_save(runner.run([cmd]))
        except BackendError as e:
            return str(e)
    return IptLive(out)


def read_links(runner: Runner) -> dict[str, Link] | str:
    try:
        data = json.loads(runner.run(["ip", "-j", "-d", "link", "show"]) or "[]")
    except (BackendError, ValueError) as e:
        return f"ip link: {e}"
    links = {}
    for d in data:
        kind = (d.get("linkinfo") or {}).get("info_kind")
        links[d["ifname"]] = Link(d["ifname"], kind, "UP" in d.get("flags", []))
    return links


def read_firewalld(runner: Runner, bridges: list[str]) -> Firewalld | str:
    if runner.which("firewall-cmd") is None:
        return "firewall-cmd not installed"
    try:
        runner.run(["firewall-cmd", "--state"])
    except CommandFailed as e:
        if e.returncode == 252:                     # firewall-cmd's NOT_RUNNING
            return Firewalld(running=False)
        return f"firewall-cmd --state: {e.stderr.splitlines()[-1] if e.stderr else e}"
    except BackendError as e:
        return f"firewall-cmd: {e}"
    fw = Firewalld(running=True)
    try:
        conf = Path("/etc/firewalld/firewalld.conf").read_text()
        for line in conf.splitlines():
            if line.strip().startswith("FirewallBackend="):
                fw.backend = line.split("=", 1)[1].strip()
    except OSError:
        pass
    try:
        fw.default_zone = runner.run(["firewall-cmd", "--get-default-zone"]).strip() or None
        fw.zones = runner.run(["firewall-cmd", "--get-zones"]).split()
        for br in bridges:
            z = runner.run(["firewall-cmd", f"--get-zone-of-interface={br}"], check=False)
            fw.zone_of[br] = z.strip() if z.strip() and "no zone" not in z else None
        zones = {z for z in fw.zone_of.values() if z}
        if fw.default_zone:
            zones.add(fw.default_zone)
        for zone in sorted(zones):
            info = runner.run(["firewall-cmd", f"--info-zone={zone}"], check=False)
            for line in info.splitlines():
                if line.strip().startswith("target:"):
                    fw.target[zone] = line.split(":", 1)[1].strip()
    except BackendError as e:
        return f"firewall-cmd: {e}"
    return fw


def read_firewalld_dbus(address: str | None, bridges: list[str]) -> Firewalld | str:
    """firewalld's zones over D-Bus (``address``; None: the system bus), with the client of
    ``vnetfw.firewalld``. Only queries; never starts firewalld (no auto-start)."""
    from .firewalld import FWD_NAME, FWD_PATH, FWD_ZONE, Firewalld as FwdClient, firewalld_running
    from .linux.dbus import NO_AUTO_START, Bus, DBusError, DBusTransportError
    try:
        bus = Bus(address, timeout=5.0)
    except (DBusTransportError, OSError) as e:
        return f"D-Bus {'bus ' + address if address else 'system bus'} unreachable: {e}"
    try:
        if not firewalld_running(bus):
            return Firewalld(running=False)

        def call(iface: str, member: str, sig: str = "", args: tuple = ()) -> tuple:
            return bus.call(FWD_NAME, FWD_PATH, iface, member, sig, args, timeout=10.0,
                            flags=NO_AUTO_START)

        client = FwdClient(bus)
        fw = Firewalld(running=True, zones=client.zones())
        fw.default_zone = str(call(FWD_NAME, "getDefaultZone")[0]) or None
        for br in bridges:
            fw.zone_of[br] = client.zone_of(br) or None
        for zone in sorted({z for z in fw.zone_of.values() if z} | {fw.default_zone or ""}
                           - {""}):
            try:
                settings = call(FWD_ZONE, "getZoneSettings2", "s", (zone,))[0]
                fw.target[zone] = str(settings.get("target", "default"))
            except DBusError:                   # firewalld < 0.9: the old struct
                fw.target[zone] = str(call(FWD_ZONE, "getZoneSettings", "s", (zone,))[0][4])
        return fw
    except (DBusError, DBusTransportError, OSError, ValueError, IndexError) as e:
        return f"firewalld over D-Bus: {e}"
    finally:
        bus.close()


def gather(netns: str | None = None, state_dir: str | Path | None = None,
           networks: list[Network] | None = None) -> Facts:
    """Read everything doctor needs; change nothing."""
    runner = Runner(netns)
    f = Facts(netns=netns)
    try:
        st = StateStore(state_dir if state_dir is not None else default_state_dir(netns)).load()
        f.backend, f.prefix = st.backend, st.prefix
        state_nets = sorted(st.networks.values(), key=lambda n: n.name)
        f.active = set(st.networks)
    except VnetfwError as e:
        f.not_checked.append(f"vnetfw's state: {e}")
        state_nets = []
    if networks:
        f.networks, f.networks_from = list(networks), "arguments"
    else:
        f.networks = state_nets
    f.flavour = flavour_of(runner, f.backend)

    for key, path in SYSCTLS.items():
        try:
            f.sysctl[key] = runner.run(["cat", path]).strip()
        except BackendError:
            f.sysctl[key] = None            # absent: IPv6 off, br_netfilter not loaded
    for flavour in FLAVOURS:
        got = read_iptables(runner, flavour)
        if isinstance(got, str):
            f.not_checked.append(f"{flavour}: {got}")
        else:
            f.iptables[flavour] = got
    if runner.which("nft") is None:
        f.not_checked.append("nftables: nft not installed")
    else:
        try:
            f.nft = json.loads(runner.run(["nft", "-j", "list", "ruleset"]) or "{}").get(
                "nftables", [])
        except (BackendError, ValueError) as e:
            f.not_checked.append(f"nftables: {e}")
    links = read_links(runner)
    if isinstance(links, str):
        f.not_checked.append(links)
    else:
        f.links = links
    bus = os.environ.get(FIREWALLD_BUS_ENV) or None
    bridges = [n.bridge for n in f.networks if n.bridge and n.mode.needs_bridge]
    if netns is not None and bus is None:
        f.not_checked.append("firewalld zones: firewalld manages the host's namespace, not "
                             f"{netns} (its nftables table would still be seen here; name "
                             f"its bus with ${FIREWALLD_BUS_ENV} to ask it)")
    else:
        fw = read_firewalld_dbus(bus, bridges)
        if isinstance(fw, str) and bus is None and runner.which("firewall-cmd"):
            fw = read_firewalld(runner, bridges)          # the same questions, via the CLI
        if isinstance(fw, str):
            f.not_checked.append(f"firewalld zones: {fw}")
        else:
            f.firewalld = fw
            if not fw.running:
                f.not_checked.append("firewalld zones: firewalld is not running")
    from .doctor_libvirt import gather_libvirt
    try:
        f.libvirt = gather_libvirt(netns)
    except OSError as e:
        f.not_checked.append(f"libvirt: {e}")
    for v in f.libvirt:
        f.not_checked += [f"libvirt ({v.who}): {u}" for u in v.unreadable]
    return f
