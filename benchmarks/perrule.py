"""One process per rule (libvirt's pattern): turn a ruleset into a shell script of single
``iptables``/``nft`` commands, run it in a namespace, stop after a time limit.

iptables: the ``iptables-restore`` text vnetfw renders becomes one ``iptables -w -t T ...``
command per chain creation and per rule (``-N`` for ``:CHAIN``, the ``-A``/``-I`` lines as
they are), which is what libvirt (<= 10.3, and with firewall_backend=iptables) does.

nftables: the rendered script is first loaded in a scratch namespace and listed with
``nft -j list ruleset``; every object then becomes its own ``nft -j '{"nftables":[{"add":..}]}'``
command (table, chains, maps/sets without elements, one command per element, one per rule).
This is independent of how the nftables backend writes its script, and it is libvirt 10.4+'s
pattern (one ``nft`` process per rule), with map elements counted as rules.
"""

from __future__ import annotations

import json
import shlex
import tempfile
import time

from vnetfw.lab.netns import Netns


def iptables_commands(restore_text: str, binary: str) -> list[str]:
    cmds: list[str] = []
    table = None
    for line in restore_text.splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            table = line[1:].strip()
        elif line == "COMMIT":
            table = None
        elif line.startswith(":"):
            chain = line[1:].split()[0]
            cmds.append(f"{binary} -w -t {table} -N {chain}")
        else:
            cmds.append(f"{binary} -w -t {table} {line}")
    return cmds


def nft_commands(listing: dict) -> list[str]:
    """``nft -j list ruleset`` output -> one ``nft -j`` command per object/element/rule."""
    objs = [o for o in listing.get("nftables", []) if "metainfo" not in o]
    first: list[dict] = []
    elems: list[dict] = []
    rules: list[dict] = []
    for o in objs:
        (kind, body), = o.items()
        body = dict(body)
        body.pop("handle", None)
        if kind == "table":
            first.insert(0, {"add": {"table": body}})
        elif kind == "chain":
            first.append({"add": {"chain": body}})
        elif kind in ("map", "set"):
            el = body.pop("elem", [])
            first.append(_map_text(body) if kind == "map" and " . " in str(body.get("map"))
                         else {"add": {kind: body}})
            for e in el:
                elems.append({"add": {"element": {"family": body["family"],
                                                  "table": body["table"],
                                                  "name": body["name"], "elem": [e]}}})
        elif kind == "rule":
            rules.append({"add": {"rule": body}})
        # flowtables, counters, quotas...: not used by vnetfw; ignored
    tables = [c for c in first if isinstance(c, dict) and "table" in c["add"]]
    rest = [c for c in first if not (isinstance(c, dict) and "table" in c["add"])]
    return [c if isinstance(c, str) else
            "nft -j " + shlex.quote(json.dumps({"nftables": [c]}, separators=(",", ":")))
            for c in tables + rest + elems + rules]


def _map_text(body: dict) -> str:
    """A map whose data is a concatenation (the port forwards' ``addr . port``), as an
    ``nft add map`` text command: nft 1.0.6 lists such a map's data type as the string
    "a . b", refuses that string on input, and given the list ["a", "b"] silently creates a
    plain set instead (checked by hand). libvirt's pattern is one process per object either
    way, so only the syntax differs from the JSON commands."""
    key = body["type"] if isinstance(body["type"], str) else " . ".join(body["type"])
    flags = body.get("flags") or []
    flags = [flags] if isinstance(flags, str) else flags
    spec = f"type {key} : {body['map']};" + (f" flags {', '.join(flags)};" if flags else "")
    return ("nft " + shlex.quote(f"add map {body['family']} {body['table']} {body['name']} "
                                 f"{{ {spec} }}"))


def run_script(ns: Netns, cmds: list[str], limit: float) -> tuple[float, bool, int]:
    """Run the commands one process each (``sh -e``) inside ``ns``; stop at ``limit`` seconds.

    Returns (seconds, finished, commands). ``finished`` is False when the limit stopped it.
    """
    with tempfile.NamedTemporaryFile("w", prefix="vnb-perrule-", suffix=".sh") as f:
        f.write("set -e\n" + "\n".join(cmds) + "\n")
        f.flush()
        t0 = time.perf_counter()
        p = ns.run_process("timeout", "-s", "KILL", f"{limit:.1f}", "sh", f.name,
                           timeout=limit + 30, check=False)
        dt = time.perf_counter() - t0
    if p.returncode in (124, 137, -9):
        return dt, False, len(cmds)
    if p.returncode != 0:
        raise RuntimeError(f"per-rule script failed ({p.returncode}): {p.stderr.strip()[-800:]}")
    return dt, True, len(cmds)
