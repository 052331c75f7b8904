"""Loads into a vacant firewall while another writer is busy in the same tables.

``python -m benchmarks.stress [--networks 1000] [--loads 10]``

Each load: a fresh namespace (``vnb<pid>-stress<n>``, guarded and deleted like every
benchmark namespace), a second process that adds and deletes rules at the top of FORWARD
all along, ``vnetfw apply`` of N NAT networks with DHCP, then ``vnetfw check``. A load
counts as whole when the apply succeeded without a warning and the check finds no drift.
This is how "RULE_INSERT failed (No such file or directory)" was found: two or three loads
of eight refused, then committed without their CHECKSUM rules. Not a test (it is
statistical, and takes ~2 s a load); a tool to re-check that claim.

iptables-nft only: its restores resolve positions in the builtin chains when they commit,
while another writer may be busy. iptables-legacy's restore holds the host-wide xtables
lock, so a busy legacy writer here would also stall the host's own iptables users; and
vnetfw's nftables table refers to no rule anyone else writes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from vnetfw.lab.netns import cleanup_on_signals

from .netdefs import write_dir, xmls
from .ns import new_netns

_WRITER = """
i=0
while :; do
  i=$((i % 250 + 1))
  {cmd} -I FORWARD 1 -s 198.51.100.$i -j ACCEPT 2>/dev/null
  {cmd} -D FORWARD -s 198.51.100.$i -j ACCEPT 2>/dev/null
done
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.stress", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--networks", type=int, default=1000)
    ap.add_argument("--loads", type=int, default=10)
    a = ap.parse_args(argv)
    backend = cmd = "iptables-nft"
    whole = 0
    with cleanup_on_signals(), tempfile.TemporaryDirectory(prefix="vnetfw-stress-") as tmp:
        defs = write_dir(Path(tmp) / "defs", xmls("nat", a.networks))
        (Path(tmp) / "hooks").mkdir()
        for k in range(a.loads):
            with new_netns("stress") as ns:
                base = [sys.executable, "-m", "vnetfw", "--netns", ns.name, "--state-dir",
                        f"{tmp}/state{k}", "--hooks-dir", f"{tmp}/hooks", "--backend",
                        backend]
                writer = ns.popen("sh", "-c", _WRITER.format(cmd=cmd),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                try:
                    applied = subprocess.run(base + ["apply", str(defs)], capture_output=True,
                                             text=True, timeout=600)
                finally:
                    writer.kill()
                    writer.wait()
                checked = subprocess.run(base + ["check"], capture_output=True, text=True,
                                         timeout=600)
                problems = [ln for ln in applied.stderr.splitlines() if ln.strip()]
                if applied.returncode != 0:
                    problems.insert(0, f"apply exited {applied.returncode}")
                if checked.returncode != 0:
                    problems.append("check: " + (checked.stdout.splitlines() or ["?"])[0])
                whole += not problems
                print(f"load {k + 1}: " + ("whole" if not problems else "; ".join(problems)),
                      flush=True)
    print(f"{whole} of {a.loads} loads whole ({backend}, {a.networks} networks, another "
          "writer busy in FORWARD)")
    return 0 if whole == a.loads else 1


if __name__ == "__main__":
    sys.exit(main())
