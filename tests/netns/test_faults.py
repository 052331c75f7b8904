"""The fault campaign, bounded (issue 12): kill -9 and failing tools on every backend.

``benchmarks.faults`` runs it (``python -m benchmarks.faults --trials 100`` is the full
run); here 4 trials of each kind per backend. After a kill, the next command (``reload``,
``setup`` or ``watch --once``) leaves no partial state, ``check`` is clean, the state names
what the firewall holds, and no record of a change in flight is left; a run with a failing
tool that exits non-zero leaves the firewall as it was, one that exits 0 is whole. No
timing is asserted. The seed is in the failure message (``VNETFW_FAULT_SEED`` replays it).
"""

from __future__ import annotations

import os
import random
import shutil

import pytest

pytestmark = pytest.mark.netns


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                    reason="needs root and iproute2")
def test_kills_and_failing_tools_leave_no_partial_state():
    from benchmarks.faults import run_campaign, table
    seed = int(os.environ.get("VNETFW_FAULT_SEED") or random.randrange(1 << 30))
    lines: list[str] = []
    res = run_campaign(4, seed=seed, log=lines.append)
    assert res, "no backend could run"
    bad = [(b, k, t) for b, kinds in res.items() for k, t in kinds.items()
           if t.failures or t.partial_after_next or t.trials != 4]
    assert not bad, f"seed {seed}:\n{table(res)}\n" + "\n".join(lines)
