"""iptables backend, pure parts: Rule <-> iptables arguments, iptables-save parsing, render.

The parser must read back exactly what iptables-save prints for our rules (its canonical
spelling: implicit ``-m udp``, default ``--reject-with``, ``/32``...), and must turn anything it
does not fully understand into ``Foreign`` rather than guess.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from vnetfw.backends.iptables import (Foreign, IptablesBackend, IptLive, TableDump, parse_rule,
                                      parse_save, render_rule)
from vnetfw.backends.runner import Runner
from vnetfw.errors import BackendError
from vnetfw.plan import PROFILES, plan
from vnetfw.ruleset import CT_REPLY, LAYOUT, Rule, Ruleset
from vnetfw.sources import load_paths

LIBVIRT = Path(__file__).resolve().parent.parent / "fixtures" / "libvirt"
CASES = sorted(p.stem for p in LIBVIRT.glob("*.xml"))


class SaveRunner(Runner):
    """``iptables-save`` prints ``save``; every restore's input is kept in ``restored`` (one
    starting with ``refuse`` fails, as a refused restore would)."""

    def __init__(self, save: str, refuse: str | None = None) -> None:
        super().__init__(None)
        self.save, self.refuse, self.restored = save, refuse, []

    def run(self, argv, stdin=None, *, check=True):
        if argv[0].endswith("-save"):
            return self.save
        self.restored.append(stdin)
        if self.refuse is not None and stdin.startswith(self.refuse):
            raise BackendError("iptables-restore failed: chain in use")
        return ""


def R(chain="FWI", verdict="ACCEPT", family=4, table="filter", network="net1", **kw) -> Rule:
    return Rule(family=family, table=table, chain=chain, network=network, verdict=verdict, **kw)


# ---------------------------------------------------------------------------------------------
# render_rule: exact text

@pytest.mark.parametrize("rule, text", [
    (R("INP", iif="virbr0", proto="udp", dport=53),
     '-i virbr0 -p udp -m udp --dport 53 -m comment --comment "vnetfw:net1" -j ACCEPT'),
    (R("FWI", dst="192.168.122.0/24", iif="eth0", oif="virbr0", ctstate=CT_REPLY),
     '-d 192.168.122.0/24 -i eth0 -o virbr0 -m conntrack --ctstate RELATED,ESTABLISHED '
     '-m comment --comment "vnetfw:net1" -j ACCEPT'),
    (R("FWO", "REJECT", family=6, iif="virbr0"),
     '-i virbr0 -m comment --comment "vnetfw:net1" -j REJECT --reject-with icmp6-port-unreachable'),
    (R("FWI", "REJECT", oif="virbr0"),
     '-o virbr0 -m comment --comment "vnetfw:net1" -j REJECT --reject-with icmp-port-unreachable'),
    (R("PRT", "MASQUERADE", table="nat", src="10.0.0.0/24", dst="10.0.0.0/24", dst_neg=True,
       proto="udp", to_ports=(5000, 5000)),
     '-s 10.0.0.0/24 ! -d 10.0.0.0/24 -p udp -m comment --comment "vnetfw:net1" '
     '-j MASQUERADE --to-ports 5000'),
    (R("PRT", "MASQUERADE", table="nat", src="10.0.0.0/24", dst="10.0.0.0/24", dst_neg=True,
       proto="tcp", to_ports=(1024, 65535)),
     '-s 10.0.0.0/24 ! -d 10.0.0.0/24 -p tcp -m comment --comment "vnetfw:net1" '
     '-j MASQUERADE --to-ports 1024-65535'),
    (R("PRT", "SNAT", table="nat", src="10.0.0.0/24", dst="10.0.0.0/24", dst_neg=True,
       oif="eth0", proto="udp", to_source="203.0.113.1-203.0.113.9", to_ports=(2000, 3000)),
     '-s 10.0.0.0/24 ! -d 10.0.0.0/24 -o eth0 -p udp -m comment --comment "vnetfw:net1" '
     '-j SNAT --to-source 203.0.113.1-203.0.113.9:2000-3000'),
    (R("PRT", "SNAT", table="nat", src="10.0.0.0/24", to_source="203.0.113.1"),
     '-s 10.0.0.0/24 -m comment --comment "vnetfw:net1" -j SNAT --to-source 203.0.113.1'),
    (R("PRT", "RETURN", table="nat", family=6, src="fd00::/64", dst="ff02::/16"),
     '-s fd00::/64 -d ff02::/16 -m comment --comment "vnetfw:net1" -j RETURN'),
    (R("PRT", "CHECKSUM", table="mangle", oif="virbr0", proto="udp", dport=68),
     '-o virbr0 -p udp -m udp --dport 68 -m comment --comment "vnetfw:net1" '
     '-j CHECKSUM --checksum-fill'),
], ids=["service", "reply", "reject6", "reject4", "one-port", "masquerade", "snat-range-ports", "snat-one", "return6",
        "checksum"])
def test_render_rule(rule, text):
    assert render_rule(rule) == text
    assert parse_rule(text, rule.family, rule.table, rule.chain) == rule


# ---------------------------------------------------------------------------------------------
# parse_rule reads iptables-save's canonical spelling

def _with_comment(args: str, network: str = "default") -> str:
    """A reference rule as iptables-save prints it once vnetfw's comment is on it."""
    head, _, tail = args.partition(" -j ")
    return f'{head} -m comment --comment "vnetfw:{network}" -j {tail}'


