"""vnetfw under a real libvirtd (Debian 12's 9.0), confined to namespaces the test made
(``vnetfw.lab.libvirtd``), with the hook installed by ``vnetfw libvirt-hook install`` into
that daemon's own hooks folder. Open networks carrying vnetfw metadata are defined and
started with virsh; real packets prove the policy; the rules come and go with the networks.

One daemon serves the module (a start costs ~0.2 s, networks ~0.5 s each); every test
leaves it with no network defined.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vnetfw.lab import libvirtd as lv
from vnetfw.lab.netns import Netns
from vnetfw.lab.probe import PORT, new_probe, run_probes, start_listeners

pytestmark = pytest.mark.netns

META = ('<metadata><vnetfw:firewall xmlns:vnetfw="urn:vnetfw:network:1" mode="{mode}"{attrs}>'
        "{inner}</vnetfw:firewall></metadata>")
UP_HV, UP_HOST = "203.0.113.1", "203.0.113.2"


def net_xml(name: str, bridge: str, third: int, mode: str | None = None, attrs: str = "",
            inner: str = "", forward: str = "<forward mode='open'/>") -> str:
    meta = META.format(mode=mode, attrs=attrs, inner=inner) if mode else ""
    return (f"<network><name>{name}</name>{forward}<bridge name='{bridge}' stp='off'/>{meta}"
            f"<ip address='10.50.{third}.1' prefix='24'><dhcp><range start='10.50.{third}.100'"
            f" end='10.50.{third}.200'/></dhcp></ip></network>")


class Host:
    """The confined daemon, its namespace, and vnetfw as the hook runs it."""

    def __init__(self, ns: Netns, base: Path) -> None:
        self.ns = ns
        self.base = base
        self.state = base / "state"
        self.vhooks = base / "vnetfw-hooks"        # vnetfw's own hooks: an event log
        self.vhooks.mkdir()
        self.events = base / "events.log"
        log = self.vhooks / "log"
        log.write_text(f'#!/bin/sh\necho "$1 $2" >> {self.events}\ncat >/dev/null\n')
        log.chmod(0o755)
        self.d = lv.Libvirtd(ns, base / "libvirt")

    def vnetfw(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """vnetfw with the hook's state, inside the daemon's namespace."""
        p = subprocess.run(self.ns.argv(sys.executable, "-m", "vnetfw", "--state-dir",
                                        str(self.state), "--hooks-dir", str(self.vhooks),
                                        *args), capture_output=True, text=True, timeout=120)
        if check and p.returncode != 0:
            raise AssertionError(f"vnetfw {' '.join(args)}: {p.stderr}")
        return p

    def install(self) -> None:
        out = self.vnetfw("libvirt-hook", "install", "--hooks-dir", str(self.d.hooks_dir))
        assert "restart libvirtd" in out.stdout

    def active(self) -> list[str]:
        return [n["name"] for n in json.loads(self.vnetfw("list", "--json").stdout)["networks"]]

    def doctor(self) -> set[str]:
        """The codes of doctor's libvirt problems (it looks through the daemon's eyes)."""
        rep = json.loads(self.vnetfw("doctor", "--json", check=False).stdout)
        return {f["code"] for f in rep["findings"]
                if "libvirt" in f["code"] and f["severity"] == "problem"}

    def ruleset(self) -> str:
        return self.ns.run("nft", "list", "ruleset")

    def start(self, xml: str, name: str) -> subprocess.CompletedProcess:
        self.d.define(xml)
        return self.d.virsh("net-start", name, check=False)


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    if (why := lv.missing()) is not None:
        pytest.skip(why)
    ns = Netns.create(f"vnt{os.getpid()}-lvd")
    h = Host(ns, tmp_path_factory.mktemp("libvirtd"))
    try:
        ns.sysctl({"net.ipv4.ip_forward": 1})
        h.install()
        h.d.start()
        yield h
    finally:
        try:
            h.d.clear() if h.d.proc else None
        finally:
            h.d.kill_all()
            ns.delete()


@pytest.fixture
def lv_host(host):
    yield host
    if host.d.proc is None:
        host.d.start()
    host.d.clear()
    host.events.unlink(missing_ok=True)


def _no_libvirt_rules(h: Host) -> None:
    """libvirt wrote nothing: no LIBVIRT_* chain, no libvirt nftables table."""
    assert "LIBVIRT" not in h.ns.run("iptables-save") + h.ns.run("ip6tables-save")
    assert "libvirt" not in h.ns.run("nft", "list", "tables")


def test_open_networks_are_firewalled_per_their_metadata_with_real_packets(lv_host):
    h = lv_host
    # the nat network publishes its guest's probe port on the host (from the metadata)
    forward = f'<vnetfw:port-forward proto="tcp" port="{PORT}" to="10.50.1.10"/>'
    for name, br, third, mode in (("natnet", "vbn", 1, "nat"), ("routenet", "vbr", 2, "route"),
                                  ("isonet", "vbi", 3, "isolated")):
        p = h.start(net_xml(name, br, third, mode, inner=forward if mode == "nat" else ""),
                    name)
        assert p.returncode == 0, p.stderr
    assert sorted(h.active()) == ["isonet", "natnet", "routenet"]
    assert h.vnetfw("check").returncode == 0
    _no_libvirt_rules(h)
    made: list[Netns] = []
    try:
        up = Netns.create(f"vnt{os.getpid()}-lvu")
        made.append(up)
        h.ns.ip("link", "add", "uplink", "type", "veth", "peer", "name", "eth0", "netns",
                up.name)
        h.ns.ip("addr", "add", f"{UP_HV}/24", "dev", "uplink")
        h.ns.ip("link", "set", "uplink", "up")
        h.ns.ip("route", "add", "default", "via", UP_HOST)
        up.ip("addr", "add", f"{UP_HOST}/24", "dev", "eth0")
        up.ip("link", "set", "eth0", "up")
        up.ip("route", "add", "10.50.0.0/16", "via", UP_HV)
        guests = {}
        for tag, br, third in (("n", "vbn", 1), ("r", "vbr", 2), ("i", "vbi", 3)):
            g = Netns.create(f"vnt{os.getpid()}-lg{tag}")
            made.append(g)
            h.ns.ip("link", "add", f"vg{tag}", "type", "veth", "peer", "name", "eth0",
                    "netns", g.name)
            h.ns.ip("link", "set", f"vg{tag}", "master", br, "up")
            g.ip("addr", "add", f"10.50.{third}.10/24", "dev", "eth0")
            g.ip("link", "set", "eth0", "up")
            g.ip("route", "add", "default", "via", f"10.50.{third}.1")
            guests[tag] = g
        nss = {n.name: n for n in made}
        listeners = start_listeners(made)
        try:
            gn, gr, gi = guests["n"].name, guests["r"].name, guests["i"].name
            want = {  # (src, dst, address): reached, source address seen
                (gn, up.name, UP_HOST): (True, UP_HV),           # masqueraded
                (gr, up.name, UP_HOST): (True, "10.50.2.10"),    # routed: kept
                (gi, up.name, UP_HOST): (False, None),
                (up.name, gn, "10.50.1.10"): (False, None),      # nat: nothing new in
                (up.name, gn, UP_HV): (True, UP_HOST),           # ... but the forward
                (up.name, gr, "10.50.2.10"): (True, UP_HOST),
                (up.name, gi, "10.50.3.10"): (False, None),
                (gn, gi, "10.50.3.10"): (False, None),
                (gi, gn, "10.50.1.10"): (False, None),
                (gi, gr, "10.50.2.10"): (False, None),           # no leak (default profile)
            }
            probes = {new_probe(s, d, a, proto): w for (s, d, a), w in want.items()
                      for proto in ("tcp", "udp")
                      if proto == "tcp" or a != UP_HV}          # the forward is tcp only
            probes[new_probe(up.name, gn, UP_HV, "udp")] = (False, None)
            got = run_probes(nss, listeners, probes)
            wrong = {f"{p.proto} {p.src_ns}->{p.addr}": (got[p].reached, got[p].seen)
                     for p, w in probes.items() if (got[p].reached, got[p].seen) != w}
            assert not wrong
        finally:
            for lst in listeners.values():
                lst.close()
    finally:
        for n in made:
            n.delete()


def _mentions(ruleset: str, *words: str) -> list[str]:
    """The rules and verdict-map elements of ``ruleset`` that name any of ``words``, each
    alone (nft prints a map's elements several to a line, wrapped where it likes)."""
    items = []
    for line in ruleset.splitlines():
        line = line.strip().removeprefix("elements = {").strip()
        items += [i.strip(" }") for i in line.split(",")] if " : " in line else [line]
    return sorted(i for i in items if any(w in i for w in words))


def test_net_destroy_removes_exactly_that_networks_rules(lv_host):
    h = lv_host
    for name, br, third, mode in (("keep", "vbk", 4, "nat"), ("gone", "vbg", 5, "isolated")):
        assert h.start(net_xml(name, br, third, mode), name).returncode == 0
    before = h.ruleset()
    kept = _mentions(before, "vbk", "10.50.4.", "-keep")
    assert kept and "vbg" in before
    h.d.virsh("net-destroy", "gone")
    after = h.ruleset()
    assert "vbg" not in after and "10.50.5." not in after and "-gone" not in after
    assert _mentions(after, "vbk", "10.50.4.", "-keep") == kept
    assert h.active() == ["keep"]
    assert h.vnetfw("check").returncode == 0
    h.d.virsh("net-destroy", "keep")
    assert h.active() == [] and "vbk" not in h.ruleset()


def test_bad_metadata_fails_net_start_with_vnetfws_message_and_applies_nothing(lv_host):
    h = lv_host
    before = h.ruleset()
    p = h.start(net_xml("bad", "vbx", 6, "nat", attrs=' dev="no/slash"'), "bad")
    assert p.returncode != 0
    assert "vnetfw: error: libvirt hook input: network 'bad': forward dev:" in p.stderr
    assert "bad" not in h.d.networks(all_=False)
    assert h.ruleset() == before and h.active() == []
    p = h.start(net_xml("bad2", "vby", 9, "nat", inner="<vnetfw:nta/>"), "bad2")
    assert p.returncode != 0 and "vnetfw:firewall nta: unknown element" in p.stderr


def test_an_open_network_without_metadata_gets_nothing(lv_host):
    h = lv_host
    before = h.ruleset()
    assert h.start(net_xml("plain", "vbp", 7), "plain").returncode == 0
    assert h.ruleset() == before and h.active() == []
    _no_libvirt_rules(h)


def test_a_new_hook_counts_after_a_daemon_restart_and_applies_once(lv_host):
    h = lv_host
    h.vnetfw("libvirt-hook", "uninstall", "--hooks-dir", str(h.d.hooks_dir))
    # with the hook gone from its folder, the running daemon starts networks as before
    assert h.start(net_xml("plain", "vbp", 7), "plain").returncode == 0
    h.d.clear()
    h.d.restart()                                  # now it knows of no hook at all
    h.d.define(net_xml("web", "vbw", 8, "nat"))
    assert h.doctor() == {"libvirt-hook-missing"}
    h.install()
    assert h.doctor() == {"libvirt-hook-unseen"}
    assert h.d.virsh("net-start", "web", check=False).returncode == 0
    assert h.active() == []                        # not seen yet: libvirt ran no hook
    assert h.doctor() == {"libvirt-hook-unseen", "libvirt-network-unfirewalled"}
    h.d.virsh("net-destroy", "web")
    h.d.restart()
    assert h.doctor() == set()
    assert h.d.virsh("net-start", "web", check=False).returncode == 0
    assert h.active() == ["web"]
    assert h.events.read_text().splitlines() == ["web added"]
    assert h.vnetfw("check").returncode == 0
    assert h.doctor() == set()


FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "libvirt"


def test_convert_round_trips_every_fixture_through_libvirt(lv_host):
    """Each converted fixture is accepted by libvirt as it is, and what libvirt keeps
    (net-dumpxml) is the same network to vnetfw as the original."""
    import dataclasses
    from vnetfw.sources.libvirt_convert import convert
    from vnetfw.sources.libvirt_xml import parse_network_xml
    h = lv_host
    for path in sorted(FIXTURES.glob("*.xml")):
        original = parse_network_xml(path.read_bytes(), str(path))
        h.d.define(convert(path.read_bytes(), str(path)))
        kept = parse_network_xml(h.d.virsh("net-dumpxml", "default").stdout, "dump")
        assert dataclasses.replace(kept, source="") == \
            dataclasses.replace(original, source=""), path.name
        h.d.virsh("net-undefine", "default")


LISTEN = ("import socket,sys\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,"
          "socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',int(sys.argv[1])))\ns.listen(128)\n"
          "print('ready',flush=True)\nwhile True:\n c,_=s.accept()\n c.close()\n")
CONNECT = ("import socket,sys,time\nok=fail=0\nend=time.time()+float(sys.argv[3])\n"
           "while time.time()<end:\n try:\n  socket.create_connection((sys.argv[1],"
           "int(sys.argv[2])),timeout=0.3).close()\n  ok+=1\n except OSError:\n  fail+=1\n"
           " time.sleep(0.01)\nprint(ok,fail)\n")


def _uplink_and_guest(hv: Netns, net: str, uplink: str, tag: str,
                      made: list[Netns]) -> tuple[Netns, Netns]:
    """An upstream host (198.51.100.2, behind veth ``uplink`` of ``hv``, routing ``net``.0/24
    through it) and a guest ``net``.10 on bridge vbd; both namespaces go into ``made``
    as soon as they exist, for the caller to delete."""
    up = Netns.create(f"vnt{os.getpid()}-{tag}u")
    made.append(up)
    g = Netns.create(f"vnt{os.getpid()}-{tag}g")
    made.append(g)
    hv.ip("link", "add", uplink, "type", "veth", "peer", "name", "eth0", "netns", up.name)
    hv.ip("addr", "add", "198.51.100.1/24", "dev", uplink)
    hv.ip("link", "set", uplink, "up")
    up.ip("addr", "add", "198.51.100.2/24", "dev", "eth0")
    up.ip("link", "set", "eth0", "up")
    up.ip("route", "add", f"{net}.0/24", "via", "198.51.100.1")
    hv.ip("link", "add", "vga", "type", "veth", "peer", "name", "eth0", "netns", g.name)
    hv.ip("link", "set", "vga", "master", "vbd", "up")
    g.ip("addr", "add", f"{net}.10/24", "dev", "eth0")
    g.ip("link", "set", "eth0", "up")
    g.ip("route", "add", "default", "via", f"{net}.1")
    return up, g


def _listen(ns: Netns, port: int) -> subprocess.Popen:
    p = subprocess.Popen(ns.argv(sys.executable, "-c", LISTEN, str(port)),
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def _connect_loop(ns: Netns, addr: str, port: int, seconds: float) -> subprocess.Popen:
    return subprocess.Popen(ns.argv(sys.executable, "-c", CONNECT, addr, str(port),
                                    str(seconds)), stdout=subprocess.PIPE, text=True)


def test_convert_and_migrate_adopt_take_libvirts_network_over_with_no_gap(lv_host, tmp_path):
    """The walk-through of docs/libvirt.md for a nat network libvirt firewalls (its
    iptables backend: LIBVIRT_* chains): convert, net-define, migrate --adopt while new
    connections go out every 10 ms (every one gets through) and come in from upstream (none
    does: flushing libvirt's chains first instead lets some in, which this test was checked
    to catch); then restart the network, now open and firewalled by the hook; and back."""
    h = lv_host
    original = tmp_path / "default.xml"
    original.write_text("<network><name>default</name><forward mode='nat'/>"
                        "<bridge name='vbd' stp='off'/><ip address='10.50.20.1' "
                        "prefix='24'/></network>")
    h.d.define(original.read_text())
    h.d.virsh("net-start", "default")
    assert "-i vbd" in h.ns.run("iptables-save") and h.active() == []
    made: list[Netns] = []
    procs: list[subprocess.Popen] = []
    try:
        up, g = _uplink_and_guest(h.ns, "10.50.20", "uplink2", "lva", made)
        procs += [_listen(up, 5001), _listen(g, 5002)]
        out = _connect_loop(g, "198.51.100.2", 5001, 3.0)
        inn = _connect_loop(up, "10.50.20.10", 5002, 3.0)
        dumped = tmp_path / "default.dump.xml"         # with its uuid, as libvirt wants it
        dumped.write_text(h.d.virsh("net-dumpxml", "--inactive", "default").stdout)
        converted = tmp_path / "default.open.xml"
        converted.write_text(h.vnetfw("libvirt", "convert", str(dumped)).stdout)
        h.d.virsh("net-define", str(converted))      # takes effect at the next start
        import time
        time.sleep(0.5)
        mig = h.vnetfw("migrate", "--adopt", str(converted))
        ok, fail = map(int, out.communicate(timeout=30)[0].split())
        iok, _ = map(int, inn.communicate(timeout=30)[0].split())
        assert (fail, iok) == (0, 0) and ok > 50, mig.stdout
        saved = h.ns.run("iptables-save")
        assert "vbd" not in "\n".join(l for l in saved.splitlines() if "LIBVIRT_" in l
                                      and l.startswith("-A"))
        assert h.active() == ["default"] and h.vnetfw("check").returncode == 0
        # Until the network restarts, a daemon restart re-adds libvirt's rules for it (it
        # still runs as nat); adopting again takes them over again.
        assert h.doctor() == set(), h.vnetfw("doctor").stdout
        h.d.restart()
        assert "-i vbd" in h.ns.run("iptables-save")
        assert h.doctor() == {"other-manager-libvirt"}     # firewalled by both
        h.vnetfw("migrate", "--adopt", str(converted))
        assert h.doctor() == set()
        assert "-i vbd -j REJECT" not in h.ns.run("iptables-save")
        # The next start is the open network: libvirt writes nothing, the hook applies it.
        h.d.virsh("net-destroy", "default")
        h.d.virsh("net-start", "default")
        saved = h.ns.run("iptables-save")
        assert not [l for l in saved.splitlines() if l.startswith("-A LIBVIRT_")]
        assert h.active() == ["default"] and h.vnetfw("check").returncode == 0
        # And back out: libvirt's own definition again; the restart hands the network back.
        h.d.virsh("net-define", str(dumped))
        h.d.virsh("net-destroy", "default")
        assert h.active() == [] and "vbd" not in h.ruleset()
        h.d.virsh("net-start", "default")
        assert "-i vbd" in h.ns.run("iptables-save") and h.active() == []
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for n in made:
            n.delete()


def test_net_update_re_applies_through_updated_begin(lv_host):
    """virsh net-update (here: a static DHCP host, which a port forward may name) runs the
    hook's 'updated begin' with the new definition: vnetfw re-applies it."""
    h = lv_host
    assert h.start(net_xml("upd", "vbu", 10, "nat"), "upd").returncode == 0
    h.d.virsh("net-update", "upd", "add", "ip-dhcp-host",
              "<host mac='52:54:00:00:00:01' name='www' ip='10.50.10.50'/>", "--live",
              "--config")
    assert h.events.read_text().splitlines() == ["upd added", "upd updated"]
    (net,) = [n for n in json.loads(h.vnetfw("list", "--json").stdout)["networks"]]
    assert net["ip"][0]["hosts"] == [{"name": "www", "ip": "10.50.10.50"}]
    assert h.vnetfw("check").returncode == 0
