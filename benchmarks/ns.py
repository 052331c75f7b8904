"""What the benchmarks add to ``vnetfw.lab.netns`` (which creates the namespaces, guards every
command run through them -- never the namespace the run started in -- and deletes them at exit
and, under ``cleanup_on_signals``, on SIGTERM/SIGHUP).

- ``new_netns(tag)``: a fresh namespace named ``vnb<pid>-<tag><n>``;
- ``TIMEOUT``: for loads and readbacks of large rulesets (the lab's default is 30 s);


Commands whose process-start cost is measured run with ``run_process(..., setns=True)``: the
child calls setns(2) between fork and exec, exactly as vnetfw's own Runner does.
"""

from __future__ import annotations

import itertools
import os

from vnetfw.lab.netns import Netns

TIMEOUT = 120.0
_counter = itertools.count()


def new_netns(tag: str = "ns") -> Netns:
    """A fresh namespace ``vnb<pid>-<tag><n>``, deleted on leaving ``with`` (or at exit)."""
    return Netns.create(f"vnb{os.getpid()}-{tag}{next(_counter)}")