@pytest.mark.parametrize("case", CASES)
def test_parse_rule_reads_every_reference_rule_as_planned(case):
    rs = plan(load_paths([LIBVIRT / f"{case}.xml"]), PROFILES["libvirt"])
    for fam in (4, 6):
        ref = parse_save((LIBVIRT / f"{case}.iptables-save.v{fam}").read_text())
        for spec in LAYOUT:
            saved = ref[spec.table].chains[f"LIBVIRT_{spec.suffix}"]
            parsed = [parse_rule(_with_comment(a), fam, spec.table, spec.suffix) for a in saved]
            assert parsed == list(rs.chain(fam, spec.table, spec.suffix)), \
                f"ipv{fam} {spec.table} {spec.suffix}"


@pytest.mark.parametrize("args, expect", [
    ('-s 10.0.0.1/32 -m comment --comment "vnetfw:n" -j ACCEPT', {"src": "10.0.0.1/32"}),
    ('-s 10.0.0.1 -m comment --comment "vnetfw:n" -j ACCEPT', {"src": "10.0.0.1/32"}),
    ('-d 10.0.0.7/24 -m comment --comment "vnetfw:n" -j ACCEPT', {"dst": "10.0.0.0/24"}),
    ('-m conntrack --ctstate ESTABLISHED,RELATED -m comment --comment "vnetfw:n" -j ACCEPT',
     {"ctstate": CT_REPLY}),
    ('-m comment --comment vnetfw:n -j REJECT --reject-with icmp-port-unreachable', {}),
], ids=["cidr32", "bare-address", "host-bits", "ctstate-order", "unquoted-comment"])
def test_parse_rule_canonicalises(args, expect):
    verdict = args.split(" -j ")[1].split()[0]
    assert parse_rule(args, 4, "filter", "FWI") == R("FWI", verdict, network="n", **expect)


def test_parse_rule_reject_default_is_per_family():
    v6 = "-m comment --comment vnetfw:n -j REJECT --reject-with icmp6-port-unreachable"
    assert parse_rule(v6, 6, "filter", "FWO") == R("FWO", "REJECT", family=6, network="n")
    assert isinstance(parse_rule(v6, 4, "filter", "FWO"), Foreign)


@pytest.mark.parametrize("args", [
    "-i virbr0 -j ACCEPT",                                                    # no owner
    '-i virbr0 -m comment --comment "admin rule" -j ACCEPT',                 # someone else's
    '-i virbr0 -m comment --comment "vnetfw:" -j ACCEPT',                    # no network
    '-i virbr0 -m state --state NEW -m comment --comment "vnetfw:n" -j ACCEPT',
    '-i virbr0 -p tcp -m tcp --sport 22 -m comment --comment "vnetfw:n" -j ACCEPT',
    '! -s 10.0.0.0/8 -m comment --comment "vnetfw:n" -j ACCEPT',             # only ! -d is ours
    '! -i virbr0 -m comment --comment "vnetfw:n" -j ACCEPT',
    '-m comment --comment "vnetfw:n" -j REJECT --reject-with tcp-reset',
    '-m comment --comment "vnetfw:n -j ACCEPT',                              # unbalanced quote
    '-i virbr0 -m comment --comment "vnetfw:n"',                             # no verdict
    '-p tcp -m tcp --dport ssh -m comment --comment "vnetfw:n" -j ACCEPT',   # not a number
    '-s not-an-address -m comment --comment "vnetfw:n" -j ACCEPT',
    '-i virbr0 -m comment --comment "vnetfw:n" -j',                          # dangling -j
])
def test_parse_rule_anything_not_fully_understood_is_foreign(args):
    got = parse_rule(args, 4, "filter", "FWI")
    assert got == Foreign(args)


def test_checksum_rule_is_optional_after_a_round_trip():
    rule = R("PRT", "CHECKSUM", table="mangle", oif="virbr0", proto="udp", dport=68)
    back = parse_rule(render_rule(rule), 4, "mangle", "PRT")
    assert back.optional is True and back == rule
    assert not R("FWI", "REJECT", oif="virbr0").optional


