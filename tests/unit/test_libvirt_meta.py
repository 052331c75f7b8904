"""vnetfw metadata in libvirt network XML: an open network firewalled by vnetfw as the mode
its metadata says, and every way that metadata can be wrong (one line naming file, network
and field; nothing loaded)."""

from __future__ import annotations

import ipaddress

import pytest

from vnetfw.errors import DefinitionError
from vnetfw.model import Mode, Nat
from vnetfw.sources.libvirt_xml import parse_hook_xml, parse_network_xml

NSDECL = 'xmlns:vnetfw="urn:vnetfw:network:1"'


def doc(meta: str = "", forward: str = "<forward mode='open'/>") -> str:
    return (f"<network><name>web</name>{forward}<bridge name='vb0'/>{meta}"
            "<ip address='10.0.0.1' prefix='24'><dhcp><range start='10.0.0.9' "
            "end='10.0.0.99'/></dhcp></ip></network>")


def fw(attrs: str, inner: str = "", prefix: str = "vnetfw") -> str:
    decl = NSDECL.replace("vnetfw", prefix, 1)
    return (f"<metadata><{prefix}:firewall {decl} {attrs}>{inner}</{prefix}:firewall>"
            "</metadata>")


def test_open_network_without_metadata_stays_open():
    assert parse_network_xml(doc(), "f.xml").mode is Mode.OPEN


@pytest.mark.parametrize("mode", ["nat", "route", "isolated"])
def test_open_network_is_firewalled_as_its_metadata_says(mode):
    net = parse_network_xml(doc(fw(f'mode="{mode}"')), "f.xml")
    assert (net.mode, net.forward_dev, net.nat) == (Mode(mode), None, Nat())
    assert [str(ip.subnet) for ip in net.ips] == ["10.0.0.0/24"]
    assert net.source == "f.xml"


def test_metadata_says_everything_the_toml_form_can():
    net = parse_network_xml(doc(fw('mode="nat" dev="eth0"',
                                   '<vnetfw:nat ipv6="yes"><vnetfw:port start="2000" end="3000"/>'
                                   '<vnetfw:address start="203.0.113.10" end="203.0.113.20"/>'
                                   "</vnetfw:nat>")), "f.xml")
    assert net.mode is Mode.NAT and net.forward_dev == "eth0"
    assert net.nat == Nat(2000, 3000, ipaddress.IPv4Address("203.0.113.10"),
                          ipaddress.IPv4Address("203.0.113.20"), True)


def test_elements_are_found_by_namespace_not_prefix():
    net = parse_network_xml(doc(fw('mode="route"', prefix="x")), "f.xml")
    assert net.mode is Mode.ROUTE


def test_other_applications_metadata_is_ignored():
    other = "<metadata><app:x xmlns:app='urn:other'><app:firewall mode='nat'/></app:x></metadata>"
    assert parse_network_xml(doc(other), "f.xml").mode is Mode.OPEN


def test_forward_dev_of_the_open_forward_counts_when_metadata_has_none():
    net = parse_network_xml(doc(fw('mode="nat"'), "<forward mode='open' dev='eth1'/>"), "f.xml")
    assert net.forward_dev == "eth1"


def test_hook_input_holds_the_network():
    data = "<hookData>" + doc(fw('mode="isolated"')) + "</hookData>"
    net = parse_hook_xml(data, "hook")
    assert (net.name, net.mode, net.source) == ("web", Mode.ISOLATED, "hook")


@pytest.mark.parametrize("forward, mode", [("<forward/>", "nat"),
                                           ("<forward mode='route'/>", "route"),
                                           ("", "isolated")])
def test_a_network_libvirt_firewalls_may_not_carry_vnetfw_metadata(forward, mode):
    with pytest.raises(DefinitionError) as ei:
        parse_network_xml(doc(fw('mode="nat"'), forward), "f.xml")
    e = ei.value
    assert (e.source, e.network, e.field) == ("f.xml", "web", "metadata")
    assert f"libvirt already firewalls a {mode} network" in e.problem
    assert "vnetfw libvirt convert f.xml" in e.problem


