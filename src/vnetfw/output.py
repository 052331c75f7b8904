"""What the CLI prints: the JSON documents of ``--json`` and the human text. Formatting only:
it runs no command and reads nothing but what it is handed.

JSON contract (docs/json.md; a JSON Schema per document in ``vnetfw/schemas/``): every run
with ``--json`` prints exactly one object on stdout, with ``schema_version`` (bumped only
for a change a consumer must know about; new keys may appear without a bump) and
``command``. A change or drift item has one shape everywhere (``Change.to_json``): what is
wrong with the live firewall (``problem``) and what the repair is (``repair``). An error is
``{"schema_version", "command", "error": {"kind", "file", "network", "field", "message"}}``
with the same exit status as without ``--json`` (the table below).

Output into a pipe whose reader left (``vnetfw check | head -c0``) is no error and does not
change the exit status: ``write`` stops writing, and the command still returns its code.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable, Iterable

SCHEMA_VERSION = 1

# The exit statuses of every command: (status, name, meaning). The same table is in
# ``vnetfw --help`` and docs/exit-codes.md (a test holds the two to it).
EXIT_CODES: tuple[tuple[int, str, str], ...] = (
    (0, "ok", "done (or nothing to do); status/check/diff: clean, or no desired state"),
    (1, "drift", "status/check/diff: the live firewall differs from the desired state; "
                 "doctor: a problem found"),
    (2, "usage, definition", "bad arguments, or a definition refused (file, network and "
                             "field named); nothing changed"),
    (3, "backend", "a firewall command failed, or cannot run (needs root "
                   "(CAP_NET_ADMIN)); what the change wrote was undone"),
    (4, "state, lock", "the state directory is unusable or not safe (another user could "
                       "have written it), or another vnetfw held its lock "
                       "too long; nothing changed"),
    (5, "safety guard", "a guard refused to act (e.g. the lab on the namespace it runs in)"),
    (6, "hook", "the change landed whole, but a hook failed; or a hook another user could "
                "have written was refused before anything changed"),
    (130, "interrupted", "Ctrl-C: a change in progress landed whole or not at all"),
)


def exit_codes_text() -> str:
    """The table as ``--help`` prints it."""
    import textwrap
    lines = ["exit status:"]
    for code, name, meaning in EXIT_CODES:
        lines += textwrap.wrap(meaning, width=90, initial_indent=f"  {code:<4} {name:<18} ",
                               subsequent_indent=" " * 26, break_on_hyphens=False)
    return "\n".join(lines) + "\n"


def schema(name: str) -> dict[str, Any]:
    """The JSON Schema of one kind of document, as shipped in ``vnetfw/schemas/``: report,
    drift, status, list, render, error, doctor, migrate, install-files (docs/json.md)."""
    from importlib.resources import files
    return json.loads((files("vnetfw") / "schemas" / f"{name}.json").read_text())


# -- writing ----------------------------------------------------------------------------

def stdout_gone() -> bool:
    """Has the reader of our stdout gone away? (A pipe with no reader polls POLLERR, a
    socket whose peer left POLLHUP.)"""
    import select
    try:
        p = select.poll()
        p.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in p.poll(0))
    except (OSError, ValueError):
        return False


def silence_stdout() -> None:
    """The reader left: what is still buffered (and anything printed later) goes nowhere."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def guarded(print_it: Callable[[], None]) -> None:
    """Run ``print_it``; if stdout's reader has left, stop printing and return as if done
    (the command's exit status stands). A broken pipe to anything else is raised."""
    try:
        print_it()
        sys.stdout.flush()
    except BrokenPipeError:
        if not stdout_gone():
            raise
        silence_stdout()


def write(text: str) -> None:
    guarded(lambda: sys.stdout.write(text))


def emit_json(doc: dict[str, Any]) -> None:
    guarded(lambda: (json.dump(doc, sys.stdout, indent=2), sys.stdout.write("\n")))


def document(command: str | None, **body: Any) -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "command": command, **body}


# -- JSON documents ---------------------------------------------------------------------

def error_doc(command: str | None, kind: str, message: str, *, file: str | None = None,
              network: str | None = None, field: str | None = None) -> dict[str, Any]:
    return document(command, error={"kind": kind, "file": file, "network": network,
                                    "field": field, "message": message})