# ---------------------------------------------------------------------------------------------
# parse_save

SAVE = """\
# Generated by iptables-nft-save v1.8.9 (nf_tables) on Mon Jan  1 00:00:00 2024
*filter
:INPUT ACCEPT [10:600]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [5:300]
:ADMIN - [0:0]
:VNETFW_FWX - [0:0]
[3:180] -A INPUT -s 192.0.2.0/24 -j ADMIN
[0:0] -A FORWARD -m comment --comment vnetfw -j VNETFW_FWX
[0:0] -A VNETFW_FWX -i virbr0 -o virbr0 -m comment --comment "vnetfw:n" -j ACCEPT
COMMIT
# Completed on Mon Jan  1 00:00:00 2024
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
COMMIT
"""


def test_parse_save():
    tables = parse_save(SAVE)
    assert list(tables) == ["filter", "nat"]
    f = tables["filter"]
    assert f.policies == {"INPUT": "ACCEPT", "FORWARD": "DROP", "OUTPUT": "ACCEPT",
                          "ADMIN": "-", "VNETFW_FWX": "-"}
    assert f.chains == {
        "INPUT": ["-s 192.0.2.0/24 -j ADMIN"],
        "FORWARD": ["-m comment --comment vnetfw -j VNETFW_FWX"],
        "OUTPUT": [], "ADMIN": [],
        "VNETFW_FWX": ['-i virbr0 -o virbr0 -m comment --comment "vnetfw:n" -j ACCEPT'],
    }
    # The table text is kept verbatim (counters included): an undo puts rules back with them.
    assert f.text.startswith("*filter\n:INPUT ACCEPT [10:600]\n") and f.text.endswith("COMMIT\n")
    assert "[3:180] -A INPUT -s 192.0.2.0/24 -j ADMIN" in f.text
    assert "#" not in f.text
    assert tables["nat"].chains == {"PREROUTING": [], "POSTROUTING": []}


def test_live_ruleset_reads_only_our_chains_and_skips_foreign_rules():
    live = IptLive({4: parse_save(SAVE), 6: {}})
    be = IptablesBackend(Runner())
    assert be.live_ruleset(live, "VNETFW") == Ruleset.canonical("VNETFW", [
        R("FWX", iif="virbr0", oif="virbr0", network="n")])
    assert be.live_ruleset(live, "LIBVIRT").rules == ()


# ---------------------------------------------------------------------------------------------
# render: pure, and exactly what the restore would load on an empty system

class NoRun(Runner):
    def run(self, argv, stdin=None, *, check=True):
        raise AssertionError(f"render must not run commands (ran {argv})")


def test_render_runs_nothing_and_names_each_family():
    be = IptablesBackend(NoRun(), flavour="iptables-legacy")
    text = be.render(plan(load_paths([LIBVIRT / "nat-ipv6.xml"]), PROFILES["default"]))
    assert text.startswith("# ipv4: iptables-legacy-restore --noflush\n*filter\n")
    assert "\n# ipv6: ip6tables-legacy-restore --noflush\n*filter\n" in text


def test_render_of_an_empty_plan_is_the_chain_setup():
    text = IptablesBackend(NoRun()).render(plan([], PROFILES["libvirt"]), 4)
    assert text == (
        "*filter\n"
        ":LIBVIRT_INP - [0:0]\n:LIBVIRT_OUT - [0:0]\n:LIBVIRT_FWX - [0:0]\n"
        ":LIBVIRT_FWI - [0:0]\n:LIBVIRT_FWO - [0:0]\n"
        '-I INPUT 1 -m comment --comment "vnetfw" -j LIBVIRT_INP\n'
        '-I OUTPUT 1 -m comment --comment "vnetfw" -j LIBVIRT_OUT\n'
        '-I FORWARD 1 -m comment --comment "vnetfw" -j LIBVIRT_FWO\n'
        '-I FORWARD 1 -m comment --comment "vnetfw" -j LIBVIRT_FWI\n'
        '-I FORWARD 1 -m comment --comment "vnetfw" -j LIBVIRT_FWX\n'
        "COMMIT\n"
        "*nat\n:LIBVIRT_PRT - [0:0]\n"
        '-I POSTROUTING 1 -m comment --comment "vnetfw" -j LIBVIRT_PRT\nCOMMIT\n'
        "*mangle\n:LIBVIRT_PRT - [0:0]\n"
        '-I POSTROUTING 1 -m comment --comment "vnetfw" -j LIBVIRT_PRT\nCOMMIT\n')


