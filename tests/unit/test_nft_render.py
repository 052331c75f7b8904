"""nftables backend, pure parts: naming, Rule <-> nft text/JSON, golden scripts.

Golden files (``tests/fixtures/nft/golden/<profile>/<case>.nft``) are the exact script
``render`` produces for every libvirt reference XML and for ``mixed.toml``, per profile.
``tests/fixtures/nft/live/*.json`` is what ``nft -j list table`` printed after loading a
golden script into a fresh namespace (nft 1.0.6, kernel 6.18); parsing it must give back the
planned ruleset, which is the render/parse round trip without needing root (the real-kernel
round trip is in tests/netns/test_nft_kernel.py).

Regenerate (then REVIEW ``git diff tests/fixtures/nft``)::

    .venv/bin/python tests/unit/test_nft_render.py           # golden scripts
    sudo .venv/bin/python tests/unit/test_nft_render.py      # + live JSON (needs root)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vnetfw.backends.nft_layout import (STAGES, decode_name, encode_name, parse_chain_name,
                                        table_name)
from vnetfw.backends.nft_rules import Foreign, parse_rule, render_rule
from vnetfw.backends.nftables import NftablesBackend, NftLive, parse_listing
from vnetfw.backends.runner import Runner
from vnetfw.errors import BackendError
from vnetfw.plan import PROFILES, plan
from vnetfw.ruleset import CHECKSUM, CT_REPLY, Rule, Ruleset
from vnetfw.sources import load_paths

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "nft"
GOLDEN = FIX / "golden"
LIVE = FIX / "live"
PROFILE_NAMES = ("default", "libvirt")


def cases() -> dict[str, Path]:
    out = {p.stem: p for p in sorted((FIX / "xml").glob("*.xml"))}
    out["mixed"] = FIX / "mixed.toml"
    return out


CASES = cases()


def backend() -> NftablesBackend:
    return NftablesBackend(Runner())


def planned(case: str, profile: str) -> Ruleset:
    return plan(load_paths([CASES[case]]), PROFILES[profile])


def R(chain="FWI", verdict="ACCEPT", family=4, table="filter", network="net1", **kw) -> Rule:
    return Rule(family=family, table=table, chain=chain, network=network, verdict=verdict, **kw)


# ---------------------------------------------------------------------------------------------
# Golden scripts

@pytest.mark.parametrize("profile", PROFILE_NAMES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_script(case, profile):
    golden = GOLDEN / profile / f"{case}.nft"
    assert backend().render(planned(case, profile)) == golden.read_text()


def test_every_reference_case_has_a_golden_file():
    assert len(CASES) == 12            # 11 libvirt reference XMLs + mixed.toml
    for profile in PROFILE_NAMES:
        assert sorted(p.stem for p in (GOLDEN / profile).glob("*.nft")) == sorted(CASES)


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_stored_kernel_json_parses_back_to_the_plan(profile):
    """What the kernel listed for the loaded golden script == the planned ruleset."""
    b = backend()
    rs = planned("mixed", profile)
    live = NftLive(parse_listing((LIVE / f"mixed.{profile}.json").read_text()))
    assert b.live_ruleset(live, rs.prefix) == b.effective(rs)
    assert b.changes(live, rs, "full").empty


def test_render_uses_numbers_and_one_table():
    text = backend().render(planned("nat-tftp", "default"))
    assert "dport 67 " in text and "dport 69 " in text and "bootps" not in text
    assert not re.search(r"\b(domain|bootpc|tftp)\b", text)
    tables = set(re.findall(r"^(?:add \w+ |table )(inet \S+)", text, re.M))
    assert tables == {"inet vnetfw"}
    assert "inet vnetfw_libvirt" in backend().render(planned("nat-tftp", "libvirt"))


def test_render_drops_checksum_and_effective_says_so():
    rs = planned("nat-default", "libvirt")
    assert any(r.verdict == CHECKSUM for r in rs.rules)
    eff = backend().effective(rs)
    assert not any(r.verdict == CHECKSUM for r in eff.rules)
    assert len(eff.rules) == len(rs.rules) - 1
    text = backend().render(rs)
    assert "mangle" not in text and "checksum" not in text.lower()


def test_render_one_family():
    rs = planned("mixed", "default")
    v4 = backend().render(rs, family=4)
    v6 = backend().render(rs, family=6)
    assert "\tchain forward {" in v4 and "\tchain forward {" in v6
    assert not re.search(r"\b(inp|out|fwx|fwi|fwo|nat)6-", v4)
    assert not re.search(r"\b(inp|out|fwx|fwi|fwo|nat)4-", v6)
    assert "ipv6 ." not in v4 and "ipv4 ." not in v6


def test_render_order_is_independent_of_input_order():
    nets = load_paths([CASES["mixed"]])
    a = backend().render(plan(nets, PROFILES["default"]))
    b = backend().render(plan(tuple(reversed(nets)), PROFILES["default"]))
    assert a == b


def test_each_family_dispatches_to_its_own_chains():
    """An element keyed ipv4 jumps to a '...4-' chain, ipv6 to '...6-': a network's IPv4 rules
    never see IPv6 packets and the other way round."""
    text = backend().render(planned("mixed", "default"))
    elems = re.findall(r"ipv([46]) \. \"[^\"]+\" : jump (\w+?)([46])-", text)
    assert elems and all(fam == chain_fam for fam, _, chain_fam in elems)
    assert re.findall(r"[{\s]10\.[\d./]+ : jump nat4-", text)
    assert re.findall(r"fd10:1::/64 : jump nat6-", text)


# ---------------------------------------------------------------------------------------------
# Naming

def test_table_names():
    assert table_name("VNETFW") == "vnetfw"
    assert table_name("LIBVIRT") == "vnetfw_libvirt"
    assert table_name("LAB2") == "vnetfw_lab2"
    assert table_name("Lab") == "vnetfw-Lab"
    assert table_name("lab") != table_name("LAB")


@given(st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}\Z"))
def test_chain_names_are_safe_and_reversible(name):
    enc = encode_name(name)
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", enc)
    assert decode_name(enc) == name
    for stage in STAGES:
        for fam in (4, 6):
            assert parse_chain_name(stage.chain_name(fam, name)) == (stage, fam, name)


@pytest.mark.parametrize("name, enc", [("default", "default"), ("my_net", "my__net"),
                                       ("a+b", "a_2bb"), ("x.y-z", "x.y-z")])
def test_encoding_examples(name, enc):
    assert encode_name(name) == enc


@pytest.mark.parametrize("chain", ["forward", "fwo4", "fwo5-x", "fwo4-a+b", "fwo4-a_2e", "fwo4-a_",
                                   "fwo4-", "abc4-x"])
def test_other_chain_names_are_not_ours(chain):
    assert parse_chain_name(chain) is None


# ---------------------------------------------------------------------------------------------
# Rule -> nft text

@pytest.mark.parametrize("rule, text", [
    (R("INP", iif="virbr0", proto="udp", dport=53), 'iifname "virbr0" udp dport 53 accept'),
    (R("FWI", dst="192.168.122.0/24", iif="eth0", oif="virbr0", ctstate=CT_REPLY),
     'iifname "eth0" oifname "virbr0" ip daddr 192.168.122.0/24 ct state established,related '
     'accept'),
    (R("FWO", "REJECT", family=6, iif="virbr0"), 'iifname "virbr0" reject'),
    (R("FWX", iif="br*", oif="br*"), 'iifname "br\\*" oifname "br\\*" accept'),
    (R("PRT", "MASQUERADE", table="nat", src="10.0.0.0/24", dst="10.0.0.0/24", dst_neg=True,
       proto="udp", to_ports=(5000, 5000)),
     'meta l4proto udp ip saddr 10.0.0.0/24 ip daddr != 10.0.0.0/24 masquerade to :5000-5000'),
    (R("PRT", "MASQUERADE", table="nat", family=6, src="fd00::/64", dst="fd00::/64",
       dst_neg=True, oif="eth0"),
     'oifname "eth0" ip6 saddr fd00::/64 ip6 daddr != fd00::/64 masquerade'),
    (R("PRT", "SNAT", table="nat", src="10.0.0.0/24", dst="10.0.0.0/24", dst_neg=True,
       oif="eth0", proto="tcp", to_source="203.0.113.1-203.0.113.9", to_ports=(2000, 3000)),
     'oifname "eth0" meta l4proto tcp ip saddr 10.0.0.0/24 ip daddr != 10.0.0.0/24 '
     'snat ip to 203.0.113.1-203.0.113.9:2000-3000'),
    (R("PRT", "SNAT", table="nat", src="10.0.0.0/24", to_source="203.0.113.1"),
     'ip saddr 10.0.0.0/24 snat ip to 203.0.113.1'),
    (R("PRT", "RETURN", table="nat", family=6, src="fd00::/64", dst="ff02::/16"),
     'ip6 saddr fd00::/64 ip6 daddr ff02::/16 return'),
])
def test_render_rule(rule, text):
    assert render_rule(rule) == text


@pytest.mark.parametrize("rule", [
    R("PRT", "CHECKSUM", table="mangle", oif="virbr0", proto="udp", dport=68),
    R("PRT", "SNAT", table="nat", family=6, src="fd00::/64", to_source="fd01::1"),
    R("PRT", "MASQUERADE", table="nat", src="10.0.0.0/24", to_ports=(1, 2)),   # no protocol
])
def test_render_rule_refuses_what_nft_cannot_say(rule):
    with pytest.raises(BackendError):
        render_rule(rule)


def test_unsupported_stage_is_an_error_not_a_silent_drop():
    rs = Ruleset("VNETFW", (R("PRT", "ACCEPT", table="mangle", oif="virbr0"),))
    with pytest.raises(BackendError, match="mangle PRT"):
        backend().render(rs)
    rs = Ruleset("VNETFW", (R("FWO", "REJECT"),))          # FWO rule without iif
    with pytest.raises(BackendError, match="invariant"):
        backend().render(rs)


# ---------------------------------------------------------------------------------------------
# nft JSON -> Rule

def J(*exprs, **extra) -> dict:
    return {"family": "inet", "table": "vnetfw", "chain": "c", "handle": 9,
            "expr": list(exprs), **extra}


def M(left, right, op="=="):
    return {"match": {"op": op, "left": left, "right": right}}


IIF = {"meta": {"key": "iifname"}}
OIF = {"meta": {"key": "oifname"}}
L4 = {"meta": {"key": "l4proto"}}
SADDR4 = {"payload": {"protocol": "ip", "field": "saddr"}}
DADDR4 = {"payload": {"protocol": "ip", "field": "daddr"}}
SADDR6 = {"payload": {"protocol": "ip6", "field": "saddr"}}
UDP_DPORT = {"payload": {"protocol": "udp", "field": "dport"}}
CT = {"ct": {"key": "state"}}
ACCEPT = {"accept": None}
PFX = {"prefix": {"addr": "10.0.0.0", "len": 24}}
REJECT_X = {"reject": {"type": "icmpx", "expr": "port-unreachable"}}


@pytest.mark.parametrize("raw, fam, table, chain, expected", [
    (J(M(IIF, "virbr0"), M(UDP_DPORT, 67), ACCEPT), 4, "filter", "INP",
     R("INP", iif="virbr0", proto="udp", dport=67)),
    # the same rule written another way (order, redundant l4proto) means the same
    (J(M(L4, "udp"), M(UDP_DPORT, 67), M(IIF, "virbr0"), ACCEPT), 4, "filter", "INP",
     R("INP", iif="virbr0", proto="udp", dport=67)),
    (J(M(OIF, "virbr0"), M(DADDR4, PFX), M(CT, ["established", "related"], "in"), ACCEPT),
     4, "filter", "FWI", R("FWI", oif="virbr0", dst="10.0.0.0/24", ctstate=CT_REPLY)),
    (J(M(IIF, "virbr0"), REJECT_X), 6, "filter", "FWO", R("FWO", "REJECT", family=6, iif="virbr0")),
    (J(M(IIF, "br\\*"), ACCEPT), 4, "filter", "FWX", R("FWX", iif="br*")),
    (J(M(SADDR4, PFX), M(DADDR4, "255.255.255.255"), {"return": None}), 4, "nat", "PRT",
     R("PRT", "RETURN", table="nat", src="10.0.0.0/24", dst="255.255.255.255/32")),
    (J(M(L4, "tcp"), M(SADDR4, PFX), M(DADDR4, PFX, "!="),
       {"masquerade": {"port": {"range": [1024, 65535]}}}), 4, "nat", "PRT",
     R("PRT", "MASQUERADE", table="nat", src="10.0.0.0/24", dst="10.0.0.0/24", dst_neg=True,
       proto="tcp", to_ports=(1024, 65535))),
    (J(M(L4, "udp"), M(SADDR4, PFX), {"snat": {"family": "ip", "addr": {"range": ["1.2.3.4",
       "1.2.3.9"]}, "port": {"range": [1, 2]}}}), 4, "nat", "PRT",
     R("PRT", "SNAT", table="nat", src="10.0.0.0/24", proto="udp", to_source="1.2.3.4-1.2.3.9",
       to_ports=(1, 2))),
    (J(M(SADDR4, PFX), {"snat": {"family": "ip", "addr": "1.2.3.4"}}), 4, "nat", "PRT",
     R("PRT", "SNAT", table="nat", src="10.0.0.0/24", to_source="1.2.3.4")),
])
def test_parse_rule(raw, fam, table, chain, expected):
    assert parse_rule(raw, fam, table, chain, "net1") == expected


@pytest.mark.parametrize("raw, fam", [
    (J(M(IIF, "virbr0"), {"counter": {"packets": 0, "bytes": 0}}, ACCEPT), 4),   # a counter
    (J(M(IIF, "virbr0"), ACCEPT, comment="admin"), 4),                           # a comment
    (J(M(IIF, "br*"), ACCEPT), 4),                                               # a wildcard
    (J(M(IIF, "virbr0", "!="), ACCEPT), 4),
    (J(M(IIF, "virbr0"), M(IIF, "virbr1"), ACCEPT), 4),                          # twice
    (J(M(IIF, "virbr0"), {"reject": {"type": "tcp reset"}}), 4),
    (J(M(SADDR4, PFX), ACCEPT), 6),                                              # wrong family
    (J(M(SADDR6, {"prefix": {"addr": "fd00::", "len": 64}}), ACCEPT), 4),
    (J(M(IIF, "virbr0"), {"log": None}, ACCEPT), 4),
    (J(M(IIF, "virbr0"), {"jump": {"target": "elsewhere"}}), 4),
    (J(M(IIF, "virbr0")), 4),                                                    # no verdict
    (J(M(IIF, "virbr0"), ACCEPT, ACCEPT), 4),
    (J(M(SADDR4, {"prefix": {"addr": "10.0.0.1", "len": 24}}), ACCEPT), 4),      # host bits
    (J(M(IIF, "virbr0"), {"masquerade": {"flags": ["random"]}}), 4),
    (J(M(L4, "icmp"), ACCEPT), 4),
])
def test_parse_rule_foreign(raw, fam):
    assert isinstance(parse_rule(raw, fam, "filter", "FWO", "net1"), Foreign)


# ---------------------------------------------------------------------------------------------
# Regeneration (python tests/unit/test_nft_render.py)

def _capture_live_json(script: str) -> str:
    ns = f"vnetfw-golden-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script, text=True,
                       check=True)
        out = subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "list", "ruleset"],
                             capture_output=True, text=True, check=True).stdout
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    items = json.loads(out)["nftables"]        # one object per line: small, diffable
    return '{"nftables": [\n' + ",\n".join(json.dumps(i) for i in items) + "\n]}\n"


def regen() -> None:
    for profile in PROFILE_NAMES:
        (GOLDEN / profile).mkdir(parents=True, exist_ok=True)
        for case in CASES:
            text = backend().render(planned(case, profile))
            path = GOLDEN / profile / f"{case}.nft"
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
                print(f"wrote {path}")
        if os.geteuid() == 0:
            LIVE.mkdir(exist_ok=True)
            path = LIVE / f"mixed.{profile}.json"
            path.write_text(_capture_live_json(backend().render(planned("mixed", profile))))
            print(f"wrote {path}")
        else:
            print("not root: live JSON left as is", file=sys.stderr)


if __name__ == "__main__":
    regen()