def error_doc_of(command: str | None, e: Any) -> dict[str, Any]:
    """The error document of a ``VnetfwError``."""
    return error_doc(command, e.kind, str(e), file=e.file, network=e.network, field=e.field)


def report_doc(rep: Any, interrupted: bool = False) -> dict[str, Any]:
    """An ``engine.Report``: what a changing command did, or with a dry run would do
    (``applied`` false: nothing was committed)."""
    return document(rep.action, backend=rep.backend, dry_run=not rep.applied,
                    applied=rep.applied, changed=rep.changed, networks=rep.networks,
                    changes=[c.to_json() for c in rep.changes], warnings=rep.warnings,
                    notes=rep.notes, hook_failures=rep.hook_failures,
                    interrupted=interrupted)


def drift_doc(command: str, items: list, desired: bool) -> dict[str, Any]:
    return document(command, clean=not items, desired=desired,
                    drift=[c.to_json() for c in items])


def status_doc(st: dict[str, Any]) -> dict[str, Any]:
    body = dict(st)
    body["drift"] = [c.to_json() for c in st["drift"]]
    return document("status", **body)


def list_doc(nets: Iterable[Any]) -> dict[str, Any]:
    return document("list", networks=[n.to_dict() for n in nets])


def _rule_json(r: Any, counts: dict) -> dict[str, Any]:
    c = counts.get(r)
    return {"family": f"ipv{r.family}", "table": r.table, "chain": r.chain,
            "rule": r.describe(), "optional": r.optional,
            "packets": c[0] if c else None, "bytes": c[1] if c else None}


def show_doc(sh: dict[str, Any]) -> dict[str, Any]:
    net = sh["network"]
    return document("show", backend=sh["backend"], profile=sh["profile"],
                    prefix=sh["prefix"], network=net.to_dict(), in_sync=sh["in_sync"],
                    drift=[c.to_json() for c in sh["drift"]],
                    counters=sh["all_counted"],
                    port_forwards=sh.get("port_forwards", []), allows=sh.get("allows", []),
                    rules=[_rule_json(r, sh["counters"]) for r in sh["rules"]])


# -- human text -------------------------------------------------------------------------

SHOW_EACH = 60      # networks listed one by one; more are summed up in one line


def print_report(rep: Any, verbose: bool) -> None:
    """A changing command's report: one line saying what changed, then one line per
    network changed (and one for the layout); ``verbose`` lists every change instead."""
    verb = "would change" if not rep.applied else "changed"
    if not rep.changes:
        print(f"{rep.action}: no change ({rep.backend})")
    else:
        print(f"{rep.action}: {verb} {len(rep.changes)} item(s) ({rep.backend})")
        if verbose:
            for c in rep.changes:
                print(f"  {c}")
        else:
            _per_network(rep.changes)
    for n in rep.notes:
        print(f"note: {n}")
    for w in rep.warnings:
        print(f"warning: {w}", file=sys.stderr)
    for f in rep.hook_failures:
        print(f"vnetfw: hook failed: {f}", file=sys.stderr)


def _per_network(changes: list) -> None:
    """One line per network and one for the layout (--verbose or --json list every
    change): adding a network is a line, not its 40-odd rules."""
    per_net: dict[str | None, dict[str, int]] = {}
    for c in changes:
        counts = per_net.setdefault(c.network, {})
        counts[c.what] = counts.get(c.what, 0) + 1
    layout = per_net.pop(None, None)
    if layout:
        print("  layout: " + ", ".join(f"{w} {n}" for w, n in sorted(layout.items())))
    names = sorted(per_net)
    for name in names[:SHOW_EACH]:
        print(f"  {name}: " + ", ".join(f"{w} {n}" for w, n in sorted(per_net[name].items())))
    if len(names) > SHOW_EACH:
        print(f"  ... and {len(names) - SHOW_EACH} more network(s)")


def print_drift(items: list, desired: bool, quiet_when_clean: bool) -> None:
    if not items:
        if not quiet_when_clean:
            print("no drift: the live firewall matches the desired state" if desired else
                  "no drift: no active networks, so no desired state to differ from")
        return
    print(f"drift: {len(items)} difference(s) from the desired state "
          "('vnetfw reload' repairs them)")
    for c in items:
        print(f"  {c.drift_text()}")


