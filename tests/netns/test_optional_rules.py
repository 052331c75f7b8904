"""The optional CHECKSUM fix-up on the real kernel: left out only where the kernel lacks it.

A restore can fail for a reason of the moment (a tool that fails once, a writer in the
way). That is a failed change: reported as failed, the firewall as it was, every network's
CHECKSUM rule still there. Only evidence about the target itself (the tool naming it, or
``iptables -j CHECKSUM -h`` not knowing it) makes vnetfw commit without it, with a warning.

Both are simulated with a shim first on PATH: a restore that fails once, and (for a kernel
without xt_CHECKSUM) tools that answer the way iptables 1.8.9 does on such a kernel.
"""

from __future__ import annotations

import os
import stat

import pytest

from tests.conftest import save
from vnetfw.engine import Engine
from vnetfw.errors import BackendError
from vnetfw.sources.toml import parse_toml

FLAVOURS = ["iptables-nft", "iptables-legacy"]


def nat_nets(first: int, count: int):
    """NAT networks with DHCP (so a CHECKSUM rule each) and IPv6."""
    return parse_toml("".join(f"""
[[network]]
name = "n{i:02d}"
bridge = "vbr-n{i:02d}"
mode = "nat"
nat = {{ ipv6 = true }}
ip = [{{ address = "10.20.{i}.1", prefix = 24, dhcp = true }},
      {{ address = "fd00:20:{i}::1", prefix = 64 }}]
""" for i in range(first, first + count)), "nets.toml")


def engine(ns: str, flavour: str, tmp_path) -> Engine:
    return Engine(backend=flavour, netns=ns, state_dir=tmp_path / "state",
                  hooks_dir=tmp_path / "no-hooks")


def shim(dirpath, name: str, body: str) -> None:
    """An executable ``name`` in ``dirpath`` (put first on PATH by the test)."""
    p = dirpath / name
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(p.stat().st_mode | stat.S_IXUSR)


def real(name: str) -> str:
    for d in ("/usr/sbin", "/sbin", "/usr/bin"):
        if os.access(f"{d}/{name}", os.X_OK):
            return f"{d}/{name}"
    pytest.skip(f"{name} not installed")


def checksums(ns: str, flavour: str) -> int:
    return save(ns, flavour).count("-j CHECKSUM --checksum-fill")


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("fails", [1, 2])
def test_a_restore_that_fails_for_the_moment_costs_no_checksum_rule(
        netns, flavour, fails, tmp_path, monkeypatch):
    """20 NAT networks with DHCP and IPv6; adding a 21st, the IPv6 restore fails
    ("transient failure") once, or twice: on both paths the change takes (the commit from
    vnetfw's last commit, then read-diff-commit from the firewall read afresh). Before the
    fix, vnetfw took the second failure for a kernel without CHECKSUM: it committed again
    without optional rules, deleted the CHECKSUM rule of all 20 networks, warned and exited
    0 (its check then reported drift). Now: failed once, the fallback lands all 21; failed
    on both paths, the change fails, the firewall is byte-identical, check is clean, and the
    same command run again lands all 21."""
    eng = engine(netns, flavour, tmp_path)
    eng.apply(nat_nets(1, 20))
    assert checksums(netns, flavour) == 20
    before = save(netns, flavour)
    tool = f"ip6tables{flavour.removeprefix('iptables')}-restore"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim(bin_dir, tool, f"""n=$(cat {tmp_path}/fails 2>/dev/null || echo 0)
if [ "$n" -lt {fails} ]; then
  echo $((n + 1)) > {tmp_path}/fails
  cat >/dev/null
  echo "{tool}: transient failure" >&2
  exit 1
fi
exec {real(tool)} "$@"
""")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    if fails == 1:
        rep = engine(netns, flavour, tmp_path).apply(nat_nets(21, 1))
        assert rep.warnings == [] and checksums(netns, flavour) == 21
        assert (tmp_path / "fails").read_text().strip() == "1"     # it did fail once
        assert engine(netns, flavour, tmp_path).check() == []
        return
    with pytest.raises(BackendError, match="transient failure"):
        engine(netns, flavour, tmp_path).apply(nat_nets(21, 1))
    assert save(netns, flavour) == before
    assert checksums(netns, flavour) == 20
    assert engine(netns, flavour, tmp_path).check() == []
    assert sorted(eng.store.load().networks) == [f"n{i:02d}" for i in range(1, 21)]
    rep = engine(netns, flavour, tmp_path).apply(nat_nets(21, 1))    # the shim passes now
    assert rep.warnings == [] and checksums(netns, flavour) == 21
    assert engine(netns, flavour, tmp_path).check() == []


