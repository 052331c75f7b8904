"""migrate folded into the backend's restore: one script per family that first deletes the
old rules (by spec), then does what the backend computed against the state those deletions
leave -- checked by executing the filter script on the FORWARD chain, without a kernel."""

from __future__ import annotations

from vnetfw.backends.iptables import IptablesBackend, IptLive, parse_save
from vnetfw.backends.runner import Runner
from vnetfw.migrate_run import FoldingBackend
from vnetfw.plan import PROFILES, plan
from vnetfw.sources.toml import parse_toml

NETS = parse_toml("""
[[network]]
name = "default"
bridge = "virbr0"
mode = "nat"
ip = [{ address = "192.168.122.1", prefix = 24 }]
""", "n.toml")

V4 = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -d 192.168.122.0/24 -o virbr0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -i eth9 -o eth8 -j ACCEPT
-A FORWARD -i virbr0 -j REJECT --reject-with icmp-port-unreachable
COMMIT
"""


def run_chain(rules: list[str], script: str, chain: str) -> list[str]:
    out = list(rules)
    for line in script.splitlines():
        if not line.startswith(("-D ", "-I ", "-A ")) or line.split()[1] != chain:
            continue
        op, _, rest = line.split(" ", 2)
        if op == "-A":
            out.append(rest)
        elif op == "-I":
            n, _, args = rest.partition(" ")
            out.insert(int(n) - 1, args)
        elif rest.isdigit():
            del out[int(rest) - 1]
        else:
            out.remove(rest)                # by spec: the first identical rule
    return out


def test_one_script_deletes_old_rules_then_applies():
    live = IptLive({4: parse_save(V4), 6: {}})
    inner = IptablesBackend(Runner(None), "iptables-nft")
    fb = FoldingBackend(inner, "iptables-nft", list(NETS), ("old",), False)
    cs = fb.changes(live, plan(NETS, PROFILES["default"]), "full")
    script = inner.script(cs, 4)
    lines = script.splitlines()
    # the old rules go first, right after the table header and chain declarations
    first_edit = next(i for i, l in enumerate(lines) if l.startswith(("-D", "-I", "-A")))
    assert lines[first_edit].startswith("-D FORWARD -d 192.168.122.0/24")
    assert lines[first_edit + 1] == ("-D FORWARD -i virbr0 -j REJECT --reject-with "
                                     "icmp-port-unreachable")
    assert all(l.startswith(":") for l in lines[1:first_edit])
    fwd = run_chain(live.tables[4]["filter"].chains["FORWARD"], script, "FORWARD")
    assert [f.replace("\"", "") for f in fwd] == ["-m comment --comment vnetfw -j VNETFW_FWX",
                   "-m comment --comment vnetfw -j VNETFW_FWI",
                   "-m comment --comment vnetfw -j VNETFW_FWO",
                   "-i eth9 -o eth8 -j ACCEPT"]
    assert [c.what for c in cs.items[:2]] == ["delete", "delete"]
    assert {c.network for c in cs.items[:2]} == {"default"}
    # the snapshot the commit's undo works from is the real one, not the simulated one
    assert len(live.tables[4]["filter"].chains["FORWARD"]) == 3
