"""Port forwards and allows in definitions: what loads, and every way one can be wrong.

Each invalid definition is refused with one line naming the file, the network and the
field (``port_forward[i].<key>`` / ``allow[i].<key>``), as every other definition error.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from vnetfw.errors import DefinitionError
from vnetfw.model import Allow, Ports, PortForward, network_from_dict, validate_together
from vnetfw.sources import load_paths
from vnetfw.sources.libvirt_xml import parse_network_xml
from vnetfw.sources.toml import parse_toml

NET = """
[[network]]
name = "{name}"
bridge = "{bridge}"
mode = "{mode}"
[[network.ip]]
address = "{v4}.1"
prefix = 24
hosts = [{{ name = "www", ip = "{v4}.10" }}]
[[network.ip]]
address = "fd00:{n}::1"
prefix = 64
"""


def net_toml(extra: str = "", *, name: str = "web", mode: str = "nat", n: int = 1) -> str:
    return NET.format(name=name, bridge=f"vbr{n}", mode=mode, v4=f"10.{n}.0", n=n) + extra


def load(extra: str = "", **kw):
    return parse_toml(net_toml(extra, **kw), "defs.toml")[0]


FWD = '[[network.port_forward]]\n'


def test_forward_loads_with_every_field():
    net = load(FWD + 'proto = "tcp"\nport = "2200-2201"\nto = "10.1.0.20"\n'
                     'to_port = "22-23"\nhost_address = "203.0.113.5"\n'
                     'source = ["198.51.100.0/24", "192.0.2.7"]\n')
    assert net.port_forwards == (PortForward(
        "tcp", (2200, 2201), "10.1.0.20", (22, 23), ipaddress.ip_address("203.0.113.5"),
        (ipaddress.ip_network("198.51.100.0/24"), ipaddress.ip_network("192.0.2.7/32"))),)


def test_forward_defaults_and_ipv6():
    net = load(FWD + 'proto = "udp"\nport = 53\nto = "fd00:1:0:0::10"\n')
    fw, = net.port_forwards
    assert (fw.port, fw.to_port, fw.to, fw.host_address, fw.source) == \
        ((53, 53), (53, 53), "fd00:1::10", None, ())
    assert str(net.forward_address(fw)) == "fd00:1::10"


def test_forward_to_a_static_dhcp_host_name():
    net = load(FWD + 'proto = "tcp"\nport = 8080\nto = "www"\nto_port = 80\n')
    fw, = net.port_forwards
    assert fw.to == "www" and str(net.forward_address(fw)) == "10.1.0.10"


def test_forward_to_dhcp_host_name_from_libvirt_xml():
    xml = """<network><name>web</name><bridge name='vbr1'/><forward/>
      <ip address='10.1.0.1' netmask='255.255.255.0'><dhcp><range start='10.1.0.100'
      end='10.1.0.200'/><host mac='52:54:00:00:00:01' name='www' ip='10.1.0.10'/></dhcp></ip>
      </network>"""
    net = parse_network_xml(xml, "web.xml")
    assert [(h.name, str(h.ip)) for h in net.ips[0].hosts] == [("www", "10.1.0.10")]


def test_allow_loads():
    net = load('[[network.allow]]\nto = "db"\nports = ["tcp/5432", "udp/53", "udp/600-610", '
               '"tcp"]\nsource = ["10.1.0.0/28"]\n[[network.allow]]\nto = "dns"\n')
    assert net.allows == (
        Allow("db", (Ports("tcp", 5432, 5432), Ports("udp", 53, 53), Ports("udp", 600, 610),
                     Ports("tcp", 1, 65535)), (ipaddress.ip_network("10.1.0.0/28"),)),
        Allow("dns"))


def test_state_round_trip_keeps_forwards_allows_and_hosts():
    net = load(FWD + 'proto = "tcp"\nport = 8080\nto = "www"\nto_port = 80\n'
               'source = ["198.51.100.0/24"]\n' + FWD +
               'proto = "udp"\nport = "5000-5001"\nto = "fd00:1::5"\n'
               'host_address = "2001:db8::1"\n'
               '[[network.allow]]\nto = "db"\nports = ["tcp/5432"]\n')
    assert network_from_dict(net.to_dict()) == net


@pytest.mark.parametrize("extra, field, words", [
    (FWD + 'proto = "icmp"\nport = 1\nto = "10.1.0.10"\n', "port_forward[0].proto", "tcp"),
    (FWD + 'port = 1\nto = "10.1.0.10"\n', "port_forward[0].proto", "tcp"),
    (FWD + 'proto = "tcp"\nto = "10.1.0.10"\n', "port_forward[0].port", "missing"),
    (FWD + 'proto = "tcp"\nport = 0\nto = "10.1.0.10"\n', "port_forward[0].port", "65535"),
    (FWD + 'proto = "tcp"\nport = 70000\nto = "10.1.0.10"\n', "port_forward[0].port", "65535"),
    (FWD + 'proto = "tcp"\nport = "30-20"\nto = "10.1.0.10"\n', "port_forward[0].port",
     "start <= end"),
    (FWD + 'proto = "tcp"\nport = "x"\nto = "10.1.0.10"\n', "port_forward[0].port", "range"),
    (FWD + 'proto = "tcp"\nport = 22\n', "port_forward[0].to", "missing"),
    (FWD + 'proto = "tcp"\nport = "2200-2201"\nto = "10.1.0.10"\nto_port = "22-24"\n',
     "port_forward[0].to_port", "one to one"),
    (FWD + 'proto = "tcp"\nport = "2200-2201"\nto = "10.1.0.10"\nto_port = 22\n',
     "port_forward[0].to_port", "one to one"),
    (FWD + 'proto = "tcp"\nport = 22\nto = "10.9.0.10"\n', "port_forward[0].to",
     "outside the network's subnets"),
    (FWD + 'proto = "tcp"\nport = 22\nto = "fd00:9::10"\n', "port_forward[0].to",
     "outside the network's subnets"),
    (FWD + 'proto = "tcp"\nport = 22\nto = "10.1.0.1"\n', "port_forward[0].to",
     "host's own address"),
    (FWD + 'proto = "tcp"\nport = 22\nto = "nosuchhost"\n', "port_forward[0].to",
     "static DHCP host"),
    (FWD + 'proto = "tcp"\nport = 22\nto = "a b"\n', "port_forward[0].to", "neither"),
    (FWD + 'proto = "tcp"\nport = 22\nto = "10.1.0.10"\nhost_address = "2001:db8::1"\n',
     "port_forward[0].host_address", "different IP versions"),
    (FWD + 'proto = "tcp"\nport = 22\nto = "10.1.0.10"\nhost_address = "bogus"\n',
     "port_forward[0].host_address", "not an IP address"),
    (FWD + 'proto = "tcp"\nport = 22\nto = "10.1.0.10"\nsource = ["2001:db8::/32"]\n',
     "port_forward[0].source", "different IP versions"),
    (FWD + 'proto = "tcp"\nport = 22\nto = "10.1.0.10"\nsource = ["10.0.0.0/33"]\n',
     "port_forward[0].source", "not an address"),
    (FWD + 'proto = "tcp"\nport = 22\nto = "10.1.0.10"\nsorce = ["10.0.0.0/8"]\n',
     "port_forward[0].sorce", "unknown key"),
    (FWD + 'proto = "tcp"\nport = 22\nto = "10.1.0.10"\n' + FWD +
     'proto = "tcp"\nport = "20-30"\nto = "10.1.0.11"\n', "port_forward[1].port",
     "already forwarded"),
    ('[[network.allow]]\nto = "web"\n', "allow[0].to", "already reach"),
    ('[[network.allow]]\nto = "-x"\n', "allow[0].to", "network name"),
    ('[[network.allow]]\n', "allow[0].to", "network name"),
    ('[[network.allow]]\nto = "db"\nports = ["icmp/1"]\n', "allow[0].ports", "tcp or udp"),
    ('[[network.allow]]\nto = "db"\nports = ["tcp/0"]\n', "allow[0].ports", "65535"),
    ('[[network.allow]]\nto = "db"\nports = [5432]\n', "allow[0].ports", "list of strings"),
    ('[[network.allow]]\nto = "db"\nsource = ["10.9.0.0/28"]\n', "allow[0].source",
     "not part of the network"),
    ('[[network.allow]]\nto = "db"\nsource = ["10.1.0.0/16"]\n', "allow[0].source",
     "not part of the network"),
    ('[[network.allow]]\nto = "db"\nport = ["tcp/1"]\n', "allow[0].port", "unknown key"),
    ('[network.port_forward]\nproto = "tcp"\n', "port_forward", "array of tables"),
])
def test_invalid_forward_or_allow_is_one_line_naming_file_network_field(extra, field, words):
    with pytest.raises(DefinitionError) as e:
        validate_together([load(extra)])
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"defs.toml: network 'web': {field}: "), msg
    assert words in msg, msg


@pytest.mark.parametrize("mode", ["isolated", "open"])
def test_forward_into_isolated_or_open_network_is_refused(mode):
    with pytest.raises(DefinitionError) as e:
        load(FWD + 'proto = "tcp"\nport = 22\nto = "10.1.0.10"\n', mode=mode)
    assert str(e.value).startswith(f"defs.toml: network 'web': port_forward[0]: a {mode} "
                                   "network cannot have port forwards"), str(e.value)


def test_allow_from_isolated_is_fine_from_open_is_refused():
    assert load('[[network.allow]]\nto = "db"\n', mode="isolated").allows
    with pytest.raises(DefinitionError, match=r"network 'web': allow\[0\]: a open network"):
        load('[[network.allow]]\nto = "db"\n', mode="open")


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("a_extra, b_extra, clash", [
    ('proto = "tcp"\nport = 8080\n', 'proto = "tcp"\nport = 8080\n', True),
    # A forward on every host address claims the port on each of them.
    ('proto = "tcp"\nport = 8080\nhost_address = "203.0.113.5"\n',
     'proto = "tcp"\nport = "8000-8100"\n', True),
    ('proto = "tcp"\nport = 8080\nhost_address = "203.0.113.5"\n',
     'proto = "tcp"\nport = 8080\nhost_address = "203.0.113.5"\n', True),
    # Different host addresses, protocols or ports, or the other IP version: no clash.
    ('proto = "tcp"\nport = 8080\nhost_address = "203.0.113.5"\n',
     'proto = "tcp"\nport = 8080\nhost_address = "203.0.113.6"\n', False),
    ('proto = "tcp"\nport = 8080\n', 'proto = "udp"\nport = 8080\n', False),
    ('proto = "tcp"\nport = "8080-8089"\n', 'proto = "tcp"\nport = "8090-8099"\n', False),
])
def test_duplicate_claims_across_networks_and_files(tmp_path, a_extra, b_extra, clash):
    a = _write(tmp_path, "a.toml", net_toml(FWD + a_extra + 'to = "10.1.0.10"\n', name="a", n=1))
    b = _write(tmp_path, "b.toml", net_toml(FWD + b_extra + 'to = "10.2.0.10"\n', name="b", n=2))
    c = _write(tmp_path, "c.toml", net_toml(FWD + b_extra.replace("203.0.113.", "2001:db8::")
                                            + 'to = "fd00:3::10"\n', name="c", n=3))
    if not clash:
        assert [n.name for n in load_paths([a, b, c])] == ["a", "b", "c"]
        return
    with pytest.raises(DefinitionError) as e:
        load_paths([a, b, c])
    msg = str(e.value)
    assert msg.startswith(f"{b}: network 'b': port_forward[0].port: "), msg
    assert f"already forwarded by network 'a' ({a}:" in msg, msg


def test_many_forwards_claims_are_checked_quickly_and_correctly():
    """10,000 forwards load; one more on a taken port is found among them."""
    body = "".join(f'{FWD}proto = "tcp"\nport = {10000 + i}\nto = "10.1.{i // 250}.{i % 250 + 2}"\n'
                   for i in range(10000))
    text = NET.format(name="big", bridge="vbr1", mode="nat", v4="10.1.0", n=1).replace(
        "prefix = 24", "prefix = 16", 1)
    net, = parse_toml(text + body, "big.toml")
    assert len(validate_together([net])[0].port_forwards) == 10000
    with pytest.raises(DefinitionError, match=r"port_forward\[10000\].port: tcp port 15000"):
        validate_together(parse_toml(
            text + body + f'{FWD}proto = "tcp"\nport = 15000\nto = "10.1.0.3"\n', "big.toml"))