def kernel_without_checksum(bin_dir, flavour: str) -> None:
    """Tools that behave as iptables 1.8.9 does where the kernel has no xt_CHECKSUM: a
    restore given a CHECKSUM rule warns that the extension is not supported and then does
    not know its option; ``-j CHECKSUM -h`` prints the warning and help without the
    target's section. Everything else is the real tool."""
    mid = flavour.removeprefix("iptables")
    for fam in ("iptables", "ip6tables"):
        restore = f"{fam}{mid}-restore"
        shim(bin_dir, restore, f"""in=$(cat)
if printf '%s' "$in" | grep -q -- '-j CHECKSUM'; then
  echo "Warning: Extension CHECKSUM revision 0 not supported, missing kernel module?" >&2
  echo "{restore} v1.8.9: unknown option \\"--checksum-fill\\"" >&2
  echo "Error occurred at line: 3" >&2
  exit 2
fi
printf '%s\\n' "$in" | exec {real(restore)} "$@"
""")
        tool = f"{fam}{mid}"
        shim(bin_dir, tool, f"""if [ "$1 $2 $3" = "-j CHECKSUM -h" ]; then
  echo "Warning: Extension CHECKSUM revision 0 not supported, missing kernel module?" >&2
  {real(tool)} -h
  exit 0
fi
exec {real(tool)} "$@"
""")


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_kernel_without_checksum_gets_every_other_rule_with_a_warning(
        netns, flavour, tmp_path, monkeypatch):
    """The evidence is the tool's own words: the commit goes again without the CHECKSUM
    rules, every other rule lands, and the warning says why."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    kernel_without_checksum(bin_dir, flavour)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    eng = engine(netns, flavour, tmp_path)
    rep = eng.apply(nat_nets(1, 3))
    assert len(rep.warnings) == 1 and "Extension CHECKSUM" in rep.warnings[0]
    live = save(netns, flavour)
    assert checksums(netns, flavour) == 0
    assert live.count("-j MASQUERADE") >= 3 and "vnetfw:n03" in live
    # what this kernel cannot hold is no drift: check is clean, reload changes nothing
    assert engine(netns, flavour, tmp_path).check() == []
    rep = engine(netns, flavour, tmp_path).reload()
    assert not rep.changed and save(netns, flavour) == live


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_the_probe_alone_is_evidence_enough(netns, flavour, tmp_path, monkeypatch):
    """A refusal that does not name the target (as iptables before 1.8.9 would word it)
    but a probe, ``iptables -j CHECKSUM -h``, that knows no such target: left out."""
    from vnetfw.backends import get_backend
    from vnetfw.backends.runner import Runner
    from vnetfw.plan import PROFILES, plan
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    kernel_without_checksum(bin_dir, flavour)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    b = get_backend(flavour, Runner(netns))
    want = b.effective(plan(nat_nets(1, 1), PROFILES["default"]))
    why = b.lacks_optional(BackendError("line 5 failed"), want)
    assert why is not None and "CHECKSUM" in why
    monkeypatch.setenv("PATH", os.environ["PATH"].split(":", 1)[1])   # the real tools
    # the real tools, on this kernel which has xt_CHECKSUM: no evidence
    assert b.lacks_optional(BackendError("line 5 failed"), want) is None