def test_rendered_text_reads_back_as_the_plan():
    # What render writes, parsed as iptables-save would show it, is the planned ruleset.
    rs = plan(load_paths([LIBVIRT / "nat-port-range-ipv6.xml"]), PROFILES["default"])
    be = IptablesBackend(NoRun())
    live = IptLive({fam: parse_save(be.render(rs, fam)) for fam in (4, 6)})
    assert be.live_ruleset(live, rs.prefix) == rs


def test_unknown_backend_name():
    from vnetfw.backends import get_backend
    with pytest.raises(BackendError, match="unknown backend"):
        get_backend("ipchains", Runner())


# ---------------------------------------------------------------------------------------------
# changes(..., "setup") on a synthetic live ruleset: the outcome of the edits, simulated.

def _filter_live(rules: list[str]) -> IptLive:
    chains = ("VNETFW_INP", "VNETFW_OUT", "VNETFW_FWX", "VNETFW_FWI", "VNETFW_FWO")
    text = ("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
            + "".join(f":{c} - [0:0]\n" for c in chains)
            + "".join(f"-A {r}\n" for r in rules) + "COMMIT\n")
    return IptLive({4: parse_save(text), 6: {}})


def _after(live: IptLive, script: str, table: str = "filter") -> dict[str, list[str]]:
    """Apply the -D/-I/-A lines of ``script`` for ``table`` to ``live``: the chains after."""
    chains = {c: list(r) for c, r in live.tables[4][table].chains.items()}
    cur = None
    for line in script.splitlines():
        if line.startswith("*"):
            cur = line[1:]
        elif cur == table and line.startswith(("-D ", "-I ", "-A ")):
            op, chain, rest = line.split(" ", 2)
            if op == "-A":
                chains[chain].append(rest)
            else:
                n, _, rule = rest.partition(" ")
                if op == "-D":      # by number, or the first rule equal to the text
                    del chains[chain][int(n) - 1 if n.isdigit() else chains[chain].index(rest)]
                else:
                    chains[chain].insert(int(n) - 1, rule)
    return chains


def _targets(rules: list[str]) -> list[str]:
    return [r.rsplit("-j ", 1)[1] for r in rules]


JUMP = "-m comment --comment vnetfw -j "
SETUP = plan([], PROFILES["default"])


def test_setup_keeps_an_admin_rule_above_the_jumps():
    live = _filter_live(["INPUT -s 192.0.2.1/32 -j DROP", f"INPUT {JUMP}VNETFW_INP",
                         f"FORWARD {JUMP}VNETFW_FWX", f"FORWARD {JUMP}VNETFW_FWI",
                         f"FORWARD {JUMP}VNETFW_FWO", f"OUTPUT {JUMP}VNETFW_OUT"])
    be = IptablesBackend(NoRun())
    script = be.script(be.changes(live, SETUP, "setup"), 4)
    assert "*nat\n" in script and "*filter\n" not in script    # only the missing PRT chains


def test_setup_repairs_the_forward_jump_order_and_leaves_other_rules_alone():
    live = _filter_live(["FORWARD -i eth9 -j DROP", f"FORWARD {JUMP}VNETFW_FWI",
                         f"FORWARD {JUMP}VNETFW_FWX", "FORWARD -o eth9 -j DROP",
                         f"FORWARD {JUMP}VNETFW_FWO", f"INPUT {JUMP}VNETFW_INP",
                         f"OUTPUT {JUMP}VNETFW_OUT"])
    be = IptablesBackend(NoRun())
    cs = be.changes(live, SETUP, "setup")
    forward = _after(live, be.script(cs, 4))["FORWARD"]
    assert [t for t in _targets(forward) if t.startswith("VNETFW")] == \
        ["VNETFW_FWX", "VNETFW_FWI", "VNETFW_FWO"]
    assert [r for r in forward if "eth9" in r] == ["-i eth9 -j DROP", "-o eth9 -j DROP"]
    assert forward.index("-i eth9 -j DROP") == 0          # still above every jump


def test_setup_drops_duplicate_jumps_and_adds_missing_ones():
    live = _filter_live([f"INPUT {JUMP}VNETFW_INP", f"INPUT {JUMP}VNETFW_INP",
                         f"FORWARD {JUMP}VNETFW_FWX", f"FORWARD {JUMP}VNETFW_FWO",
                         "OUTPUT -j VNETFW_OUT"])            # a plain jump counts as ours
    be = IptablesBackend(NoRun())
    after = _after(live, be.script(be.changes(live, SETUP, "setup"), 4))
    assert _targets(after["INPUT"]) == ["VNETFW_INP"]
    assert _targets(after["FORWARD"]) == ["VNETFW_FWX", "VNETFW_FWI", "VNETFW_FWO"]
    assert after["OUTPUT"] == ["-j VNETFW_OUT"]