BAD = [
    (fw('mode="bridge"'), "vnetfw:firewall mode", "must be one of"),
    (fw(""), "vnetfw:firewall mode", "missing"),
    (fw('mode="nat" colour="red"'), "vnetfw:firewall colour", "unknown attribute"),
    (fw('mode="nat"', "<vnetfw:nta/>"), "vnetfw:firewall nta", "unknown element"),
    (fw('mode="nat"', "<o:nat xmlns:o='urn:o'/>"), "vnetfw:firewall nat", "unknown element"),
    (fw('mode="nat"', "text"), "vnetfw:firewall", "attributes only"),
    (fw('mode="nat"', "<vnetfw:nat/><vnetfw:nat/>"), "vnetfw:nat", "given twice"),
    (fw('mode="isolated"', "<vnetfw:nat/>"), "vnetfw:nat", "need mode='nat'"),
    (fw('mode="route"', "<vnetfw:nat/>"), "vnetfw:nat", "need mode='nat'"),
    (fw('mode="isolated" dev="eth0"'), "vnetfw:firewall dev", "no forward device"),
    (fw('mode="nat" dev="a/b"'), "forward dev", "may not contain"),
    (fw('mode="nat"', '<vnetfw:nat><vnetfw:port start="x" end="9"/></vnetfw:nat>'),
     "vnetfw:nat port", "not a port number"),
    (fw('mode="nat"', '<vnetfw:nat><vnetfw:port start="9"/></vnetfw:nat>'),
     "vnetfw:port end", "missing"),
    (fw('mode="nat"', '<vnetfw:nat><vnetfw:port start="9" end="5"/></vnetfw:nat>'),
     "nat port", "1 <= start <= end"),
    (fw('mode="nat"', '<vnetfw:nat ipv6="maybe"/>'), "vnetfw:nat ipv6", "'yes' or 'no'"),
    (fw('mode="nat"', '<vnetfw:nat><vnetfw:address start="::1"/></vnetfw:nat>'),
     "vnetfw:nat address", "IPv4"),
    (fw('mode="nat"', '<vnetfw:nat><vnetfw:port start="1" end="2"><vnetfw:x/></vnetfw:port>'
                      "</vnetfw:nat>"), "vnetfw:port x", "unknown element"),
    ("<metadata><vnetfw:nat " + NSDECL + "/></metadata>", "vnetfw:nat", "expected vnetfw:firewall"),
    (fw('mode="nat"') + fw('mode="nat"'), "vnetfw:firewall", "given twice"),
    ("<metadata><v:firewall xmlns:v='urn:vnetfw:network:2' mode='nat'/></metadata>", "metadata",
     "unknown vnetfw namespace"),
    ("<vnetfw:firewall " + NSDECL + " mode='nat'/>", "vnetfw:firewall", "inside <metadata>"),
]


@pytest.mark.parametrize("meta, field, says", BAD)
def test_bad_metadata_is_one_line_naming_file_network_and_field(meta, field, says):
    with pytest.raises(DefinitionError) as ei:
        parse_network_xml(doc(meta), "f.xml")
    e = ei.value
    assert (e.source, e.network, e.field) == ("f.xml", "web", field), str(e)
    assert says in e.problem
    assert "\n" not in str(e)


def test_an_unbound_prefix_is_malformed_xml():
    with pytest.raises(DefinitionError, match="malformed XML: unbound prefix"):
        parse_network_xml(doc("<metadata><vnetfw:firewall mode='nat'/></metadata>"), "f.xml")


def test_hook_input_without_vnetfw_metadata_is_none_of_vnetfws_business():
    assert parse_hook_xml("<hookData>" + doc() + "</hookData>", "hook") is None
    assert parse_hook_xml("<hookData>" + doc(forward="<forward/>") + "</hookData>", "h") is None


