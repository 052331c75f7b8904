"""Port forwards (issue 14): 1 to 10,000 forwards on one network, side by side in one run.

Topology (three namespaces this module creates, nothing else is addressed)::

    client C (198.51.100.2) --veth-- [uplink 198.51.100.1] hypervisor H
        [bridge vbfwd 10.77.0.1/16] --veth-- guest G (10.77.0.10: tcp/80 accept+close,
                                                    udp/9 counting datagrams)

H holds N forwards: N-1 of them tcp 10000+i -> a guest address:port nothing listens on, and
the measured one, tcp and udp 30000 -> G:80 / G:9. Layouts:

- ``vnetfw-nftables``: vnetfw's nftables backend (the forwards are map and set elements);
- ``vnetfw-iptables-nft``: vnetfw's iptables-nft backend (a DNAT rule per forwarded port
  in a nat chain, an accept per guest port in a filter chain: docs/port-forwards.md);
- ``docker-linear``: the layout Docker's iptables backend writes, on iptables-nft: a nat
  chain jumped from PREROUTING (``-m addrtype --dst-type LOCAL``) with one DNAT rule per
  published port, and a filter chain, after an ESTABLISHED accept, with one ACCEPT per
  published port; the measured port's rules come last (a container published last).

Measured: TCP connections per second (connect, read the close, close; two client
processes), 64-byte UDP datagrams per second delivered to the guest (one flow), and the
whole CLI adding one forward to a definition of 10 and of 10,000 (``vnetfw apply FILE``,
the previous N already applied; on nftables and iptables-nft). Python does the sending: the absolute numbers are the
load generator's; the ratios between the columns, measured in the same run on the same
topology, are what counts.

    sudo .venv/bin/python -m benchmarks.forwards [--sizes 1,100,1000,10000] [--seconds 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .ns import TIMEOUT, new_netns

C_ADDR, H_UP, H_BR, G_ADDR = "198.51.100.2", "198.51.100.1", "10.77.0.1", "10.77.0.10"
PORT = 30000
SERVER = r"""
import socket, sys, threading
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", 80)); t.listen(4096)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 9))
u.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
count = [0]
def tcp():
    while True:
        c, _ = t.accept(); c.close()
def udp():
    while True:
        u.recv(64); count[0] += 1
threading.Thread(target=tcp, daemon=True).start()
threading.Thread(target=udp, daemon=True).start()
print("ready", flush=True)
for line in sys.stdin:
    print(count[0], flush=True)
"""
TCP_CLIENT = r"""
import socket, sys, time
addr, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
n = fail = 0; end = time.monotonic() + secs
while time.monotonic() < end:
    s = socket.socket(); s.settimeout(1)
    try:
        s.connect((addr, port)); s.recv(1); n += 1
    except OSError:
        fail += 1
    finally:
        s.close()
print(n, fail)
"""
UDP_CLIENT = r"""
import socket, sys, time
addr, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect((addr, port))
data = b"x" * 64; n = 0; end = time.monotonic() + secs
while time.monotonic() < end:
    for _ in range(1000):
        try:
            s.send(data); n += 1
        except OSError:
            pass
