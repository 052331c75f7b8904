"""Probe agent: runs inside a lab namespace (``ip netns exec NS python3 -I agent.py ...``).

Standalone on purpose: it imports only the standard library, so it needs nothing installed
inside the namespace and does not depend on the controller's environment.

``listen --port P``
    Serve TCP and UDP on port P, dual-stack (one ``[::]`` socket per protocol with
    IPV6_V6ONLY off, so IPv4 peers show up as ``::ffff:a.b.c.d`` and are printed as
    ``a.b.c.d``). Prints ``ready`` once bound, then one JSON line per probe received:
    ``{"p": "tcp"|"udp", "t": TOKEN, "s": SOURCE_ADDRESS}``. TCP is recorded when the
    client's token line arrives over an accepted connection, i.e. only after a completed
    handshake. Exits when its stdin closes, so it never outlives the controller.

``send``
    Reads ``{"timeout": S, "probes": [{"t", "p", "a", "port"}...]}`` on stdin, fires every
    probe at once, prints ``{"TOKEN": {"ok": bool, "err": str}}``. A TCP probe connects with
    the timeout and then sends its token; ``ok`` means the handshake completed. A UDP probe
    sends one datagram carrying its token; ``ok`` only means it left (delivery is what the
    listener saw).
"""

import argparse
import asyncio
import errno
import json
import selectors
import socket
import sys


def _addr(a: str) -> str:
    a = a.split("%", 1)[0]
    return a[7:] if a.startswith("::ffff:") and "." in a else a


def _emit(proto: str, token: bytes, src: str) -> None:
    try:
        t = token.decode("ascii", "replace").strip()
    except Exception:
        return
    if t:
        sys.stdout.write(json.dumps({"p": proto, "t": t, "s": _addr(src)}) + "\n")
        sys.stdout.flush()


def listen(port: int) -> int:
    sel = selectors.DefaultSelector()
    tcp = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    tcp.bind(("::", port))
    tcp.listen(1024)
    tcp.setblocking(False)
    udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    udp.bind(("::", port))
    udp.setblocking(False)
    sel.register(tcp, selectors.EVENT_READ, "accept")
    sel.register(udp, selectors.EVENT_READ, "udp")
    sel.register(sys.stdin, selectors.EVENT_READ, "stdin")
    pending = {}            # conn -> (peer, bytes so far)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        for key, _ in sel.select():
            what = key.data
            if what == "stdin":
                if not sys.stdin.buffer.read1(4096):
                    return 0
            elif what == "accept":
                try:
                    conn, peer = tcp.accept()
                except OSError:
                    continue
                conn.setblocking(False)
                pending[conn] = (peer[0], b"")
                sel.register(conn, selectors.EVENT_READ, "conn")
            elif what == "udp":
                while True:
                    try:
                        data, peer = udp.recvfrom(512)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:     # e.g. an ICMP error queued on the socket
                        break
                    _emit("udp", data, peer[0])
            else:
                conn = key.fileobj
                peer, buf = pending[conn]
                try:
                    chunk = conn.recv(512)
                except OSError:
                    chunk = b""
                buf += chunk
                if b"\n" in buf or not chunk:
                    _emit("tcp", buf.split(b"\n", 1)[0], peer)
                    sel.unregister(conn)
                    conn.close()
                    del pending[conn]
                else:
                    pending[conn] = (peer, buf)


async def _tcp(token: str, addr: str, port: int, timeout: float) -> dict:
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(addr, port), timeout)
    except asyncio.TimeoutError:
        return {"ok": False, "err": "timeout"}
    except OSError as e:
        return {"ok": False, "err": errno.errorcode.get(e.errno, str(e))}
    try:
        w.write(token.encode() + b"\n")
        await asyncio.wait_for(w.drain(), timeout)
        w.close()
    except (OSError, asyncio.TimeoutError):
        pass
    return {"ok": True, "err": ""}


def _udp(token: str, addr: str, port: int) -> dict:
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        with socket.socket(fam, socket.SOCK_DGRAM) as s:
            s.sendto(token.encode() + b"\n", (addr, port))
    except OSError as e:
        return {"ok": False, "err": errno.errorcode.get(e.errno, str(e))}
    return {"ok": True, "err": ""}


async def _send_all(req: dict) -> dict:
    timeout = float(req.get("timeout", 1.0))
    out = {}
    tasks = {}
    for p in req["probes"]:
        if p["p"] == "udp":
            out[p["t"]] = _udp(p["t"], p["a"], p["port"])
        else:
            tasks[p["t"]] = asyncio.ensure_future(_tcp(p["t"], p["a"], p["port"], timeout))
    for t, task in tasks.items():
        out[t] = await task
    return out


def send() -> int:
    req = json.load(sys.stdin)
    out = asyncio.run(_send_all(req))
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("listen")
    sp.add_argument("--port", type=int, required=True)
    sub.add_parser("send")
    a = ap.parse_args()
    return listen(a.port) if a.cmd == "listen" else send()


if __name__ == "__main__":
    sys.exit(main())
