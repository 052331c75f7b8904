"""migrate's fold, against a FakeRunner: in the flavour vnetfw writes, the old layout's
rules go in the very restore that puts vnetfw's in, one per family, so there is no moment
without filtering (the real kernel: tests/netns/test_migrate.py)."""

from __future__ import annotations

from tests.fakes import FakeRunner
from vnetfw.backends.iptables import IptablesBackend, IptLive, parse_save
from vnetfw.migrate_run import FoldingBackend
from vnetfw.plan import PROFILES, plan
from vnetfw.sources.toml import parse_toml

NETS = parse_toml("""
[[network]]
name = "default"
bridge = "virbr0"
mode = "nat"
ip = [{ address = "192.168.122.1", prefix = 24, dhcp = true }]
""", "default.toml")

SAVE4 = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A FORWARD -o virbr0 -j REJECT --reject-with icmp-port-unreachable
-A FORWARD -i virbr0 -j REJECT --reject-with icmp-port-unreachable
-A FORWARD -i virbr9 -j REJECT --reject-with icmp-port-unreachable
COMMIT
"""


def folding(answers=None) -> tuple[FoldingBackend, FakeRunner]:
    runner = FakeRunner(answers or {})
    inner = IptablesBackend(runner, flavour="iptables-nft")     # type: ignore[arg-type]
    return FoldingBackend(inner, "iptables-nft", list(NETS), ("old",), False), runner


def test_the_old_rules_go_in_the_same_restore_as_the_new_ones_come():
    b, runner = folding({("iptables-nft-restore", "-w", "--noflush"): "",
                         ("ip6tables-nft-restore", "-w", "--noflush"): ""})
    live = IptLive({4: parse_save(SAVE4), 6: {}})
    cs = b.changes(live, plan(NETS, PROFILES["default"]), "full")
    assert b.findings is not None
    gone = sorted(d.args for d in b.findings.deleted)
    assert gone == ["-i virbr0 -j REJECT --reject-with icmp-port-unreachable",
                    "-o virbr0 -j REJECT --reject-with icmp-port-unreachable"]
    b.commit(live, cs)
    restores = [(argv[0], stdin) for argv, stdin in runner.ran]
    assert [name for name, _ in restores] == ["iptables-nft-restore", "ip6tables-nft-restore"]
    filter4 = restores[0][1].split("*filter\n", 1)[1].split("COMMIT\n", 1)[0]
    # one table, one COMMIT: the old rules' deletion and vnetfw's chains and jumps
    assert "-D FORWARD -i virbr0 -j REJECT --reject-with icmp-port-unreachable" in filter4
    assert ":VNETFW_FWI - [0:0]" in filter4 and "-j VNETFW_FWI" in filter4
    assert "virbr9" not in restores[0][1] and "dport 22" not in restores[0][1]
    assert len([c for c in cs.items if c.what == "delete" and "old" in c.detail]) == 2


def test_setup_and_teardown_are_not_folded():
    b, _ = folding()
    live = IptLive({4: parse_save(SAVE4), 6: {}})
    cs = b.changes(live, plan(NETS, PROFILES["default"]), "setup")
    assert b.findings is None and not any("old" in c.detail for c in cs.items)
