"""vnetfw inside its systemd units' sandbox, on the real kernel: the hardening must not break
what the units do.

systemd cannot run units here (PID 1 is not systemd, and no test starts a unit on the host),
so the parts of the sandbox the kernel enforces are rebuilt from the unit file around vnetfw
in a test namespace:

- ``CapabilityBoundingSet=``, ``NoNewPrivileges=``: setpriv(1) keeps only those capabilities
  (bounding, inheritable and ambient sets) and sets no_new_privs;
- ``ProtectSystem=strict`` with ``StateDirectory=``, ``ProtectKernelTunables=``,
  ``PrivateTmp=``, ``ExecStartPre=``: a mount namespace whose ``/run`` is empty as at boot
  until the unit's unsandboxed ``ExecStartPre=`` ran, then every mount read-only but the state
  directory and ``/tmp`` (the unit has a private one), ``/proc/sys`` too;
- ``SystemCallFilter=``, ``RestrictAddressFamilies=``, ``RestrictNamespaces=``,
  ``MemoryDenyWriteExecute=``: strace(1) records every system call vnetfw and the tools it
  runs (nft, iptables-restore) make; each must pass the filter as ``systemd-analyze
  syscall-filter`` expands it, every socket be of an allowed family, no namespace be
  entered, no mapping be writable and executable at once.

Inside that, the units' own commands -- ``vnetfw reload`` (vnetfw.service) and ``vnetfw
watch --once`` (one round of vnetfw-watch.service) -- repair a flushed firewall with each
backend, and the result is what a fresh apply makes. The sandbox itself is checked to bite
(a write to /etc, CAP_SYS_ADMIN), or a pass would prove nothing.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import nsrun
from vnetfw.shipped import SHARE

pytestmark = pytest.mark.netns
FIX = Path(__file__).parent.parent / "fixtures" / "libvirt"
UNIT = SHARE / "systemd" / "vnetfw-watch.service"
TOOLS = ("setpriv", "unshare", "strace", "systemd-analyze")
FLUSH = {"nftables": ["nft", "flush", "ruleset"],
         "iptables-nft": ["iptables-nft", "-F"],
         "iptables-legacy": ["iptables-legacy", "-F"]}


def unit_values(key: str) -> list[str]:
    """Every ``key=`` line of the watcher's [Service] (the boot unit's sandbox is the same
    block, tests/unit/test_watch_units.py checks that), one string per line."""
    return [l.split("=", 1)[1] for l in UNIT.read_text().splitlines() if l.startswith(key + "=")]


def test_both_units_share_one_sandbox():
    def block(name: str) -> str:
        text = (SHARE / "systemd" / name).read_text()
        return text[text.index("# --- Sandbox"):text.index("[Install]")]
    assert block("vnetfw.service") == block("vnetfw-watch.service")


@functools.cache
def syscall_group(name: str) -> frozenset[str]:
    out = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager", name],
                         capture_output=True, text=True, check=True).stdout
    calls: set[str] = set()
    for line in out.splitlines()[1:]:
        word = line.strip()
        if not word or word.startswith("#"):
            continue
        calls |= syscall_group(word) if word.startswith("@") else {word}
    return frozenset(calls)


def allowed_syscalls() -> set[str]:
    """``SystemCallFilter=`` lines in order: the first sets an allow list, ``~`` lines
    take from it."""
    allowed: set[str] = set()
    for value in unit_values("SystemCallFilter"):
        deny = value.startswith("~")
        names: set[str] = set()
        for w in value.lstrip("~").split():
            names |= syscall_group(w) if w.startswith("@") else {w}
        allowed = allowed - names if deny else allowed | names
    return allowed


def sandboxed(ns: str, state: Path, log: Path, *argv: str, check: bool = True
              ) -> subprocess.CompletedProcess:
    """``argv`` in namespace ``ns`` inside the units' sandbox, traced into ``log``."""
    caps = ",".join("+" + c.removeprefix("CAP_").lower()
                    for c in unit_values("CapabilityBoundingSet")[0].split())
    # PrivateTmp= gives the unit a /tmp of its own, writable: here the test's /tmp, where
    # the state directory and the trace are too.
    writable = ["/tmp", *unit_values("ReadWritePaths"), str(state), str(log.parent)]
    pre = [v.removeprefix("+") for v in unit_values("ExecStartPre")]
    script = f"""
set -eu
# /run as at boot: empty (no /run/xtables.lock yet); then the unit's unsandboxed ExecStartPre=
mount -t tmpfs -o mode=755 tmpfs /run
{chr(10).join(pre)}
for p in {' '.join(map(shlex.quote, writable))}; do mount --bind "$p" "$p"; done
mount --bind /proc/sys /proc/sys
# every mount read-only (ProtectSystem=strict), but the writable ones bound above and the
# API file systems (systemd narrows those with other settings; /proc/sys is read-only too)
awk '{{print $5}}' /proc/self/mountinfo | sort -u | while read -r m; do
  # (and namespaces' nsfs handles, which come and go with other tests)
  case "$m" in /dev|/dev/*|/proc|/proc/[0-9]*|/sys/*|/run/*) continue ;; esac
  keep=""
  for p in {' '.join(map(shlex.quote, writable))}; do [ "$m" = "$p" ] && keep=1; done
  [ -n "$keep" ] || mount -o remount,bind,ro "$m"
done
exec setpriv --bounding-set=-all,{caps} --inh-caps=-all --ambient-caps=-all --no-new-privs \
  -- strace -f -qq -o {shlex.quote(str(log))} "$@"
"""
    p = subprocess.run(["ip", "netns", "exec", ns, "unshare", "--mount",
                        "--propagation", "private", "--", "sh", "-c", script, "sandbox", *argv],
                       capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} in the sandbox -> {p.returncode}: {p.stderr}")
    return p


