"""Start-up time of ``vnetfw --help`` / ``--version`` / ``status``, and peak memory."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vnetfw.lab.netns import Netns

from . import netdefs
from .ns import new_netns

REPO = Path(__file__).resolve().parent.parent


def _vnetfw_exe() -> list[str]:
    """The console script users run (``.venv/bin/vnetfw``), else ``python -m vnetfw``."""
    exe = Path(sys.executable).parent / "vnetfw"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "vnetfw"]


def _time(argv: list[str], runs: int, env=None) -> dict:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
        samples.append(time.perf_counter() - t0)
        if p.returncode not in (0, 1):
            raise RuntimeError(f"{argv} failed ({p.returncode}): {p.stderr.strip()[-500:]}")
    return {"median_s": statistics.median(samples), "min_s": min(samples), "runs": runs,
            "samples_s": samples}


def _importtime(argv_tail: list[str]) -> list[tuple[str, float]]:
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "vnetfw", *argv_tail],
                       capture_output=True, text=True, timeout=60)
    rows = []
    for line in p.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            parts = [x.strip() for x in line[len("import time:"):].split("|")]
            try:
                rows.append((parts[2].strip(), int(parts[1]) / 1e6))
            except ValueError:
                continue
    # top-level packages by cumulative time (names without leading spaces are top level)
    top = sorted(((n.strip(), t) for n, t in rows if not n.startswith(" ")), key=lambda x: -x[1])
    return top[:8]


def run_startup(backends: list[str], runs: int, log) -> dict:
    exe = _vnetfw_exe()
    out: dict = {}
    out["python"] = {"label": "python -c pass (interpreter floor)",
                     **_time([sys.executable, "-c", "pass"], runs)}
    out["help"] = {"label": "vnetfw --help", **_time(exe + ["--help"], runs)}
    out["version"] = {"label": "vnetfw --version", **_time(exe + ["--version"], runs)}
    notes = []
    with tempfile.TemporaryDirectory(prefix="vnbench-st-") as tmp:
        defs = netdefs.xmls("nat", 10)
        d = netdefs.write_dir(Path(tmp) / "defs", defs)
        hooks = Path(tmp) / "hooks"
        hooks.mkdir()
        for b in backends:
            with new_netns("st") as ns:
                st = Path(tmp) / f"state-{b}"
                common = ["--netns", ns.name, "--state-dir", str(st), "--hooks-dir", str(hooks)]
                subprocess.run([sys.executable, "-m", "vnetfw", *common, "--backend", b, "apply",
                                str(d)], check=True, capture_output=True, timeout=120)
                out[f"status-{b}"] = {"label": f"vnetfw status ({b}, 10 networks)",
                                      **_time(exe + common + ["status"], runs)}
                if b == backends[0]:
                    top = _importtime(common + ["status"])
                    notes.append("status -X importtime, top-level modules (cumulative ms): " +
                                 ", ".join(f"{n} {t * 1000:.1f}" for n, t in top))
    top = _importtime(["--help"])
    notes.append("--help -X importtime, top-level modules (cumulative ms): " +
                 ", ".join(f"{n} {t * 1000:.1f}" for n, t in top))
    out["notes"] = notes
    for k, v in out.items():
        if isinstance(v, dict):
            log(f"  {v['label']:<40} median {v['median_s'] * 1000:6.1f} ms  "
                f"min {v['min_s'] * 1000:6.1f} ms")
    return out


def _peak_of(ns: Netns, argv: list[str], stdin: str | None = None) -> float | None:
    """Peak RSS (MiB) of one command run inside ``ns``, measured by GNU time (its own small
    process forks the command, so the figure is the command's own)."""
    gtime = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists() else None)
    if gtime is None:
        return None
    with tempfile.NamedTemporaryFile("r", suffix=".time") as f:
        ns.run_process(gtime, "-f", "%M", "-o", f.name, *argv, stdin=stdin, timeout=900,
                       setns=True)
        return int(f.read().split()[-1]) / 1024


