"""Real traffic between lab namespaces: listeners, senders, and what each probe observed.

Contract:
- ``start_listeners(namespaces)`` starts one agent (``agent.py listen``) per namespace, all
  at once, and returns when every one is bound. From then on each ``Listener`` collects every
  probe token it receives with the source address it saw. ``close()`` stops it (closing
  its stdin; killing it only if it does not exit).
- ``run_probes(namespaces, listeners, probes)`` runs one sender process per source
  namespace, all at once, waits for them, gives late datagrams a moment, and returns
  ``{probe: Observation}``. A probe has ``reached`` when the destination's listener
  recorded its token (TCP: only after a completed handshake; UDP: the datagram arrived);
  ``seen`` is the source address the listener saw. The sender's view (``detail``: an
  error such as ECONNREFUSED, or timeout) is kept for display; a token that turns up
  anywhere else, or a TCP connect whose token never arrives, is an ``anomaly``.

Tokens are unique per process, so listeners can stay up across many probe runs and old
late-arriving packets can never be mistaken for new ones.

What the sender sees, and why the run takes about one TCP timeout:
- a REJECT in the path answers a SYN with an ICMP error: ECONNREFUSED/EHOSTUNREACH at once;
- a one-way path (the libvirt leak: SYN accepted, SYN-ACK rejected on the way back) ends in
  a timeout: the hypervisor's ICMP error goes to the *server*, the client hears nothing;
- a source the hypervisor has no route back to (a rogue IPv6 guest) times out even when
  rejected, since the ICMP error cannot reach it either.
UDP needs no answer, so one datagram shows delivery; the first packet to a neighbour not yet
resolved waits in the neighbour queue (it is not dropped), so no warm-up is needed.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .netns import Netns

AGENT = str(Path(__file__).with_name("agent.py"))
PORT = 4747
TCP_TIMEOUT = 1.0
UDP_GRACE = 0.25          # after the senders finish, wait this long for stragglers
_tokens = itertools.count(1)


@dataclass(frozen=True)
class Probe:
    """One packet exchange to try: from namespace ``src_ns`` to ``addr`` (in ``dst_ns``)."""

    src_ns: str
    dst_ns: str
    addr: str
    proto: str                      # "tcp" | "udp"
    token: str
    port: int = PORT                # another port: a port forward, translated to PORT


def new_probe(src_ns: str, dst_ns: str, addr: str, proto: str, port: int = PORT) -> Probe:
    return Probe(src_ns, dst_ns, addr, proto, f"v{os.getpid()}x{next(_tokens)}", port)


@dataclass(frozen=True)
class Observation:
    reached: bool
    seen: str | None                # source address the receiver saw
    detail: str = ""                # sender's side: "", "timeout", "ECONNREFUSED", ...
    anomaly: str = ""               # something no policy allows: the token turned up in
                                    # another namespace, or a TCP connect succeeded but the
                                    # destination never got the token


class Listener:
    """The agent listening in one namespace, and the tokens it has received so far.

    ``Listener(ns)`` only starts the process; ``wait_ready()`` blocks until it is bound
    (start many, then wait for all: the Python start-up times overlap)."""

    def __init__(self, ns: Netns, python: str = sys.executable) -> None:
        self.ns = ns
        self.got: dict[str, tuple[str, str]] = {}        # token -> (proto, source)
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self.proc = ns.popen(python, "-I", AGENT, "listen", "--port", str(PORT),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, bufsize=1)

    def wait_ready(self) -> "Listener":
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            err = self.proc.stderr.read()
            self.close()
            raise RuntimeError(f"probe listener in {self.ns.name} did not start: "
                               f"{line!r} {err.strip()}")
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                self.got[rec["t"]] = (rec["p"], rec["s"])

    def seen(self, token: str, proto: str) -> str | None:
        with self._lock:
            rec = self.got.get(token)
        return rec[1] if rec is not None and rec[0] == proto else None

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()         # the agent exits on EOF
                self.proc.wait(timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=2)
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None and not f.closed:
                try:
                    f.close()
                except OSError:
                    pass


def start_listeners(nss: Iterable[Netns], python: str = sys.executable
                    ) -> dict[str, Listener]:
    """One listener per namespace, started together; all ready on return (or all stopped
    and an error raised)."""
    started: dict[str, Listener] = {}
    try:
        for ns in nss:
            started[ns.name] = Listener(ns, python)
        for lst in started.values():
            lst.wait_ready()
    except BaseException:
        for lst in started.values():
            lst.close()
        raise
    return started


def run_probes(nss: Mapping[str, Netns], listeners: Mapping[str, Listener],
               probes: Iterable[Probe], python: str = sys.executable,
               timeout: float = TCP_TIMEOUT) -> dict[Probe, Observation]:
    """Fire ``probes`` (grouped per source namespace, all groups in parallel)."""
    by_src: dict[str, list[Probe]] = {}
    for p in probes:
        by_src.setdefault(p.src_ns, []).append(p)

    def send(group: Sequence[Probe]) -> dict[str, dict]:
        req = {"timeout": timeout, "probes": [
            {"t": p.token, "p": p.proto, "a": p.addr, "port": p.port} for p in group]}
        argv = nss[group[0].src_ns].argv(python, "-I", AGENT, "send")
        proc = subprocess.run(argv, input=json.dumps(req), capture_output=True, text=True,
                              timeout=timeout * 4 + 20)
        if proc.returncode != 0:
            raise RuntimeError(f"probe sender in {group[0].src_ns} failed: "
                               f"{proc.stderr.strip()}")
        return json.loads(proc.stdout)

    sent: dict[str, dict] = {}
    if by_src:
        with ThreadPoolExecutor(max_workers=len(by_src)) as pool:
            for out in pool.map(send, by_src.values()):
                sent.update(out)
    time.sleep(UDP_GRACE)
    result = {}
    for p in itertools.chain.from_iterable(by_src.values()):
        s = sent.get(p.token, {"ok": False, "err": "not sent"})
        seen = listeners[p.dst_ns].seen(p.token, p.proto)
        anomaly = ""
        stray = [n for n, lst in listeners.items()
                 if n != p.dst_ns and lst.seen(p.token, p.proto) is not None]
        if stray:
            anomaly = f"received in {', '.join(stray)}"
        elif p.proto == "tcp" and s["ok"] and seen is None:
            anomaly = "connected, but the destination never got the token"
        result[p] = Observation(reached=seen is not None, seen=seen,
                                detail=s["err"] if not s["ok"] else "", anomaly=anomaly)
    return result
