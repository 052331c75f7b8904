"""Profiling the apply path: phase breakdown of whole CLI runs, cProfile of the library call,
and (when installed) a py-spy sampling profile of the CLI process.

Scenarios at N networks (default 1,000 NAT+DHCP): apply from empty, re-apply unchanged,
add one, remove one. The phase breakdown is the table the README shows; cProfile and py-spy
give the functions behind each phase (hot spots).
"""

from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from vnetfw.lab.netns import Netns

from .control import Workspace, engine
from .ns import new_netns

REPO = Path(__file__).resolve().parent.parent
PHASE_ORDER = ["interpreter start", "imports", "load definitions", "state load", "validation",
               "planning", "backend probe (process)", "readback (process)",
               "readback parsing", "diff", "rendering", "kernel commit (process)",
               "state save", "hooks", "output"]


def _phases_cli(ns: Netns, ws: Workspace, state: Path, backend: str, args: list[str],
                tmp: Path) -> dict:
    out = tmp / f"ph-{time.monotonic_ns()}.json"
    argv = [sys.executable, "-m", "benchmarks._child", "phases", str(out), "--netns", ns.name,
            "--state-dir", str(state), "--hooks-dir", str(ws.hooks), "--backend", backend, *args]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t_spawn = time.time()
    t0 = time.perf_counter()
    p = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    wall = time.perf_counter() - t0
    if p.returncode != 0 or not out.exists():
        raise RuntimeError(f"phases run failed: {p.stderr[-1500:]}")
    d = json.loads(out.read_text())
    ph = {"interpreter start": max(0.0, d["t_start"] - t_spawn),
          "imports": d["imports_s"]}
    ph.update(d["phases_s"])
    ph["other (CLI/engine glue, exit)"] = max(0.0, wall - sum(ph.values()))
    ordered = {k: ph[k] for k in PHASE_ORDER if k in ph}
    ordered.update({k: v for k, v in ph.items() if k not in ordered})
    return {"total_s": wall, "phases_s": ordered, "calls": d["calls"],
            "not_timed": d["not_timed"]}


def _median_phases(runs: list[dict]) -> dict:
    import statistics
    keys = list(dict.fromkeys(k for r in runs for k in r["phases_s"]))
    return {"total_s": statistics.median(r["total_s"] for r in runs),
            "phases_s": {k: statistics.median(r["phases_s"].get(k, 0.0) for r in runs)
                         for k in keys},
            "not_timed": runs[0]["not_timed"], "runs": len(runs)}


def phase_breakdown(backend: str, n: int, runs: int, log) -> dict:
    out = {}
    with tempfile.TemporaryDirectory(prefix="vnbench-prof-") as tmp:
        tmp = Path(tmp)
        ws = Workspace(tmp, "nat", n)
        acc: dict[str, list] = {}
        for _ in range(runs):
            with new_netns("pf") as ns:
                st = ws.state_dir()
                acc.setdefault("apply from empty", []).append(
                    _phases_cli(ns, ws, st, backend, ["apply", str(ws.dir)], tmp))
                acc.setdefault("re-apply unchanged", []).append(
                    _phases_cli(ns, ws, st, backend, ["apply", str(ws.dir)], tmp))
                acc.setdefault("add one", []).append(
                    _phases_cli(ns, ws, st, backend, ["apply", str(ws.extra_file)], tmp))
                acc.setdefault("remove one", []).append(
                    _phases_cli(ns, ws, st, backend, ["remove", ws.extra_name], tmp))
        for scen, rs in acc.items():
            out[f"{backend} N={n} {scen}"] = m = _median_phases(rs)
            top = sorted(m["phases_s"].items(), key=lambda kv: -kv[1])[:4]
            log(f"  {backend} N={n} {scen:<20} total {m['total_s'] * 1000:6.0f} ms: " +
                ", ".join(f"{k} {v * 1000:.0f}" for k, v in top))
    return out


