"""libvirt network XML (``virsh net-dumpxml`` output) -> ``Network``.

Only what shapes the firewall is read; everything else (domain, dns, mtu, mac, bandwidth, ...)
is accepted and ignored. Documents with a DTD are refused (no entity can then be declared,
so nothing can expand entities or read local files): the rule defusedxml's ``forbid_dtd``
applies, applied here to expat directly. (defusedxml hooks expat through the pure-Python
ElementTree parser; building the few elements of a network definition with C ``Element``
objects from expat's callbacks reads 1,000 files about twice as fast.)

Namespaces are resolved: an element of a namespace is named ``{URI}local`` (ElementTree's
convention), whatever prefix the document gave it, so vnetfw's metadata
(``libvirt_meta``) is found by its URI. libvirt's own elements have no namespace.
"""

from __future__ import annotations

import ipaddress
from xml.etree.ElementTree import Element
from xml.parsers import expat

from ..errors import DefinitionError
from ..model import (Allow, DhcpHost, IPBlock, Mode, Nat, Network, PortForward,
                     classful_prefix, make_allow, make_port_forward, netmask_prefix, parse_ip,
                     parse_number)
from .libvirt_meta import METADATA_MODES, NS, PREFIX, convert_hint, vnetfw_firewall

_MODES = {m.value: m for m in Mode if m is not Mode.ISOLATED}
_YES = {"yes": True, "no": False}


class _Unsafe(Exception):
    """A DTD, an entity declaration or an external entity: refused."""


def _parse(data: bytes | str, namespaces: bool = True) -> Element:
    """The document's root element. Raises ``_Unsafe`` for any DTD or entity declaration,
    ``expat.ExpatError`` when malformed (an undeclared entity reference or namespace prefix
    included). ``namespaces=False`` keeps prefixes and ``xmlns`` attributes as written (for
    writing the document out again)."""
    p = expat.ParserCreate(namespace_separator="}") if namespaces else expat.ParserCreate()
    p.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    stack: list[Element] = []
    roots: list[Element] = []

    def refuse(*_args) -> None:
        raise _Unsafe()

    def start(tag: str, attrs: dict[str, str]) -> None:
        if "}" in tag:                              # expat's "URI}local" -> "{URI}local"
            tag = "{" + tag
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


