"""Data plane (issue 3): throughput from a guest through the hypervisor to an upstream host.

Topology (three namespaces this module creates, nothing else is addressed)::

    guest G (10.255.0.2) --veth-- [bridge vbprobe 10.255.0.1] hypervisor H
        [uplink 203.0.113.1] --veth-- upstream U (203.0.113.2, iperf3 -s)

H forwards and runs vnetfw with N networks applied: N-1 NAT networks ``n00000``... (bridges
that need not exist: rules match by name) and the probe's network ``zz-probe``, which sorts
LAST, so a linear layout walks every other network's forward rules before reaching the
probe's accept. Layouts: ``nftables`` (vnetfw's verdict maps), ``iptables-nft`` (vnetfw's
default profile: private chains, linear within each), ``libvirt-linear`` (vnetfw's
``libvirt`` profile on iptables-nft = libvirt's exact rules and chain layout), and
``no-rules`` (no firewall at all, forwarding only: the ceiling).

Measured with iperf3 (TCP, default size; and UDP 64-byte datagrams, packets/s delivered),
bounded by ``-t`` seconds, medians of the runs. Each iperf3 client is killed if it overruns.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from . import netdefs
from .ns import new_netns

UP_ADDR = "203.0.113.2"
H_UP = "203.0.113.1"

LAYOUTS = {
    # name: (backend, profile)
    "no-rules": (None, None),
    "nftables": ("nftables", "default"),
    "iptables-nft": ("iptables-nft", "default"),
    "libvirt-linear": ("iptables-nft", "libvirt"),
    "libvirt-linear-legacy": ("iptables-legacy", "libvirt"),
}
DEFAULT_LAYOUTS = ("no-rules", "nftables", "iptables-nft", "libvirt-linear")


class Topology:
    def __init__(self) -> None:
        self.g = new_netns("dg")
        self.h = new_netns("dh")
        self.u = new_netns("du")
        self.server: subprocess.Popen | None = None
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        g, h, u = self.g, self.h, self.u
        h.ip_batch([
            f"link add {netdefs.PROBE_BRIDGE} type bridge",
            f"addr add {netdefs.PROBE_GW}/24 dev {netdefs.PROBE_BRIDGE}",
            f"link set {netdefs.PROBE_BRIDGE} up",
            f"link add vgprobe type veth peer name eth0 netns {g.name}",
            f"link set vgprobe master {netdefs.PROBE_BRIDGE} up",
            f"link add uplink type veth peer name eth0 netns {u.name}",
            f"addr add {H_UP}/24 dev uplink",
            "link set uplink up",
        ])
        g.ip_batch([f"addr add {netdefs.PROBE_GUEST}/24 dev eth0", "link set eth0 up",
                    f"route add default via {netdefs.PROBE_GW}"])
        # The route back is only used by the no-rules layout (the others masquerade).
        u.ip_batch([f"addr add {UP_ADDR}/24 dev eth0", "link set eth0 up",
                    f"route add 10.255.0.0/24 via {H_UP}"])
        h.sysctl({"net.ipv4.ip_forward": 1})
        self.server = subprocess.Popen(u.argv("iperf3", "-s", "-p", "5201"),
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if ":5201" in u.run("ss", "-ltn"):
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("iperf3 server did not start")
        # the path must work before we measure
        deadline = time.monotonic() + 10
        while not self.reachable():
            if time.monotonic() > deadline:
                raise RuntimeError("guest cannot reach upstream (no-rules path broken)")
            time.sleep(0.2)

    def reachable(self) -> bool:
        """A tiny iperf3 transfer (1 KiB) from the guest: no ping needed."""
        p = self.g.run_process("iperf3", "-c", UP_ADDR, "-p", "5201", "-n", "1K",
                               "--connect-timeout", "2000", timeout=20, check=False)
        return p.returncode == 0

    def iperf(self, seconds: float, udp: bool) -> dict:
        argv = ["iperf3", "-c", UP_ADDR, "-p", "5201", "-J", "-t", str(int(seconds))]
        if udp:
            argv += ["-u", "-b", "0", "-l", "64"]
        p = self.g.run_process(*argv, timeout=seconds + 30, check=False)
        try:
            d = json.loads(p.stdout)
        except json.JSONDecodeError:
            raise RuntimeError(f"iperf3 failed: {p.stderr.strip() or p.stdout[-400:]}")
        if "error" in d:
            raise RuntimeError(f"iperf3: {d['error']}")
        end = d["end"]
        if udp:
            s = end["sum"]
            delivered = s["packets"] - s.get("lost_packets", 0)
            return {"udp_kpps": delivered / s["seconds"] / 1000, "udp_lost_pct": s.get("lost_percent")}
        return {"tcp_gbps": end["sum_received"]["bits_per_second"] / 1e9}

    def close(self) -> None:
        if self.server is not None:
            self.server.terminate()
            try:
                self.server.wait(5)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
        for ns in (self.g, self.h, self.u):
            ns.delete()


def rules_walked(nets, profile: str) -> int:
    """Forward-path rules a guest->upstream packet is tested against in a linear layout
    before the probe network's accept (FWX all, FWI all, FWO up to the probe's accept)."""
    from vnetfw.engine import resolve_profile
    from vnetfw.plan import plan
    rs = plan(nets, resolve_profile(profile))
    n = len(rs.chain(4, "filter", "FWX")) + len(rs.chain(4, "filter", "FWI"))
    for r in rs.chain(4, "filter", "FWO"):
        n += 1
        if r.network == netdefs.PROBE_NAME and r.verdict == "ACCEPT":
            break
    return n


def run(layouts: list[str], sizes: list[int], runs: int, seconds: float, log) -> dict:
    if shutil.which("iperf3") is None:
        return {"skipped": "iperf3 is not installed (apt-get install iperf3)"}
    from vnetfw.engine import Engine
    cells = []
    notes = [f"iperf3 -t {seconds:g}, {runs} run(s) per cell, medians; TCP: one stream, "
             "default length; UDP: -l 64 -b 0, delivered packets/s",
             "N counts the probe's own network; the probe's network sorts last"]
    tmp = Path(tempfile.mkdtemp(prefix="vnbench-dp-"))
    try:
        for layout in layouts:
            backend, profile = LAYOUTS[layout]
            topo = Topology()
            try:
                state = tmp / f"state-{layout}"
                hooks = tmp / "no-hooks"
                hooks.mkdir(exist_ok=True)
                for n in (sorted(sizes) if backend else [0]):
                    nets = netdefs.load({**netdefs.xmls("nat", n - 1),
                                         netdefs.PROBE_NAME: netdefs.probe_xml()}) if n else []
                    if backend:
                        Engine(backend=backend, profile=profile, netns=topo.h.name,
                               state_dir=state, hooks_dir=hooks).apply(nets)
                        if not topo.reachable():
                            raise RuntimeError(f"{layout} N={n}: guest cannot reach upstream")
                    tcp, udp = [], []
                    for _ in range(runs):
                        tcp.append(topo.iperf(seconds, udp=False)["tcp_gbps"])
                        udp.append(topo.iperf(seconds, udp=True)["udp_kpps"])
                    cell = {"layout": layout, "backend": backend, "profile": profile, "n": n,
                            "tcp_gbps": statistics.median(tcp), "udp_kpps": statistics.median(udp),
                            "tcp_samples": tcp, "udp_samples": udp,
                            "rules_walked": (rules_walked(nets, profile)
                                             if backend and backend != "nftables" else
                                             ("3 map lookups" if backend else 0))}
                    cells.append(cell)
                    log(f"  {layout:<22} N={n:<5} TCP {cell['tcp_gbps']:.2f} Gbit/s  "
                        f"UDP {cell['udp_kpps']:.0f} kpps")
            finally:
                topo.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"cells": cells, "notes": notes}