def cprofile_library(backend: str, n: int, top: int = 15) -> dict:
    """cProfile of the in-process library call for apply-from-empty and re-apply."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="vnbench-cprof-") as tmp:
        ws = Workspace(Path(tmp), "nat", n)
        with new_netns("cpf") as ns:
            st = ws.state_dir()
            for scen in ("apply from empty", "re-apply unchanged"):
                e = engine(ns, ws, st, backend)
                pr = cProfile.Profile()
                pr.enable()
                e.apply(ws.nets)
                pr.disable()
                s = io.StringIO()
                stats = pstats.Stats(pr, stream=s)
                total = stats.total_tt
                rows = []
                for (file, line, func), (cc, nc, tt, ct, _) in sorted(
                        stats.stats.items(), key=lambda kv: -kv[1][2])[:top]:
                    rows.append({"function": f"{_short(file)}:{line}:{func}", "calls": nc,
                                 "self_s": tt, "self_pct": 100 * tt / total if total else 0,
                                 "cum_s": ct})
                out[f"{backend} N={n} library {scen}"] = {"total_s": total, "top_self": rows}
    return out


def _short(path: str) -> str:
    for marker in ("/src/vnetfw/", "/lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1] if marker == "/src/vnetfw/" else \
                "py:" + path.rsplit("/", 1)[-1]
    return path


def pyspy(backend: str, n: int, log) -> dict:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists() and shutil.which("py-spy") is None:
        return {"skipped": "py-spy is not installed (pip install py-spy)"}
    out = {}
    results = REPO / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vnbench-spy-") as tmp:
        ws = Workspace(Path(tmp), "nat", n)
        with new_netns("spy") as ns:
            st = ws.state_dir()
            for scen, args in (("apply-from-empty", ["apply", str(ws.dir)]),
                               ("re-apply-unchanged", ["apply", str(ws.dir)])):
                raw = results / f"pyspy-{backend}-{n}-{scen}.txt"
                argv = [exe, "record", "-r", "1000", "--format", "raw", "-o", str(raw), "--",
                        sys.executable, "-m", "vnetfw", "--netns", ns.name, "--state-dir",
                        str(st), "--hooks-dir", str(ws.hooks), "--backend", backend, *args]
                p = subprocess.run(argv, capture_output=True, text=True, timeout=600)
                if p.returncode != 0 or not raw.exists():
                    return {"skipped": f"py-spy failed: {p.stderr.strip()[-300:]}"}
                out[scen] = summarize_raw(raw.read_text())
                out[scen]["file"] = str(raw.relative_to(REPO))
                log(f"  py-spy {scen}: {out[scen]['samples']} samples, top self: " +
                    ", ".join(f"{r['function']} {r['pct']:.0f}%" for r in out[scen]["self"][:4]))
    return out


def summarize_raw(text: str, top: int = 12) -> dict:
    """Collapsed stacks ('a;b;c N') -> top functions by self and by inclusive samples."""
    self_c: Counter = Counter()
    incl: Counter = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, cnt = line.rpartition(" ")
        if not stack:
            continue
        c = int(cnt)
        total += c
        frames = [_frame(f) for f in stack.split(";")]
        self_c[frames[-1]] += c
        for f in set(frames):
            incl[f] += c
    def rows(cn):
        return [{"function": f, "samples": s, "pct": 100 * s / total} for f, s in cn.most_common(top)]
    return {"samples": total, "self": rows(self_c), "inclusive": rows(incl)}


def _frame(f: str) -> str:
    # py-spy raw frames look like "function (path/file.py:line)"
    name, _, loc = f.partition(" (")
    loc = loc.rstrip(")")
    file = loc.rsplit(":", 1)[0]
    return f"{_short(file)}:{name}"


def run(backend: str, n: int, runs: int, log, extra_backends: list[str] = ()) -> dict:
    res: dict = {"phases": {}, "notes": []}
    for b in [backend, *extra_backends]:
        res["phases"].update(phase_breakdown(b, n, runs, log))
    res["cprofile"] = cprofile_library(backend, n)
    for b in extra_backends:
        res["cprofile"].update(cprofile_library(b, n))
    res["pyspy"] = pyspy(backend, n, log)
    nt = {x for d in res["phases"].values() for x in d.get("not_timed", [])}
    if nt:
        res["notes"].append("not timed (function not found): " + ", ".join(sorted(nt)))
    res["notes"].append("phases: exclusive wall time inside one CLI process, medians of "
                        f"{runs} run(s); 'other' = total minus the timed phases")
    return res
