"""``vnetfw libvirt convert``: a libvirt network that libvirt firewalls, rewritten as an open
network whose vnetfw metadata says the same (``libvirt_meta``).

Contract: ``convert(data, source)`` returns the document with ``<forward>`` replaced by
``<forward mode='open'/>`` and a ``<vnetfw:firewall>`` in ``<metadata>`` carrying the mode,
the forward device and the NAT options; every other element and attribute (name, uuid,
bridge, mac, ip, dhcp, dns, domain, mtu, other applications' metadata with their prefixes
...) is written out as it was (comments are not). Parsed, the result is the same
``Network`` as the input: the tests check it for every libvirt network in tests/fixtures,
and through a real libvirtd. Pure: reads nothing, writes nothing. Refused: networks libvirt
writes no rules for (open already, bridge modes), and a non-open network that already
carries vnetfw metadata (which of the two meanings is meant is the admin's call).
"""

from __future__ import annotations

from xml.etree.ElementTree import Element, SubElement

from ..errors import DefinitionError
from ..model import Mode, Nat, Network
from .libvirt_meta import URI, vnetfw_firewall
from .libvirt_xml import _parse, parse_network_xml

P = "vnetfw:"


def convert(data: bytes | str, source: str = "<string>") -> str:
    ns_root = _parse_or_fail(data, source)
    fwd = ns_root.find("forward")
    name = (ns_root.findtext("name") or "").strip() or None

    def fail(field: str, problem: str) -> DefinitionError:
        return DefinitionError(source, problem, network=name, field=field)

    if fwd is not None and fwd.get("mode") == "open":
        raise fail("forward mode", "nothing to convert: the network is open already (libvirt "
                                   "writes no rules for it)")
    if vnetfw_firewall(ns_root, fail) is not None:
        raise fail("metadata", "already carries vnetfw metadata, but libvirt firewalls it: "
                               "make it <forward mode='open'/> by hand, or remove the metadata "
                               "and convert again")
    net = parse_network_xml(data, source)       # every other problem, as apply reports it
    if not net.mode.firewalled:
        raise fail("forward mode", "nothing to convert: libvirt writes no firewall rules for "
                                   f"a {net.mode.value} network")
    if not net.ips:
        raise fail("ip", "libvirt refuses an open network without an <ip>: give the network "
                         "an address first")
    root = _parse(data, namespaces=False)
    _open_forward(root)
    meta = root.find("metadata")
    if meta is None:
        meta = Element("metadata")
        root.insert(_after_identity(root), meta)
    meta.append(firewall_element(net))
    return "\n".join(_lines(root, 0)) + "\n"


def _parse_or_fail(data: bytes | str, source: str) -> Element:
    try:
        return _parse(data)
    except Exception:                     # noqa: BLE001 - parse_network_xml words it
        parse_network_xml(data, source)
        raise


def firewall_element(net: Network) -> Element:
    """``<vnetfw:firewall>`` for ``net``'s mode, forward device and NAT options, with its
    namespace declared on itself (libvirt keeps the metadata element as a whole)."""
    fw = Element(P + "firewall", {"xmlns:vnetfw": URI, "mode": net.mode.value})
    if net.forward_dev is not None:
        fw.set("dev", net.forward_dev)
    n = net.nat
    if net.mode is Mode.NAT and n != Nat():
        nat = SubElement(fw, P + "nat", {"ipv6": "yes"} if n.ipv6 else {})
        if (n.port_start, n.port_end) != (Nat.port_start, Nat.port_end):
            SubElement(nat, P + "port", {"start": str(n.port_start), "end": str(n.port_end)})
        if n.address_start is not None:
            SubElement(nat, P + "address", {"start": str(n.address_start),
                                            "end": str(n.address_end)})
    return fw


def _after_identity(root: Element) -> int:
    """Where a new element goes: after <name> and <uuid>, as libvirt orders them."""
    pos = 0
    for i, el in enumerate(root):
        if el.tag in ("name", "uuid"):
            pos = i + 1
    return pos


def _open_forward(root: Element) -> None:
    """Replace ``<forward>`` (or its absence: isolated) with ``<forward mode='open'/>``; its
    ``dev``, ``<interface>`` and ``<nat>`` now live in the metadata."""
    old = root.find("forward")
    new = Element("forward", {"mode": "open"})
    if old is None:
        root.insert(_after_identity(root), new)
    else:
        root.insert(list(root).index(old), new)
        root.remove(old)


def _esc(text: str, quote: bool = False) -> str:
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("'", "&apos;") if quote else text


def _lines(el: Element, depth: int) -> list[str]:
    """``el`` as libvirt writes XML: two-space indent, single-quoted attributes. (The
    parser keeps an element's text only when it has no children; libvirt's network XML has
    no mixed content.)"""
    pad = "  " * depth
    attrs = "".join(f" {k}='{_esc(v, True)}'" for k, v in el.attrib.items())
    text = (el.text or "").strip()
    if not len(el):
        return [f"{pad}<{el.tag}{attrs}>{_esc(text)}</{el.tag}>" if text
                else f"{pad}<{el.tag}{attrs}/>"]
    out = [f"{pad}<{el.tag}{attrs}>"]
    for child in el:
        out += _lines(child, depth + 1)
    return out + [f"{pad}</{el.tag}>"]
