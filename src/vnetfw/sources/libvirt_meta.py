"""vnetfw's metadata in a libvirt network: how vnetfw firewalls an *open* network.

libvirt firewalls every nat, route and isolated network itself, and no setting turns that
off; ``<forward mode='open'/>`` makes it create the bridge and dnsmasq and write no rule
("for use with some other management system"). So a network that vnetfw is to firewall
under libvirt is defined open, and says in its metadata what vnetfw makes of it::

    <network>
      <name>default</name>
      <forward mode='open'/>
      <bridge name='virbr0'/>
      <metadata>
        <vnetfw:firewall xmlns:vnetfw="urn:vnetfw:network:1" mode="nat" dev="eth0">
          <vnetfw:nat ipv6="yes">                 <!-- as libvirt's <forward><nat> -->
            <vnetfw:port start="1024" end="65535"/>
            <vnetfw:address start="203.0.113.10" end="203.0.113.20"/>
          </vnetfw:nat>
          <vnetfw:port-forward proto="tcp" port="8080" to="192.168.122.10" to-port="80"
                               host-address="203.0.113.5" source="198.51.100.0/24 192.0.2.7"/>
          <vnetfw:allow to="db" ports="tcp/5432 udp/53" source="192.168.122.0/28"/>
        </vnetfw:firewall>
      </metadata>
      <ip address='192.168.122.1' prefix='24'>...</ip>
    </network>

``mode`` is ``nat``, ``route`` or ``isolated``; ``dev`` is the forward device (libvirt's
``<forward dev=>``); ``<vnetfw:nat>`` takes what libvirt's ``<nat>`` takes;
``<vnetfw:port-forward>`` and ``<vnetfw:allow>`` (any number) are the TOML form's
``[[network.port_forward]]`` and ``[[network.allow]]``, with ``-`` for ``_`` in the names and
several sources or ports separated by spaces (docs/port-forwards.md). libvirt keeps a
``<metadata>`` child in a foreign namespace through ``net-define`` and ``net-dumpxml`` and
hands it to its network hook. Elements are found by namespace URI, not by prefix.

Contract: ``vnetfw_firewall(root, fail)`` returns the ``firewall`` element of a
``<network>`` (None if it has none) after checking its whole shape: every element and
attribute in vnetfw's namespace is known, each at most once, so a typo never silently leaves
a network unfirewalled; an element of another vnetfw namespace version is refused. Values
(ports, addresses) are checked by the reader that turns them into the model
(``libvirt_xml``). Other applications' metadata is ignored.
"""

from __future__ import annotations

from typing import Callable
from xml.etree.ElementTree import Element

from ..errors import DefinitionError
from ..model import Mode

URI = "urn:vnetfw:network:1"
NS = "{" + URI + "}"
PREFIX = "vnetfw:"                  # how error messages name our elements' fields
_OUR_URIS = "{urn:vnetfw:"
METADATA_MODES = {"nat": Mode.NAT, "route": Mode.ROUTE, "isolated": Mode.ISOLATED}

# element -> (allowed attributes, required attributes, allowed children)
_SHAPE: dict[str, tuple[frozenset[str], frozenset[str], frozenset[str]]] = {
    "firewall": (frozenset({"mode", "dev"}), frozenset({"mode"}),
                 frozenset({"nat", "port-forward", "allow"})),
    "nat": (frozenset({"ipv6"}), frozenset(), frozenset({"port", "address"})),
    "port": (frozenset({"start", "end"}), frozenset({"start", "end"}), frozenset()),
    "address": (frozenset({"start", "end"}), frozenset({"start"}), frozenset()),
    "port-forward": (frozenset({"proto", "port", "to", "to-port", "host-address", "source"}),
                     frozenset({"proto", "port", "to"}), frozenset()),
    "allow": (frozenset({"to", "ports", "source"}), frozenset({"to"}), frozenset()),
}
_REPEATABLE = frozenset({"port-forward", "allow"})

Fail = Callable[[str, str], DefinitionError]


def convert_hint(mode: Mode, source: str) -> str:
    """Why a non-open network may not carry vnetfw metadata, and what to do instead."""
    return (f"libvirt already firewalls a {mode.value} network itself, so vnetfw metadata "
            "is only for networks with <forward mode='open'/> (without the metadata, 'vnetfw "
            f"libvirt convert {source}' rewrites it that way; then virsh net-define it)")


def _local(tag: str) -> str:
    return tag[len(NS):]


def vnetfw_firewall(root: Element, fail: Fail) -> Element | None:
    """The network's ``<vnetfw:firewall>``, its shape checked (see the module contract)."""
    for child in root:
        if child.tag.startswith(_OUR_URIS):
            raise fail(f"{PREFIX}{child.tag.rpartition('}')[2]}",
                       "vnetfw's element must be inside <metadata> (libvirt drops unknown "
                       "elements anywhere else)")
    found: Element | None = None
    for meta in root.findall("metadata"):
        for el in meta:
            if not el.tag.startswith(_OUR_URIS):
                continue                                  # another application's metadata
            _check_ns(el, fail)
            if _local(el.tag) != "firewall":
                raise fail(f"{PREFIX}{_local(el.tag)}", "unknown element in <metadata> "
                                                         f"(expected {PREFIX}firewall)")
            if found is not None:
                raise fail(f"{PREFIX}firewall", "given twice: one per network")
            _check(el, f"{PREFIX}firewall", fail)
            found = el
    if found is not None and found.get("mode") not in METADATA_MODES:
        raise fail(f"{PREFIX}firewall mode",
                   f"mode={found.get('mode')!r} must be one of "
                   f"{', '.join(repr(m) for m in METADATA_MODES)}")
    return found


def _check_ns(el: Element, fail: Fail) -> None:
    if not el.tag.startswith(NS):
        uri = el.tag[1:].partition("}")[0]
        raise fail("metadata", f"unknown vnetfw namespace {uri!r} (this vnetfw reads {URI!r})")


def _check(el: Element, label: str, fail: Fail) -> None:
    allowed, required, children = _SHAPE[_local(el.tag)]
    for attr in el.attrib:
        if attr not in allowed:
            raise fail(f"{label} {attr.rpartition('}')[2]}",
                       f"unknown attribute (known: {', '.join(sorted(allowed))})")
    for attr in sorted(required - set(el.attrib)):
        raise fail(f"{label} {attr}", "missing")
    if (el.text or "").strip():
        raise fail(label, f"holds text {el.text.strip()[:40]!r}; it takes attributes only")
    seen: set[str] = set()
    for child in el:
        if child.tag.startswith(_OUR_URIS):
            _check_ns(child, fail)
        name = _local(child.tag) if child.tag.startswith(NS) else None
        if name not in children:
            shown = child.tag.rpartition("}")[2]
            raise fail(f"{label} {shown}",
                       f"unknown element (known inside {label}: "
                       f"{', '.join(PREFIX + c for c in sorted(children)) or 'none'})")
        assert name is not None
        if name in seen and name not in _REPEATABLE:
            raise fail(f"{PREFIX}{name}", "given twice")
        seen.add(name)
        _check(child, f"{PREFIX}{name}", fail)