print(n)
"""


class Topology:
    def __init__(self) -> None:
        self.c, self.h, self.g = new_netns("fc"), new_netns("fh"), new_netns("fg")
        self.server: subprocess.Popen | None = None
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        c, h, g = self.c, self.h, self.g
        h.ip_batch(["link add vbfwd type bridge", f"addr add {H_BR}/16 dev vbfwd",
                    "link set vbfwd up",
                    f"link add vgfwd type veth peer name eth0 netns {g.name}",
                    "link set vgfwd master vbfwd up",
                    f"link add uplink type veth peer name eth0 netns {c.name}",
                    f"addr add {H_UP}/24 dev uplink", "link set uplink up"])
        g.ip_batch([f"addr add {G_ADDR}/16 dev eth0", "link set eth0 up", "link set lo up",
                    f"route add default via {H_BR}"])
        c.ip_batch([f"addr add {C_ADDR}/24 dev eth0", "link set eth0 up",
                    f"route add default via {H_UP}"])
        h.sysctl({"net.ipv4.ip_forward": 1})
        self.server = g.popen(sys.executable, "-I", "-c", SERVER, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, bufsize=1)
        if self.server.stdout.readline().strip() != "ready":
            raise RuntimeError("guest server did not start")

    def udp_received(self) -> int:
        self.server.stdin.write("?\n")
        self.server.stdin.flush()
        return int(self.server.stdout.readline())

    def tcp_rate(self, seconds: float, clients: int = 2) -> float:
        procs = [subprocess.Popen(self.c.argv(sys.executable, "-I", "-c", TCP_CLIENT, H_UP,
                                              str(PORT), str(seconds)),
                                  stdout=subprocess.PIPE, text=True) for _ in range(clients)]
        done = [p.communicate(timeout=seconds + 60)[0].split() for p in procs]
        ok = sum(int(d[0]) for d in done)
        if ok == 0:
            raise RuntimeError("no TCP connection got through the forward")
        return ok / seconds

    def udp_rate(self, seconds: float) -> float:
        before = self.udp_received()
        out = self.c.run(sys.executable, "-I", "-c", UDP_CLIENT, H_UP, str(PORT), str(seconds),
                         timeout=seconds + 60)
        time.sleep(0.3)
        got = self.udp_received() - before
        if got == 0 or int(out) == 0:
            raise RuntimeError("no UDP datagram got through the forward")
        return got / seconds

    def close(self) -> None:
        if self.server is not None:
            self.server.kill()
            self.server.wait()
        for ns in (self.c, self.h, self.g):
            ns.delete()


def _other(i: int) -> tuple[str, int]:
    """Forward i's (unused) target: spread over the /16, ports 10000 up."""
    return f"10.77.{1 + i // 250}.{2 + i % 250}", 10000 + i % 50000


def definition(n: int) -> str:
    """A nat network with n forwards (n-1 others, then the measured tcp+udp pair)."""
    out = ['[[network]]\nname = "fwd"\nbridge = "vbfwd"\nmode = "nat"\n'
           f'ip = [{{ address = "{H_BR}", prefix = 16 }}]\n']
    for i in range(n - 1):
        addr, port = _other(i)
        out.append(f'[[network.port_forward]]\nproto = "tcp"\nport = {10000 + i}\n'
                   f'to = "{addr}"\nto_port = {port}\n')
    for proto, to_port in (("tcp", 80), ("udp", 9)):
        out.append(f'[[network.port_forward]]\nproto = "{proto}"\nport = {PORT}\n'
                   f'to = "{G_ADDR}"\nto_port = {to_port}\n')
    return "".join(out)


def docker_linear(n: int) -> str:
    """iptables-restore text: Docker's layout for n published ports, the measured last."""
    nat = ["*nat", ":DOCKER - [0:0]",
           "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
           "-A POSTROUTING -s 10.77.0.0/16 ! -o vbfwd -j MASQUERADE"]
    flt = ["*filter", ":DOCKER - [0:0]",
           "-A FORWARD -o vbfwd -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
           "-A FORWARD -o vbfwd -j DOCKER", "-A FORWARD -i vbfwd -j ACCEPT",
           "-A FORWARD -o vbfwd -j DROP"]
    ports = [("tcp", 10000 + i, *_other(i)) for i in range(n - 1)]
    ports += [("tcp", PORT, G_ADDR, 80), ("udp", PORT, G_ADDR, 9)]
    for proto, port, addr, to_port in ports:
        nat.append(f"-A DOCKER ! -i vbfwd -p {proto} -m {proto} --dport {port} "
                   f"-j DNAT --to-destination {addr}:{to_port}")
        flt.append(f"-A DOCKER -d {addr}/32 ! -i vbfwd -o vbfwd -p {proto} -m {proto} "
                   f"--dport {to_port} -j ACCEPT")
    return "\n".join(nat + ["COMMIT"] + flt + ["COMMIT"]) + "\n"


LAYOUTS = ("vnetfw-nftables", "vnetfw-iptables-nft", "docker-linear")
TITLES = {"vnetfw-nftables": "vnetfw nftables", "vnetfw-iptables-nft": "vnetfw iptables-nft",
          "docker-linear": "Docker-style linear"}


def cli_apply(h, state: Path, path: Path, backend: str = "nftables") -> float:
    argv = [sys.executable, "-m", "vnetfw", "--backend", backend, "--netns", h.name,
            "--state-dir", str(state), "apply", str(path)]
    t0 = time.perf_counter()
    p = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"vnetfw apply failed: {p.stderr.strip()}")
    return dt


