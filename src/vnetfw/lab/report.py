"""Rendering a ``MatrixResult`` as ``rich`` tables (the demo's human output).

Contract: ``print_result(result, networks, ...)`` prints, per IP family, one grid: a row per
source (each network's guests together, each uplink host), a column per destination (own
gateway, the other guest on the same bridge, each uplink host, each network's guests). A
cell sums up the TCP and UDP probes behind it -- ``yes``, ``masq`` (yes, and the receiver
saw the hypervisor's address, checked exactly; ``--json`` shows it), ``UDP only`` (one-way:
the reply could not come back), ``no`` -- in green when every probe matched the policy and in red (``✗ got (want ...)``) otherwise.
Every mismatching probe is then listed on its own. Pure output: nothing is probed here.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from rich import box
from rich.console import Console
from rich.table import Table

from ..model import Network
from .matrix import MatrixResult, Row


def _summary(rows: Sequence[Row], observed: bool) -> str:
    def reach(proto: str) -> bool:
        sel = [r for r in rows if r.proto == proto]
        vals = {(r.observed.reached if observed else r.expected.reach) for r in sel}
        return vals == {True} if vals else False
    tcp, udp = reach("tcp"), reach("udp")
    if tcp and udp:
        text = "yes"
    elif udp:
        text = "UDP only"
    elif tcp:
        text = "TCP only"
    else:
        return "no"
    seen = {(r.observed.seen if observed else r.expected.seen_text()) for r in rows
            if (r.observed.reached if observed else r.expected.reach)}
    own = {r.src_addr for r in rows}
    if any(s and s not in own for s in seen):
        text = "masq" if text == "yes" else text + " masq"
    return text


def _cell(rows: Sequence[Row]) -> str:
    if not rows:
        return "[dim]—[/dim]"
    got = _summary(rows, observed=True)
    if all(r.ok for r in rows):
        return f"[green]{got}[/green]"
    want = _summary(rows, observed=False)
    if got == want:         # same reach, but a source address or anomaly differs
        got += " (!)"
    return f"[bold red]✗ {got}\n(want {want})[/bold red]"


def _one_way(result: MatrixResult) -> list[str]:
    """Cells the policy itself expects to be one-way (UDP in, TCP's reply refused): the
    libvirt leak and its relatives, worth pointing out even when everything matches."""
    tcp = {(r.src, r.dst, r.family): r for r in result.rows if r.proto == "tcp"}
    found: dict[tuple[str, str, str], set[int]] = {}
    for r in result.rows:
        t = tcp.get((r.src, r.dst, r.family))
        if r.proto == "udp" and r.expected.reach and t is not None and not t.expected.reach:
            found.setdefault((_src_key(r.src), _dst_key(r), t.expected.why), set()).add(r.family)
    return [f"expected one-way: {s} -> {d} (IPv{'+'.join(map(str, sorted(f)))}): "
            + why.removeprefix("one-way: ") for (s, d, why), f in sorted(found.items())]


_HEAD = {"gateway": "gw", "same net": "peer"}


def _src_key(name: str) -> str:
    return name.split("/")[0]            # "nat46/g1" -> "nat46"; "up:uplink0" stays


def _dst_key(r: Row) -> str:
    if r.dst.endswith("/gw"):
        return "gateway"
    if _src_key(r.dst) == _src_key(r.src) and "/" in r.src:
        return "same net"
    return _src_key(r.dst)


def print_result(result: MatrixResult, networks: Iterable[Network], *, backend: str,
                 profile: str, info: dict[str, str] | None = None,
                 timing: tuple[float, float, float] | None = None,
                 console: Console | None = None) -> None:
    con = console or Console()
    nets = [n.name for n in networks]
    ups = sorted({r.src for r in result.rows if r.src.startswith("up:")} |
                 {r.dst for r in result.rows if r.dst.startswith("up:")})
    modes = {n.name: n.mode.value + (f" via {n.forward_dev}" if n.forward_dev else "")
             for n in networks}
    cols = ["gateway", "same net", *ups, *nets]
    for fam in (4, 6):
        rows = [r for r in result.rows if r.family == fam]
        if not rows:
            continue
        t = Table(title=f"IPv{fam} -- {backend}, profile {profile} (from row, to column)",
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
        t.add_column("from", style="bold", no_wrap=True)
        for c in cols:
            t.add_column(_HEAD.get(c, c.removeprefix("up:")))
        for src in [*nets, *ups]:
            mine = [r for r in rows if _src_key(r.src) == src]
            if mine:
                t.add_row(src.removeprefix("up:"),
                          *(_cell([r for r in mine if _dst_key(r) == c]) if c != src
                            else "[dim]—[/dim]" for c in cols))
        con.print(t)
    con.print("[dim]gw: the guest's own gateway; peer: the other guest on its bridge; "
              "masq: the receiver saw the hypervisor's address[/dim]")
    con.print("[dim]" + "; ".join(f"{n} = {m}" for n, m in modes.items()) + "[/dim]")
    for line in _one_way(result):
        con.print(f"[yellow]{line}[/yellow]", highlight=False)
    bad = result.mismatches
    if bad:
        con.print(f"[bold red]{len(bad)} of {len(result.rows)} probes differ from the policy:"
                  "[/bold red]")
        for line in result.explain().splitlines():
            con.print(f"  {line}", style="red", markup=False, highlight=False)
    else:
        con.print(f"[bold green]all {len(result.rows)} probes match the policy[/bold green]")
    extra = []
    if timing:
        extra.append(f"lab built in {timing[0]:.1f}s, matrix in {timing[1]:.1f}s, "
                     f"total {timing[2]:.1f}s")
    if info:
        extra.append(", ".join(f"{k}={v}" for k, v in info.items() if k != "hv"))
    for e in extra:
        con.print(f"[dim]{e}[/dim]")
