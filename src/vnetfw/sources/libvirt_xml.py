"""libvirt network XML (``virsh net-dumpxml`` output) -> ``Network``.

Only what shapes the firewall is read; everything else (domain, dns, mtu, mac, bandwidth, ...)
is accepted and ignored. Documents with a DTD are refused (no entity can then be declared,
so nothing can expand entities or read local files): the rule defusedxml's ``forbid_dtd``
applies, applied here to expat directly. (defusedxml hooks expat through the pure-Python
ElementTree parser; building the few elements of a network definition with C ``Element``
objects from expat's callbacks reads 1,000 files about twice as fast.)
"""

from __future__ import annotations

import ipaddress
from xml.etree.ElementTree import Element
from xml.parsers import expat

from ..errors import DefinitionError
from ..model import (IPBlock, Mode, Nat, Network, classful_prefix, netmask_prefix, parse_ip,
                     parse_number)

_MODES = {m.value: m for m in Mode if m is not Mode.ISOLATED}
_YES = {"yes": True, "no": False}


class _Unsafe(Exception):
    """A DTD, an entity declaration or an external entity: refused."""


def _parse(data: bytes | str) -> Element:
    """The document's root element. Raises ``_Unsafe`` for any DTD or entity declaration,
    ``expat.ExpatError`` when malformed (an undeclared entity reference included)."""
    p = expat.ParserCreate()
    p.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    stack: list[Element] = []
    roots: list[Element] = []

    def refuse(*_args) -> None:
        raise _Unsafe()

    def start(tag: str, attrs: dict[str, str]) -> None:
        el = Element(tag, attrs)
        if stack:
            stack[-1].append(el)
        else:
            roots.append(el)
        stack.append(el)

    def text(data: str) -> None:
        el = stack[-1] if stack else None
        if el is not None and not len(el):       # only text before the first child is read
            el.text = (el.text or "") + data

    p.StartDoctypeDeclHandler = refuse
    p.EntityDeclHandler = refuse
    p.UnparsedEntityDeclHandler = refuse
    p.ExternalEntityRefHandler = refuse
    p.StartElementHandler = start
    p.EndElementHandler = lambda _tag: stack.pop()
    p.CharacterDataHandler = text
    p.Parse(data, True)
    return roots[0]


def parse_network_xml(data: bytes | str, source: str = "<string>") -> Network:
    """Parse one ``<network>`` document; raise DefinitionError naming source/network/field."""
    try:
        root = _parse(data)
    except _Unsafe:
        raise DefinitionError(source, "refused unsafe XML (a DTD: entities and DTDs are not "
                                      "allowed)") from None
    except expat.ExpatError as e:
        raise DefinitionError(source, f"malformed XML: {expat.ErrorString(e.code)}: line "
                                      f"{e.lineno}, column {e.offset}") from None
    except (LookupError, ValueError) as e:      # an encoding expat does not know or take
        raise DefinitionError(source, f"malformed XML: {e}") from None
    if root.tag != "network":
        raise DefinitionError(source, f"root element is <{root.tag}>, expected <network>")
    return _Reader(root, source).network()


class _Reader:
    def __init__(self, root: Element, source: str) -> None:
        self.root = root
        self.source = source
        self.name: str | None = None

    def fail(self, field: str, problem: str) -> DefinitionError:
        return DefinitionError(self.source, problem, network=self.name, field=field)

    def yesno(self, el: Element, attr: str, field: str) -> bool:
        v = el.get(attr)
        if v is None:
            return False
        if v not in _YES:
            raise self.fail(field, f"{attr}={v!r} must be 'yes' or 'no'")
        return _YES[v]

    def port(self, el: Element, attr: str) -> int:
        v = el.get(attr)
        if v is None:
            raise self.fail("nat port", f"<port> needs a {attr!r} attribute")
        n = parse_number(v)
        if n is None:
            raise self.fail("nat port", f"{attr}={v!r} is not a port number")
        return n

    def network(self) -> Network:
        name_el = self.root.find("name")
        if name_el is None or not (name_el.text or "").strip():
            raise self.fail("name", "missing <name>")
        self.name = name_el.text.strip()

        bridge_el = self.root.find("bridge")
        bridge = bridge_el.get("name") if bridge_el is not None else None

        fwd = self.root.find("forward")
        if fwd is None:
            mode = Mode.ISOLATED
            dev = None
            nat = Nat()
        else:
            m = fwd.get("mode", "nat")
            if m not in _MODES:
                raise self.fail("forward mode", f"unknown mode {m!r} (expected one of "
                                                f"{', '.join(sorted(_MODES))})")
            mode = _MODES[m]
            dev = fwd.get("dev")
            nat = self.nat(fwd.find("nat"))

        ips = tuple(self.ip(el) for el in self.root.findall("ip"))
        ipv6_nogw = self.yesno(self.root, "ipv6", "ipv6")
        return Network(name=self.name, mode=mode, bridge=bridge, forward_dev=dev, ips=ips,
                       nat=nat, ipv6_nogw=ipv6_nogw, source=self.source).validated()

    def nat(self, el: Element | None) -> Nat:
        if el is None:
            return Nat()
        ipv6 = self.yesno(el, "ipv6", "nat ipv6")
        ps, pe = 1024, 65535
        port = el.find("port")
        if port is not None:
            ps, pe = self.port(port, "start"), self.port(port, "end")
        a_start = a_end = None
        addr = el.find("address")
        if addr is not None:
            try:
                a_start = ipaddress.IPv4Address(addr.get("start", ""))
                a_end = ipaddress.IPv4Address(addr.get("end") or addr.get("start", ""))
            except ValueError:
                raise self.fail("nat address", f"start={addr.get('start')!r} "
                                               f"end={addr.get('end')!r} must be IPv4 "
                                               "addresses") from None
        return Nat(port_start=ps, port_end=pe, address_start=a_start, address_end=a_end,
                   ipv6=ipv6)

    def ip(self, el: Element) -> IPBlock:
        raw = el.get("address")
        if raw is None:
            raise self.fail("ip address", "<ip> needs an address attribute")
        try:
            addr = parse_ip(raw)
        except ValueError:
            raise self.fail("ip address", f"{raw!r} is not an IP address") from None
        family = el.get("family")
        if family not in (None, "ipv4", "ipv6"):
            raise self.fail("ip family", f"family={family!r} must be 'ipv4' or 'ipv6'")
        if family is not None and family != f"ipv{addr.version}":
            raise self.fail("ip family", f"family={family!r} does not match address {raw}")
        prefix = self.prefix(el, addr)
        dhcp_el = el.find("dhcp")
        dhcp = dhcp_el is not None and (dhcp_el.find("range") is not None
                                        or dhcp_el.find("host") is not None)
        tftp = el.find("tftp")
        tftp_root = tftp.get("root") if tftp is not None else None
        return IPBlock(addr, prefix, dhcp, tftp_root)

    def prefix(self, el: Element, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
        mask, prefix = el.get("netmask"), el.get("prefix")
        if mask is not None and prefix is not None:
            raise self.fail("ip netmask", "give either netmask or prefix, not both")
        if mask is not None:
            if addr.version != 4:
                raise self.fail("ip netmask", "netmask is for IPv4; use prefix for IPv6")
            n = netmask_prefix(mask)
            if n is None:
                raise self.fail("ip netmask", f"{mask!r} is not a netmask (dotted quad of "
                                              "contiguous ones, e.g. 255.255.255.0)")
            return n
        if prefix is not None:
            n = parse_number(prefix)
            if n is None:
                raise self.fail("ip prefix", f"{prefix!r} is not a number")
            return n
        return classful_prefix(addr)