def test_a_jump_with_extra_matches_is_the_admins_not_ours():
    live = _filter_live([f"INPUT -i eth0 {JUMP}VNETFW_INP"])
    be = IptablesBackend(NoRun())
    after = _after(live, be.script(be.changes(live, SETUP, "setup"), 4))
    assert after["INPUT"][1:] == [f"-i eth0 {JUMP}VNETFW_INP"]   # kept, ours added on top
    assert _targets(after["INPUT"][:1]) == ["VNETFW_INP"]


# ---------------------------------------------------------------------------------------------
# Network blocks: kept in the order they stand live; a new network is appended (-A only)

def _nets(*names_ips):
    from vnetfw.sources.toml import parse_toml
    text = "".join(f'[[network]]\nname = "{n}"\nbridge = "br-{n}"\nmode = "nat"\n'
                   f'ip = [{{ address = "{ip}", prefix = 24, dhcp = true }}]\n'
                   for n, ip in names_ips)
    return parse_toml(text, "t.toml")


def _apply_edits(live: IptLive, cs) -> IptLive:
    """What the restore would make of ``live`` (chains, -A/-I by index, -D by index or by
    text), simulated."""
    for fam in (4, 6):
        for table, ed in cs.payload.get(fam, {}).items():
            dump = live.tables[fam].setdefault(table, TableDump())
            for c in ed.new_chains:
                dump.chains.setdefault(c, [])
            for line in ed.lines:
                op, chain, rest = line.split(" ", 2)
                rules = dump.chains.setdefault(chain, [])
                if op == "-A":
                    rules.append(rest)
                elif op == "-I":
                    pos, args = rest.split(" ", 1)
                    rules.insert(int(pos) - 1, args)
                elif op == "-D":
                    del rules[int(rest) - 1 if rest.isdigit() else rules.index(rest)]
    return live


def _live_of(be, rs) -> IptLive:
    return _apply_edits(IptLive.empty(), be.changes(IptLive.empty(), rs, "full"))


def test_a_network_sorting_first_is_appended_not_inserted():
    be = IptablesBackend(NoRun())
    old = _nets(("m", "10.0.1.1"), ("z", "10.0.2.1"))
    new = _nets(("a", "10.0.3.1"))
    live = _live_of(be, plan(old, PROFILES["default"]))
    cs = be.changes(live, plan(old + new, PROFILES["default"]), "full")
    lines = [l for eds in cs.payload.values() for ed in eds.values() for l in ed.lines]
    assert lines and all(l.startswith("-A VNETFW_") and '"vnetfw:a"' in l for l in lines)


def test_blocks_in_another_order_than_the_plan_are_no_change():
    be = IptablesBackend(NoRun())
    nets = _nets(("a", "10.0.1.1"), ("b", "10.0.2.1"), ("c", "10.0.3.1"))
    prof = PROFILES["default"]
    live = IptLive.empty()
    for k in (["c"], ["c", "a"], ["c", "a", "b"]):        # applied c, then a, then b
        _apply_edits(live, be.changes(live, plan([n for n in nets if n.name in k], prof), "full"))
    fwo = live.tables[4]["filter"].chains["VNETFW_FWO"]
    assert [a.split('"vnetfw:')[1][0] for a in fwo] == ["c", "c", "a", "a", "b", "b"]
    assert be.changes(live, plan(nets, prof), "full").empty
    assert be.live_ruleset(live, "VNETFW") == plan(nets, prof)     # read back by name
    # a changed network is edited where it stands
    changed = [n if n.name != "a" else replace(n, bridge="br-a2") for n in nets]
    cs = be.changes(live, plan(changed, prof), "full")
    lines = cs.payload[4]["filter"].lines
    assert "-D VNETFW_FWO 3" in lines and "-D VNETFW_FWO 4" not in lines
    assert any(l.startswith("-I VNETFW_FWO 3 ") and "br-a2" in l for l in lines)
    _apply_edits(live, cs)
    assert be.changes(live, plan(changed, prof), "full").empty


