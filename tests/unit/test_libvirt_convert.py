"""``vnetfw libvirt convert``: every libvirt network libvirt firewalls comes out as an open
network whose metadata means exactly the same to vnetfw (the same ``Network``), with
everything else kept; what there is nothing to convert in is refused. (Through a real
libvirtd: tests/netns/test_libvirt.py.)"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from vnetfw.cli import main
from vnetfw.errors import DefinitionError
from vnetfw.model import Mode
from vnetfw.sources.libvirt_convert import convert
from vnetfw.sources.libvirt_xml import parse_network_xml

LIBVIRT = Path(__file__).resolve().parent.parent / "fixtures" / "libvirt"
MORE = {
    "snat-range-dev": "<network><name>s</name><uuid>0c2c7c06-1111-4f3e-9d5e-2a3a4b5c6d7e</uuid>"
                      "<forward mode='nat' dev='eth1'><nat><address start='203.0.113.10' "
                      "end='203.0.113.20'/><port start='2000' end='3000'/></nat>"
                      "<interface dev='eth1'/></forward><bridge name='vs0'/><mac address="
                      "'52:54:00:aa:bb:cc'/><domain name='lab'/><ip address='10.9.0.1' "
                      "prefix='24'/></network>",
    "route-dev": "<network><name>r</name><forward mode='route' dev='eth0'/><bridge name='vr0'/>"
                 "<ip address='10.8.0.1' netmask='255.255.255.0'/></network>",
    "isolated-nogw": "<network ipv6='yes'><name>i</name><bridge name='vi0'/><metadata>"
                     "<app:x xmlns:app='urn:app'>kept &amp; escaped</app:x></metadata>"
                     "<ip address='10.7.0.1' prefix='24'/></network>",
}


def cases():
    for p in sorted(LIBVIRT.glob("*.xml")):
        yield p.stem, p.read_bytes()
    yield from ((k, v.encode()) for k, v in MORE.items())


def same(a, b):
    return dataclasses.replace(a, source="") == dataclasses.replace(b, source="")


@pytest.mark.parametrize("case, data", list(cases()), ids=[c for c, _ in cases()])
def test_convert_round_trips_to_the_same_network(case, data):
    before = parse_network_xml(data, "in.xml")
    out = convert(data, "in.xml")
    after = parse_network_xml(out, "out.xml")
    assert same(before, after)
    assert "<forward mode='open'/>" in out and before.mode is not Mode.OPEN
    with pytest.raises(DefinitionError, match="open already"):
        convert(out, "out.xml")


def test_convert_keeps_everything_else():
    out = convert(MORE["snat-range-dev"], "x")
    for kept in ("<uuid>0c2c7c06-1111-4f3e-9d5e-2a3a4b5c6d7e</uuid>", "<domain name='lab'/>",
                 "<mac address='52:54:00:aa:bb:cc'/>", "<bridge name='vs0'/>"):
        assert kept in out
    assert "<interface" not in out and "<nat>" not in out
    out = convert(MORE["isolated-nogw"], "x")
    assert "<app:x xmlns:app='urn:app'>kept &amp; escaped</app:x>" in out
    assert out.startswith("<network ipv6='yes'>")


@pytest.mark.parametrize("doc, field, says", [
    ("<network><name>b</name><forward mode='bridge'/><bridge name='br0'/></network>",
     "forward mode", "nothing to convert"),
    ("<network><name>n</name><forward/><bridge name='v0'/></network>", "ip", "without an <ip>"),
    ("<network><name>n</name><forward/><bridge name='v0'/><metadata><v:firewall "
     "xmlns:v='urn:vnetfw:network:1' mode='route'/></metadata><ip address='10.0.0.1'/>"
     "</network>", "metadata", "already carries vnetfw metadata"),
    ("<network><name>n</name><forward mode='nat'><nat><port start='x' end='1'/></nat>"
     "</forward><bridge name='v0'/><ip address='10.0.0.1'/></network>", "nat port",
     "not a port number"),
])
def test_convert_refuses(doc, field, says):
    with pytest.raises(DefinitionError) as ei:
        convert(doc, "f.xml")
    assert (ei.value.source, ei.value.field) == ("f.xml", field) and says in ei.value.problem


def test_the_cli_prints_the_converted_file(capsys, tmp_path):
    assert main(["libvirt", "convert", str(LIBVIRT / "nat-default.xml")]) == 0
    assert same(parse_network_xml(capsys.readouterr().out),
                parse_network_xml((LIBVIRT / "nat-default.xml").read_bytes()))
    assert main(["libvirt", "convert", str(tmp_path / "none.xml")]) == 2
    assert "cannot read" in capsys.readouterr().err
