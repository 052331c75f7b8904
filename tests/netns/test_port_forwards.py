"""Port forwards and allows (docs/port-forwards.md) proved with real TCP and UDP packets.

One lab: a hypervisor with a nat network holding the forwards' targets (IPv4 and, with
IPv6 NAT, IPv6), a second nat network, a routed one, an isolated one and a nat network
``db`` that others are allowed into; two upstream hosts. Every row of the table of issue 14
is a probe (the lab's agents listen on one port; a forward publishes another and
translates to it), with bridge-nf-call-iptables 0 and 1 in the hypervisor, on nftables,
iptables-nft and iptables-legacy (the same rules through x_tables). The isolation matrix,
drift repair, removal, teardown and the per-forward counters run on every backend.
"""

from __future__ import annotations

import os

import pytest

from vnetfw import output
from vnetfw.engine import Engine
from vnetfw.backends.registry import iptables_tool
from vnetfw.lab import matrix
from vnetfw.lab.probe import PORT, new_probe, run_probes
from vnetfw.lab.topology import UPLINK0, UPLINK1, Lab
from vnetfw.sources.toml import parse_toml

pytestmark = pytest.mark.netns

# Hypervisor addresses (lab.topology): uplink0 198.51.100.1 / 2001:db8:ffff::1,
# uplink1 203.0.113.1 / 2001:db8:fffe::1; upstream hosts .2 / ::2.
H0 = {4: "198.51.100.1", 6: "2001:db8:ffff::1"}
H1 = {4: "203.0.113.1", 6: "2001:db8:fffe::1"}
UP0 = {4: "198.51.100.2", 6: "2001:db8:ffff::2"}
UP1 = {4: "203.0.113.2", 6: "2001:db8:fffe::2"}
WEB_G0 = {4: "10.30.1.10", 6: "fd30:1::10"}
WEB_G1 = {4: "10.30.1.11", 6: "fd30:1::11"}
DB_G0 = {4: "10.30.5.10", 6: "fd30:5::10"}


def _forwards() -> str:
    out = []
    for fam in (4, 6):
        for proto in ("tcp", "udp"):
            # 8080: every host address, everyone; 8081: only from uplink1's host;
            # 8082: only on uplink0's host address.
            out.append(f'[[network.port_forward]]\nproto = "{proto}"\nport = {8080 + fam * 100}\n'
                       f'to = "{WEB_G0[fam]}"\nto_port = {PORT}\n')
            out.append(f'[[network.port_forward]]\nproto = "{proto}"\nport = {8081 + fam * 100}\n'
                       f'to = "{WEB_G0[fam]}"\nto_port = {PORT}\nsource = ["{UP1[fam]}"]\n')
            out.append(f'[[network.port_forward]]\nproto = "{proto}"\nport = {8082 + fam * 100}\n'
                       f'to = "{WEB_G0[fam]}"\nto_port = {PORT}\nhost_address = "{H0[fam]}"\n')
            # 9000: the same port in both families (an IPv6 packet must pass the IPv4
            # map's DNAT untouched, and the other way round).
            out.append(f'[[network.port_forward]]\nproto = "{proto}"\nport = 9000\n'
                       f'to = "{WEB_G0[fam]}"\nto_port = {PORT}\n')
    return "".join(out)


