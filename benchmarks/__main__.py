"""``python -m benchmarks``: run the benchmarks, print tables, write JSON and Markdown.

Sections (``--sections``, default all): control, startup, memory, libvirt, dataplane, profile.
``--quick`` runs every section small and once (under ~2 minutes; libvirt skipped unless named
in ``--sections``). Needs root (network namespaces); touches nothing outside the namespaces
it creates. Results: benchmarks/results/<timestamp>.json, latest.json and latest.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from vnetfw.lab.netns import cleanup_on_signals

from . import report

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
SECTIONS = ("control", "startup", "memory", "libvirt", "libvirt-hook", "dataplane", "profile")
README = REPO / "benchmarks" / "README.md"
MARK_BEGIN = "<!-- BEGIN LATEST RESULTS (python -m benchmarks --update-readme) -->"
MARK_END = "<!-- END LATEST RESULTS -->"


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def _strs(s: str) -> list[str]:
    return [x for x in s.split(",") if x]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small and once: under ~2 minutes")
    p.add_argument("--sections", type=_strs, help=f"comma list of {','.join(SECTIONS)}")
    p.add_argument("--backends", type=_strs,
                   help="control-plane backends (default: iptables-nft,iptables-legacy and "
                        "nftables when vnetfw.backends.nftables imports and works)")
    p.add_argument("--sets", type=_strs, help="definition sets: nat,mixed (quick: nat)")
    p.add_argument("--sizes", type=_ints, help="N list (default 1,10,100,1000; quick 1,10,1000)")
    p.add_argument("--runs", type=int, help="runs per N (default: 3; mixed set 1; quick 1)")
    p.add_argument("--repeats", type=int, help="re-apply/incremental repeats per run (2; quick 1)")
    p.add_argument("--per-rule-limit", type=float, default=60.0,
                   help="seconds one-process-per-rule may take (default 60; quick 10)")
    p.add_argument("--dp-layouts", type=_strs,
                   help="data-plane layouts (default no-rules,nftables,iptables-nft,"
                        "libvirt-linear; also libvirt-linear-legacy)")
    p.add_argument("--dp-sizes", type=_ints, help="data-plane N list (default 1,100,1000)")
    p.add_argument("--dp-seconds", type=int, help="iperf3 -t per measurement (2; quick 1)")
    p.add_argument("--dp-runs", type=int, help="iperf3 runs per cell (3; quick 1)")
    p.add_argument("--libvirt-sizes", type=_ints, help="libvirt N list (default 1,10,50)")
    p.add_argument("--mem-sizes", type=_ints,
                   help="memory N list (default 1000,10000; quick 10000 plan, 2000 apply)")
    p.add_argument("--profile-n", type=int, default=1000, help="N for the profile (1000)")
    p.add_argument("--out", type=Path, help="JSON output (default results/<timestamp>.json)")
    p.add_argument("--update-readme", action="store_true",
                   help="put the Markdown tables into benchmarks/README.md")
    return p.parse_args(argv)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _version(argv: list[str]) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (p.stdout or p.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "-"


def src_fingerprint() -> str:
    """Hash of vnetfw's sources: a run whose start and end differ measured moving code."""
    import hashlib
    h = hashlib.sha256()
    for f in sorted((REPO / "src" / "vnetfw").rglob("*.py")):
        h.update(str(f.relative_to(REPO)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def meta(mode: str) -> dict:
    rev = _version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "src"],
                           capture_output=True, text=True).stdout.strip() != ""
    return {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "mode": mode,
            "kernel": platform.release(), "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "vnetfw_git": rev + ("+uncommitted src changes" if dirty else ""),
            "iptables": _version(["iptables", "--version"]),
            "nft": _version(["nft", "--version"]),
            "iperf3": _version(["iperf3", "--version"]) if shutil.which("iperf3") else None,
            "loadavg_start": os.getloadavg()[0], "src_sha_start": src_fingerprint()}


def compile_bytecode() -> None:
    """Measure vnetfw as installed: with its modules compiled. pip compiles them on install;
    an editable checkout compiles on first import, unless PYTHONDONTWRITEBYTECODE is set,
    when every CLI process would compile ~9,000 lines again (~20 ms, counted as imports)."""
    import compileall
    import vnetfw
    compileall.compile_dir(Path(vnetfw.__file__).parent, quiet=1)


