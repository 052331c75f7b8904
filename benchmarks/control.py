"""Control plane (issue 5): vnetfw vs the floor vs one process per rule, side by side.

For each backend, definition set and N, in fresh namespaces:

- ``cli_apply``      whole CLI process ``python -m vnetfw ... apply DIR`` from an empty ruleset
- ``lib_apply``      ``Engine(...).apply(nets)`` in-process (networks already parsed)
- ``floor``          vnetfw's own ``render`` output loaded by one raw ``iptables-restore`` +
                     ``ip6tables-restore`` (``--noflush``, as vnetfw loads it) or one ``nft -f``
- ``per_rule``       the same rules, one ``iptables``/``nft`` process each (libvirt's pattern),
                     while it stays under the per-rule time limit (default 60 s)
- ``cli_reapply`` / ``lib_reapply``   apply the same N again: nothing changed
- ``cli_add1`` / ``lib_add1``         add one network (sorting mid-way) when N exist
- ``cli_rm1`` / ``lib_rm1``           remove that network again (N+1 -> N)
- ``cli_rm_all`` / ``lib_rm_all``     remove all N
- ``raw_read``       the backend's readback processes alone (``iptables-save -c`` x2 /
                     ``nft -j list ruleset inet``), no parsing: the floor of anything that reads
- ``raw_add1`` / ``raw_rm1``          vnetfw's own +1/-1 change, computed beforehand, loaded by
                     the backend's commit alone: the kernel + tool floor of an incremental change

Processes are started the way vnetfw's Runner starts them (setns in the child), so the floor
pays the same price per process as vnetfw does.
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from vnetfw.backends.registry import iptables_tool
from vnetfw.lab.netns import Netns

from . import netdefs
from .ns import TIMEOUT, new_netns
from .perrule import iptables_commands, nft_commands, run_script

class Timing(NamedTuple):
    """Wall-clock seconds, and CPU seconds (user+system of this process and of every child
    it waited for: vnetfw's CLI process and the iptables/nft processes it ran; the kernel's
    netlink work is system time of the process that sent the batch). On a shared machine
    the CPU figure is the steadier one."""

    wall: float
    cpu: float


def _now() -> tuple[float, float]:
    t = os.times()
    return time.perf_counter(), t.user + t.system + t.children_user + t.children_system


def since(start: tuple[float, float]) -> Timing:
    w, c = _now()
    return Timing(w - start[0], c - start[1])


MEASURES = ("floor", "cli_apply", "lib_apply", "per_rule", "cli_reapply", "lib_reapply",
            "cli_add1", "lib_add1", "cli_rm1", "lib_rm1", "cli_rm_all", "lib_rm_all",
            "raw_read", "raw_add1", "raw_rm1")


def available_backends(wanted: list[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """Backends to measure (nftables too when the kernel takes it)."""
    from vnetfw.backends import get_backend
    from vnetfw.backends.runner import Runner
    cands = wanted or ["iptables-nft", "iptables-legacy", "nftables"]
    ok, skipped = [], {}
    for b in cands:
        try:
            why = get_backend(b, Runner(None)).available()
        except Exception as e:  # noqa: BLE001 - report any reason
            why = str(e)
        if why is None:
            with new_netns("probe") as ns:       # the kernel must accept it in a namespace
                why = _probe(ns, b)
        if why is None:
            ok.append(b)
        else:
            skipped[b] = why
    return ok, skipped


def _probe(ns: Netns, backend: str) -> str | None:
    if backend == "nftables":
        p = ns.run_process("nft", "add", "table", "inet", "vnbprobe", timeout=TIMEOUT,
                           check=False, setns=True)
    else:
        p = ns.run_process(backend, "-w", "-S", timeout=TIMEOUT, check=False, setns=True)
    return None if p.returncode == 0 else (p.stderr.strip() or f"exit {p.returncode}")


@dataclass
class Case:
    backend: str
    set_name: str
    n: int
    samples: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    per_rule_cmds: int | None = None
    per_rule_done: bool | None = None
    per_rule_estimate: float | None = None
    per_rule_limit: float | None = None
    rules: int | None = None

    def add(self, key: str, t: Timing) -> None:
        self.samples.setdefault(key, []).append(t.wall)
        self.cpu.setdefault(key, []).append(t.cpu)

    def median(self, key: str, cpu: bool = False) -> float | None:
        s = (self.cpu if cpu else self.samples).get(key)
        return statistics.median(s) if s else None

    def to_json(self) -> dict:
        return {"backend": self.backend, "set": self.set_name, "n": self.n, "rules": self.rules,
                "median_s": {k: self.median(k) for k in self.samples},
                "median_cpu_s": {k: self.median(k, cpu=True) for k in self.cpu},
                "samples_s": self.samples, "samples_cpu_s": self.cpu, "per_rule_commands": self.per_rule_cmds,
                "per_rule_finished": self.per_rule_done,
                "per_rule_estimate_s": self.per_rule_estimate,
                "per_rule_limit_s": self.per_rule_limit, "notes": self.notes}


class Workspace:
    """Definitions on disk + parsed, for one set and N; state/hook dirs per namespace."""

    def __init__(self, root: Path, set_name: str, n: int) -> None:
        self.root = root / f"{set_name}-{n}"
        self.defs = netdefs.xmls(set_name, n)
        self.dir = netdefs.write_dir(self.root / "defs", self.defs)
        self.nets = netdefs.load(self.defs, self.dir)
        name, xml = netdefs.extra_xml(n)
        self.extra_name = name
        self.extra_file = netdefs.write_dir(self.root / "extra", {name: xml}) / f"{name}.xml"
        self.extra_net = netdefs.load({name: xml}, self.extra_file.parent)[0]
        self.hooks = self.root / "no-hooks"
        self.hooks.mkdir(exist_ok=True)
        self._k = 0

    def state_dir(self) -> Path:
        self._k += 1
        return self.root / f"state{self._k}"


def cli(ns: Netns, ws: Workspace, state: Path, backend: str, *args: str,
        profile: str | None = None) -> Timing:
    import subprocess
    argv = [sys.executable, "-m", "vnetfw", "--netns", ns.name, "--state-dir", str(state),
            "--hooks-dir", str(ws.hooks), "--backend", backend]
    if profile:
        argv += ["--profile", profile]
    argv += list(args)
    t0 = _now()
    p = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    dt = since(t0)
    if p.returncode != 0:
        raise RuntimeError(f"vnetfw {' '.join(args[:2])} failed ({p.returncode}): "
                           f"{p.stderr.strip()[-1500:]}")
    return dt


def engine(ns: Netns, ws: Workspace, state: Path, backend: str, profile: str | None = None):
    from vnetfw.engine import Engine
    return Engine(backend=backend, profile=profile, netns=ns.name, state_dir=state,
                  hooks_dir=ws.hooks)


def render(backend: str, nets, profile: str = "default") -> dict:
    """vnetfw's own render output: {4: text, 6: text} for iptables, {0: script} for nft."""
    from vnetfw.backends import get_backend
    from vnetfw.backends.runner import Runner
    from vnetfw.engine import resolve_profile
    from vnetfw.plan import plan
    rs = plan(nets, resolve_profile(profile))
    b = get_backend(backend, Runner(None))
    if backend == "nftables":
        return {0: b.render(rs)}, len(rs.rules)
    return {4: b.render(rs, 4), 6: b.render(rs, 6)}, len(rs.rules)