TEXT = f"""
[[network]]
name = "web"
bridge = "br-web"
mode = "nat"
nat = {{ ipv6 = true }}
ip = [{{ address = "10.30.1.1", prefix = 24 }}, {{ address = "fd30:1::1", prefix = 64 }}]
{_forwards()}
[[network]]
name = "other"
bridge = "br-other"
mode = "nat"
nat = {{ ipv6 = true }}
ip = [{{ address = "10.30.2.1", prefix = 24 }}, {{ address = "fd30:2::1", prefix = 64 }}]
[[network.allow]]
to = "db"
ports = ["udp/{PORT}"]
[[network]]
name = "routed"
bridge = "br-routed"
mode = "route"
ip = [{{ address = "10.30.3.1", prefix = 24 }}, {{ address = "fd30:3::1", prefix = 64 }}]
[[network]]
name = "iso"
bridge = "br-iso"
mode = "isolated"
ip = [{{ address = "10.30.4.1", prefix = 24 }}, {{ address = "fd30:4::1", prefix = 64 }}]
[[network.allow]]
to = "db"
ports = ["tcp/{PORT}"]
[[network]]
name = "db"
bridge = "br-db"
mode = "nat"
nat = {{ ipv6 = true }}
ip = [{{ address = "10.30.5.1", prefix = 24 }}, {{ address = "fd30:5::1", prefix = 64 }}]
"""
NETWORKS = parse_toml(TEXT, "test_port_forwards.py")
BY_NAME = {n.name: n for n in NETWORKS}


@pytest.fixture(scope="module")
def lab():
    if os.geteuid() != 0:
        pytest.skip("real-kernel tests need root")
    with Lab(NETWORKS, guests=2, uplinks=(UPLINK0, UPLINK1)) as lab:
        yield lab


BACKENDS = ["nftables", "iptables-nft", "iptables-legacy"]


@pytest.fixture
def eng(lab, tmp_path, request):
    """An engine on the backend the test is parametrized with (``backend``), nftables if
    none."""
    spec = getattr(request.node, "callspec", None)
    backend = spec.params.get("backend", "nftables") if spec is not None else "nftables"
    e = Engine(backend=backend, netns=lab.hv.name, state_dir=tmp_path / "state")
    yield e
    e.teardown()


def ipt_save(lab: Lab, flavour: str, fam: int = 4, table: str = "nat") -> str:
    return lab.hv.run(iptables_tool(flavour, fam, "save"), "-t", table)


def bridge_nf(lab: Lab, on: int) -> None:
    for fam in ("", "6"):
        lab.hv.run("sysctl", "-qw", f"net.bridge.bridge-nf-call-ip{fam}tables={on}")


def probe(lab: Lab, cases):
    """cases: (name, src host, dst host, address, port, proto) -> Observation by name."""
    lab.flush_conntrack()
    probes = {}
    for name, src, dst, addr, port, proto in cases:
        src_ns = lab.hv.name if src == "hv" else lab.ns_of[src].name
        probes[name] = new_probe(src_ns, lab.ns_of[dst].name, addr, proto, port)
    nss = {ns.name: ns for ns in lab.namespaces}
    seen = run_probes(nss, lab.listeners, probes.values())
    return {name: seen[p] for name, p in probes.items()}


def table_cases(fam: int):
    """Every row of the issue's table, as (name, src, dst, addr, port, expected seen or
    None for 'nothing')."""
    p0, p1, p2 = 8080 + fam * 100, 8081 + fam * 100, 8082 + fam * 100
    g0 = "web/g0"
    gw_web = {4: "10.30.1.1", 6: "fd30:1::1"}[fam]
    return [
        ("upstream reaches the guest, real address", "up:uplink0", g0, H0[fam], p0, UP0[fam]),
        ("also on the other host address", "up:uplink1", g0, H1[fam], p0, UP1[fam]),
        ("port not forwarded", "up:uplink0", g0, H0[fam], p0 + 50, None),
        ("the nat guest directly", "up:uplink0", g0, WEB_G0[fam], PORT, None),
        ("source outside source", "up:uplink0", g0, H0[fam], p1, None),
        ("source inside source", "up:uplink1", g0, H1[fam], p1, UP1[fam]),
        ("address other than host_address", "up:uplink1", g0, H1[fam], p2, None),
        ("host_address itself", "up:uplink0", g0, H0[fam], p2, UP0[fam]),
        ("the same port in both families", "up:uplink0", g0, H0[fam], 9000, UP0[fam]),
        ("the hypervisor itself", "hv", g0, H0[fam], p0, H0[fam]),
        ("hairpin from the same network", "web/g1", g0, H0[fam], p0, gw_web),
        ("guest of another nat network", "other/g0", g0, H0[fam], p0, ...),
        ("guest of a routed network", "routed/g0", g0, H0[fam], p0, ...),
        ("guest of an isolated network", "iso/g0", g0, H0[fam], p0, None),
        ("isolated guest beyond its bridge", "iso/g0", "up:uplink0", UP0[fam], PORT, None),
        # allows: other -> db udp only; iso -> db tcp only
        ("allow: listed port, real address", "other/g0", "db/g0", DB_G0[fam], PORT, ...),
        ("allow back: one way only", "db/g0", "other/g0",
         {4: "10.30.2.10", 6: "fd30:2::10"}[fam], PORT, None),
        ("allow back: not into the isolated one", "db/g0", "iso/g0",
         {4: "10.30.4.10", 6: "fd30:4::10"}[fam], PORT, None),
        ("allow from isolated: listed port", "iso/g0", "db/g0", DB_G0[fam], PORT, ...),
        ("no allow: routed into db", "routed/g0", "db/g0", DB_G0[fam], PORT, None),
    ]