def test_undo_of_appends_deletes_by_rule_spec_and_reports_a_partial_table():
    """After a failed restore from ``assumed_live``: a table holding all its appended rules
    gets them deleted by rule spec (robust to anything that moved), one holding none was
    never committed, and one holding only some is reported."""
    from vnetfw.backends import ChangeSet
    from vnetfw.backends.iptables import TableEdit

    a1 = '-i br-x -m comment --comment "vnetfw:x" -j REJECT --reject-with icmp-port-unreachable'
    a2 = '-o br-x -m comment --comment "vnetfw:x" -j REJECT --reject-with icmp-port-unreachable'
    a3 = '-s 10.9.0.0/24 -m comment --comment "vnetfw:x" -j RETURN'

    # filter has both, mangle one of two, nat none
    runner = SaveRunner("*filter\n:VNETFW_FWO - [0:0]\n:VNETFW_FWI - [0:0]\n"
                        f"-A VNETFW_FWO -i other -j ACCEPT\n-A VNETFW_FWO {a1}\n"
                        f"-A VNETFW_FWI {a2}\nCOMMIT\n*nat\n:VNETFW_PRT - [0:0]\nCOMMIT\n"
                        f"*mangle\n:VNETFW_PRT - [0:0]\n-A VNETFW_PRT {a3}\nCOMMIT\n")
    be = IptablesBackend(runner, flavour="iptables-legacy")
    cs = ChangeSet([], {4: {
        "filter": TableEdit(lines=[f"-A VNETFW_FWO {a1}", f"-A VNETFW_FWI {a2}"]),
        "nat": TableEdit(lines=[f"-A VNETFW_PRT {a3}"]),
        "mangle": TableEdit(lines=[f"-A VNETFW_PRT {a3}", f"-A VNETFW_PRT {a1}"])}})
    problems = be._undo_appends(cs, [4])
    assert problems == ["ipv4 mangle: 1 of 2 appended rules found"]
    assert runner.restored == [f"*filter\n-D VNETFW_FWI {a2}\n-D VNETFW_FWO {a1}\nCOMMIT\n"
                               f"*mangle\n-D VNETFW_PRT {a3}\nCOMMIT\n"]


def test_fresh_scripts_are_the_diffed_change_split_by_restore():
    """A vacant firewall's streamed scripts (``_Fresh``): every table in exactly one
    restore, the streamed pieces add up to the whole script, and each table's text is what
    the read-diff-commit path would send for it."""
    from vnetfw.backends.iptables import _STREAMS, _Fresh
    from vnetfw.ruleset import TABLES

    assert sorted(t for group in _STREAMS for t in group) == sorted(TABLES)
    rs = plan(load_paths([LIBVIRT / "nat-ipv6.xml"]),
              PROFILES["default"])
    be = IptablesBackend(Runner(None), flavour="iptables-nft")
    live = IptLive.empty()
    expected = be.changes(live, rs, "full").payload
    fresh = _Fresh(live, rs.prefix)
    streamed = {g[0]: fresh.head(g) for g in _STREAMS}
    for _, rules in rs.by_network():
        for table, text in fresh.network(rules).items():
            streamed[table] += text
    for fam in (4, 6):
        want = "".join(expected[fam][t].script(t) for g in _STREAMS for t in g)
        assert fresh.script(fam) == want
    assert "".join(streamed[g[0]] + fresh.tail(4, g) for g in _STREAMS) == fresh.script(4)


def test_undo_of_a_vacant_load_deletes_only_ours_table_by_table():
    """``_undo_fresh``: every jump to one of our chains (a duplicate too) by its own text,
    our chains flushed and deleted, nothing else; one restore per table, so a table that
    cannot be cleaned is reported and the others are still cleaned."""
    jump = '-m comment --comment vnetfw -j VNETFW_FWX'

    runner = SaveRunner("*filter\n:FORWARD ACCEPT [0:0]\n:VNETFW_FWX - [0:0]\n:ADMIN - [0:0]\n"
                        f"-A FORWARD {jump}\n-A FORWARD -i eth0 -j ADMIN\n-A FORWARD {jump}\n"
                        "-A FORWARD -j VNETFW_FWX\n-A FORWARD -s 10.0.0.0/8 -j VNETFW_FWX\n"
                        "-A VNETFW_FWX -i br0 -j ACCEPT\nCOMMIT\n"
                        "*nat\n:POSTROUTING ACCEPT [0:0]\n:VNETFW_PRT - [0:0]\n"
                        "-A POSTROUTING -m comment --comment vnetfw -j VNETFW_PRT\nCOMMIT\n",
                        refuse="*filter")
    problems = IptablesBackend(runner, flavour="iptables-nft")._undo_fresh("VNETFW", [4])
    assert problems == ["ipv4 filter: iptables-restore failed: chain in use"]
    assert runner.restored == [
        f"*filter\n-D FORWARD {jump}\n-D FORWARD {jump}\n-D FORWARD -j VNETFW_FWX\n"
        "-F VNETFW_FWX\n-X VNETFW_FWX\nCOMMIT\n",
        "*nat\n-D POSTROUTING -m comment --comment vnetfw -j VNETFW_PRT\n"
        "-F VNETFW_PRT\n-X VNETFW_PRT\nCOMMIT\n"]


