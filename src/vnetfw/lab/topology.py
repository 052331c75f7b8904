"""The lab topology: a hypervisor, its bridges and guests, and upstream hosts, in namespaces.

Contract: ``Lab(networks, ...)`` is a context manager. On entry it creates, in namespaces of
its own (named ``vl<pid>-<n>-<role>``, never reused), and nothing anywhere else:

- ``hv``: the hypervisor. One Linux bridge per network (the network's bridge name) holding
  every IP block's address; forwarding on (IPv4 and IPv6, inside ``hv`` only); default
  routes via the first uplink.
- guests: per network ``guests`` namespaces, each a veth (``eth0``) into the bridge,
  addressed ``.10``, ``.11``... (IPv4) and ``::10``, ``::11``... (IPv6), default routes via the gateway.
  With ``rogue_ipv6={net: prefix}`` the guests of a network without IPv6 give themselves an
  address in ``prefix`` and route via the bridge's link-local ``fe80::1`` -- what a guest
  can always do, and what the ``default`` profile's IPv6 firewalling is for.
- uplinks: per ``Uplink`` an upstream namespace behind a veth (``uplink0``...) in ``hv``,
  with a default route back via ``hv`` (so it reaches every guest subnet).

and starts one probe listener in each. On exit (also on exceptions, SIGTERM/SIGHUP while
inside the ``with``, and at interpreter exit) it stops its processes and deletes every
namespace it made. ``hosts`` describes the endpoints for the policy; ``ns_of`` maps a host
to its namespace. The firewall itself is not touched here: callers drive the engine in
``lab.hv``.

Kernel facts this relies on:
- A new namespace inherits IPv4 conf defaults (rp_filter among them) from the initial one,
  so rp_filter is set to 0 everywhere explicitly: the lab's routing is symmetric anyway, but
  a host's strict rp_filter must not decide what the firewall tests observe.
- IPv6 duplicate address detection keeps a new address "tentative" (unusable as a source)
  for about a second; ``accept_dad=0`` (before links exist, so link-locals inherit it) plus
  ``nodad`` on every address makes addresses usable at once.
- With br_netfilter loaded, frames bridged between two ports of one bridge traverse the
  hypervisor's iptables FORWARD chain as ``-i BR -o BR`` (per-namespace
  ``net.bridge.bridge-nf-call-ip{,6}tables``, default 1); the FWX accept covers that. The
  lab leaves those sysctls alone and reports them in ``info()``.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import shutil
from dataclasses import dataclass
from typing import Iterable, Mapping

from ..errors import GuardError
from ..model import Network
from .netns import LabError, Netns, cleanup_on_signals, guard
from .policy import GATEWAY, GUEST, UPLINK, Host
from .probe import Listener, start_listeners

_labs = itertools.count()
# Guest i gets host part .10+i (IPv4) or ::10+i (IPv6, read as written: 0x10).
GUEST_HOST_OFFSET = {4: 10, 6: 0x10}


@dataclass(frozen=True)
class Uplink:
    """A hypervisor uplink: ``dev`` in hv, ``hv``/``far`` the two ends' addresses (CIDR)."""

    dev: str
    hv: tuple[str, ...]
    far: tuple[str, ...]
    default: bool = False           # hv's default routes point here


# TEST-NET-2 / 2001:db8::/32 documentation ranges: never routed on any real network.
UPLINK0 = Uplink("uplink0", ("198.51.100.1/24", "2001:db8:ffff::1/64"),
                 ("198.51.100.2/24", "2001:db8:ffff::2/64"), default=True)
UPLINK1 = Uplink("uplink1", ("203.0.113.1/24", "2001:db8:fffe::1/64"),
                 ("203.0.113.2/24", "2001:db8:fffe::2/64"))


def _addr(cidr: str) -> str:
    return str(ipaddress.ip_interface(cidr).ip)


def _addr_add(cidr: str, dev: str) -> str:
    """iproute2 batch line adding ``cidr`` to ``dev`` (``nodad``: IPv6 only, usable now)."""
    nodad = " nodad" if ipaddress.ip_interface(cidr).version == 6 else ""
    return f"addr add {cidr} dev {dev}{nodad}"