def floor_argv(backend: str, fam: int) -> list[str]:
    if backend == "nftables":
        return ["nft", "-f", "-"]
    return [iptables_tool(backend, fam, "restore"), "-w", "--noflush"]


def load_floor(ns: Netns, backend: str, texts: dict) -> Timing:
    t0 = _now()
    for fam, text in texts.items():
        if text:
            ns.run_process(*floor_argv(backend, fam), stdin=text, timeout=TIMEOUT, setns=True)
    return since(t0)


def _genid(ns: Netns, backend: str) -> int | None:
    if backend == "iptables-legacy":
        return None
    try:
        from vnetfw.backends.nfgen import genid
        return genid(ns.path)
    except OSError:
        return None


def read_argvs(backend: str) -> list[list[str]]:
    """The readback commands vnetfw's backend runs (one snapshot of the live state)."""
    if backend == "nftables":
        return [["nft", "-j", "list", "ruleset", "inet"]]
    return [[iptables_tool(backend, fam, "save"), "-c"] for fam in (4, 6)]


def raw_read(ns: Netns, backend: str) -> Timing:
    """The readback processes alone, no parsing: the floor of any command that reads."""
    t0 = _now()
    for argv in read_argvs(backend):
        ns.run_process(*argv, timeout=TIMEOUT, setns=True)
    return since(t0)


