"""The fault campaign: kill -9 and failing tools against every backend, judged from outside.

``python -m benchmarks.faults [--trials 100] [--backends nftables,iptables-nft,iptables-legacy]
[--kinds kill,tool] [--seed N]``

Each trial: a fresh namespace (``vnb<pid>-fault<n>``, guarded and deleted like every
benchmark namespace) and state directory, a starting firewall made by the CLI, then one
command run with a fault, then the next command, all through the CLI; the firewall is read
with the system's own ``iptables-save``/``nft``. Scenarios, picked at random: ``apply``
(3 NAT networks with DHCP and IPv6 active, 3 more applied), ``remove`` (4 active, 2
removed), ``load`` (6 applied into an empty firewall: the streamed load).

Faults (``--kinds``):
- ``kill``: kill -9 at a random moment: half the trials after a random delay within the
  command's run time (measured once per backend and scenario), half from a wrapper first
  on PATH when the command starts its Nth firewall tool, just before that tool runs or
  right after it finished (N random up to the calls the command makes). Then the next
  command: ``reload`` (the boot unit's), ``setup`` or ``watch --once``, at random.
  Counted: partial right after the kill (vnetfw's rules neither what they were before
  the command nor what the command makes when it runs to the end), partial after the
  next command (not one or the other), and failures: the next command failed, ``check`` found drift, the state
  lists other networks than the firewall holds, or a record of a change in flight or a
  ``state.tmp`` was left.
- ``tool``: a wrapper first on PATH fails the Nth call of a firewall tool (N random), or
  (iptables) lets the restore's first table commit and has the real tool refuse the
  second (a rule for a chain that does not exist, added before its ``COMMIT``). Counted as
  failures: a run that exits non-zero and leaves the firewall other than it was (rules and
  vnetfw's chains, in order, compared as text; empty builtin tables that a failed load
  into an empty firewall created are not rules), and a run that exits 0 with the change
  not whole (``check`` finds drift, or the rules are not what the run without a fault
  makes).

Nothing is timed for a verdict: the delays only spread the kills. ``run_campaign`` is
what the test suite runs, with a few trials per backend (tests/netns/test_faults.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from vnetfw.lab.netns import cleanup_on_signals

from .ns import new_netns

BACKENDS = ("nftables", "iptables-nft", "iptables-legacy")
SCENARIOS = ("apply", "remove", "load")
NEXT = (("reload",), ("setup",), ("watch", "--once", "--no-events", "--firewalld", "off"))
BUILTIN = {"INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"}


def tools_of(backend: str) -> list[str]:
    if backend == "nftables":
        return ["nft"]
    mid = backend.removeprefix("iptables")
    return [f"{fam}{mid}-{op}" for fam in ("iptables", "ip6tables") for op in ("save", "restore")]


def net_toml(i: int) -> str:
    return (f'[[network]]\nname = "f{i}"\nbridge = "vbf{i}"\nmode = "nat"\n'
            f'nat = {{ ipv6 = true }}\n'
            f'ip = [{{ address = "10.88.{i}.1", prefix = 24, dhcp = true }},\n'
            f'      {{ address = "fd00:88:{i}::1", prefix = 64 }}]\n')


# -- reading the firewall from outside -----------------------------------------------------
def firewall(ns, backend: str) -> list[str]:
    """The firewall as the system's tools print it: for iptables every rule and every
    chain that is not a builtin one, in order, each line with its family and table (no
    counters, no comments, no empty builtin tables); for nftables ``nft list ruleset``."""
    if backend == "nftables":
        return ns.run("nft", "list", "ruleset").splitlines()
    mid = backend.removeprefix("iptables")
    out = []
    for fam in ("iptables", "ip6tables"):
        table = "?"
        for line in ns.run(f"{fam}{mid}-save").splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith("-A ") or (line.startswith(":")
                                            and line[1:].split()[0] not in BUILTIN):
                out.append(f"{fam} {table} {line.split(' [')[0] if line.startswith(':') else line}")
    return out


def shape(lines: list[str]) -> list[str]:
    """Order aside (vnetfw appends the blocks of networks it puts back): what is there."""
    return sorted(part.strip().rstrip(",") for line in lines for part in line.split(",")
                  if part.strip())


# -- wrappers first on PATH ----------------------------------------------------------------
def write_wrappers(bin_dir: Path, backend: str, count: Path) -> None:
    """Wrappers for the backend's tools. Each takes a number (one counter for all of them,
    under flock: a load runs restores side by side), then acts on ``FAULT`` (set in the
    environment of the faulty command only): ``kill-before:N`` / ``kill-after:N`` kill -9
    the vnetfw that started the Nth call, before or after the real tool ran; ``fail:N``
    fails the Nth call; ``second:N`` has the real tool refuse the second table of the Nth
    call (a restore); anything else only counts."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    second = bin_dir / "second-table.py"
    second.write_text(
        "import subprocess, sys\n"
        "data = sys.stdin.read()\n"
        "first = data.find('COMMIT\\n')\n"
        "nxt = data.find('COMMIT\\n', first + 1) if first >= 0 else -1\n"
        "if nxt >= 0:\n"
        "    data = data[:nxt] + '-A VNETFW_FAULT_NO_SUCH_CHAIN -j ACCEPT\\n' + data[nxt:]\n"
        "p = subprocess.run(sys.argv[1:], input=data, text=True)\n"
        "sys.exit(p.returncode)\n")
    for tool in tools_of(backend):
        real = shutil.which(tool, path=os.environ.get("PATH", "").replace(f"{bin_dir}:", ""))
        assert real, f"{tool} not found"
        (bin_dir / tool).write_text(f"""#!/bin/sh
n=$(flock {count}.lock sh -c 'n=$(($(cat {count} 2>/dev/null || echo 0) + 1)); echo $n > {count}; echo $n')
case "${{FAULT:-}}" in
  kill-before:$n) kill -9 $PPID; exit 1 ;;
  kill-after:$n) {real} "$@"; rc=$?; kill -9 $PPID; exit $rc ;;
  fail:$n) echo "{tool}: simulated failure (call $n)" >&2; exit 1 ;;
  second:$n) exec {sys.executable} {second} {real} "$@" ;;
esac
exec {real} "$@"
""")
        (bin_dir / tool).chmod(0o755)