def test_an_undo_interrupted_again_is_reported_not_lost():
    """Ctrl-C a second time while a failed vacant load is being undone: the undo stops,
    and what it means comes back as a problem (the caller raises RollbackIncomplete with
    it) instead of a bare KeyboardInterrupt that hides the half-undone firewall."""

    class Interrupted(SaveRunner):
        def run(self, argv, stdin=None, *, check=True):
            if not argv[0].endswith("-save"):
                raise KeyboardInterrupt
            return super().run(argv, stdin, check=check)

    runner = Interrupted("*filter\n:FORWARD ACCEPT [0:0]\n:VNETFW_FWX - [0:0]\n"
                         "-A FORWARD -m comment --comment vnetfw -j VNETFW_FWX\nCOMMIT\n")
    problems = IptablesBackend(runner, flavour="iptables-nft")._undo_fresh("VNETFW", [4, 6])
    assert problems == ["undo interrupted (KeyboardInterrupt): vnetfw's chains may be left; "
                        "'vnetfw teardown' takes them out"]


# ---------------------------------------------------------------------------------------------
# Port forwards and allows (docs/port-forwards.md): their chains, rules and readback

FWD_TOML = '''
[[network]]
name = "web"
bridge = "br-web"
mode = "nat"
nat = { ipv6 = true }
ip = [{ address = "10.30.1.1", prefix = 24 }, { address = "fd30:1::1", prefix = 64 }]
[[network.port_forward]]
proto = "tcp"
port = "2200-2201"
to = "10.30.1.10"
to_port = "22-23"
[[network.port_forward]]
proto = "udp"
port = 53
to = "fd30:1::10"
host_address = "2001:db8::5"
source = ["2001:db8:1::/48"]
[[network.allow]]
to = "db"
ports = ["tcp/5432-5433"]
[[network]]
name = "db"
bridge = "br-db"
mode = "route"
ip = [{ address = "10.30.5.1", prefix = 24 }]
'''


def _forward_ruleset(profile="default") -> Ruleset:
    from vnetfw.sources.toml import parse_toml
    return plan(parse_toml(FWD_TOML, "fwd.toml"), PROFILES[profile])


@pytest.mark.parametrize("rule, text", [
    (R("DNAT", "DNAT", table="nat", proto="tcp", dport=2200, to_addr="10.30.1.10", to_port=22),
     '! -d 127.0.0.0/8 -p tcp -m addrtype --dst-type LOCAL -m tcp --dport 2200 '
     '-m comment --comment "vnetfw:net1" -j DNAT --to-destination 10.30.1.10:22'),
    (R("DNAT", "DNAT", family=6, table="nat", proto="udp", dport=53, src="2001:db8:1::/48",
       dst="2001:db8::5/128", to_addr="fd30:1::10", to_port=53),
     '-s 2001:db8:1::/48 -d 2001:db8::5/128 -p udp -m udp --dport 53 '
     '-m comment --comment "vnetfw:net1" -j DNAT --to-destination [fd30:1::10]:53'),
    (R("FWD", oif="br-web", dst="10.30.1.10/32", proto="tcp", dport=22, ctstatus="DNAT"),
     '-d 10.30.1.10/32 -o br-web -p tcp -m tcp --dport 22 -m conntrack --ctstate DNAT '
     '-m comment --comment "vnetfw:net1" -j ACCEPT'),
    (R("PRT", "MASQUERADE", table="nat", src="10.30.1.0/24", dst="10.30.1.0/24",
       ctstatus="DNAT"),
     '-s 10.30.1.0/24 -d 10.30.1.0/24 -m conntrack --ctstate DNAT '
     '-m comment --comment "vnetfw:net1" -j MASQUERADE'),
    (R("ALW", iif="br-web", src="10.30.1.0/24", dst="10.30.5.0/24", proto="tcp", dport=5432,
       dport_end=5433),
     '-s 10.30.1.0/24 -d 10.30.5.0/24 -i br-web -p tcp -m tcp --dport 5432:5433 '
     '-m comment --comment "vnetfw:net1" -j ACCEPT'),
    (R("ALW", iif="br-db", src="10.30.5.0/24", dst="10.30.1.0/24", ctstate=CT_REPLY,
       ctdir="REPLY"),
     '-s 10.30.5.0/24 -d 10.30.1.0/24 -i br-db -m conntrack --ctstate RELATED,ESTABLISHED '
     '--ctdir REPLY -m comment --comment "vnetfw:net1" -j ACCEPT'),
])
def test_feature_rule_text_and_back(rule, text):
    assert render_rule(rule) == text
    assert parse_rule(text.replace('"', ""), rule.family, rule.table, rule.chain) == rule


