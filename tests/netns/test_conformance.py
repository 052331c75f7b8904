"""Conformance with libvirt, on a real kernel.

For every reference case that has a network XML, with profile ``libvirt``, for both
``iptables-nft`` and ``iptables-legacy``: apply the plan into a fresh network namespace through
the backend, then compare the namespace's ``iptables-save``/``ip6tables-save`` with libvirt's
expected state (tests/fixtures/libvirt/CASE.iptables-save.v4|.v6), table by table and chain
by chain, rule order included. Both sides are normalised the way the reference was: ``#``
lines dropped, chain counters and ``-m comment --comment ...`` stripped.

Also: ``setup`` alone gives libvirt's base state, the readback parses to exactly the plan, and
a second ``changes`` is empty.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import nsrun
from vnetfw.backends import get_backend
from vnetfw.backends.runner import Runner
from vnetfw.plan import PROFILES, plan
from vnetfw.sources import load_paths

pytestmark = pytest.mark.netns

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
LIBVIRT = FIXTURES / "libvirt"
CASES = sorted(p.stem for p in LIBVIRT.glob("*.xml"))
FLAVOURS = ["iptables-nft", "iptables-legacy"]

_COUNTERS = re.compile(r"^(:\S+ \S+) \[\d+:\d+\]$")
_COMMENT = re.compile(r' -m comment --comment (?:"(?:[^"\\]|\\.)*"|\S+)')

Chains = dict[str, tuple[str, list[str]]]      # chain -> (policy, rules in order)


def normalise(save_text: str) -> dict[str, Chains]:
    """iptables-save text -> {table: {chain: (policy, [rule, ...])}}, normalised like the
    reference: no '#' lines, no counters, no comments."""
    tables: dict[str, Chains] = {}
    chains: Chains = {}
    for line in save_text.splitlines():
        if not line.strip() or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith("*"):
            chains = tables.setdefault(line[1:], {})
        elif line.startswith(":"):
            name, policy = _COUNTERS.sub(r"\1", line)[1:].split(" ")
            chains[name] = (policy, [])
        elif line.startswith("-A "):
            chain = line.split(" ", 2)[1]
            chains[chain][1].append(_COMMENT.sub("", line))
        else:
            raise AssertionError(f"unexpected iptables-save line: {line!r}")
    return tables


def assert_same_state(got: str, want: str, what: str) -> None:
    g, w = normalise(got), normalise(want)
    assert sorted(g) == sorted(w), f"{what}: tables differ"
    for table in w:
        assert sorted(g[table]) == sorted(w[table]), f"{what} {table}: chains differ"
        for chain, (policy, rules) in w[table].items():
            assert g[table][chain][0] == policy, f"{what} {table} {chain}: policy"
            assert g[table][chain][1] == rules, f"{what} {table} {chain}: rules"


def saved(ns: str, flavour: str, family: int) -> str:
    cmd = ("iptables" if family == 4 else "ip6tables") + flavour.removeprefix("iptables")
    return nsrun(ns, f"{cmd}-save")


def backend(flavour: str, ns: str):
    b = get_backend(flavour, Runner(ns))
    if (why := b.available()) is not None:
        pytest.skip(why)
    return b


def test_normalise_matches_the_reference_procedure():
    # The reference files are already normalised: normalising them again changes nothing,
    # and a comment or counters on a line are removed.
    text = (LIBVIRT / "nat-default.iptables-save.v4").read_text()
    assert normalise(text) == normalise(
        text.replace(":INPUT ACCEPT\n", ":INPUT ACCEPT [12:345]\n")
            .replace("-j LIBVIRT_INP", '-m comment --comment "vnetfw" -j LIBVIRT_INP'))
    assert normalise(text)["filter"]["LIBVIRT_FWX"] == \
        ("-", ["-A LIBVIRT_FWX -i virbr0 -o virbr0 -j ACCEPT"])
    with pytest.raises(AssertionError):
        assert_same_state(text, text.replace("--dport 67", "--dport 68"), "self")


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("case", CASES)
def test_libvirt_profile_equals_libvirts_rules(make_netns, case, flavour):
    ns = make_netns("conf")
    b = backend(flavour, ns)
    desired = plan(load_paths([LIBVIRT / f"{case}.xml"]), PROFILES["libvirt"])

    live = b.read()
    changes = b.changes(live, desired, "full")
    assert not changes.empty
    b.commit(live, changes)

    for fam in (4, 6):
        want = (LIBVIRT / f"{case}.iptables-save.v{fam}").read_text()
        assert_same_state(saved(ns, flavour, fam), want, f"{case} {flavour} ipv{fam}")

    again = b.read()
    assert b.live_ruleset(again, "LIBVIRT") == desired
    second = b.changes(again, desired, "full")
    assert second.empty, [str(c) for c in second.items]


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_setup_alone_equals_libvirts_base(make_netns, flavour):
    ns = make_netns("base")
    b = backend(flavour, ns)
    desired = plan([], PROFILES["libvirt"])
    live = b.read()
    b.commit(live, b.changes(live, desired, "setup"))
    for fam in (4, 6):
        want = (LIBVIRT / f"base.iptables-save.v{fam}").read_text()
        assert_same_state(saved(ns, flavour, fam), want, f"base {flavour} ipv{fam}")
    assert b.changes(b.read(), desired, "setup").empty
    assert b.changes(b.read(), desired, "full").empty       # no network: nothing more to add


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("profile", ["default", "libvirt"])
@pytest.mark.parametrize("inputs", ["mixed", "edges"])
def test_rendered_rules_are_what_iptables_save_prints(make_netns, inputs, flavour, profile):
    # Beyond libvirt's cases: several networks at once, SNAT ranges, forward devices, single
    # ports, /32 and /128 subnets, IPv6 zero runs, 15-character names, the default profile's
    # extra rules. The backend diffs rules as strings in iptables-save form, so anything it
    # renders differently from what the kernel prints back would never converge.
    ns = make_netns("rt")
    b = backend(flavour, ns)
    desired = plan(load_paths([FIXTURES / "golden" / "inputs" / f"{inputs}.toml"]),
                   PROFILES[profile])
    live = b.read()
    b.commit(live, b.changes(live, desired, "full"))
    again = b.read()
    assert b.live_ruleset(again, desired.prefix) == desired
    second = b.changes(again, desired, "full")
    assert second.empty, [str(c) for c in second.items]