# -- one trial -----------------------------------------------------------------------------
@dataclass
class Tally:
    trials: int = 0
    partial_after_kill: int = 0
    partial_after_next: int = 0
    failures: int = 0
    failed_runs: int = 0            # tool trials: runs that exited non-zero
    notes: list[str] = field(default_factory=list)


class Lab:
    """One backend's trials: definitions, wrappers and per-scenario references."""

    def __init__(self, backend: str, tmp: Path, rng: random.Random) -> None:
        self.backend = backend
        self.tmp = tmp / backend
        self.rng = rng
        self.defs = self.tmp / "defs"
        self.defs.mkdir(parents=True)
        (self.tmp / "no-hooks").mkdir()
        for i in range(6):
            (self.defs / f"f{i}.toml").write_text(net_toml(i))
        self.bin = self.tmp / "bin"
        self.count = self.tmp / "count"
        write_wrappers(self.bin, backend, self.count)
        self.ref: dict[str, tuple[list[str], list[str], int, float, list[str]]] = {}
        self.k = 0

    def argv(self, ns, state: Path, *args: str) -> list[str]:
        return [sys.executable, "-m", "vnetfw", "--netns", ns.name, "--backend", self.backend,
                "--state-dir", str(state), "--hooks-dir", str(self.tmp / "no-hooks"), *args]

    def env(self, fault: str = "") -> dict[str, str]:
        e = {k: v for k, v in os.environ.items() if not k.startswith("VNETFW_")}
        e["PATH"] = f"{self.bin}:{e.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
        e["FAULT"] = fault
        return e

    def run(self, ns, state, *args, fault: str = "", timeout: float = 120):
        return subprocess.run(self.argv(ns, state, *args), env=self.env(fault),
                              capture_output=True, text=True, timeout=timeout)

    def start(self, ns, state: Path, scenario: str) -> list[str]:
        """Make the scenario's starting firewall; return the command's arguments."""
        files = [str(f) for f in sorted(self.defs.iterdir())]
        if scenario == "apply":
            self.must(ns, state, "apply", *files[:3])
            return ["apply", *files[3:]]
        if scenario == "remove":
            self.must(ns, state, "apply", *files[:4])
            return ["remove", "f1", "f2"]
        return ["apply", str(self.defs)]

    def must(self, ns, state, *args) -> None:
        p = self.run(ns, state, *args)
        if p.returncode != 0:
            raise RuntimeError(f"vnetfw {' '.join(args)}: {p.stderr.strip()}")

    @staticmethod
    def listed(state: Path) -> list[str]:
        """The networks the state file records."""
        try:
            return sorted(n["name"] for n in
                          json.loads((state / "state.json").read_text())["networks"])
        except FileNotFoundError:
            return []

    def reference(self, scenario: str):
        """Per scenario, from one run without a fault: the firewall before and after, the
        networks listed after, how many tool calls the command makes, how long it runs."""
        if scenario not in self.ref:
            with self.netns() as ns:
                state = self.state_dir()
                args = self.start(ns, state, scenario)
                before = firewall(ns, self.backend)
                self.count.write_text("0")
                t = time.monotonic()
                self.must(ns, state, *args)
                took = time.monotonic() - t
                calls = int(self.count.read_text())
                self.ref[scenario] = (before, firewall(ns, self.backend), calls, took,
                                      self.listed(state))
        return self.ref[scenario]

    def netns(self):
        self.k += 1
        return new_netns("fault")

    def state_dir(self) -> Path:
        d = self.tmp / f"state{self.k}"
        return d

    def leftovers(self, state: Path) -> list[str]:
        return [n for n in ("inflight.json", "state.tmp") if (state / n).exists()]

    # -- kill -9 -----------------------------------------------------------------------
    def kill_trial(self, t: Tally) -> None:
        scenario = self.rng.choice(SCENARIOS)
        before_ref, after_ref, calls, took, after_names = self.reference(scenario)
        with self.netns() as ns:
            state = self.state_dir()
            args = self.start(ns, state, scenario)
            before_names = self.listed(state)
            if self.rng.random() < 0.5:
                how = f"kill-{self.rng.choice(('before', 'after'))}:{self.rng.randint(1, calls)}"
                self.count.write_text("0")
                p = self.run(ns, state, *args, fault=how)
                killed = p.returncode == -signal.SIGKILL
            else:
                delay = self.rng.uniform(0, took)
                how = f"after {delay * 1000:.0f} ms"
                proc = subprocess.Popen(self.argv(ns, state, *args), env=self.env(),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(delay)
                proc.kill()
                killed = proc.wait() == -signal.SIGKILL
            t.trials += 1
            now = shape(firewall(ns, self.backend))
            what = f"{scenario}, kill {how}" + ("" if killed else " (had ended)")
            if now not in (shape(before_ref), shape(after_ref)):
                t.partial_after_kill += 1
            # (setup makes the layout: after a load undone, that is neither side)
            nxt = self.rng.choice(NEXT if scenario != "load" else NEXT[::2])
            q = self.run(ns, state, *nxt)
            fw = firewall(ns, self.backend)
            chk = self.run(ns, state, "check")
            names = self.listed(state)
            problems = []
            if shape(fw) not in (shape(before_ref), shape(after_ref)):
                t.partial_after_next += 1
                problems.append("partial after the next command")
            if q.returncode != 0:
                problems.append(f"{nxt[0]} exited {q.returncode}: {q.stderr.strip()[-300:]}")
            if chk.returncode != 0:
                problems.append(f"check: {chk.stdout.strip()[:300]}")
            expect = after_names if shape(fw) == shape(after_ref) else before_names
            if names != expect:
                problems.append(f"state lists {names}, the firewall holds {expect}")
            if left := self.leftovers(state):
                problems.append(f"left {', '.join(left)}")
            if problems:
                t.failures += 1
                t.notes.append(f"{what}, then {nxt[0]}: " + "; ".join(problems))

    # -- failing tools -----------------------------------------------------------------
    def tool_trial(self, t: Tally) -> None:
        scenario = self.rng.choice(SCENARIOS)
        before_ref, after_ref, calls, _, _ = self.reference(scenario)
        with self.netns() as ns:
            state = self.state_dir()
            args = self.start(ns, state, scenario)
            before = firewall(ns, self.backend)
            kinds = ["fail"] if self.backend == "nftables" else ["fail", "second"]
            how = f"{self.rng.choice(kinds)}:{self.rng.randint(1, calls)}"
            self.count.write_text("0")
            p = self.run(ns, state, *args, fault=how)
            t.trials += 1
            now = firewall(ns, self.backend)
            what = f"{scenario}, {how}"
            if p.returncode != 0:
                t.failed_runs += 1
                if now != before:
                    t.failures += 1
                    t.notes.append(f"{what}: exited {p.returncode} and changed the firewall "
                                   f"({p.stderr.strip()[-300:]})")
                return
            chk = self.run(ns, state, "check")
            if chk.returncode != 0 or shape(now) != shape(after_ref):
                t.failures += 1
                t.notes.append(f"{what}: exited 0 but the change is not whole "
                               f"(check {chk.returncode}; {p.stderr.strip()[-300:]})")


def available(backend: str) -> bool:
    return all(shutil.which(tool) for tool in tools_of(backend)) and shutil.which("flock")


def run_campaign(trials: int, backends=BACKENDS, kinds=("kill", "tool"), seed: int | None = None,
                 log=print) -> dict[str, dict[str, Tally]]:
    """``trials`` of each kind per backend; returns the tallies by backend and kind."""
    seed = random.randrange(1 << 30) if seed is None else seed
    log(f"seed {seed}")
    out: dict[str, dict[str, Tally]] = {}
    with cleanup_on_signals(), tempfile.TemporaryDirectory(prefix="vnetfw-faults-") as tmp:
        for backend in backends:
            if not available(backend):
                log(f"{backend}: skipped (tools missing)")
                continue
            lab = Lab(backend, Path(tmp), random.Random(f"{seed}-{backend}"))
            out[backend] = {}
            for kind in kinds:
                tally = out[backend][kind] = Tally()
                for _ in range(trials):
                    (lab.kill_trial if kind == "kill" else lab.tool_trial)(tally)
                for n in tally.notes:
                    log(f"  {backend} {kind}: {n}")
    return out


def table(res: dict[str, dict[str, Tally]]) -> str:
    rows = ["| backend | kill -9 trials | partial right after the kill | partial after the "
            "next command | failures | failing-tool trials | runs that failed | failures |",
            "|---|---|---|---|---|---|---|---|"]
    for backend, kinds in res.items():
        k, f = kinds.get("kill", Tally()), kinds.get("tool", Tally())
        rows.append(f"| {backend} | {k.trials} | {k.partial_after_kill} | "
                    f"{k.partial_after_next} | {k.failures} | {f.trials} | {f.failed_runs} | "
                    f"{f.failures} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.faults", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=100, help="per backend and kind")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--kinds", default="kill,tool")
    ap.add_argument("--seed", type=int)
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    res = run_campaign(a.trials, [b for b in a.backends.split(",") if b],
                       [k for k in a.kinds.split(",") if k], a.seed)
    print(table(res))
    return 0 if all(t.failures == 0 and t.partial_after_next == 0
                    for kinds in res.values() for t in kinds.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