def trace_problems(log: Path) -> list[str]:
    """What the sandbox's seccomp and namespace rules would have refused, from strace."""
    allowed = allowed_syscalls()
    families = set(unit_values("RestrictAddressFamilies")[0].split())
    problems = set()
    for line in log.read_text().splitlines():
        m = re.match(r"\d+\s+([a-z0-9_]+)\((.*)", line)
        if not m:
            continue
        call, args = m.groups()
        if call not in allowed:
            problems.add(f"system call {call} is not in SystemCallFilter=")
        if call == "socket" and (fam := args.split(",")[0]) not in families:
            problems.add(f"socket family {fam} is not in RestrictAddressFamilies=")
        if call in ("setns", "unshare") or "CLONE_NEW" in args:
            problems.add(f"{call} enters a namespace (RestrictNamespaces=yes)")
        if call in ("mmap", "mprotect", "pkey_mprotect") and "PROT_WRITE" in args \
                and "PROT_EXEC" in args:
            problems.add(f"{call} writable and executable (MemoryDenyWriteExecute=yes)")
    return sorted(problems)


@pytest.fixture
def tools():
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing: {' '.join(missing)}")


def test_the_sandbox_bites(tools, netns, tmp_path):
    state, log = tmp_path / "state", tmp_path / "log" / "trace"
    state.mkdir()
    log.parent.mkdir()
    probe = sandboxed(netns, state, log, "sh", "-c",
                      "touch /etc/vnetfw-sandbox-probe 2>/dev/null && echo etc-writable; "
                      "unshare -n true 2>/dev/null && echo sys-admin; "
                      "touch $0/ok && echo state-writable; "
                      "grep NoNewPrivs /proc/self/status", str(state), check=False)
    assert probe.stdout.split("\n")[:2] == ["state-writable", "NoNewPrivs:\t1"], probe
    assert not Path("/etc/vnetfw-sandbox-probe").exists()


@pytest.mark.parametrize("backend", ["nftables", "iptables-nft", "iptables-legacy"])
def test_unit_commands_repair_inside_the_sandbox(tools, netns, tmp_path, backend):
    state, log = tmp_path / "state", tmp_path / "log" / "trace"
    log.parent.mkdir()
    vnetfw = [sys.executable, "-m", "vnetfw", "--state-dir", str(state)]
    nsrun(netns, *vnetfw, "--backend", backend, "apply", str(FIX / "nat-default.xml"))
    fresh = nsrun(netns, *FLUSH[backend][:1], *({"nftables": ["list", "ruleset"]}.get(
        backend, ["-S"])))
    assert "VNETFW" in fresh or "vnetfw" in fresh

    # vnetfw.service: ExecStart=vnetfw reload
    nsrun(netns, *FLUSH[backend])
    rep = sandboxed(netns, state, log, *vnetfw, "reload")
    assert "reload: changed" in rep.stdout, rep.stdout + rep.stderr
    assert trace_problems(log) == []
    assert sandboxed(netns, state, log, *vnetfw, "check").returncode == 0
    assert trace_problems(log) == []

    # vnetfw-watch.service: ExecStart=vnetfw watch (one round of it); not the host's D-Bus
    nsrun(netns, *FLUSH[backend])
    sandboxed(netns, state, log, *vnetfw, "watch", "--once", "--firewalld", "off")
    assert trace_problems(log) == []
    assert subprocess.run(["ip", "netns", "exec", netns, *vnetfw, "check"]).returncode == 0
    assert nsrun(netns, *FLUSH[backend][:1], *({"nftables": ["list", "ruleset"]}.get(
        backend, ["-S"]))) == fresh
