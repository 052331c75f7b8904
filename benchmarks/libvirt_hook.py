"""Real libvirt firewalling its own NAT networks, against open networks firewalled by vnetfw's
libvirt hook, side by side in one run and one daemon.

One confined libvirtd (``vnetfw.lab.libvirtd``: Debian 12's 9.0, iptables backend, in its
own network and mount namespaces), with the hook installed by ``vnetfw libvirt-hook
install`` (vnetfw on nftables, its state in the benchmark's folder). Three sets of N
networks, all defined first; then each set in turn starts its N networks and stops them
again, one ``virsh`` process per start or stop. (Not all 3N at once: every network's dnsmasq
takes an inotify instance, and the host's fs.inotify.max_user_instances, 128 by default, is
shared with everything else root runs.)

- ``libvirt``: ``<forward mode='nat'/>`` + DHCP, libvirt writes its iptables rules;
- ``vnetfw hook``: the same networks through ``vnetfw libvirt convert`` (open + metadata):
  libvirt writes nothing, the hook applies the network at ``start begin`` and removes it at
  ``stopped end``;
- ``open, no metadata``: the same but without metadata: libvirt runs the hook, whose sh
  wrapper passes ``start begin`` to vnetfw, which finds no metadata and exits. The
  difference vnetfw-hook minus this is what firewalling by the hook adds to a start or a
  stop; this minus nothing is what having the hook installed costs a network vnetfw
  ignores.

Every start includes the bridge and dnsmasq; the times are per network (median, and the
N-th network's start, i.e. with N-1 others running).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vnetfw.lab import libvirtd as lv
from vnetfw.lab.netns import Netns
from vnetfw.sources.libvirt_convert import convert

from . import netdefs

SETS = ("libvirt", "hook", "open")


def _xml(kind: str, i: int) -> str:
    base = {"libvirt": 0, "hook": 1000, "open": 2000}[kind]
    x = netdefs.xml_for(base + i, "nat", name=f"{kind[0]}{i:04d}", bridge=f"v{kind[0]}{i:04d}")
    if kind == "hook":
        return convert(x, "bench")
    if kind == "open":
        return x.replace("<forward mode='nat'/>", "<forward mode='open'/>")
    return x


def run(n: int, log) -> dict:
    if (why := lv.missing()) is not None:
        return {"skipped": why}
    tmp = Path(tempfile.mkdtemp(prefix="vnbench-lvh-"))
    ns = Netns.create(f"vnb{os.getpid()}-lvh")
    d = lv.Libvirtd(ns, tmp / "libvirt")
    times: dict[str, dict[str, list[float]]] = {k: {"start": [], "stop": []} for k in SETS}
    try:
        ns.sysctl({"net.ipv4.ip_forward": 1})
        subprocess.run([sys.executable, "-m", "vnetfw", "--state-dir", str(tmp / "state"),
                        "--hooks-dir", str(tmp / "no-hooks"), "libvirt-hook", "install",
                        "--hooks-dir", str(d.hooks_dir)], check=True, capture_output=True)
        d.start()
        for kind in SETS:
            for i in range(n):
                f = tmp / f"{kind}{i}.xml"
                f.write_text(_xml(kind, i))
                d.virsh("net-define", str(f))

        def timed(verb: str, kind: str, i: int) -> None:
            t0 = time.perf_counter()
            d.virsh(verb, f"{kind[0]}{i:04d}")
            times[kind]["start" if verb == "net-start" else "stop"].append(
                time.perf_counter() - t0)

        in_sync = None
        for kind in SETS:
            for i in range(n):
                timed("net-start", kind, i)
            if kind == "hook":
                state = subprocess.run(ns.argv(sys.executable, "-m", "vnetfw", "--state-dir",
                                               str(tmp / "state"), "check"),
                                       capture_output=True)
                in_sync = state.returncode == 0
            for i in reversed(range(n)):
                timed("net-destroy", kind, i)
    finally:
        try:
            if d.proc:
                d.clear()
        finally:
            d.kill_all()
            ns.delete()
            shutil.rmtree(tmp, ignore_errors=True)
    med = {k: {v: statistics.median(ts) for v, ts in t.items()} for k, t in times.items()}
    cell = {"n": n, "median_s": med,
            "last_start_s": {k: times[k]["start"][-1] for k in SETS},
            "hook_adds_start_s": med["hook"]["start"] - med["open"]["start"],
            "hook_adds_stop_s": med["hook"]["stop"] - med["open"]["stop"],
            "vnetfw_in_sync_with_n_running": in_sync}
    log(f"  N={n}: start median libvirt {med['libvirt']['start'] * 1000:.0f} ms, hook "
        f"{med['hook']['start'] * 1000:.0f} ms, open {med['open']['start'] * 1000:.0f} ms; "
        f"stop libvirt {med['libvirt']['stop'] * 1000:.0f} ms, hook "
        f"{med['hook']['stop'] * 1000:.0f} ms, open {med['open']['stop'] * 1000:.0f} ms")
    return {"cells": [cell], "notes": [
        "one confined libvirtd 9.0 (iptables backend) runs all three sets, one after the "
        "other (N running at most); one virsh process per start or stop",
        "hook adds = vnetfw-hook network minus open network without metadata (the hook is "
        "installed for both)"]}


def rows(sec: dict) -> tuple[list[str], list[list[str]]]:
    from .report import ms, ratio
    out = []
    for c in sec.get("cells", []):
        m = c["median_s"]
        out.append([str(c["n"]), "start", ms(m["libvirt"]["start"]), ms(m["hook"]["start"]),
                    ms(m["open"]["start"]), ms(c["hook_adds_start_s"]),
                    ratio(m["hook"]["start"], m["libvirt"]["start"])])
        out.append([str(c["n"]), "stop", ms(m["libvirt"]["stop"]), ms(m["hook"]["stop"]),
                    ms(m["open"]["stop"]), ms(c["hook_adds_stop_s"]),
                    ratio(m["hook"]["stop"], m["libvirt"]["stop"])])
        out.append([str(c["n"]), f"start of the {c['n']}th", ms(c["last_start_s"]["libvirt"]),
                    ms(c["last_start_s"]["hook"]), ms(c["last_start_s"]["open"]), "",
                    ratio(c["last_start_s"]["hook"], c["last_start_s"]["libvirt"])])
    return (["N", "per network (median ms)", "libvirt's own firewall (nat)",
             "vnetfw hook (open + metadata)", "open, no metadata", "hook adds",
             "hook / libvirt"], out)


if __name__ == "__main__":
    import argparse
    import json
    from .report import table
    p = argparse.ArgumentParser(prog="python -m benchmarks.libvirt_hook", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=50, help="networks per set (default 50)")
    a = p.parse_args()
    res = run(a.n, lambda m: print(m, file=sys.stderr))
    print(json.dumps(res, indent=1))
    if not res.get("skipped"):
        print(table(*rows(res), markdown=True))
