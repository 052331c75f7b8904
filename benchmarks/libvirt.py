"""Real libvirt (Debian 12's libvirtd, iptables backend) as a peer, via
``../shared/tools/libvirt-peer.sh``, confined to its own network namespace.

For each N (default 1, 10, 50) the same NAT+DHCP definitions the control-plane benchmark
uses are defined, then:
- start: one ``virsh net-start`` process per network (what an admin or autostart does) and,
  separately, all starts in ONE virsh process (libvirtd's own cost without client connects);
- stop: the same with ``net-destroy``;
- +1 / -1: start / destroy one more network while N run;
- the number of iptables/ip6tables processes libvirtd ran to start the N networks, from its
  command log.
libvirt's time includes what vnetfw does not do (bridge creation, dnsmasq): the table says so.
For comparison, vnetfw's CLI applies the same N into a fresh namespace on iptables-nft (the
flavour Debian's /usr/sbin/iptables is, and so what libvirt 9 ran) in the same run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from . import netdefs
from .control import Workspace, cli
from .ns import new_netns

PEER = Path(__file__).resolve().parent.parent.parent / "shared" / "tools" / "libvirt-peer.sh"


def peer_script() -> Path | None:
    for p in (PEER, Path("/work/shared/tools/libvirt-peer.sh")):
        if p.exists():
            return p
    return None


def usable() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if peer_script() is None:
        return "../shared/tools/libvirt-peer.sh not found"
    for prog in ("libvirtd", "virsh", "dnsmasq"):
        if shutil.which(prog) is None and not Path(f"/usr/sbin/{prog}").exists():
            return (f"{prog} not installed: run '{peer_script()} install' (apt packages "
                    "libvirt-daemon libvirt-clients dnsmasq-base ...)")
    return None


class Peer:
    def __init__(self, tmp: Path) -> None:
        self.ns = f"vnb{os.getpid()}-lv"
        self.base = tmp / "lvpeer"
        self.env = dict(os.environ, LVPEER_NS=self.ns, LVPEER_BASE=str(self.base),
                        LVPEER_OUT=str(tmp / "lvout"))
        self.uri = f"network:///system?socket={self.base}/sock/libvirt-sock"
        self.script = str(peer_script())

    def up(self) -> None:
        p = subprocess.run(["bash", self.script, "up"], env=self.env, capture_output=True,
                           text=True, timeout=120, cwd=self.base.parent)
        if p.returncode != 0:
            raise RuntimeError(f"libvirt-peer.sh up failed: {p.stderr.strip()[-800:]}")

    def down(self) -> None:
        subprocess.run(["bash", self.script, "down"], env=self.env, capture_output=True,
                       text=True, timeout=300, cwd=self.base.parent)

    def virsh(self, *cmds: str, timeout: float = 600) -> float:
        """One virsh process running ``cmds`` (joined with ';'); returns its wall time."""
        argv = ["virsh", "-q", "-c", self.uri, "; ".join(cmds)]
        t0 = time.perf_counter()
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        dt = time.perf_counter() - t0
        if p.returncode != 0:
            raise RuntimeError(f"virsh {cmds[0]}... failed: {p.stderr.strip()[-500:]}")
        return dt

    def each(self, verb: str, names: list[str]) -> float:
        t0 = time.perf_counter()
        for n in names:
            self.virsh(f"{verb} {n}")
        return time.perf_counter() - t0

    def log_mark(self) -> int:
        try:
            return (self.base / "log" / "libvirtd.log").stat().st_size
        except FileNotFoundError:
            return 0

    def fw_processes_since(self, offset: int) -> int:
        with open(self.base / "log" / "libvirtd.log", "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        return len(re.findall(r"About to run .*?/usr/sbin/ip6?tables ", text))


def run(sizes: list[int], log) -> dict:
    why = usable()
    if why:
        return {"skipped": why}
    cells = []
    notes = ["libvirt 9.0.0 (Debian 12) network driver only, iptables (nft flavour), "
             "in its own namespace via libvirt-peer.sh; start includes bridge + dnsmasq",
             "vnetfw column: 'vnetfw apply DIR' of the same N definitions (whole CLI process, "
             "iptables-nft) into a fresh namespace in the same run"]
    tmp = Path(tempfile.mkdtemp(prefix="vnbench-lv-"))
    peer = Peer(tmp)
    try:
        peer.up()
        for n in sorted(sizes):
            defs = netdefs.xmls("nat", n)
            d = netdefs.write_dir(tmp / f"defs{n}", defs)
            names = sorted(defs)
            peer.virsh(*(f"net-define {d / (k + '.xml')}" for k in names))
            cell: dict = {"n": n}
            mark = peer.log_mark()
            cell["start_each_s"] = peer.each("net-start", names)
            cell["iptables_processes_start"] = peer.fw_processes_since(mark)
            ename, exml = netdefs.extra_xml(n)
            ef = netdefs.write_dir(tmp / f"extra{n}", {ename: exml}) / f"{ename}.xml"
            peer.virsh(f"net-define {ef}")
            cell["add1_s"] = peer.virsh(f"net-start {ename}")
            cell["rm1_s"] = peer.virsh(f"net-destroy {ename}")
            peer.virsh(f"net-undefine {ename}")
            cell["stop_each_s"] = peer.each("net-destroy", list(reversed(names)))
            if n <= 10:     # stopping is slow (~0.4 s a network): one-virsh rows up to 10 only
                cell["start_batch_s"] = peer.virsh(*(f"net-start {k}" for k in names))
                cell["stop_batch_s"] = peer.virsh(*(f"net-destroy {k}"
                                                    for k in reversed(names)))
            peer.virsh(*(f"net-undefine {k}" for k in names))
            # vnetfw, same definitions, same run
            ws = Workspace(tmp / "vnetfw", "nat", n)
            with new_netns("lvv") as ns:
                st = ws.state_dir()
                cell["vnetfw_cli_apply_s"] = cli(ns, ws, st, "iptables-nft", "apply",
                                                 str(ws.dir)).wall
                cell["vnetfw_cli_rm_all_s"] = cli(ns, ws, st, "iptables-nft", "remove",
                                                  *names).wall
            cells.append(cell)
            log(f"  libvirt N={n:<3} start {cell['start_each_s']:.2f} s "
                f"({cell['iptables_processes_start']} iptables processes), stop "
                f"{cell['stop_each_s']:.2f} s; +1 {cell['add1_s'] * 1000:.0f} ms "
                f"-1 {cell['rm1_s'] * 1000:.0f} ms | vnetfw apply "
                f"{cell['vnetfw_cli_apply_s'] * 1000:.0f} ms")
    finally:
        peer.down()
        shutil.rmtree(tmp, ignore_errors=True)
    return {"cells": cells, "notes": notes}