ALLOW_PROTO = {"allow: listed port, real address": "udp",
               "allow from isolated: listed port": "tcp"}


@pytest.mark.parametrize("backend, brnf", [(b, n) for b in BACKENDS for n in (0, 1)])
def test_every_row_of_the_table(lab, eng, backend, brnf):
    bridge_nf(lab, brnf)
    rep = eng.apply(NETWORKS)
    assert rep.changed
    cases, want = [], {}
    for fam in (4, 6):
        for name, src, dst, addr, port, seen in table_cases(fam):
            for proto in ("tcp", "udp"):
                key = f"ipv{fam} {proto} {name}"
                exp = seen
                if name in ALLOW_PROTO and proto != ALLOW_PROTO[name]:
                    exp = None          # the port is listed for the other protocol only
                cases.append((key, src, dst, addr, port, proto))
                want[key] = exp
    got = probe(lab, cases)
    bad = []
    for key, exp in want.items():
        o = got[key]
        if o.anomaly or (exp is None and o.reached) or (exp is not None and not o.reached) \
                or (isinstance(exp, str) and o.seen != exp):
            bad.append(f"{key}: expected {'nothing' if exp is None else exp}, got "
                       f"{'reached, seen ' + str(o.seen) if o.reached else 'nothing'} "
                       f"{o.detail} {o.anomaly}")
    assert not bad, f"{backend}, bridge-nf-call {brnf}:\n" + "\n".join(bad)
    # No masquerade between allowed networks: db sees other's guest itself.
    for fam in (4, 6):
        assert got[f"ipv{fam} udp allow: listed port, real address"].seen == \
            {4: "10.30.2.10", 6: "fd30:2::10"}[fam]
        assert got[f"ipv{fam} tcp allow from isolated: listed port"].seen == \
            {4: "10.30.4.10", 6: "fd30:4::10"}[fam]
    # Re-applying says nothing changed; the isolation matrix still holds for the
    # networks without allows, forwards present.
    assert not eng.apply(NETWORKS).changed
    assert eng.check() == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_isolation_matrix_holds_with_forwards(lab, eng, backend):
    """The design's whole traffic matrix, with the forwards loaded (no allows: the
    policy module does not model them)."""
    nets = [n for n in NETWORKS if not n.allows]
    eng.apply(nets)
    res = matrix.run(lab, "default", active=[n.name for n in nets])
    assert res.ok, f"{len(res.mismatches)} probes differ:\n{res.explain()}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_drift_in_forwards_is_detected_and_repaired(lab, eng, backend):
    eng.apply(NETWORKS)
    hv = lab.hv
    if backend == "nftables":
        hv.run("nft", "delete", "element", "inet", "vnetfw", "dnat4",
               "{", "tcp", ".", "8480", "}")
        hv.run("nft", "add", "element", "inet", "vnetfw", "dnat4",
               "{ tcp . 9999 : 10.30.1.11 . 4747 }")
        where = "dnat4"
    else:
        ipt = iptables_tool(backend, 4, "")
        rule = next(line.split(" ", 2)[2] for line in ipt_save(lab, backend).splitlines()
                    if line.startswith("-A VNETFW_DNAT ") and "--dport 8480 " in line
                    and "-p tcp" in line)
        hv.run("sh", "-c", f"{ipt} -t nat -D VNETFW_DNAT {rule}")
        hv.run(ipt, "-t", "nat", "-A", "VNETFW_DNAT", "-p", "tcp", "--dport", "9999", "-j",
               "DNAT", "--to-destination", "10.30.1.11:4747")
        where = "VNETFW_DNAT"
    drift = [str(c) for c in eng.check()]
    assert any(where in d and "8480" in d for d in drift), drift
    assert any("not written by vnetfw" in d for d in drift), drift
    assert eng.reload().changed
    assert eng.check() == []
    got = probe(lab, [("back", "up:uplink0", "web/g0", H0[4], 8480, "tcp"),
                      ("gone", "up:uplink0", "web/g1", H0[4], 9999, "tcp")])
    assert got["back"].reached and not got["gone"].reached