@pytest.mark.parametrize("data, says", [("<network/>", "expected <hookData>"),
                                        ("<hookData/>", "expected <hookData>"),
                                        ("<hookData>", "malformed XML")])
def test_bad_hook_input(data, says):
    with pytest.raises(DefinitionError, match=says):
        parse_hook_xml(data, "hook")


def test_port_forwards_and_allows_in_metadata_are_the_toml_forms():
    from vnetfw.sources.toml import parse_toml
    inner = ('<vnetfw:port-forward proto="tcp" port="8080" to="10.0.0.10" to-port="80" '
             'host-address="203.0.113.5" source="198.51.100.0/24 192.0.2.7"/>'
             '<vnetfw:port-forward proto="udp" port="2200-2201" to="10.0.0.11"/>'
             '<vnetfw:allow to="db" ports="tcp/5432 udp/53" source="10.0.0.0/28"/>'
             '<vnetfw:allow to="web2"/>')
    net = parse_network_xml(doc(fw('mode="nat"', inner)), "f.xml")
    (toml,) = parse_toml("""
name = "web"
bridge = "vb0"
mode = "nat"
ip = [{ address = "10.0.0.1", prefix = 24, dhcp = true }]
allow = [{ to = "db", ports = ["tcp/5432", "udp/53"], source = ["10.0.0.0/28"] }, { to = "web2" }]
[[port_forward]]
proto = "tcp"
port = 8080
to = "10.0.0.10"
to_port = 80
host_address = "203.0.113.5"
source = ["198.51.100.0/24", "192.0.2.7"]
[[port_forward]]
proto = "udp"
port = "2200-2201"
to = "10.0.0.11"
""", "f.xml")
    assert net == toml
    assert len(net.port_forwards) == 2 and len(net.allows) == 2


@pytest.mark.parametrize("inner, field, says", [
    ('<vnetfw:port-forward port="80" to="10.0.0.10"/>', "vnetfw:port-forward proto", "missing"),
    ('<vnetfw:port-forward proto="sctp" port="80" to="10.0.0.10"/>',
     "vnetfw:port-forward[0] proto", "must be"),
    ('<vnetfw:port-forward proto="tcp" port="80-81" to="10.0.0.10" to-port="80"/>',
     "vnetfw:port-forward[0] to-port", "one to one"),
    ('<vnetfw:port-forward proto="tcp" port="80" to="10.0.0.10"/>'
     '<vnetfw:port-forward proto="tcp" port="80x" to="10.0.0.10"/>',
     "vnetfw:port-forward[1] port", "not a port"),
    ('<vnetfw:port-forward proto="tcp" port="80" to="10.0.0.10" colour="x"/>',
     "vnetfw:port-forward colour", "unknown attribute"),
    ('<vnetfw:port-forward proto="tcp" port="80" to="10.9.0.10"/>', "port_forward[0].to",
     "outside the network's subnets"),
    ('<vnetfw:allow to="db" ports="tcp/5432 sctp"/>', "vnetfw:allow[0] ports", "tcp or udp"),
    ('<vnetfw:allow to="db" source="10.9.0.0/28"/>', "allow[0].source", "not part of"),
])
def test_bad_forwards_and_allows_in_metadata(inner, field, says):
    with pytest.raises(DefinitionError) as ei:
        parse_network_xml(doc(fw('mode="nat"', inner)), "f.xml")
    assert (ei.value.source, ei.value.network, ei.value.field) == ("f.xml", "web", field)
    assert says in ei.value.problem


def test_no_forward_into_an_isolated_network_from_metadata_either():
    with pytest.raises(DefinitionError, match="cannot have port forwards"):
        parse_network_xml(doc(fw('mode="isolated"', '<vnetfw:port-forward proto="tcp" '
                                 'port="80" to="10.0.0.10"/>')), "f.xml")