def run(sizes: list[int], seconds: float, runs: int, log=print) -> dict:
    cells = []
    tmp = Path(tempfile.mkdtemp(prefix="vnbench-fwd-"))
    for layout in LAYOUTS:
        topo = Topology()
        try:
            for n in sorted(sizes):
                if layout.startswith("vnetfw-"):
                    path = tmp / f"fwd-{n}.toml"
                    path.write_text(definition(n))
                    cli_apply(topo.h, tmp / f"state-{layout}", path,
                              layout.removeprefix("vnetfw-"))
                else:
                    topo.h.run("iptables-nft-restore", stdin=docker_linear(n), timeout=TIMEOUT)
                tcp = [topo.tcp_rate(seconds) for _ in range(runs)]
                udp = [topo.udp_rate(seconds) for _ in range(runs)]
                cells.append({"layout": layout, "n": n, "tcp_conn_s": statistics.median(tcp),
                              "udp_pps": statistics.median(udp), "tcp": tcp, "udp": udp})
                log(f"  {layout:<19} N={n:<6} TCP {cells[-1]['tcp_conn_s']:8.0f} conn/s  "
                    f"UDP {cells[-1]['udp_pps']:8.0f} pps")
        finally:
            topo.close()
    # Adding one forward, whole CLI: N applied, then the same file with one more.
    adds = []
    for backend, n in [(b, n) for b in ("nftables", "iptables-nft") for n in (10, 10000)]:
        topo = Topology()
        try:
            state = tmp / f"add-state-{backend}-{n}"
            base, more = tmp / f"base-{n}.toml", tmp / f"more-{n}.toml"
            base.write_text(definition(n))
            more.write_text(definition(n) + f'[[network.port_forward]]\nproto = "tcp"\n'
                            f'port = 40000\nto = "{G_ADDR}"\nto_port = 81\n')
            times = []
            for _ in range(max(runs, 3)):
                cli_apply(topo.h, state, base, backend)
                times.append(cli_apply(topo.h, state, more, backend))
            adds.append({"backend": backend, "n": n, "cli_add1_s": statistics.median(times),
                         "samples": times})
            log(f"  add one forward, {backend:<12} N={n:<6} "
                f"{adds[-1]['cli_add1_s'] * 1000:7.0f} ms")
        finally:
            topo.close()
    return {"cells": cells, "add_one": adds, "seconds": seconds, "runs": runs}


def markdown(res: dict) -> str:
    cells = res["cells"]
    sizes = sorted({c["n"] for c in cells})
    by = {(c["layout"], c["n"]): c for c in cells}
    layouts = [la for la in LAYOUTS if any(c["layout"] == la for c in cells)]
    head = ["forwards N"] + [f"{TITLES[la]} TCP conn/s" for la in layouts] \
        + [f"{TITLES[la]} UDP pps" for la in layouts]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for n in sizes:
        row = [f"{n:,}"] + [f"{by[la, n]['tcp_conn_s']:,.0f}" for la in layouts] \
            + [f"{by[la, n]['udp_pps']:,.0f}" for la in layouts]
        lines.append("| " + " | ".join(row) + " |")
    lo, hi = sizes[0], sizes[-1]
    for layout in layouts:
        a, b = by[(layout, lo)], by[(layout, hi)]
        lines.append(f"\n{layout}: at N={hi:,} keeps {b['tcp_conn_s'] / a['tcp_conn_s']:.0%} "
                     f"of its N={lo} TCP connection rate and {b['udp_pps'] / a['udp_pps']:.0%} "
                     "of its UDP packet rate.")
    for backend in ("nftables", "iptables-nft"):
        add = {a["n"]: a["cli_add1_s"] for a in res["add_one"]
               if a.get("backend", "nftables") == backend}
        if 10 in add and 10000 in add:
            lines.append(f"\nAdding one forward, whole CLI ({backend}): {add[10] * 1000:.0f} ms "
                         f"at 10, {add[10000] * 1000:.0f} ms at 10,000 existing "
                         f"({add[10000] / add[10]:.2f}x).")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.forwards")
    p.add_argument("--sizes", default="1,100,1000,10000")
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", type=Path, help="also write the results here")
    a = p.parse_args(argv)
    res = run([int(s) for s in a.sizes.split(",")], a.seconds, a.runs,
              lambda m: print(m, file=sys.stderr, flush=True))
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