@pytest.mark.parametrize("backend", BACKENDS)
def test_removing_a_forward_removes_exactly_its_elements_and_teardown_leaves_nothing(
        lab, eng, backend):
    eng.apply(NETWORKS)
    web = BY_NAME["web"]
    fewer = type(web)(**{**{f: getattr(web, f) for f in web.__dataclass_fields__},
                         "port_forwards": web.port_forwards[1:]})
    rep = eng.apply([fewer])
    gone = web.port_forwards[0]
    assert rep.changes and all(c.what == "delete" and c.rule is not None
                               and c.rule.chain in ("DNAT", "FWD") for c in rep.changes), \
        [str(c) for c in rep.changes]
    assert all(c.rule.dport in (gone.port[0], PORT) for c in rep.changes)
    got = probe(lab, [("gone", "up:uplink0", "web/g0", H0[4], 8480, "tcp"),
                      ("kept", "up:uplink0", "web/g0", H0[4], 8480, "udp")])
    assert not got["gone"].reached and got["kept"].reached
    assert not eng.apply([fewer]).changed
    eng.teardown()
    text = lab.hv.run("nft", "list", "ruleset")
    if backend != "nftables":
        text += "".join(ipt_save(lab, backend, fam, table) for fam in (4, 6)
                        for table in ("nat", "filter"))
    assert "vnetfw" not in text.lower() and "dnat" not in text.lower(), text


@pytest.mark.parametrize("backend", ["iptables-nft", "iptables-legacy"])
def test_iptables_keeps_the_stage_order_around_forwards(lab, eng, backend):
    """FORWARD jumps: allows, cross, forwards' accepts, incoming, outgoing; the DNAT chain
    from PREROUTING and nat OUTPUT; removing every forward and allow keeps the chains
    (empty) and re-applying then changes nothing."""
    eng.apply(NETWORKS)
    fwd = [line.split()[-1] for line in ipt_save(lab, backend, 4, "filter").splitlines()
           if line.startswith("-A FORWARD ")]
    assert fwd == [f"VNETFW_{s}" for s in ("ALW", "FWX", "FWD", "FWI", "FWO")], fwd
    nat = ipt_save(lab, backend, 6)
    for builtin in ("PREROUTING", "OUTPUT"):
        assert f'-A {builtin} -m comment --comment vnetfw -j VNETFW_DNAT' in nat
    bare = [type(n)(**{**{f: getattr(n, f) for f in n.__dataclass_fields__},
                       "port_forwards": (), "allows": ()}) for n in NETWORKS]
    assert eng.apply(bare).changed
    assert not eng.apply(bare).changed and eng.check() == []
    assert "-A VNETFW_DNAT" not in ipt_save(lab, backend)