def table(headers: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """Columns with a header line and a rule under it, as virsh prints them."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    line = lambda cells: " " + "   ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    print(line(headers))
    print("-" * (sum(widths) + 3 * (len(widths) - 1) + 2))
    for r in rows:
        print(line(r))


def print_list(nets: list) -> None:
    if not nets:
        print("no active networks")
        return
    table(("Name", "Mode", "Bridge", "Subnets", "Forward device"),
          [(n.name, n.mode.value, n.bridge or "-",
            " ".join(str(ip.subnet) for ip in n.ips) or "-", n.forward_dev or "-")
           for n in nets])


def print_status(st: dict[str, Any]) -> None:
    print(f"backend {st['backend']}, profile {st['profile']}, prefix {st['prefix']}, "
          f"state {st['state_dir']}")
    if not st["desired"] and not st["drift"]:
        print("live firewall: nothing to check (no active networks)")
        return
    print("live firewall: " + ("in sync" if st["in_sync"] else
                               f"DRIFT ({len(st['drift'])} differences)"))
    for c in st["drift"]:
        print(f"  {c.drift_text()}")
    print()
    if not st["networks"]:
        print("no active networks: the rules above belong to none vnetfw has on record "
              "('vnetfw teardown' removes them)")
        return
    table(("Name", "Mode", "Bridge", "Subnets", "Rules"),
          [(n["name"], n["mode"], n["bridge"] or "-", " ".join(n["subnets"]) or "-",
            str(n["rules"])) for n in st["networks"]])
    fwd = [(n["name"], f["text"], str(f["packets"])) for n in st["networks"]
           for f in n.get("port_forwards", ())]
    if fwd:
        print()
        table(("Network", "Port forward", "Connections"), fwd)
    alw = [(n["name"], a["to"], ",".join(a["ports"]) or "all", ",".join(a["source"]) or "all",
            f"waiting: {a['to']} is not active" if a["waiting"] else "active")
           for n in st["networks"] for a in n.get("allows", ())]
    if alw:
        print()
        table(("Network", "Allows into", "Ports", "From", "State"), alw)


def print_show(sh: dict[str, Any]) -> None:
    """``vnetfw show NAME``: the definition, then the live state, then every rule."""
    n = sh["network"]
    fields = [("Name", n.name), ("Mode", n.mode.value), ("Bridge", n.bridge or "-"),
              ("Subnets", " ".join(f"{ip.subnet}{' (dhcp)' if ip.dhcp else ''}"
                                   for ip in n.ips) or "-"),
              ("Forward device", n.forward_dev or "-"), ("Source", n.source or "-"),
              ("Backend", f"{sh['backend']} (profile {sh['profile']}, prefix {sh['prefix']})"),
              ("Live firewall", "in sync" if sh["in_sync"] else
               f"DRIFT ({len(sh['drift'])} differences; 'vnetfw reload' repairs them)")]
    for k, v in fields:
        print(f"{k + ':':<16}{v}")
    for c in sh["drift"]:
        print(f"  {c.drift_text()}")
    if sh.get("port_forwards"):
        print("\nPort forwards:")
        for f in sh["port_forwards"]:
            print(f"  {f['text']} ({f['packets']} connection(s))")
    if sh.get("allows"):
        print("\nAllows:")
        for x, a in zip(sh["allows"], n.allows):
            print(f"  {a.describe()}" + (" (waiting: not active)" if x["waiting"] else ""))
    counts = sh["counters"]
    print()
    if not sh["rules"]:
        print("Rules: none (this mode gets no firewall rules)")
        return
    table(("Family", "Chain", "Packets", "Bytes", "Rule"),
          [(f"ipv{r.family}", f"{r.table} {r.chain}",
            *((str(c[0]), str(c[1])) if (c := counts.get(r)) else ("-", "-")),
            r.describe()) for r in sh["rules"]])
    if not sh["all_counted"]:
        print(f"(no counters: {sh['backend']} rules keep none"
              + (", but for port forwards')" if counts else ")"))