def parse_hook_xml(data: bytes | str, source: str = "<libvirt hook>",
                   wrappers: tuple[str, ...] = ("hookData",)) -> Network | None:
    """The network of what libvirt gives its network hook on stdin
    (``<hookData><network>...</network>...</hookData>``) if vnetfw firewalls it: an open
    network with vnetfw metadata. None when it carries no vnetfw metadata (libvirt
    firewalls it itself, or it is open and left alone). Raises ``DefinitionError`` when the
    metadata is wrong or the network is not open. ``wrappers``: the root elements that may
    hold the ``<network>`` (``networkstatus``: libvirt's status files; ``network``: the
    network itself)."""
    try:
        root = _parse(data)
    except _Unsafe:
        raise DefinitionError(source, "refused unsafe XML (a DTD)") from None
    except (expat.ExpatError, LookupError, ValueError) as e:
        why = expat.ErrorString(e.code) if isinstance(e, expat.ExpatError) else e
        raise DefinitionError(source, f"malformed XML: {why}") from None
    net = None
    if root.tag in wrappers:
        net = root if root.tag == "network" else root.find("network")
    if net is None:
        raise DefinitionError(source, f"root element is <{root.tag}>, expected "
                                      f"<{wrappers[0]}> holding a <network>")
    reader = _Reader(net, source)
    reader.read_name()
    if vnetfw_firewall(net, reader.fail) is None:
        return None
    return reader.network()


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

    def port(self, el: Element, attr: str, label: str = "") -> int:
        v = el.get(attr)
        if v is None:
            raise self.fail(f"{label}nat port", f"<{label}port> needs a {attr!r} attribute")
        n = parse_number(v)
        if n is None:
            raise self.fail(f"{label}nat port", f"{attr}={v!r} is not a port number")
        return n

    def read_name(self) -> str:
        name_el = self.root.find("name")
        if name_el is None or not (name_el.text or "").strip():
            raise self.fail("name", "missing <name>")
        self.name = name_el.text.strip()
        return self.name

    def network(self) -> Network:
        self.read_name()

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

        meta = vnetfw_firewall(self.root, self.fail)
        if meta is not None:
            if mode is not Mode.OPEN:
                raise self.fail("metadata", convert_hint(mode, self.source))
            mode, dev, nat = self.firewall(meta, dev)
        forwards, allows = self.forwards(meta)
        ips = tuple(self.ip(el) for el in self.root.findall("ip"))
        ipv6_nogw = self.yesno(self.root, "ipv6", "ipv6")
        return Network(name=self.name, mode=mode, bridge=bridge, forward_dev=dev, ips=ips,
                       nat=nat, ipv6_nogw=ipv6_nogw, source=self.source,
                       port_forwards=forwards, allows=allows).validated()

    def firewall(self, meta: Element, forward_dev: str | None
                 ) -> tuple[Mode, str | None, Nat]:
        """Mode, forward device and NAT options of an open network's vnetfw metadata."""
        mode = METADATA_MODES[meta.get("mode", "")]         # checked by vnetfw_firewall
        dev = meta.get("dev")
        if dev is not None and forward_dev is not None and dev != forward_dev:
            raise self.fail(f"{PREFIX}firewall dev", f"dev={dev!r} differs from <forward "
                                                     f"dev={forward_dev!r}>: give it once")
        dev = dev if dev is not None else forward_dev
        nat_el = meta.find(NS + "nat")
        if mode is Mode.ISOLATED and dev is not None:
            raise self.fail(f"{PREFIX}firewall dev", "an isolated network forwards nothing, "
                                                     "so it has no forward device")
        if nat_el is not None and mode is not Mode.NAT:
            raise self.fail(f"{PREFIX}nat", f"NAT options need mode='nat', not "
                                            f"{mode.value!r}")
        return mode, dev, self.nat(nat_el, NS, PREFIX)

    def forwards(self, meta: Element | None) -> tuple[tuple[PortForward, ...], tuple[Allow, ...]]:
        """The metadata's ``<vnetfw:port-forward>`` and ``<vnetfw:allow>`` elements, as the
        model builds them from TOML values (lists: space-separated attributes)."""
        if meta is None:
            return (), ()

        def fail_at(what: str, i: int):
            return lambda fld, problem: self.fail(
                f"{PREFIX}{what}[{i}] {fld.replace('_', '-')}", problem)

        def attrs(el: Element, lists: tuple[str, ...]) -> dict:
            return {k.replace("-", "_"): v.split() if k in lists else v
                    for k, v in el.attrib.items()}

        fws = tuple(make_port_forward(fail_at("port-forward", i), **attrs(el, ("source",)))
                    for i, el in enumerate(meta.findall(NS + "port-forward")))
        allows = tuple(make_allow(fail_at("allow", i), **attrs(el, ("ports", "source")))
                       for i, el in enumerate(meta.findall(NS + "allow")))
        return fws, allows

    def nat(self, el: Element | None, ns: str = "", label: str = "") -> Nat:
        """``<nat>`` (``ns``: the namespace of its children; ``label``: how errors name
        the fields, e.g. ``vnetfw:``)."""
        if el is None:
            return Nat()
        ipv6 = self.yesno(el, "ipv6", f"{label}nat ipv6")
        ps, pe = 1024, 65535
        port = el.find(ns + "port")
        if port is not None:
            ps, pe = self.port(port, "start", label), self.port(port, "end", label)
        a_start = a_end = None
        addr = el.find(ns + "address")
        if addr is not None:
            try:
                a_start = ipaddress.IPv4Address(addr.get("start", ""))
                a_end = ipaddress.IPv4Address(addr.get("end") or addr.get("start", ""))
            except ValueError:
                raise self.fail(f"{label}nat address", f"start={addr.get('start')!r} "
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
        return IPBlock(addr, prefix, dhcp, tftp_root, self.hosts(dhcp_el))

    def hosts(self, dhcp_el: Element | None) -> tuple[DhcpHost, ...]:
        """Static hosts with both a name and an address: names a port forward may use."""
        out = []
        for h in dhcp_el.findall("host") if dhcp_el is not None else ():
            name, ip = h.get("name"), h.get("ip")
            if name and ip:
                try:
                    out.append(DhcpHost(name, parse_ip(ip)))
                except ValueError:
                    raise self.fail("ip dhcp host", f"ip={ip!r} is not an IP address") from None
        return tuple(out)

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