def test_allow_waits_for_its_network(lab, eng):
    eng.apply([BY_NAME["other"]])
    st = eng.status()
    other = next(n for n in st["networks"] if n["name"] == "other")
    assert other["allows"] == [{"to": "db", "ports": [f"udp/{PORT}"], "source": [],
                                "waiting": True}]
    # db has no firewall yet: other's guests reach it as they reach any host upstream,
    # masqueraded; the allow is not in effect.
    got = probe(lab, [("before", "other/g0", "db/g0", DB_G0[4], PORT, "udp")])
    assert got["before"].seen == "10.30.5.1"
    eng.apply([BY_NAME["db"]])
    other = next(n for n in eng.status()["networks"] if n["name"] == "other")
    assert other["allows"][0]["waiting"] is False
    got = probe(lab, [("after", "other/g0", "db/g0", DB_G0[4], PORT, "udp")])
    assert got["after"].reached and got["after"].seen == "10.30.2.10"
    # show lists the allow's rules with the network's own, and finds no drift in them
    sh = eng.show("other")
    assert sh["in_sync"] and any(r.chain == "ALW" for r in sh["rules"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_status_counts_connections_per_forward(lab, eng, capsys, backend):
    eng.apply([BY_NAME["web"]])
    probe(lab, [("a", "up:uplink0", "web/g0", H0[4], 8480, "tcp"),
                ("b", "up:uplink0", "web/g0", H0[4], 8480, "tcp")])
    web = next(n for n in eng.status()["networks"] if n["name"] == "web")
    fw = next(f for f in web["port_forwards"] if f["proto"] == "tcp" and f["port"] == "8480")
    assert fw["packets"] >= 2
    untouched = next(f for f in web["port_forwards"]
                     if f["proto"] == "udp" and f["port"] == "8682")
    assert untouched["packets"] == 0
    # --json validates against the shipped schema; the human form lists the forwards.
    import jsonschema
    st = eng.status()
    jsonschema.validate(output.status_doc(st), output.schema("status"))
    output.print_status(st)
    text = capsys.readouterr().out
    assert f"tcp *:8480 -> 10.30.1.10:{PORT}" in text and "Connections" in text


def test_show_and_status_print_forwards_with_their_connections(lab, eng):
    """``vnetfw show web`` (and status) as an admin reads them: each forward with the
    connections it translated, and the DNAT rules' counters (nftables counts those only)."""
    import json
    import subprocess
    import sys
    import jsonschema
    from vnetfw import output
    eng.apply([BY_NAME["web"]])
    probe(lab, [("a", "up:uplink0", "web/g0", H0[4], 8480, "tcp"),
                ("b", "up:uplink0", "web/g0", H0[4], 8480, "tcp")])
    common = ["--netns", lab.hv.name, "--backend", "nftables", "--state-dir", str(eng.store.dir)]

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "vnetfw", *args, *common],
                              capture_output=True, text=True)
    doc = json.loads(cli("show", "web", "--json").stdout)
    jsonschema.Draft202012Validator(output.schema("show")).validate(doc)
    fw = next(f for f in doc["port_forwards"] if f["proto"] == "tcp" and f["port"] == "8480")
    assert fw["packets"] >= 2 and not doc["counters"]
    counted = [r for r in doc["rules"] if r["packets"]]
    assert counted and all(r["chain"] == "DNAT" for r in counted)
    assert sum(r["packets"] for r in counted) == sum(f["packets"] for f in doc["port_forwards"])
    text = cli("show", "web").stdout
    assert f"{fw['text']} ({fw['packets']} connection(s))" in text
    assert "(no counters: nftables rules keep none, but for port forwards')" in text
    st = cli("status")
    jsonschema.Draft202012Validator(output.schema("status")).validate(
        json.loads(cli("status", "--json").stdout))
    assert any(fw["text"] in l and l.split()[-1] == str(fw["packets"]) and l.split()[0] == "web"
               for l in st.stdout.splitlines())