def raw_incremental(ns: Netns, ws: "Workspace", backend: str,
                    profile: str = "default") -> tuple[Timing, Timing]:
    """vnetfw's own change for adding (then removing) the extra network, computed untimed and
    then loaded by the backend's commit alone: the kernel + iptables/nft floor of +1 / -1."""
    from vnetfw.backends import get_backend
    from vnetfw.backends.runner import Runner
    from vnetfw.engine import resolve_profile
    from vnetfw.plan import plan
    b = get_backend(backend, Runner(ns.name))
    prof = resolve_profile(profile)
    live = b.read()
    cs = b.changes(live, plan([*ws.nets, ws.extra_net], prof), "full")
    with _quiet_gc():
        t0 = _now()
        b.commit(live, cs)
        add = since(t0)
    live = b.read()
    cs = b.changes(live, plan(ws.nets, prof), "full")
    with _quiet_gc():
        t0 = _now()
        b.commit(live, cs)
        rm = since(t0)
    return add, rm


def per_rule_commands(backend: str, texts: dict) -> list[str]:
    if backend == "nftables":
        import json
        with new_netns("scratch") as s:
            s.run_process("nft", "-f", "-", stdin=texts[0], timeout=TIMEOUT, setns=True)
            listing = json.loads(s.run_process("nft", "-j", "list", "ruleset",
                                               timeout=TIMEOUT, setns=True).stdout)
        return nft_commands(listing)
    cmds = []
    for fam, text in texts.items():
        binary = iptables_tool(backend, fam, "")
        cmds += iptables_commands(text, binary)
    return cmds


class PerRuleBudget:
    """Decides, from the times seen at smaller N, whether one-process-per-rule at N would
    finish within the limit; never starts a run predicted to exceed it."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.seen: dict[tuple[str, str], list[tuple[int, float]]] = {}

    def predict(self, backend: str, set_name: str, cmds: int) -> float | None:
        pts = self.seen.get((backend, set_name), [])
        if not pts:
            return None
        c1, t1 = pts[-1]
        alpha = 1.0
        if len(pts) >= 2:
            c0, t0 = pts[-2]
            if c1 > c0 and t1 > 0 and t0 > 0:
                import math
                alpha = max(1.0, math.log(t1 / t0) / math.log(c1 / c0))
        return t1 * (cmds / c1) ** alpha

    def record(self, backend: str, set_name: str, cmds: int, seconds: float) -> None:
        self.seen.setdefault((backend, set_name), []).append((cmds, seconds))


class _quiet_gc:
    """Library timings run inside the benchmark's own process: move everything alive so far
    out of the collector's way (gc.freeze), so a collection triggered by vnetfw does not also
    scan the benchmark's objects."""

    def __enter__(self):
        gc.collect()
        gc.freeze()

    def __exit__(self, *exc):
        gc.unfreeze()


def lib_call(fn, *args) -> tuple[Timing, object]:
    with _quiet_gc():
        t0 = _now()
        r = fn(*args)
        return since(t0), r


