"""Phase timers for one vnetfw CLI run: where the wall-clock time of a command goes.

Installed in a child process (``python -m benchmarks._child phases OUT ARGS``) by wrapping
known functions of vnetfw; each phase gets *exclusive* time (a phase nested in another is
subtracted from the outer one). A function that does not exist (the code moved on) is simply
not timed; its time shows up as ``other``. The phases:

- interpreter start: process spawn -> first line of our code (measured by the parent)
- imports: importing vnetfw and what the command needs (cli, engine, sources, backend)
- load definitions, validation, planning, state load, state save, hooks, output
- readback (process): ``iptables-save``/``nft list`` processes; readback parsing: parse_save,
  parse_rule, parse_listing, live_ruleset
- diff: the backend's ``changes`` outside parsing/rendering; rendering: render_rule, script
- kernel commit (process): ``iptables-restore``/``nft -f``; backend probe: ``nft -c`` probes
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time

_acc: dict[str, float] = {}
_calls: dict[str, int] = {}
_stack: list[list] = []       # [phase, start, child_time]


def _enter(phase: str) -> None:
    _stack.append([phase, time.perf_counter(), 0.0])


def _leave() -> None:
    phase, start, child = _stack.pop()
    dt = time.perf_counter() - start
    _acc[phase] = _acc.get(phase, 0.0) + dt - child
    _calls[phase] = _calls.get(phase, 0) + 1
    if _stack:
        _stack[-1][2] += dt


def _wrap(fn, phase):
    def wrapper(*a, **kw):
        ph = phase(*a, **kw) if callable(phase) else phase
        _enter(ph)
        try:
            return fn(*a, **kw)
        finally:
            _leave()
    wrapper.__wrapped__ = fn
    return wrapper


def _run_phase(self, argv, *a, **kw) -> str:
    prog = argv[0].rsplit("/", 1)[-1]
    if prog.endswith("-save") or (prog == "nft" and "list" in argv):
        return "readback (process)"
    if prog.endswith("-restore") or (prog == "nft" and "-f" in argv and "-c" not in argv):
        return "kernel commit (process)"
    if prog == "nft" and "-c" in argv:
        return "backend probe (process)"
    return f"other process ({prog})"


TARGETS = [
    # module, attribute path, phase
    ("vnetfw.sources", "load_paths", "load definitions"),
    ("vnetfw.sources", "load_file", "load definitions"),     # read_paths, file by file
    ("vnetfw.state", "StateStore.load", "state load"),
    ("vnetfw.state", "StateStore.save", "state save"),
    ("vnetfw.engine", "plan", "planning"),
    ("vnetfw.plan", "plan", "planning"),
    ("vnetfw.engine", "validate_together", "validation"),
    ("vnetfw.plan", "validate_together", "validation"),
    ("vnetfw.sources", "validate_together", "validation"),
    ("vnetfw.engine", "Engine.find_hooks", "hooks"),          # found and checked first
    ("vnetfw.engine", "Engine._run_hooks", "hooks"),
    ("vnetfw.cli", "_print_report", "output"),
    ("vnetfw.backends.runner", "Runner.run", _run_phase),
    ("vnetfw.backends.iptables", "parse_save", "readback parsing"),
    ("vnetfw.backends.iptables", "parse_rule", "readback parsing"),
    ("vnetfw.backends.iptables", "IptablesBackend.live_ruleset", "readback parsing"),
    ("vnetfw.backends.iptables", "IptablesBackend.changes", "diff"),
    ("vnetfw.backends.iptables", "render_rule", "rendering"),
    ("vnetfw.backends.iptables", "IptablesBackend.script", "rendering"),
    ("vnetfw.backends.nftables", "parse_listing", "readback parsing"),
    ("vnetfw.backends.nftables", "parse_rule", "readback parsing"),
    ("vnetfw.backends.nftables", "NftablesBackend.live_ruleset", "readback parsing"),
    ("vnetfw.backends.nftables", "NftablesBackend.changes", "diff"),
    ("vnetfw.backends.nftables", "render_rule", "rendering"),
    # A vacant firewall: nft reads the table while vnetfw plans it. The planning and
    # rendering inside are timed as theirs; what is left is waiting for nft.
    ("vnetfw.backends.nftables", "NftablesBackend.load_fresh", "kernel commit (process)"),
    ("vnetfw.backends.iptables", "IptablesBackend.load_fresh", "kernel commit (process)"),
    ("vnetfw.plan", "network_rules", "planning"),
    ("vnetfw.engine", "network_rules", "planning"),     # the engine's own reference
]


def install(backend: str) -> list[str]:
    """Wrap every target that exists; return the ones that did not (not timed)."""
    missing = []
    for mod_name, path, phase in TARGETS:
        if "nftables" in mod_name and backend != "nftables":
            continue
        if "iptables" in mod_name and not backend.startswith("iptables"):
            continue
        try:
            obj = importlib.import_module(mod_name)
        except ImportError:
            missing.append(f"{mod_name}.{path}")
            continue
        *owners, attr = path.split(".")
        for o in owners:
            obj = getattr(obj, o, None)
        fn = getattr(obj, attr, None) if obj is not None else None
        if fn is None:
            missing.append(f"{mod_name}.{path}")
            continue
        setattr(obj, attr, _wrap(fn, phase))
    return missing


IMPORTS = {
    "common": ["vnetfw.cli", "vnetfw.engine", "vnetfw.sources", "vnetfw.sources.libvirt_xml"],
    "iptables": ["vnetfw.backends.iptables"],
    "nftables": ["vnetfw.backends.nftables"],
}


def run_cli(out_path: str, args: list[str], t_start: float) -> None:
    t_main = time.time()
    backend = args[args.index("--backend") + 1] if "--backend" in args else "auto"
    t0 = time.perf_counter()
    for m in IMPORTS["common"] + IMPORTS["nftables" if backend == "nftables" else "iptables"]:
        try:
            importlib.import_module(m)
        except ImportError:
            pass
    imports = time.perf_counter() - t0
    missing = install(backend)
    import contextlib
    import io
    from vnetfw.cli import main
    t1 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        rc = main(args)
    run = time.perf_counter() - t1
    t_end = time.time()
    with open(out_path, "w") as f:
        json.dump({"rc": rc, "t_start": t_start, "t_main": t_main, "t_end": t_end,
                   "imports_s": imports, "main_s": run, "phases_s": _acc, "calls": _calls,
                   "not_timed": missing}, f)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)            # no interpreter teardown, as vnetfw.cli.run (which also runs
                            # exit handlers: vnetfw registers none on these paths)