def run_memory(backends: list[str], plan_sizes: list[int], apply_sizes: list[int], log) -> dict:
    from .control import floor_argv, render
    out: dict = {"notes": [
        "plan: in-process (parse generated libvirt XML, validate, plan); peak RSS (VmHWM) of "
        "that Python process",
        "apply: whole CLI 'vnetfw apply DIR' (N XML files) into an empty namespace; python = "
        "peak RSS of the vnetfw process; children = peak RSS of the largest command it runs, "
        "measured separately with GNU time on the same input: the commit (iptables-restore / "
        "nft -f of the rendered rules) and the readback (iptables-save / nft -j list) once "
        "the N networks are in"]}
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for n in plan_sizes:
        p = subprocess.run([sys.executable, "-m", "benchmarks._child", "rss-plan", str(n)],
                           capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
        if p.returncode != 0:
            raise RuntimeError(p.stderr[-1000:])
        d = json.loads(p.stdout)
        out[f"plan-{n}"] = {"label": "plan (in-process)", "n": n, "maxrss_mib": d["maxrss_mib"],
                            "seconds": d["load_s"] + d["plan_s"], **d}
        log(f"  plan {n:>6}: peak RSS {d['maxrss_mib']:.1f} MiB (after imports "
            f"{d['maxrss_imports_mib']:.1f}, after loading {d['maxrss_loaded_mib']:.1f}); "
            f"load {d['load_s']:.2f} s, plan {d['plan_s']:.2f} s, {d['rules']} rules")
    with tempfile.TemporaryDirectory(prefix="vnbench-mem-") as tmp:
        for n in apply_sizes:
            defs = netdefs.xmls("nat", n)
            d = netdefs.write_dir(Path(tmp) / f"defs{n}", defs)
            nets = None
            for b in backends:
                with new_netns("mem") as ns:
                    res_path = Path(tmp) / f"res-{b}-{n}.json"
                    args = ["--netns", ns.name, "--state-dir", str(Path(tmp) / f"st-{b}-{n}"),
                            "--hooks-dir", str(Path(tmp) / "hooks"), "--backend", b, "apply",
                            str(d)]
                    t0 = time.perf_counter()
                    p = subprocess.run([sys.executable, "-m", "benchmarks._child", "rss-cli",
                                        str(res_path), *args], capture_output=True, text=True,
                                       env=env, timeout=900, cwd=REPO)
                    wall = time.perf_counter() - t0
                    if p.returncode != 0 or not res_path.exists():
                        raise RuntimeError(p.stderr[-1000:])
                    r = json.loads(res_path.read_text())
                    if r["rc"] not in (0, None):
                        raise RuntimeError(f"apply {n} on {b}: exit {r['rc']}: {p.stderr[-500:]}")
                    if b == "nftables":
                        rb = ["nft", "-j", "list", "ruleset", "inet"]
                    else:
                        rb = [f"iptables{b.removeprefix('iptables')}-save", "-c"]
                    readback = _peak_of(ns, rb)
                if nets is None:
                    nets = netdefs.load(defs)
                texts, _ = render(b, nets)
                commit = 0.0
                with new_netns("mem") as ns:
                    for fam, text in texts.items():
                        commit = max(commit, _peak_of(ns, floor_argv(b, fam), text) or 0.0)
                kids = max(commit, readback or 0.0) if readback is not None else None
                out[f"apply-{b}-{n}"] = {"label": f"apply CLI ({b})", "n": n,
                                         "maxrss_mib": r["maxrss_mib"],
                                         "children_maxrss_mib": kids,
                                         "commit_maxrss_mib": commit,
                                         "readback_maxrss_mib": readback, "seconds": wall}
                log(f"  apply {n:>6} {b:<13}: peak RSS python {r['maxrss_mib']:.1f} MiB; "
                    f"commit process {commit:.1f} MiB, readback process "
                    f"{(readback or 0):.1f} MiB; {wall:.1f} s")
    return out