def main(argv=None) -> int:
    a = parse_args(argv)
    if os.geteuid() != 0:
        print("python -m benchmarks: needs root (it creates network namespaces)", file=sys.stderr)
        return 2
    if shutil.which("ip") is None:
        print("python -m benchmarks: iproute2 (ip) is not installed", file=sys.stderr)
        return 2
    quick = a.quick
    sections = a.sections or [s for s in SECTIONS
                              if not (quick and s in ("libvirt", "libvirt-hook"))]
    bad = set(sections) - set(SECTIONS)
    if bad:
        print(f"unknown section(s): {', '.join(sorted(bad))}", file=sys.stderr)
        return 2
    from . import control
    t_start = time.perf_counter()
    compile_bytecode()
    results: dict = {"meta": meta("quick" if quick else "full")}
    if results["meta"]["loadavg_start"] > 1.5:
        log(f"warning: load average {results['meta']['loadavg_start']:.1f} on "
            f"{os.cpu_count()} CPUs: other work is running, timings will be noisy")
    backends, skipped = control.available_backends(a.backends)
    for b, why in skipped.items():
        log(f"backend {b} skipped: {why}")
    sizes = a.sizes or ([1, 10, 1000] if quick else [1, 10, 100, 1000])
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_path = a.out or RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}.json"

    with cleanup_on_signals():
        if "control" in sections:
            sets = a.sets or (["nat"] if quick else ["nat", "mixed"])
            repeats = a.repeats or (1 if quick else 2)

            def runs_for(set_name: str, n: int) -> int:
                if a.runs:
                    return a.runs
                if quick or set_name != "nat":
                    return 1
                return 3
            log(f"control plane: backends {backends}, sets {sets}, N {sizes}")
            cases = []
            for b in backends:
                for s in sets:
                    cases += control.run([b], [s], sizes, lambda n, s=s: runs_for(s, n),
                                         repeats, a.per_rule_limit if not quick else
                                         min(a.per_rule_limit, 10.0), log)
            cj = [c.to_json() for c in cases]
            results["control"] = {"cases": cj, "skipped_backends": skipped,
                                  "notes": ["medians; CLI = whole 'python -m vnetfw' process; "
                                            "lib = Engine(...) call in-process",
                                            "per-rule: one iptables/nft process per rule "
                                            "(libvirt's pattern)"]}
            _save(results, out_path)
        if "startup" in sections:
            from . import startup
            log("start-up")
            results["startup"] = startup.run_startup(
                [b for b in ("iptables-nft", "nftables") if b in backends] or backends[:1],
                5 if quick else 15, log)
            _save(results, out_path)
        if "memory" in sections:
            from . import startup
            log("memory")
            mem_b = ["nftables"] if "nftables" in backends else ["iptables-nft"]
            if not quick and "iptables-nft" in backends and "iptables-nft" not in mem_b:
                mem_b.append("iptables-nft")
            if a.mem_sizes:
                plan_sizes = apply_sizes = a.mem_sizes
            else:
                plan_sizes = [10000] if quick else [1000, 10000]
                apply_sizes = [2000] if quick else [1000, 10000]
            results["memory"] = startup.run_memory(mem_b, plan_sizes, apply_sizes, log)
            _save(results, out_path)
        if "libvirt" in sections:
            from . import libvirt
            log("real libvirt via libvirt-peer.sh")
            results["libvirt"] = libvirt.run(a.libvirt_sizes or ([1, 10] if quick
                                                                 else [1, 10, 50]), log)
            if results["libvirt"].get("skipped"):
                log(f"  skipped: {results['libvirt']['skipped']}")
            _save(results, out_path)
        if "libvirt-hook" in sections:
            from . import libvirt_hook
            n = max(a.libvirt_sizes or [50])
            log(f"real libvirt: its own firewall vs vnetfw's hook, {n} NAT networks each")
            results["libvirt-hook"] = libvirt_hook.run(n, log)
            if results["libvirt-hook"].get("skipped"):
                log(f"  skipped: {results['libvirt-hook']['skipped']}")
            _save(results, out_path)
        if "dataplane" in sections:
            from . import dataplane
            layouts = a.dp_layouts or [l for l in dataplane.DEFAULT_LAYOUTS
                                       if dataplane.LAYOUTS[l][0] in (None, *backends)
                                       and not (quick and l == "iptables-nft")]
            log(f"data plane: {layouts}")
            results["dataplane"] = dataplane.run(
                layouts, a.dp_sizes or ([1, 1000] if quick else [1, 100, 1000]),
                a.dp_runs or (1 if quick else 3), a.dp_seconds or (1 if quick else 2), log)
            _save(results, out_path)
        if "profile" in sections:
            from . import profile
            pb = "iptables-nft" if "iptables-nft" in backends else backends[0]
            extra = [] if quick else [b for b in ("nftables",) if b in backends and b != pb]
            log(f"profile: {pb} N={a.profile_n}" + (f" (+ {extra})" if extra else ""))
            if quick:
                results["profile"] = {"phases": profile.phase_breakdown(pb, a.profile_n, 1, log),
                                      "notes": ["quick: phase breakdown only, one run"]}
            else:
                results["profile"] = profile.run(pb, a.profile_n, 3, log, extra)
            _save(results, out_path)

    results["meta"]["loadavg_end"] = os.getloadavg()[0]
    results["meta"]["src_sha_end"] = src_fingerprint()
    if results["meta"]["src_sha_end"] != results["meta"]["src_sha_start"]:
        results["meta"]["warning"] = ("src/vnetfw changed while the benchmark ran: rows "
                                      "measured different code; run again")
        log("WARNING: " + results["meta"]["warning"])
    results["meta"]["total_s"] = time.perf_counter() - t_start
    results["targets"] = report.targets(results)
    _save(results, out_path)
    if out_path.resolve() != (RESULTS / "latest.json").resolve():
        shutil.copyfile(out_path, RESULTS / "latest.json")
    md = report.render_all(results, markdown=True)
    (RESULTS / "latest.md").write_text(md)
    print(report.render_all(results, markdown=False))
    print("\n----- Markdown (for the README) -----\n")
    print(md)
    if a.update_readme:
        update_readme(md)
        log(f"updated {README.relative_to(REPO)}")
    log(f"done in {results['meta']['total_s']:.0f} s; JSON: {_rel(out_path)}, "
        f"Markdown: {_rel(RESULTS / 'latest.md')}")
    return 0


def _rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(REPO))
    except ValueError:
        return str(p)


def _save(results: dict, path: Path) -> None:
    path.write_text(json.dumps(results, indent=1, default=str) + "\n")


def update_readme(md: str) -> None:
    text = README.read_text() if README.exists() else ""
    block = f"{MARK_BEGIN}\n{md}\n{MARK_END}"
    if MARK_BEGIN in text and MARK_END in text:
        head, rest = text.split(MARK_BEGIN, 1)
        _, tail = rest.split(MARK_END, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n## Latest results\n\n" + block + "\n"
    README.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
