"""Child-process helpers (run as ``python -m benchmarks._child MODE ...``); stdlib + vnetfw only.

- ``rss-plan N``: parse N generated definitions, plan them; print JSON with timings and
  peak RSS (VmHWM) after imports, after loading, after planning.
- ``rss-cli OUT ARGS...``: run ``vnetfw ARGS`` in this process; write JSON to OUT with the
  exit status and the peak RSS (VmHWM) of this Python process.
- ``phases OUT ARGS...``: run ``vnetfw ARGS`` with the phase timers of ``benchmarks.phases``
  installed; write the breakdown to OUT as JSON.
"""

from __future__ import annotations

import json
import resource
import sys
import time

_T0 = time.time()


def _mib(kib: int) -> float:
    return kib / 1024


def hwm_mib() -> float:
    """Peak RSS of this process since exec (VmHWM). Not ru_maxrss: on Linux that carries
    over the high-water mark of the process we were forked from (set at execve)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return _mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def rss_plan(n: int, set_name: str = "nat") -> dict:
    from benchmarks import netdefs
    from vnetfw.engine import resolve_profile
    from vnetfw.plan import plan
    out = {"n": n, "maxrss_imports_mib": hwm_mib()}
    defs = netdefs.xmls(set_name, n)
    t0 = time.perf_counter()
    nets = netdefs.load(defs)
    out["load_s"] = time.perf_counter() - t0
    del defs
    out["maxrss_loaded_mib"] = hwm_mib()
    t0 = time.perf_counter()
    rs = plan(nets, resolve_profile("default"))
    out["plan_s"] = time.perf_counter() - t0
    out["rules"] = len(rs.rules)
    out["maxrss_mib"] = hwm_mib()
    return out


def rss_cli(args: list[str]) -> dict:
    from vnetfw.cli import main
    t0 = time.perf_counter()
    try:
        rc = main(args)
    except SystemExit as e:
        rc = e.code
    dt = time.perf_counter() - t0
    sys.stdout.flush()
    return {"rc": rc, "seconds": dt, "maxrss_mib": hwm_mib()}


def main() -> None:
    mode, *rest = sys.argv[1:]
    if mode == "rss-plan":
        res = rss_plan(int(rest[0]), *(rest[1:2] or []))
        print(json.dumps(res))
    elif mode == "rss-cli":
        out_path, *args = rest
        import contextlib
        import io
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            res = rss_cli(args)
        with open(out_path, "w") as f:
            json.dump(res, f)
    elif mode == "phases":
        out_path, *args = rest
        from benchmarks import phases
        phases.run_cli(out_path, args, _T0)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