class Lab:
    """The sandbox (see the module docstring); use it as a context manager."""

    def __init__(self, networks: Iterable[Network], *, guests: int = 2,
                 uplinks: Iterable[Uplink] = (UPLINK0,),
                 rogue_ipv6: Mapping[str, str] | None = None) -> None:
        self.networks = tuple(networks)
        self.guests = guests
        self.uplinks = tuple(uplinks)
        self.rogue_ipv6 = dict(rogue_ipv6 or {})
        if not any(u.default for u in self.uplinks):
            raise ValueError("one uplink must carry the default route")
        for name in self.rogue_ipv6:
            net = next((n for n in self.networks if n.name == name), None)
            if net is None or net.ips_of(6):
                raise ValueError(f"rogue_ipv6: {name!r} must be a network without IPv6")
        self.tag = f"vl{os.getpid()}-{next(_labs)}"
        self.namespaces: list[Netns] = []
        self.hosts: list[Host] = []
        self.ns_of: dict[str, Netns] = {}
        self.listeners: dict[str, Listener] = {}
        self.hv: Netns | None = None
        self._signals = cleanup_on_signals()

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> "Lab":
        self._signals.__enter__()
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the listeners and delete every namespace; safe to call twice."""
        try:
            for lst in self.listeners.values():
                lst.close()
            self.listeners = {}
            for ns in reversed(self.namespaces):
                ns.delete()
            self.namespaces = []
        finally:
            self._signals.__exit__(None, None, None)

    def _ns(self, role: str) -> Netns:
        ns = Netns.create(f"{self.tag}-{role}")
        self.namespaces.append(ns)
        return ns

    # -- building --------------------------------------------------------------------------
    def _build(self) -> None:
        hv = self.hv = self._ns("hv")
        up_ns = [self._ns(f"u{i}") for i in range(len(self.uplinks))]
        guest_ns: list[tuple[Network, int, Netns]] = []
        for net in self.networks:
            if not net.ips or not net.bridge:
                raise ValueError(f"lab network {net.name!r} needs a bridge and an address")
            for i in range(self.guests):
                guest_ns.append((net, i, self._ns(f"g{len(guest_ns)}")))
        # Before any link exists, so every interface inherits the defaults.
        for ns in self.namespaces:
            ns.sysctl({"net.ipv4.conf.all.rp_filter": 0, "net.ipv4.conf.default.rp_filter": 0,
                       "net.ipv6.conf.all.accept_dad": 0, "net.ipv6.conf.default.accept_dad": 0,
                       "net.ipv6.conf.default.router_solicitations": 0})
        hv.sysctl({"net.ipv4.ip_forward": 1, "net.ipv6.conf.all.forwarding": 1})
        self._build_hv(hv, up_ns, guest_ns)
        for up, ns in zip(self.uplinks, up_ns):
            ns.ip_batch([*(_addr_add(c, "eth0") for c in up.far), "link set eth0 up",
                         *(f"route add default via {_addr(c)}" for c in up.hv)])
            self._add_host(Host(f"up:{up.dev}", UPLINK, tuple(_addr(c) for c in up.far),
                                dev=up.dev, hv_addrs=tuple(_addr(c) for c in up.hv)), ns)
        for net, i, ns in guest_ns:
            self._build_guest(net, i, ns)
        self.listeners = start_listeners(self.namespaces)

    def _build_hv(self, hv: Netns, up_ns: list[Netns],
                  guest_ns: list[tuple[Network, int, Netns]]) -> None:
        cmds: list[str] = []
        for net in self.networks:
            # STP off and no forward delay: ports forward as soon as they are up.
            cmds.append(f"link add {net.bridge} type bridge forward_delay 0 stp_state 0")
            cmds += [_addr_add(f"{ip.address}/{ip.prefix}", net.bridge) for ip in net.ips]
            if net.name in self.rogue_ipv6:
                cmds.append(_addr_add("fe80::1/64", net.bridge))
            cmds.append(f"link set {net.bridge} up")
            self._add_host(Host(f"{net.name}/gw", GATEWAY,
                                tuple(str(ip.address) for ip in net.ips), network=net.name), hv)
        for up, ns in zip(self.uplinks, up_ns):
            # Created in hv with its peer directly in the upstream namespace: no interface
            # ever exists, even briefly, in the namespace we run in.
            cmds.append(f"link add {up.dev} type veth peer name eth0 netns {ns.name}")
            cmds += [_addr_add(c, up.dev) for c in up.hv]
            cmds.append(f"link set {up.dev} up")
        for k, (net, _, ns) in enumerate(guest_ns):
            cmds += [f"link add vg{k} type veth peer name eth0 netns {ns.name}",
                     f"link set vg{k} master {net.bridge}", f"link set vg{k} up"]
        default = next(u for u in self.uplinks if u.default)
        cmds += [f"route add default via {_addr(c)}" for c in default.far]
        hv.ip_batch(cmds)

    def _build_guest(self, net: Network, i: int, ns: Netns) -> None:
        addrs, routes = [], []
        for fam in (4, 6):
            if net.ips_of(fam):
                ip = net.ips_of(fam)[0]
                a = ip.subnet.network_address + GUEST_HOST_OFFSET[fam] + i
                cidr, gw = f"{a}/{ip.prefix}", str(ip.address)
            elif fam == 6 and net.name in self.rogue_ipv6:
                pfx = ipaddress.ip_network(self.rogue_ipv6[net.name])
                cidr = f"{pfx.network_address + GUEST_HOST_OFFSET[6] + i}/{pfx.prefixlen}"
                gw = "fe80::1"
            else:
                continue
            addrs.append(cidr)
            routes.append(f"route add default via {gw} dev eth0")
        # Routes need the link up, so: addresses, link up, routes.
        ns.ip_batch([*(_addr_add(c, "eth0") for c in addrs), "link set eth0 up", *routes])
        self._add_host(Host(f"{net.name}/g{i}", GUEST, tuple(_addr(c) for c in addrs),
                            network=net.name), ns)

    def _add_host(self, host: Host, ns: Netns) -> None:
        self.hosts.append(host)
        self.ns_of[host.name] = ns

    # -- queries ---------------------------------------------------------------------------
    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    def require_hv(self) -> Netns:
        """The hypervisor namespace, checked by the guard (hand its name to the engine)."""
        if self.hv is None:
            raise GuardError("the lab is not built")
        guard(self.hv.name)
        return self.hv

    def flush_conntrack(self) -> None:
        """Forget every tracked connection in hv, so a new run never reuses an old NAT
        binding or ESTABLISHED state from before the rules changed. (Best effort without
        the conntrack tool: every probe uses a fresh socket, so a clash is unlikely.)"""
        if shutil.which("conntrack"):
            self.require_hv().run("conntrack", "-F")

    def info(self) -> dict[str, str]:
        hv = self.require_hv()
        out = {"hv": hv.name}
        for key in ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables"):
            try:
                out[key] = hv.run("cat", f"/proc/sys/net/bridge/{key}").strip()
            except LabError:
                out[key] = "absent (br_netfilter not loaded)"
        return out
