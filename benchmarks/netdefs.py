"""Network definitions for the benchmarks: libvirt XML files, generated deterministically.

Sets:
- ``nat``:   N NAT networks with DHCP, like libvirt's ``default`` (the issue's main case);
- ``mixed``: the same N cycling through six shapes: nat+DHCP, nat with IPv6 NAT (dual stack),
  route, isolated, nat via a forward device with an SNAT address range, a port range and TFTP,
  and a dual-stack route.

Network ``i`` is named ``n<i:05d>`` on bridge ``vb<i:05d>`` with subnet ``10.<i//256>.<i%256>.0/24``
(the addresses only ever exist inside the benchmark's namespaces). Extra networks used by the
incremental and data-plane measurements sort where they must: ``EXTRA`` sorts in the middle
of the existing ones, ``PROBE`` (``zz-probe``) last.
"""

from __future__ import annotations

from pathlib import Path

SETS = ("nat", "mixed")


def _v4(i: int) -> tuple[str, str]:
    if not 0 <= i < 250 * 256:
        raise ValueError(f"network index {i} out of range")
    a, b = divmod(i, 256)
    return f"10.{a}.{b}", f"10.{a}.{b}.1"


def _dhcp(base: str) -> str:
    return f"<dhcp><range start='{base}.100' end='{base}.200'/></dhcp>"


def xml_for(i: int, shape: str = "nat", name: str | None = None, bridge: str | None = None,
            v4: str | None = None) -> str:
    name = name or f"n{i:05d}"
    bridge = bridge or f"vb{i:05d}"
    base, gw = (v4.rsplit(".", 1)[0], v4) if v4 else _v4(i)
    ip4 = f"<ip address='{gw}' prefix='24'>{_dhcp(base)}</ip>"
    v6 = f"<ip family='ipv6' address='fd00:{i >> 16:x}:{i & 0xffff:x}::1' prefix='64'/>"
    if shape == "nat":
        body = f"<forward mode='nat'/>{_br(bridge)}{ip4}"
    elif shape == "nat6":
        body = f"<forward mode='nat'><nat ipv6='yes'/></forward>{_br(bridge)}{ip4}{v6}"
    elif shape == "route":
        body = f"<forward mode='route'/>{_br(bridge)}{ip4}"
    elif shape == "isolated":
        body = f"{_br(bridge)}{ip4}"
    elif shape == "natdev":
        body = (f"<forward mode='nat' dev='eth9'><nat><address start='198.51.100.10' "
                f"end='198.51.100.20'/><port start='2000' end='3000'/></nat></forward>"
                f"{_br(bridge)}<ip address='{gw}' prefix='24'><tftp root='/srv/tftp'/>"
                f"{_dhcp(base)}</ip>")
    elif shape == "route6":
        body = f"<forward mode='route'/>{_br(bridge)}{ip4}{v6}"
    else:
        raise ValueError(shape)
    return f"<network>\n  <name>{name}</name>\n  {body}\n</network>\n"


def _br(bridge: str) -> str:
    return f"<bridge name='{bridge}' stp='on' delay='0'/>"


MIXED_SHAPES = ("nat", "nat6", "route", "isolated", "natdev", "route6")


def shape_of(set_name: str, i: int) -> str:
    if set_name == "nat":
        return "nat"
    if set_name == "mixed":
        return MIXED_SHAPES[i % len(MIXED_SHAPES)]
    raise ValueError(set_name)


def xmls(set_name: str, n: int) -> dict[str, str]:
    """name -> XML text for networks 0..n-1 of a set."""
    return {f"n{i:05d}": xml_for(i, shape_of(set_name, i)) for i in range(n)}


def extra_xml(n_existing: int) -> tuple[str, str]:
    """The network added/removed by the incremental measurement: sorts mid-way."""
    name = f"n{n_existing // 2:05d}x"
    return name, xml_for(0, "nat", name=name, bridge="vbextra", v4="10.250.0.1")


PROBE_NAME, PROBE_BRIDGE, PROBE_GW = "zz-probe", "vbprobe", "10.255.0.1"
PROBE_GUEST = "10.255.0.2"


def probe_xml() -> str:
    return xml_for(0, "nat", name=PROBE_NAME, bridge=PROBE_BRIDGE, v4=PROBE_GW)


def write_dir(d: Path, defs: dict[str, str]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for name, text in defs.items():
        (d / f"{name}.xml").write_text(text)
    return d


def load(defs: dict[str, str], folder: Path | None = None):
    """Parse definitions in-process (the library row is given already-loaded networks).
    ``folder``: where ``write_dir`` put them, so that each network's source is the path the
    CLI reads it from (a network whose source differs is a changed network to the engine:
    a library re-apply after a CLI apply would re-plan them all)."""
    from vnetfw.model import validate_together
    from vnetfw.sources.libvirt_xml import parse_network_xml
    where = (lambda n: str(folder / f"{n}.xml")) if folder is not None else (lambda n: f"{n}.xml")
    return list(validate_together(parse_network_xml(t, where(n)) for n, t in defs.items()))