@pytest.mark.parametrize("text", [
    # a DNAT to every address, loopback included: not vnetfw's (it would capture the
    # host's own loopback services from nat OUTPUT)
    '-p tcp -m addrtype --dst-type LOCAL -m tcp --dport 80 -m comment --comment vnetfw:x '
    '-j DNAT --to-destination 10.0.0.1:80',
    # no address match at all
    '-p tcp -m tcp --dport 80 -m comment --comment vnetfw:x -j DNAT --to-destination 10.0.0.1:80',
    # another spelling of the virtual state
    '-d 10.0.0.1/32 -o br -m conntrack --ctstate DNAT,ESTABLISHED -m comment --comment vnetfw:x '
    '-j ACCEPT',
])
def test_feature_rules_vnetfw_does_not_write_are_foreign(text):
    chain = "DNAT" if "-j DNAT" in text else "FWD"
    table = "nat" if chain == "DNAT" else "filter"
    assert isinstance(parse_rule(text, 4, table, chain), Foreign)


def test_feature_chains_and_their_jumps_in_stage_order():
    text = backend().render(_forward_ruleset(), 4)
    forward = [line.split()[-1] for line in text.splitlines() if line.startswith("-I FORWARD")]
    # inserted at position 1 backwards: the chain reads ALW FWX FWD FWI FWO
    assert list(reversed(forward)) == [f"VNETFW_{s}" for s in
                                       ("ALW", "FWX", "FWD", "FWI", "FWO")]
    assert "-I PREROUTING 1 -m comment --comment \"vnetfw\" -j VNETFW_DNAT" in text
    assert "-I OUTPUT 1 -m comment --comment \"vnetfw\" -j VNETFW_DNAT" in text
    # a range maps one to one: a rule per port
    assert "--dport 2200 -m comment --comment \"vnetfw:web\" -j DNAT --to-destination " \
        "10.30.1.10:22" in text
    assert "--dport 2201 -m comment --comment \"vnetfw:web\" -j DNAT --to-destination " \
        "10.30.1.10:23" in text


def test_no_feature_chains_without_forwards_or_allows():
    plain = _forward_ruleset()
    plain = Ruleset.canonical(plain.prefix, [r for r in plain.rules if not r.feature
                                             and r.ctstatus is None])
    text = backend().render(plain)
    assert "_DNAT" not in text and "_ALW" not in text and "_FWD" not in text


def _live_from_render(rs: Ruleset) -> IptLive:
    """The tables as iptables-save would print them after rendering ``rs`` into nothing."""
    tables = {}
    for fam in (4, 6):
        dumps = {}
        for block in backend().render(rs, fam).split("COMMIT\n"):
            lines = block.strip().splitlines()
            if not lines:
                continue
            d = TableDump()
            for line in lines[1:]:
                if line.startswith(":"):
                    d.chains.setdefault(line[1:].split()[0], [])
                elif line.startswith("-A "):
                    chain, _, args = line[3:].partition(" ")
                    d.chains.setdefault(chain, []).append(args)
                elif line.startswith("-I "):
                    _, chain, pos, args = line.split(" ", 3)
                    d.chains.setdefault(chain, []).insert(int(pos) - 1, args)
            dumps[lines[0][1:]] = d
        tables[fam] = dumps
    return IptLive(tables)


def test_forwards_read_back_and_reapply_changes_nothing_and_kept_chains():
    rs = _forward_ruleset()
    live = _live_from_render(rs)
    b = backend()
    assert b.live_ruleset(live, rs.prefix) == rs
    assert not b.changes(live, rs, "full").items
    # every forward and allow gone: their rules go, their chains and jumps stay
    bare = Ruleset.canonical(rs.prefix, [r for r in rs.rules if not r.feature
                                         and r.ctstatus is None])
    items = b.changes(live, bare, "full").items
    assert items and all(c.what == "delete" and c.rule is not None for c in items)
    # teardown takes every chain of vnetfw's, the features' too, and their jumps
    down = b.script(b.changes(live, None, "teardown", rs.prefix), 4)
    assert "-X VNETFW_DNAT" in down and "-X VNETFW_ALW" in down and "-X VNETFW_FWD" in down
    assert "-D PREROUTING" in down
    assert '-D OUTPUT -m comment --comment "vnetfw" -j VNETFW_DNAT' in down


def test_assumed_layout_refuses_forwards():
    """The no-readback path cannot know whether the features' chains are live: it refuses,
    and the engine reads the firewall instead."""
    rs = _forward_ruleset()
    b = backend()
    assumed = b.assumed_live(Ruleset(rs.prefix))
    with pytest.raises(BackendError, match="live firewall read"):
        b.changes(assumed, rs, "full")


def backend() -> IptablesBackend:
    return IptablesBackend(SaveRunner(""), "iptables-nft")
