"""Definition sources: libvirt XML and TOML -> model, and every way a definition can be wrong.

Every reference XML (libvirt's own test inputs) must load into exactly the model it describes;
TOML written for the same network must load into the same model; every invalid input must be
refused with ONE line that names the file, the network (when it is known) and the field.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import shutil
from pathlib import Path

import pytest

from vnetfw.errors import DefinitionError
from vnetfw.model import Mode, Network, validate_together
from vnetfw.sources import load_file, load_paths
from vnetfw.sources.libvirt_xml import parse_network_xml
from vnetfw.sources.toml import parse_toml

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
LIBVIRT = FIXTURES / "libvirt"
INVALID = FIXTURES / "invalid"


def _bug(why: str):
    """Marks a known bug in src/ found by these tests: the test states the right behaviour
    and is expected to fail until the bug is fixed (strict: once it passes, remove the mark)."""
    return pytest.mark.xfail(strict=True, reason=f"BUG: {why}")


# ---------------------------------------------------------------------------------------------
# Every reference XML loads, into exactly the model it describes.

V6 = "2001:db8:ca2:2::1/64"
# case: (mode, forward dev, [(address/prefix, dhcp)], tftp root, nat ports, nat ipv6)
EXPECTED = {
    "forward-dev": (Mode.NAT, "enp0s7", [("192.168.122.1/24", True)], None, (1024, 65535), False),
    "isolated": (Mode.ISOLATED, None, [("192.168.122.1/24", True), ("192.168.128.1/24", False),
                                       (V6, True)], None, (1024, 65535), False),
    "nat-default": (Mode.NAT, None, [("192.168.122.1/24", True)], None, (1024, 65535), False),
    "nat-ipv6": (Mode.NAT, None, [("192.168.122.1/24", True), (V6, True)], None,
                 (1024, 65535), False),
    "nat-ipv6-masquerade": (Mode.NAT, None, [("192.168.122.1/24", True), (V6, True)], None,
                            (1024, 65535), True),
    "nat-many-ips": (Mode.NAT, None, [("192.168.122.1/24", True), ("192.168.128.1/24", False),
                                      ("192.168.150.1/24", False)], None, (1024, 65535), False),
    "nat-no-dhcp": (Mode.NAT, None, [("192.168.122.1/24", False), (V6, False)], None,
                    (1024, 65535), False),
    "nat-port-range": (Mode.NAT, None, [("192.168.122.1/24", True), ("192.168.128.1/24", False),
                                        (V6, True)], None, (500, 1000), False),
    "nat-port-range-ipv6": (Mode.NAT, None, [("192.168.122.1/24", True),
                                             ("192.168.128.1/24", False), (V6, True)], None,
                            (500, 1000), True),
    "nat-tftp": (Mode.NAT, None, [("192.168.122.1/24", True)], "/some/dir", (1024, 65535), False),
    "route-default": (Mode.ROUTE, None, [("192.168.122.1/24", True)], None, (1024, 65535), False),
}


def test_every_reference_case_has_an_expectation():
    assert sorted(p.stem for p in LIBVIRT.glob("*.xml")) == sorted(EXPECTED)


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_reference_xml_loads(case):
    mode, dev, ips, tftp, ports, nat6 = EXPECTED[case]
    path = LIBVIRT / f"{case}.xml"
    (net,) = load_paths([path])
    assert (net.name, net.bridge, net.mode, net.forward_dev) == ("default", "virbr0", mode, dev)
    assert [(f"{ip.address}/{ip.prefix}", ip.dhcp) for ip in net.ips] == ips
    assert [str(ip.subnet) for ip in net.ips] == \
        [str(ipaddress.ip_interface(a).network) for a, _ in ips]
    assert [ip.tftp_root for ip in net.ips] == [tftp] + [None] * (len(ips) - 1)
    assert (net.nat.port_start, net.nat.port_end, net.nat.ipv6) == (*ports, nat6)
    assert (net.nat.address_start, net.nat.address_end) == (None, None)
    assert net.ipv6_nogw is False
    assert net.source == str(path)


# TOML written by hand for some reference cases: must give the very same Network.
TOML_EQUIVALENTS = {
    "nat-default": """
        name = "default"
        bridge = "virbr0"
        [[ip]]
        address = "192.168.122.1"
        netmask = "255.255.255.0"
        dhcp = true
    """,
    "forward-dev": """
        name = "default"
        bridge = "virbr0"
        mode = "nat"
        forward_dev = "enp0s7"
        [[ip]]
        address = "192.168.122.1"
        prefix = 24
        dhcp = true
    """,
    "isolated": """
        [[network]]
        name = "default"
        bridge = "virbr0"
        mode = "isolated"
        [[network.ip]]
        address = "192.168.122.1"
        prefix = 24
        dhcp = true
        [[network.ip]]
        address = "192.168.128.1"
        prefix = 24
        [[network.ip]]
        address = "2001:db8:ca2:2::1"
        prefix = 64
        dhcp = true
    """,
    "nat-port-range-ipv6": """
        name = "default"
        bridge = "virbr0"
        mode = "nat"
        nat = { ports = [500, 1000], ipv6 = true }
        [[ip]]
        address = "192.168.122.1"
        prefix = 24
        dhcp = true
        [[ip]]
        address = "192.168.128.1"
        prefix = 24
        [[ip]]
        address = "2001:db8:ca2:2::1"
        prefix = 64
        dhcp = true
    """,
    "nat-tftp": """
        name = "default"
        bridge = "virbr0"
        [[ip]]
        address = "192.168.122.1"
        prefix = 24
        dhcp = true
        tftp_root = "/some/dir"
    """,
    "route-default": """
        name = "default"
        bridge = "virbr0"
        mode = "route"
        [[ip]]
        address = "192.168.122.1"
        prefix = 24
        dhcp = true
    """,
}


@pytest.mark.parametrize("case", sorted(TOML_EQUIVALENTS))
def test_toml_equivalent_gives_the_same_network(case):
    (from_xml,) = load_file(LIBVIRT / f"{case}.xml")
    (from_toml,) = parse_toml(TOML_EQUIVALENTS[case].replace("\n        ", "\n"), "eq.toml")
    assert from_toml.source == "eq.toml"
    # Only where it was defined differs.
    assert dataclasses.replace(from_toml, source=from_xml.source) == from_xml


def test_xml_ignores_what_does_not_shape_the_firewall():
    net = parse_network_xml("""
        <network ipv6='yes' connections='2'>
          <name>full</name>
          <uuid>81ff0d90-c91e-6742-64da-4a736edb9a9b</uuid>
          <forward mode='open'/>
          <bridge name='virbr7' stp='on' delay='0'/>
          <mac address='52:54:00:0a:0b:0c'/>
          <mtu size='9000'/>
          <domain name='example.test' localOnly='yes'/>
          <dns><host ip='10.7.0.9'><hostname>h</hostname></host></dns>
          <bandwidth><inbound average='1000'/></bandwidth>
          <ip address='10.7.0.1' prefix='24'>
            <dhcp><host mac='52:54:00:00:00:01' ip='10.7.0.5'/></dhcp>
          </ip>
        </network>""", "full.xml")
    assert (net.name, net.mode, net.bridge, net.ipv6_nogw) == ("full", Mode.OPEN, "virbr7", True)
    assert [(str(ip.subnet), ip.dhcp) for ip in net.ips] == [("10.7.0.0/24", True)]


@pytest.mark.parametrize("mode", ["bridge", "private", "vepa", "passthrough", "hostdev"])
def test_xml_modes_that_are_not_firewalled_are_accepted(mode):
    net = parse_network_xml(f"<network><name>host</name><forward mode='{mode}' dev='eth0'/>"
                            "</network>")
    assert net.mode is Mode(mode) and not net.mode.firewalled


@pytest.mark.parametrize("address, prefix", [("10.0.0.1", 8), ("172.16.0.1", 16),
                                             ("192.168.3.1", 24), ("fd00::1", 64)])
def test_xml_address_without_netmask_gets_libvirts_default_prefix(address, prefix):
    net = parse_network_xml(f"<network><name>n</name><bridge name='br'/>"
                            f"<ip address='{address}'/></network>")
    assert net.ips[0].prefix == prefix


# ---------------------------------------------------------------------------------------------
# Invalid definitions: one line naming file, network and field.

def assert_refused(call, source: str, network: str | None, field: str | None) -> DefinitionError:
    """``call()`` raises a one-line DefinitionError naming ``source``/``network``/``field``
    (``field`` is a regex matched against the whole field name)."""
    with pytest.raises(DefinitionError) as info:
        call()
    e = info.value
    msg = str(e)
    assert "\n" not in msg and msg.strip() == msg, f"not one line: {msg!r}"
    assert msg.startswith(f"{source}: "), msg
    assert e.source == source
    assert e.network == network, msg
    if network is not None:
        assert f"network {network!r}" in msg
    if field is None:
        assert e.field is None, msg
    else:
        assert e.field is not None and re.fullmatch(field, e.field), msg
        assert f": {e.field}: " in msg
    assert e.problem and e.problem in msg
    return e


def case(id: str, text: str, field: str, bug: str | None = None):
    return pytest.param(text, field, id=id, marks=[] if bug is None else [_bug(bug)])


def xml(bridge="virbr9", forward="<forward/>", ips="", name="net1", attrs=""):
    return (f"<network{attrs}><name>{name}</name><bridge name=\"{bridge}\"/>{forward}{ips}"
            "</network>")


def nat(body: str) -> str:
    return f"<forward mode='nat'><nat>{body}</nat></forward>"


BAD_XML = [
    # interface names (bridge and forward dev)
    case("bridge-too-long", xml(bridge="virbr0123456789a"), "bridge"),
    case("bridge-slash", xml(bridge="vir/br0"), "bridge"),
    case("bridge-colon", xml(bridge="virbr0:1"), "bridge"),
    case("bridge-space", xml(bridge="vir br0"), "bridge"),
    case("bridge-newline", xml(bridge="vir&#10;br0"), "bridge"),
    case("bridge-single-quote", xml(bridge="vir'br0"), "bridge"),
    case("bridge-double-quote", xml(bridge="vir&quot;br0"), "bridge"),
    case("bridge-empty", xml(bridge=""), "bridge"),
    case("bridge-wildcard-plus", xml(bridge="virbr+"), "bridge"),
    case("bridge-missing", "<network><name>net1</name><forward/></network>", "bridge"),
    case("dev-colon", xml(forward="<forward mode='nat' dev='eth0:1'/>"), "forward dev"),
    case("dev-too-long", xml(forward="<forward dev='enp0s7abcdefghij'/>"), "forward dev"),
    case("dev-is-the-bridge", xml(forward="<forward mode='route' dev='virbr9'/>"), "forward dev"),
    # NAT port range
    case("port-zero", xml(forward=nat("<port start='0' end='1023'/>")), "nat port"),
    case("port-start-after-end", xml(forward=nat("<port start='2000' end='1000'/>")), "nat port"),
    case("port-above-65535", xml(forward=nat("<port start='1024' end='65536'/>")), "nat port"),
    case("port-negative", xml(forward=nat("<port start='-1' end='10'/>")), "nat port"),
    case("port-not-a-number", xml(forward=nat("<port start='low' end='high'/>")), "nat port"),
    case("port-empty", xml(forward=nat("<port start='' end='1000'/>")), "nat port"),
    case("port-end-missing", xml(forward=nat("<port start='1000'/>")), "nat port"),
    case("port-underscore", xml(forward=nat("<port start='1_000' end='2000'/>")),
                 "nat port"),
    # NAT address range, IPv6 NAT flag
    case("nat-address-start-after-end",
     xml(forward=nat("<address start='203.0.113.20' end='203.0.113.10'/>")), "nat address"),
    case("nat-address-not-ipv4", xml(forward=nat("<address start='2001:db8::1' end='2001:db8::9'/>")),
     "nat address"),
    case("nat-ipv6-not-yes-no", xml(forward="<forward><nat ipv6='maybe'/></forward>"), "nat ipv6"),
    # forward mode
    case("unknown-mode", xml(forward="<forward mode='tunnel'/>"), "forward mode"),
    case("isolated-is-not-a-mode", xml(forward="<forward mode='isolated'/>"), "forward mode"),
    # addresses
    case("bad-netmask", xml(ips="<ip address='10.0.0.1' netmask='255.0.255.0'/>"), "ip netmask"),
    case("netmask-out-of-range", xml(ips="<ip address='10.0.0.1' netmask='255.255.255.256'/>"),
     "ip netmask"),
    case("netmask-is-a-hostmask", xml(ips="<ip address='10.0.0.1' netmask='0.0.0.255'/>"),
                 "ip netmask"),
    case("netmask-is-a-prefix-length", xml(ips="<ip address='10.0.0.1' netmask='24'/>"),
                 "ip netmask"),
    case("netmask-on-ipv6", xml(ips="<ip family='ipv6' address='fd00::1' netmask='255.255.0.0'/>"),
     "ip netmask"),
    case("prefix-too-long", xml(ips="<ip address='10.0.0.1' prefix='33'/>"), "ip prefix"),
    case("prefix-zero", xml(ips="<ip address='10.0.0.1' prefix='0'/>"), "ip prefix"),
    case("prefix-not-a-number", xml(ips="<ip address='10.0.0.1' prefix='twenty'/>"), "ip prefix"),
    case("address-invalid", xml(ips="<ip address='10.0.0.300' prefix='24'/>"), "ip address"),
    case("address-missing", xml(ips="<ip prefix='24'/>"), "ip address"),
    case("address-with-zone", xml(ips="<ip family='ipv6' address='fd00::1%eth0' prefix='64'/>"),
         "ip address"),
    case("family-mismatch", xml(ips="<ip family='ipv6' address='10.0.0.1' prefix='24'/>"),
     "ip family"),
    case("tftp-on-ipv6", xml(ips="<ip family='ipv6' address='fd00::1' prefix='64'>"
                             "<tftp root='/srv/tftp'/></ip>"), "ip tftp"),
    case("overlap-in-one-network", xml(ips="<ip address='10.0.0.1' prefix='16'/>"
                                       "<ip address='10.0.5.1' prefix='24'/>"), "ip"),
    case("network-ipv6-not-yes-no", xml(attrs=" ipv6='1'"), "ipv6"),
]


@pytest.mark.parametrize("text, field", BAD_XML)
def test_invalid_xml_field(text, field):
    assert_refused(lambda: parse_network_xml(text, "bad.xml"), "bad.xml", "net1", re.escape(field))


@pytest.mark.parametrize("name", ["", "   ", "bad name", "-leading-dash", "x" * 65, "a/b"])
def test_invalid_xml_network_name(name):
    assert_refused(lambda: parse_network_xml(xml(name=name), "bad.xml"), "bad.xml", None, "name")


@pytest.mark.parametrize("fname, field, says", [
    ("malformed.xml", None, "malformed XML"),
    ("wrong-root.xml", None, "<domain>"),
    ("billion-laughs.xml", None, "unsafe XML"),
    ("xxe.xml", None, "unsafe XML"),
    ("malformed.toml", None, "malformed TOML"),
    pytest.param("not-utf8.toml", None, "TOML"),
    ("unknown-key.toml", "forward_device", "unknown key"),
])
def test_invalid_file(fname, field, says):
    path = INVALID / fname
    e = assert_refused(lambda: load_paths([path]), str(path), "typo" if field else None, field)
    assert says in e.problem


def test_external_entity_is_never_resolved(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("TOPSECRET")
    doc = (f'<?xml version="1.0"?><!DOCTYPE network [<!ENTITY s SYSTEM "file://{secret}">]>'
           "<network><name>&s;</name><bridge name='virbr0'/></network>")
    e = assert_refused(lambda: parse_network_xml(doc, "xxe.xml"), "xxe.xml", None, None)
    assert "TOPSECRET" not in str(e)


def toml_net(extra: str = "", ip: str = "", name: str = "net1") -> str:
    return f'name = "{name}"\nbridge = "virbr9"\n{extra}\n' + (f"[[ip]]\n{ip}\n" if ip else "")


BAD_TOML = [
    case("bridge-too-long", 'name = "net1"\nbridge = "virbr0123456789a"', "bridge"),
    case("bridge-colon", 'name = "net1"\nbridge = "virbr0:1"', "bridge"),
    case("bridge-not-a-string", 'name = "net1"\nbridge = 5', "bridge"),
    case("dev-slash", toml_net('forward_dev = "eth/0"'), "forward dev"),
    case("dev-wildcard-plus", toml_net('forward_dev = "eth+"'), "forward dev"),
    case("port-zero", toml_net("nat = { ports = [0, 1023] }"), r"nat[ .]ports?"),
    case("port-start-after-end", toml_net("nat = { ports = [2000, 1000] }"), r"nat[ .]ports?"),
    case("port-above-65535", toml_net("nat = { ports = [1024, 65536] }"), r"nat[ .]ports?"),
    case("port-not-a-number", toml_net('nat = { ports = ["low", "high"] }'), r"nat[ .]ports?"),
    case("port-bool", toml_net("nat = { ports = [true, 1000] }"), r"nat[ .]ports?"),
    case("port-one-value", toml_net("nat = { ports = [1024] }"), r"nat[ .]ports?"),
    case("nat-address-start-after-end",
     toml_net('nat = { address = ["203.0.113.20", "203.0.113.10"] }'), r"nat[ .]address"),
    case("nat-address-not-ipv4", toml_net('nat = { address = ["fd00::1", "fd00::2"] }'),
     r"nat[ .]address"),
    case("unknown-mode", toml_net('mode = "tunnel"'), "mode"),
    case("unknown-key", toml_net('bridg = "virbr1"'), "bridg"),
    case("unknown-nat-key", toml_net("nat = { port = [1, 2] }"), r"nat\.port"),
    case("unknown-ip-key", toml_net(ip='address = "10.0.0.1"\nmask = 24'), r"ip\.mask"),
    case("bad-netmask", toml_net(ip='address = "10.0.0.1"\nnetmask = "255.0.255.0"'), r"ip\.netmask"),
    case("netmask-is-a-hostmask",
                 toml_net(ip='address = "10.0.0.1"\nnetmask = "0.0.0.255"'), r"ip\.netmask"),
    case("prefix-too-long", toml_net(ip='address = "10.0.0.1"\nprefix = 33'), r"ip[ .]prefix"),
    case("address-invalid", toml_net(ip='address = "10.0.0.300"'), r"ip\.address"),
    case("address-integer", toml_net(ip="address = 167772161"), r"ip\.address"),
    case("tftp-on-ipv6", toml_net(ip='address = "fd00::1"\ntftp_root = "/srv"'), r"ip[ .]tftp.*"),
    case("dhcp-not-bool", toml_net(ip='address = "10.0.0.1"\ndhcp = "yes"'), r"ip\.dhcp"),
    case("overlap-in-one-network",
     toml_net(ip='address = "10.0.0.1"\nprefix = 16\n[[ip]]\naddress = "10.0.9.1"'), "ip"),
]


@pytest.mark.parametrize("text, field", BAD_TOML)
def test_invalid_toml_field(text, field):
    assert_refused(lambda: parse_toml(text, "bad.toml"), "bad.toml", "net1", field)


def test_toml_unknown_top_level_key_beside_networks():
    text = '[[network]]\nname = "a"\nbridge = "virbr1"\n[other]\nx = 1\n'
    e = assert_refused(lambda: parse_toml(text, "bad.toml"), "bad.toml", None, None)
    assert "other" in e.problem


@pytest.mark.parametrize("folder, later, network, field, earlier", [
    ("overlap", "b.toml", "second", "ip", "a.xml"),
    ("dup-bridge", "b.xml", "second", "bridge", "a.xml"),
    ("dup-name", "b.toml", "twin", "name", "a.xml"),
])
def test_conflicts_between_files(folder, later, network, field, earlier):
    d = INVALID / folder
    e = assert_refused(lambda: load_paths([d]), str(d / later), network, field)
    assert str(d / earlier) in e.problem
    # Given the other way round, the error names the other file (the later one loaded).
    e = assert_refused(lambda: load_paths([d / later, d / earlier]), str(d / earlier),
                       {"overlap": "first", "dup-bridge": "first", "dup-name": "twin"}[folder],
                       field)
    assert str(d / later) in e.problem


def test_duplicate_name_inside_one_toml_file():
    text = ('[[network]]\nname = "a"\nbridge = "virbr1"\n'
            '[[network]]\nname = "a"\nbridge = "virbr2"\n')
    nets = parse_toml(text, "two.toml")           # each is valid on its own...
    assert_refused(lambda: validate_together(nets), "two.toml", "a", "name")  # ...not together


def test_every_reference_xml_is_one_network_named_default():
    # The reference folder as a whole is a set of conflicting definitions (11 x "default").
    e = assert_refused(lambda: load_paths([LIBVIRT]), str(LIBVIRT / "isolated.xml"),
                       "default", "name")
    assert str(LIBVIRT / "forward-dev.xml") in e.problem


# ---------------------------------------------------------------------------------------------
# load_paths on folders and missing paths.

def test_load_paths_reads_a_folder_in_name_order(tmp_path):
    shutil.copy(LIBVIRT / "nat-default.xml", tmp_path / "b-default.xml")
    (tmp_path / "a-more.toml").write_text(
        '[[network]]\nname = "zulu"\nbridge = "virbr2"\nmode = "route"\n'
        '[[network.ip]]\naddress = "10.2.0.1"\nprefix = 24\n'
        '[[network]]\nname = "alpha"\nbridge = "virbr1"\nmode = "isolated"\n')
    (tmp_path / "notes.txt").write_text("not a definition")
    (tmp_path / "sub").mkdir()
    shutil.copy(LIBVIRT / "route-default.xml", tmp_path / "sub" / "ignored.xml")
    nets = load_paths([tmp_path])
    assert [(n.name, n.source) for n in nets] == [
        ("alpha", str(tmp_path / "a-more.toml")),
        ("default", str(tmp_path / "b-default.xml")),
        ("zulu", str(tmp_path / "a-more.toml")),
    ]
    assert all(isinstance(n, Network) for n in nets)


def test_load_paths_files_and_folders_together(tmp_path):
    (tmp_path / "x.toml").write_text('name = "x"\nbridge = "virbr5"\n')
    nets = load_paths([tmp_path, LIBVIRT / "route-default.xml"])
    assert [n.name for n in nets] == ["default", "x"]


def test_load_paths_missing_path(tmp_path):
    missing = tmp_path / "nope.xml"
    e = assert_refused(lambda: load_paths([missing]), str(missing), None, None)
    assert "no such file" in e.problem


def test_load_paths_empty_folder(tmp_path):
    e = assert_refused(lambda: load_paths([tmp_path]), str(tmp_path), None, None)
    assert ".xml" in e.problem


def test_load_paths_unknown_extension(tmp_path):
    f = tmp_path / "net.json"
    f.write_text("{}")
    assert_refused(lambda: load_paths([f]), str(f), None, None)


def test_load_paths_unreadable_file(tmp_path):
    d = tmp_path / "dir.xml"        # a folder named like a file: read_bytes fails
    d.mkdir()
    e = assert_refused(lambda: load_file(d), str(d), None, None)
    assert "cannot read" in e.problem


@pytest.mark.parametrize("doc, says", [
    # a DTD without any entity is refused too (forbid_dtd), whatever the encoding
    ("<!DOCTYPE network><network><name>n</name></network>", "unsafe XML"),
    ('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE network [<!ENTITY a "aaaa">]>'
     "<network><name>&a;</name></network>", "unsafe XML"),
    # an entity that no DTD declared is not expanded: the document is malformed
    ("<network><name>&undeclared;</name></network>", "malformed XML"),
    ("<network><name>n</name>", "malformed XML"),
    ('<?xml version="1.0" encoding="no-such-encoding"?><network/>', "malformed XML"),
    ('<?xml version="1.0" encoding="shift_jis"?><network/>', "malformed XML"),
    ("", "malformed XML"),
])
def test_xml_parser_refuses_what_could_expand_or_read(doc, says):
    data = doc.encode("utf-16") if "UTF-16" in doc else doc.encode()
    e = assert_refused(lambda: parse_network_xml(data, "x.xml"), "x.xml", None, None)
    assert says in e.problem


def test_xml_text_attributes_comments_and_foreign_namespaces():
    net = parse_network_xml(b"<?xml version='1.0' encoding='UTF-8'?>\n<network ipv6='yes'>\n"
                            b"  <name> net1 </name><!-- c --><bridge name='vb0'/>"
                            b"<metadata><app:x xmlns:app='urn:x'>t</app:x></metadata>"
                            b"<ip address='10.0.0.1' prefix='24'><dhcp><range start='10.0.0.9' "
                            b"end='10.0.0.99'/></dhcp></ip></network>", "ok.xml")
    assert (net.name, net.bridge, net.ipv6_nogw) == ("net1", "vb0", True)
    assert [(str(ip.subnet), ip.dhcp) for ip in net.ips] == [("10.0.0.0/24", True)]
