"""``vnetfw demo``: build a sandbox, apply a fixed mix of networks, prove the policy.

Contract: ``run(backend, profile, json)`` builds a ``Lab`` (namespaces of its own only;
the namespace it is started in is never changed), applies ``DEMO_NETWORKS`` with the engine
inside the lab's hypervisor namespace (state kept in a temporary directory), probes the
traffic matrix, prints it (``rich`` tables, or one JSON document with ``json=True``) and
returns 0 if every probe matched the policy, 1 otherwise (2 if the lab could not be built
or the rules could not be applied). Everything is removed before it returns.
"""

from __future__ import annotations

import json as jsonlib
import os
import sys
import tempfile
import time

from ..errors import VnetfwError
from ..sources.toml import parse_toml
from . import matrix
from .topology import UPLINK0, UPLINK1, Lab

DEMO_TOML = """
[[network]]                       # NAT for IPv4 and IPv6
name = "nat46"
bridge = "virbr-nat46"
mode = "nat"
nat = { ipv6 = true }
ip = [{ address = "192.168.100.1", prefix = 24 }, { address = "2001:db8:100::1", prefix = 64 }]

[[network]]                       # NAT through uplink0 only; its IPv6 subnet is routed
name = "natdev"
bridge = "virbr-natdev"
mode = "nat"
forward_dev = "uplink0"
ip = [{ address = "192.168.101.1", prefix = 24 }, { address = "2001:db8:101::1", prefix = 64 }]

[[network]]
name = "routed"
bridge = "virbr-routed"
mode = "route"
ip = [{ address = "192.168.110.1", prefix = 24 }, { address = "2001:db8:110::1", prefix = 64 }]

[[network]]
name = "isolated"
bridge = "virbr-iso"
mode = "isolated"
ip = [{ address = "192.168.120.1", prefix = 24 }, { address = "2001:db8:120::1", prefix = 64 }]

[[network]]                       # no rules at all: the others' rules still apply to it
name = "open"
bridge = "virbr-open"
mode = "open"
ip = [{ address = "192.168.130.1", prefix = 24 }, { address = "2001:db8:130::1", prefix = 64 }]
"""
DEMO_NETWORKS = parse_toml(DEMO_TOML, source="<demo>")


def run(backend: str = "auto", profile: str = "default", json: bool = False) -> int:
    from ..engine import Engine

    if os.geteuid() != 0:
        print("vnetfw demo: needs root (it creates network namespaces)", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="vnetfw-demo-") as state, \
                Lab(DEMO_NETWORKS, uplinks=(UPLINK0, UPLINK1)) as lab:
            built = time.monotonic() - t0
            # No hooks: the host's /etc/vnetfw/hooks.d must not run for a sandbox.
            eng = Engine(backend=backend, profile=profile, netns=lab.require_hv().name,
                         state_dir=state, hooks_dir=os.path.join(state, "no-hooks"))
            rep = eng.apply(DEMO_NETWORKS)
            res = matrix.run(lab, profile)
            info = lab.info()
    except (VnetfwError, RuntimeError, OSError) as e:
        print(f"vnetfw demo: {e}", file=sys.stderr)
        return 2
    total = time.monotonic() - t0
    if json:
        from ..output import SCHEMA_VERSION
        doc = {"schema_version": SCHEMA_VERSION, "command": "demo", "backend": rep.backend, "profile": profile, "lab": info,
               "timing": {"build": round(built, 3), "matrix": round(res.elapsed, 3),
                          "total": round(total, 3)},
               "networks": [n.to_dict() for n in DEMO_NETWORKS], **res.to_json()}
        jsonlib.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        from .report import print_result
        print_result(res, DEMO_NETWORKS, backend=rep.backend, profile=profile, info=info,
                     timing=(built, res.elapsed, total))
    return 0 if res.ok else 1