def measure_case(root: Path, backend: str, set_name: str, n: int, runs: int, repeats: int,
                 budget: PerRuleBudget, log) -> Case:
    case = Case(backend, set_name, n)
    ws = Workspace(root, set_name, n)
    texts, case.rules = render(backend, ws.nets)
    names = [x.name for x in ws.nets]

    for r in range(runs):
        # A: CLI from empty, then unchanged re-apply, incremental, remove all (library)
        with new_netns("cp") as ns:
            st = ws.state_dir()
            case.add("cli_apply", cli(ns, ws, st, backend, "apply", str(ws.dir)))
            if r == 0:
                # The CLI child imports vnetfw afresh; this process imported it at start. A
                # difference means the rules are not what the library expects (or src/
                # changed during the run): say so, keep measuring.
                drift = engine(ns, ws, st, backend).check()
                if drift:
                    msg = (f"{backend} {set_name} N={n}: {len(drift)} differences between "
                           f"the CLI's apply and the library's plan, e.g. {drift[0]}")
                    case.notes.append(msg)
                    log("  WARNING: " + msg)
            for _ in range(repeats):
                g0 = _genid(ns, backend)
                case.add("cli_reapply", cli(ns, ws, st, backend, "apply", str(ws.dir)))
                if g0 is not None and _genid(ns, backend) != g0 and r == 0:
                    case.notes.append("re-apply with nothing to change committed a kernel "
                                      "transaction (nf_tables generation id moved)")
            for _ in range(repeats):
                dt, rep = lib_call(lambda: engine(ns, ws, st, backend).apply(ws.nets))
                case.add("lib_reapply", dt)
                if rep.changes:
                    case.notes.append(f"re-apply changed {len(rep.changes)} items")
            for _ in range(repeats):
                dt, _ = lib_call(lambda: engine(ns, ws, st, backend).apply([ws.extra_net]))
                case.add("lib_add1", dt)
                dt, _ = lib_call(lambda: engine(ns, ws, st, backend).remove([ws.extra_name]))
                case.add("lib_rm1", dt)
            for _ in range(repeats):
                case.add("cli_add1", cli(ns, ws, st, backend, "apply", str(ws.extra_file)))
                case.add("cli_rm1", cli(ns, ws, st, backend, "remove", ws.extra_name))
            if r == 0 or n >= 100:
                for _ in range(repeats):
                    case.add("raw_read", raw_read(ns, backend))
                    add, rm = raw_incremental(ns, ws, backend)
                    case.add("raw_add1", add)
                    case.add("raw_rm1", rm)
            dt, _ = lib_call(lambda: engine(ns, ws, st, backend).remove(names))
            case.add("lib_rm_all", dt)
        # B: library from empty, then CLI remove all
        with new_netns("cp") as ns:
            st = ws.state_dir()
            dt, _ = lib_call(lambda: engine(ns, ws, st, backend).apply(ws.nets))
            case.add("lib_apply", dt)
            case.add("cli_rm_all", cli(ns, ws, st, backend, "remove", *names))
        # C: the floor
        with new_netns("fl") as ns:
            case.add("floor", load_floor(ns, backend, texts))

    # D: one process per rule (a run predicted over the limit is not started)
    cmds = per_rule_commands(backend, texts)
    case.per_rule_cmds = len(cmds)
    pred = budget.predict(backend, set_name, len(cmds))
    case.per_rule_limit = budget.limit
    if pred is not None and pred > 0.8 * budget.limit:      # margin: never waste the limit
        case.per_rule_done = False
        case.per_rule_estimate = pred
        case.notes.append(f"per-rule skipped: predicted {pred:.0f} s > {budget.limit:.0f} s limit")
    else:
        pr_runs = max(1, min(runs, 3)) if (pred or 0) < 5 else 1
        for _ in range(pr_runs):
            with new_netns("pr") as ns:
                t0 = _now()
                _, done, _ = run_script(ns, cmds, budget.limit)
                dt = since(t0)
            case.per_rule_done = done
            if not done:
                case.notes.append(f"per-rule stopped at the {budget.limit:.0f} s limit")
                break
            case.add("per_rule", dt)
        if case.per_rule_done:
            budget.record(backend, set_name, len(cmds), case.median("per_rule"))
    log(f"  {backend:<15} {set_name:<5} N={n:<5} " + "  ".join(
        f"{k}={case.median(k) * 1000:.0f}" for k in MEASURES if case.median(k) is not None)
        + " (ms)")
    return case


def run(backends: list[str], sets: list[str], sizes: list[int], runs_for, repeats: int,
        per_rule_limit: float, log) -> list[Case]:
    budget = PerRuleBudget(per_rule_limit)
    out: list[Case] = []
    with tempfile.TemporaryDirectory(prefix="vnbench-") as tmp:
        for b in backends:
            for s in sets:
                for n in sorted(sizes):
                    out.append(measure_case(Path(tmp), b, s, n, runs_for(n), repeats, budget,
                                            log))
    return out
