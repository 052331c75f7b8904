"""The checks of ``vnetfw doctor``: pure functions from ``Facts`` to ``Finding``s.

Contract: ``run_checks(facts)`` returns every finding, each one self-contained: *what* was
found (with the evidence), *why* it matters to the virtual networks, and the *fix*. A
``problem`` is something that breaks (or will break) traffic of a managed network; a
``note`` is worth knowing but breaks nothing by itself. No I/O here: everything comes from
``doctor_facts.gather``, so each check is tested with hand-made facts.

The netfilter facts the checks rely on:
- Every base chain registered at a hook sees the packet: iptables-nft's ``filter FORWARD``,
  iptables-legacy's ``filter FORWARD``, and each nftables table's ``forward`` base chain are
  separate base chains. An *accept* ends only the base chain it is issued in; the packet
  then meets the next base chain at that hook. A *drop* (a rule, or the chain's ``drop``
  policy) is final. So an accept in vnetfw's chains wins over a DROP policy only when
  vnetfw's jumps are in that same chain, ahead of whatever drops.
- With br_netfilter on (``net.bridge.bridge-nf-call-ip{,6}tables = 1``) frames bridged
  between two ports of one bridge also traverse FORWARD, as ``-i BR -o BR``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Literal

from .backends.iptables import (IptLive, TableDump, forward_jumps_in_order, our_jump_target,
                                plain_jump_target, tokens)
from .backends.nft_layout import is_vnetfw_table
from .doctor_facts import Facts
from .migrate import LIBVIRT_PREFIX, find as find_old, libvirt_forward_active
from .model import Mode, Network

Severity = Literal["problem", "note"]

NETFILTER_FACT = (
    "Netfilter runs every base chain registered at the forward hook for each packet: "
    "iptables-nft's filter FORWARD, iptables-legacy's filter FORWARD and each nftables "
    "table's forward chain are separate base chains. An accept verdict only ends the base "
    "chain it is issued in; the packet then meets the next base chain. A drop, or a chain's "
    "DROP policy, is final. So an accept in one place never overrides a drop in another.")


@dataclass(frozen=True)
class Finding:
    code: str
    severity: Severity
    what: str
    why: str
    fix: str
    details: tuple[str, ...] = ()
    networks: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "severity": self.severity, "what": self.what,
                "why": self.why, "fix": self.fix, "details": list(self.details),
                "networks": list(self.networks)}


# ---------------------------------------------------------------------------------------
# Helpers


def _ipt(flavour: str, fam: int) -> str:
    return ("iptables" if fam == 4 else "ip6tables") + flavour.removeprefix("iptables")


def _names(nets: Iterable[Network]) -> str:
    return ", ".join(f"{n.name} ({n.mode.value}, {n.bridge})" for n in nets)


def forwarding_networks(facts: Facts, fam: int) -> list[Network]:
    """Networks whose guests' traffic is routed by the host in family ``fam``."""
    return [n for n in facts.networks
            if n.mode in (Mode.NAT, Mode.ROUTE, Mode.OPEN) and n.ips_of(fam)]


def br_netfilter(facts: Facts, fam: int) -> bool:
    key = "net.bridge.bridge-nf-call-iptables" if fam == 4 else \
        "net.bridge.bridge-nf-call-ip6tables"
    return facts.sysctl.get(key) == "1"


def forward_users(facts: Facts, fam: int) -> list[Network]:
    """Networks with traffic in the FORWARD path of ``fam``: routed traffic, and with
    br_netfilter on, guest-to-guest traffic on every bridge."""
    fw = forwarding_networks(facts, fam)
    if br_netfilter(facts, fam):
        fw += [n for n in facts.networks if n.bridge and n.mode.needs_bridge and n not in fw]
    return fw


def _tokens(args: str) -> list[str]:
    return tokens(args) or args.split()


def names_bridge(args: str, bridges: Iterable[str]) -> str | None:
    """The managed bridge a rule matches on with -i/-o (iptables' ``+`` wildcard too)."""
    tok = _tokens(args)
    for i, t in enumerate(tok[:-1]):
        if t in ("-i", "-o", "--in-interface", "--out-interface"):
            name = tok[i + 1]
            for br in bridges:
                if name == br or (name.endswith("+") and br.startswith(name[:-1])):
                    return br
    return None


def _verdict(args: str) -> str | None:
    tok = _tokens(args)
    for i, t in enumerate(tok[:-1]):
        if t in ("-j", "--jump", "-g", "--goto"):
            return tok[i + 1]
    return None


def _catch_all_drop(args: str) -> bool:
    tok = _tokens(args)
    return bool(tok) and tok[:2] in (["-j", "DROP"], ["-j", "REJECT"])


def _our_jumps(rules: list[str], prefix: str | None) -> list[int]:
    if not prefix:
        return []
    # the three stages, and the port forwards' and allows' jumps between them
    ours = {f"{prefix}_{s}" for s in ("ALW", "FWX", "FWD", "FWI", "FWO")}
    return [i for i, a in enumerate(rules) if our_jump_target(a) in ours]


IPTABLES_NFT_TABLES = {"filter", "nat", "mangle", "raw", "security"}


def _nft_items(facts: Facts, kind: str) -> list[dict[str, Any]]:
    return [it[kind] for it in facts.nft or [] if kind in it]


def _mentions(obj: Any, names: set[str]) -> set[str]:
    """Every string in a JSON value that is one of ``names`` (nft rules, sets, maps)."""
    found: set[str] = set()
    if isinstance(obj, str):
        if obj in names:
            found.add(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            found |= _mentions(v, names)
    elif isinstance(obj, list):
        for v in obj:
            found |= _mentions(v, names)
    return found


def _backend_words(facts: Facts) -> str:
    """Where vnetfw's verdicts are taken, as a phrase."""
    if facts.backend is None:
        return "vnetfw has no rules yet (no network applied)"
    if facts.flavour is not None:
        return f"vnetfw decides in its {facts.flavour} chains ({facts.prefix}_*), not here"
    if facts.backend == "nftables":
        return "vnetfw decides in its own nftables table, not here"
    return f"vnetfw decides through its {facts.backend} backend, not here"


# ---------------------------------------------------------------------------------------
# Checks


def check_forwarding(facts: Facts) -> list[Finding]:
    out = []
    for fam, key in ((4, "net.ipv4.ip_forward"), (6, "net.ipv6.conf.all.forwarding")):
        nets = forwarding_networks(facts, fam)
        val = facts.sysctl.get(key)
        if not nets or val is None or val != "0":
            continue
        out.append(Finding(
            f"forwarding-off-ipv{fam}", "problem",
            f"IPv{fam} forwarding is off ({key} = 0) while {_names(nets)} route IPv{fam}.",
            "The kernel does not forward packets between the bridges and the uplink: guests "
            "reach the host itself (DHCP, DNS) but nothing beyond it, whatever the firewall "
            "says.",
            f"sysctl -w {key}=1, and keep it across reboots with a file in /etc/sysctl.d/ "
            f"(e.g. echo '{key} = 1' > /etc/sysctl.d/90-vnetfw.conf)."
            + (" Note that turning on net.ipv6.conf.all.forwarding stops the host from "
               "accepting router advertisements on interfaces with accept_ra=1 (set "
               "accept_ra=2 on the uplink if it uses SLAAC)." if fam == 6 else ""),
            networks=tuple(n.name for n in nets)))
    return out


def check_forward_policy(facts: Facts) -> list[Finding]:
    """DROP policy (or a catch-all DROP/REJECT rule) in an iptables FORWARD chain, and
    forward base chains with a drop policy in other nftables tables."""
    out = []
    for flavour, live in sorted(facts.iptables.items()):
        for fam in (4, 6):
            dump = live.tables.get(fam, {}).get("filter")
            if dump is None:
                continue
            rules = dump.chains.get("FORWARD", [])
            policy = dump.policies.get("FORWARD", "ACCEPT")
            drops = [i for i, a in enumerate(rules) if _catch_all_drop(a)]
            if policy == "ACCEPT" and not drops:
                continue
            out.append(_forward_drop_finding(facts, flavour, fam, rules, policy, drops))
    out += _nft_forward_drops(facts)
    return out


def _forward_drop_finding(facts: Facts, flavour: str, fam: int, rules: list[str],
                          policy: str, drops: list[int]) -> Finding:
    cmd = _ipt(flavour, fam)
    what_drop = (f"the FORWARD policy is {policy}" if policy != "ACCEPT" else
                 f"FORWARD ends in a catch-all '{rules[drops[0]]}' (rule {drops[0] + 1})")
    docker = any(c.startswith("DOCKER") for c in
                 facts.iptables[flavour].tables.get(fam, {}).get("filter", TableDump()).chains)
    who = " (Docker sets it when it enables forwarding)" if docker and policy == "DROP" else ""
    users = forward_users(facts, fam)
    ours = _our_jumps(rules, facts.prefix) if facts.flavour == flavour else []
    base_what = f"{cmd}: {what_drop}{who}."
    details = []
    if not users:
        return Finding(
            f"forward-drop-{flavour}-ipv{fam}", "note", base_what,
            "No managed network forwards IPv%d traffic through this chain now, so nothing "
            "breaks yet. Networks applied with vnetfw's %s backend will be fine (its jumps "
            "sit ahead of the policy in this chain); with any other backend this chain would "
            "drop their forwarded traffic. %s" % (fam, flavour, NETFILTER_FACT),
            f"Nothing to do now; prefer --backend {flavour} on this host.")
    first_drop = drops[0] if drops else len(rules)
    if ours and min(ours) < first_drop:
        above = rules[:min(ours)]
        unfirewalled = [n for n in users if not n.mode.firewalled]
        details = [f"rule {i + 1} (before vnetfw's jumps): -A FORWARD {a}"
                   for i, a in enumerate(above)]
        harmful = [a for a in above if _verdict(a) in ("DROP", "REJECT")
                   and (names_bridge(a, {n.bridge for n in users if n.bridge})
                        or not any(t in _tokens(a) for t in ("-i", "-o", "-s", "-d")))]
        if unfirewalled or harmful:
            why = []
            if unfirewalled:
                why.append(f"{_names(unfirewalled)} get no rules from vnetfw by design (mode "
                           "open), so their forwarded traffic falls through to the "
                           f"{policy} policy.")
            if harmful:
                why.append("Rules above vnetfw's jumps drop or reject traffic of managed "
                           "bridges before vnetfw decides: " + "; ".join(harmful))
            return Finding(
                f"forward-drop-{flavour}-ipv{fam}", "problem", base_what, " ".join(why),
                f"Accept the open networks' bridges explicitly ({cmd} -I FORWARD -i BR -j "
                "ACCEPT and -o BR), or remove the rules above vnetfw's jumps that drop them.",
                tuple(details), tuple(n.name for n in unfirewalled))
        return Finding(
            f"forward-drop-{flavour}-ipv{fam}", "note", base_what,
            f"vnetfw's accepts still win: its jumps are in this same chain (rules "
            f"{', '.join(str(i + 1) for i in ours)}), ahead of the policy, and every packet "
            f"to or from {_names(users)} gets its ACCEPT or REJECT inside vnetfw's chains, "
            "so the policy never applies to them. Rules above the jumps run first; they "
            "only matter if they match the managed bridges.",
            "Nothing to do. Keep vnetfw's jumps above any catch-all drop.", tuple(details))
    if ours:
        return Finding(
            f"forward-drop-{flavour}-ipv{fam}", "problem", base_what,
            f"vnetfw's jumps (rules {', '.join(str(i + 1) for i in ours)}) come after that "
            f"catch-all drop (rule {first_drop + 1}): forwarded traffic of {_names(users)} "
            "is dropped before vnetfw sees it.",
            f"Move the catch-all below vnetfw's jumps ({cmd} -D FORWARD {first_drop + 1}; "
            f"{cmd} -A FORWARD {rules[first_drop]}), or run vnetfw reload after removing it.",
            (f"-A FORWARD {rules[first_drop]}",), tuple(n.name for n in users))
    # vnetfw's verdicts are elsewhere (another flavour, nftables, or not applied).
    where = _backend_words(facts)
    bridges = sorted(n.bridge for n in users if n.bridge)
    let_through = "; ".join(f"{cmd} -I {'DOCKER-USER' if docker else 'FORWARD'} -i {b} -j "
                            f"ACCEPT; {cmd} -I {'DOCKER-USER' if docker else 'FORWARD'} -o "
                            f"{b} -j ACCEPT" for b in bridges)
    return Finding(
        f"forward-drop-{flavour}-ipv{fam}", "problem", base_what,
        f"Forwarded traffic of {_names(users)} is dropped here: {where}. {NETFILTER_FACT}",
        f"Either let the bridges through in this chain ({let_through}); vnetfw's own "
        "chains still reject what the networks' policy rejects, since a reject anywhere is "
        f"final. Or apply the networks with vnetfw's {flavour} backend (vnetfw --backend "
        f"{flavour} reload), whose jumps sit ahead of the policy in this very chain. Or, if "
        f"nothing needs it, {cmd} -P FORWARD ACCEPT"
        + (" (Docker 28+ leaves the policy alone with \"ip-forward-no-drop\": true in "
           "/etc/docker/daemon.json)." if docker else "."),
        tuple(details), tuple(n.name for n in users))


def _nft_forward_drops(facts: Facts) -> list[Finding]:
    out = []
    rules_by_chain: dict[tuple[str, str, str], list[dict]] = {}
    for r in _nft_items(facts, "rule"):
        rules_by_chain.setdefault((r["family"], r["table"], r["chain"]), []).append(r)
    for ch in _nft_items(facts, "chain"):
        fam, table = ch.get("family"), ch.get("table")
        if ch.get("hook") != "forward" or is_vnetfw_table(table):
            continue
        if fam in ("ip", "ip6") and table in IPTABLES_NFT_TABLES:
            continue                                   # iptables-nft: checked above
        rules = rules_by_chain.get((fam, table, ch["name"]), [])
        last = rules[-1]["expr"] if rules else []
        catch_all = bool(last) and all(next(iter(e)) in ("counter", "drop", "reject")
                                       for e in last) and \
            any(next(iter(e)) in ("drop", "reject") for e in last)
        if ch.get("policy") != "drop" and not catch_all:
            continue
        firewalld = NFT_MANAGERS.get(table) == "firewalld"
        if firewalld and facts.firewalld is not None and facts.firewalld.running:
            continue                    # check_firewalld judges it, zone by zone
        fams = (4,) if fam == "ip" else (6,) if fam == "ip6" else (4, 6)
        users = sorted({n.name: n for f in fams for n in forward_users(facts, f)}.values(),
                       key=lambda n: n.name)
        what = (f"nftables table {fam} {table}: its forward chain {ch['name']} "
                + ("has policy drop." if ch.get("policy") == "drop"
                   else "ends in a catch-all drop/reject."))
        names = {n.bridge for n in users if n.bridge}
        passed = _mentions([r["expr"] for r in rules], names)
        if not users:
            out.append(Finding(f"nft-forward-drop-{fam}-{table}", "note", what,
                               "No managed network forwards traffic now. " + NETFILTER_FACT,
                               "Nothing to do now."))
            continue
        if firewalld:
            fix = ("firewalld writes that table itself: put the bridges into a zone that "
                   "accepts forwarding (firewall-cmd --zone=libvirt --change-interface=BR, or "
                   "--zone=trusted; the same with --permanent), for "
                   f"{', '.join(sorted(names))}.")
        else:
            fix = (f"Add accept rules for the bridges to that chain (nft insert rule {fam} "
                   f"{table} {ch['name']} iifname {{ {', '.join(sorted(names))} }} accept, "
                   "and the same with oifname), or set its policy to accept if nothing needs "
                   "the drop. vnetfw still rejects what the networks' policy rejects.")
        out.append(Finding(
            f"nft-forward-drop-{fam}-{table}", "problem", what,
            f"Unless that chain accepts them, forwarded traffic of {_names(users)} is "
            f"dropped there, whatever vnetfw accepts. {NETFILTER_FACT}"
            + (f" The chain names {', '.join(sorted(passed))}; check that it accepts them."
               if passed else ""),
            fix, networks=tuple(n.name for n in users)))
    return out


def check_firewalld(facts: Facts) -> list[Finding]:
    fw = facts.firewalld
    if fw is None or not fw.running:
        return []
    out = []
    for n in facts.networks:
        if not n.bridge or not n.mode.needs_bridge:
            continue
        zone = fw.zone_of.get(n.bridge)
        eff = zone or fw.default_zone
        target = fw.target.get(eff or "", "?")
        if target == "ACCEPT":
            continue
        libvirt = "libvirt" in fw.zones
        good = "libvirt" if libvirt else "trusted"
        out.append(Finding(
            f"firewalld-zone-{n.bridge}", "problem",
            f"firewalld puts bridge {n.bridge} (network {n.name}) in zone {eff or '?'}"
            + (" (the default zone: the bridge is in no zone of its own)" if not zone else "")
            + f", whose target is {target}.",
            "That zone rejects what guests send to the host (DHCP, DNS) and, with "
            f"firewalld's {fw.backend or 'nftables'} backend, the traffic forwarded from or "
            "to the bridge, in firewalld's own table. vnetfw's accepts cannot help: an "
            "accept in one base chain never overrides a reject in another.",
            f"firewall-cmd --zone={good} --change-interface={n.bridge} and the same with "
            "--permanent"
            + ("" if libvirt else " (the 'libvirt' zone, shipped by libvirt, accepts "
               "forwarding and allows DHCP/DNS/TFTP to the host; 'trusted' accepts all)")
            + ".", networks=(n.name,)))
    return out


IPT_MANAGERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Docker", ("DOCKER",)),
    ("libvirt", (LIBVIRT_PREFIX + "_",)),
    ("netavark/podman", ("NETAVARK", "CNI-")),
    ("firewalld", ("INPUT_direct", "FORWARD_direct", "OUTPUT_direct", "INPUT_ZONES",
                   "FORWARD_IN_ZONES", "FORWARD_OUT_ZONES", "POSTROUTING_ZONES",
                   "PREROUTING_ZONES", "IN_", "FWDI_", "FWDO_", "FWD_", "POST_", "PRE_")),
)
NFT_MANAGERS = {"libvirt_network": "libvirt", "netavark": "netavark/podman",
                "firewalld": "firewalld", "docker-bridges": "Docker"}


def _manager_of(chain: str, facts: Facts, flavour: str) -> str | None:
    if facts.prefix and facts.flavour == flavour and chain.startswith(facts.prefix + "_"):
        return None                                       # ours
    for name, prefixes in IPT_MANAGERS:
        if chain.startswith(prefixes) and chain not in ("INPUT", "FORWARD", "OUTPUT"):
            return name
    return None


def check_other_managers(facts: Facts) -> list[Finding]:
    bridges = {n.bridge for n in facts.networks if n.bridge}
    by_bridge = {n.bridge: n for n in facts.networks if n.bridge}
    seen: dict[str, dict] = {}           # manager -> {"where": set, "hits": [(verdict, text)]}
    for flavour, live in sorted(facts.iptables.items()):
        for fam in (4, 6):
            for table, dump in sorted(live.tables.get(fam, {}).items()):
                for chain, rules in dump.chains.items():
                    mgr = _manager_of(chain, facts, flavour)
                    if mgr is None:
                        continue
                    s = seen.setdefault(mgr, {"where": set(), "hits": []})
                    s["where"].add(f"{flavour} ipv{fam} {table} {chain}")
                    for args in rules:
                        if (br := names_bridge(args, bridges)) is not None:
                            s["hits"].append((_verdict(args), br,
                                              f"{_ipt(flavour, fam)} -t {table} -A {chain} {args}"))
    for table in _nft_items(facts, "table"):
        mgr = NFT_MANAGERS.get(table["name"])
        if mgr is None:
            continue
        s = seen.setdefault(mgr, {"where": set(), "hits": []})
        s["where"].add(f"nftables table {table['family']} {table['name']}")
        for kind in ("rule", "set", "map"):
            for it in _nft_items(facts, kind):
                if (it["family"], it["table"]) != (table["family"], table["name"]):
                    continue
                for br in sorted(_mentions(it.get("expr", it.get("elem", [])), bridges)):
                    verdict = None
                    if kind == "rule":
                        verdict = next((next(iter(e)).upper() for e in it["expr"]
                                        if next(iter(e)) in ("accept", "drop", "reject")),
                                       None)
                    place = it.get("chain", it.get("name"))
                    s["hits"].append((verdict, br, f"nftables {table['family']} "
                                      f"{table['name']} {kind} in {place}"))
    out = []
    for mgr, s in sorted(seen.items()):
        where = sorted(s["where"])
        hits = s["hits"]
        blocking = [h for h in hits if h[0] not in ("ACCEPT", "RETURN")]
        if mgr == "libvirt" and hits:
            nets = sorted({by_bridge[h[1]].name for h in hits})
            out.append(Finding(
                "other-manager-libvirt", "problem",
                f"libvirt still has rules for managed bridge(s) "
                f"{', '.join(sorted({h[1] for h in hits}))}.",
                "Two managers filter the same bridge: libvirt's rules and vnetfw's both "
                "apply, libvirt re-adds its own whenever libvirtd or firewalld restarts, "
                "and if the definitions differ (subnet, mode) libvirt's rejects break what "
                "vnetfw allows.",
                LIBVIRT_BOTH_FIX,
                tuple(h[2] for h in hits[:20]), tuple(nets)))
        elif blocking and mgr != "firewalld":
            out.append(Finding(
                f"other-manager-{mgr.split('/')[0].lower()}", "problem",
                f"{mgr}'s rules match managed bridge(s) "
                f"{', '.join(sorted({h[1] for h in blocking}))} with verdicts other than accept.",
                "Rules of another manager that drop or reject a managed bridge's traffic "
                "take effect whatever vnetfw accepts (a drop anywhere is final).",
                f"Remove those rules from {mgr}'s configuration, or make them accept.",
                tuple(h[2] for h in blocking[:20]),
                tuple(sorted({by_bridge[h[1]].name for h in blocking}))))
        else:
            out.append(Finding(
                f"other-manager-{mgr.split('/')[0].lower()}", "note",
                f"{mgr}'s firewall rules are present ({'; '.join(where[:6])}"
                f"{' ...' if len(where) > 6 else ''}).",
                ("None of them matches a managed bridge with anything but accept, so they "
                 "do not affect vnetfw's networks by themselves" if bridges else
                 "No managed network to compare them with")
                + (" (the FORWARD policy check above covers Docker's DROP policy)."
                   if mgr == "Docker" else "."),
                "Nothing to do.", tuple(h[2] for h in hits[:20])))
    out += _old_layout(facts)
    out += _layout_order(facts)
    return out


def _old_layout(facts: Facts) -> list[Finding]:
    if not facts.networks:
        return []
    hits = []
    for flavour, live in sorted(facts.iptables.items()):
        hits += find_old(live, flavour, facts.networks, ("old",)).deleted
    if not hits:
        return []
    return [Finding(
        "old-layout-rules", "problem",
        f"{len(hits)} rule(s) written straight into the builtin chains by a libvirt before "
        "5.1 (or an older vnetfw) for managed network(s) "
        f"{', '.join(sorted({h.network for h in hits}))}.",
        "In that old layout each network's rules are inserted at the top of FORWARD, so the "
        "network started last has its 'allow out' above the other networks' 'reject in': "
        "its guests can open connections into the other networks. They also duplicate "
        "vnetfw's rules and linger after the network is gone.",
        "vnetfw migrate --dry-run PATH lists exactly these rules; vnetfw migrate PATH "
        "removes them and applies the networks in one step.",
        tuple(h.describe() for h in hits[:20]), tuple(sorted({h.network for h in hits})))]


def _layout_order(facts: Facts) -> list[Finding]:
    if not facts.prefix or facts.flavour is None or facts.prefix == LIBVIRT_PREFIX:
        return []
    live = facts.iptables.get(facts.flavour)
    out = []
    for fam in (4, 6):
        if live is None or not libvirt_forward_active(live, fam):
            continue
        rules = live.tables[fam]["filter"].chains.get("FORWARD", [])
        if forward_jumps_in_order(rules, facts.prefix):     # the backend's own judgement
            continue
        order = [plain_jump_target(a) for a in rules if (plain_jump_target(a) or "").startswith(
            (facts.prefix + "_FW", LIBVIRT_PREFIX + "_FW"))]
        out.append(Finding(
            f"layout-order-ipv{fam}", "problem",
            f"{_ipt(facts.flavour, fam)} FORWARD: vnetfw's and libvirt's jumps are in an "
            f"order where one layout's stage runs before an earlier stage of the other "
            f"({' -> '.join(order)}).",
            "FWO holds each network's 'allow out' and FWI each network's 'reject in'. With "
            "one layout's FWO ahead of the other's FWI, guests of the first layout's nat and "
            "routed networks can open connections into the other layout's networks.",
            "vnetfw reload (or vnetfw watch) puts vnetfw's jumps so that every cross jump "
            "comes before every incoming one and every incoming before every outgoing one, "
            "moving only vnetfw's; better, take every libvirt network over (vnetfw migrate "
            "--adopt) so only one layout remains.",
            tuple(f"-A FORWARD {a}" for a in rules if plain_jump_target(a) in set(order))))
    return out


def _has_rules(live: IptLive) -> list[str]:
    out = []
    for fam, tables in sorted(live.tables.items()):
        for table, dump in sorted(tables.items()):
            n = sum(len(r) for r in dump.chains.values())
            pol = [f"{c} {p}" for c, p in dump.policies.items() if p not in ("ACCEPT", "-")]
            if n or pol:
                out.append(f"ipv{fam} {table}: {n} rule(s)"
                           + (f", policy {', '.join(pol)}" if pol else ""))
    return out


def check_mixed_iptables(facts: Facts) -> list[Finding]:
    used = {fl: _has_rules(live) for fl, live in facts.iptables.items()}
    if not all(used.get(fl) for fl in ("iptables-nft", "iptables-legacy")):
        return []
    return [Finding(
        "mixed-iptables", "problem",
        "Both iptables-nft and iptables-legacy hold rules.",
        "They are two separate rulesets that both filter every packet: a drop in either "
        "is final, and each tool shows only its own half ('iptables -L' shows one of them), "
        "so a rule that blocks the virtual networks can be invisible to whoever looks. "
        "Tools that pick different flavours (an old Docker or libvirt, a distribution "
        "default) end up this way.",
        "Pick one flavour (iptables-nft on current distributions: update-alternatives "
        "--config iptables), move the other's rules over (iptables-legacy-save | "
        "iptables-nft-restore, for ip6tables too, after reviewing them), then flush the "
        "other (iptables-legacy -F, -X, and per table with -t) and restart the services "
        "that wrote rules.",
        tuple(f"{fl} {d}" for fl in ("iptables-nft", "iptables-legacy") for d in used[fl]))]


def check_br_netfilter(facts: Facts) -> list[Finding]:
    bridged = [n for n in facts.networks if n.bridge and n.mode.needs_bridge]
    fams = [fam for fam in (4, 6) if br_netfilter(facts, fam)]
    if not bridged or not fams:
        return []
    return [Finding(
        "br-netfilter", "note",
        "br_netfilter is loaded and on (net.bridge.bridge-nf-call-"
        + "/".join(("iptables", "ip6tables")[f == 6] for f in fams) + " = 1).",
        "Frames bridged between two guests of the same bridge go through the FORWARD "
        "chains too, as '-i BR -o BR'. That is fine for vnetfw (its FWX stage accepts "
        "exactly that), but every other FORWARD rule and policy sees them as well: a DROP "
        "policy that vnetfw's jumps do not precede cuts guests of one network off from "
        "each other.",
        "Nothing to do for vnetfw. If nothing on this host needs it (Docker and Kubernetes "
        "do), sysctl -w net.bridge.bridge-nf-call-iptables=0 "
        "net.bridge.bridge-nf-call-ip6tables=0.",
        networks=tuple(n.name for n in bridged))]


def check_bridges(facts: Facts) -> list[Finding]:
    if facts.links is None:
        return []
    out = []
    for n in facts.networks:
        if not n.bridge or not n.mode.needs_bridge:
            continue
        link = facts.links.get(n.bridge)
        if link is None:
            out.append(Finding(
                f"bridge-missing-{n.bridge}", "problem",
                f"Bridge {n.bridge} of network {n.name} does not exist.",
                "Its rules are in place but match no interface: no guest can attach, and the "
                "network carries no traffic until something creates the bridge (libvirt does "
                "when it starts the network; vnetfw only firewalls it).",
                f"Start the network where it is defined (virsh net-start {n.name}), or create "
                f"the bridge: ip link add {n.bridge} type bridge && ip link set {n.bridge} up "
                "and give it the network's addresses. If the network is gone for good: "
                f"vnetfw remove {n.name}.", networks=(n.name,)))
        elif link.kind != "bridge":
            out.append(Finding(
                f"bridge-not-bridge-{n.bridge}", "problem",
                f"Network {n.name}'s bridge {n.bridge} exists but is a "
                f"{link.kind or 'plain'} device, not a bridge.",
                "Guests cannot be attached to it, and its rules now apply to whatever this "
                "device is.",
                "Rename or remove that device, or change the network's bridge name.",
                networks=(n.name,)))
        elif not link.up:
            out.append(Finding(
                f"bridge-down-{n.bridge}", "note",
                f"Network {n.name}'s bridge {n.bridge} is down.",
                "No traffic flows on it until it is up (fine while the network is stopped).",
                f"ip link set {n.bridge} up", networks=(n.name,)))
    return out


LIBVIRT_BOTH_FIX = (
    "Let libvirt hand the network to vnetfw (docs/libvirt.md): virsh net-dumpxml --inactive "
    "NAME > NAME.xml; vnetfw libvirt convert NAME.xml > NAME.open.xml; virsh net-define "
    "NAME.open.xml; then vnetfw migrate --adopt NAME.open.xml takes libvirt's rules over with "
    "no gap (--dry-run first shows exactly what goes). From the network's next start libvirt "
    "writes no rules for it and vnetfw's libvirt hook applies it.")
RESTART_LIBVIRT = ("restart libvirtd once (systemctl restart libvirtd, or virtnetworkd where "
                   "the modular daemons run) so that it sees the hook")


def check_libvirt_hook(facts: Facts) -> list[Finding]:
    """Open libvirt networks with vnetfw metadata whose hook is missing or unseen, and ones
    that run without vnetfw's rules."""
    out = []
    for v in facts.libvirt:
        nets = sorted(set(v.with_metadata) | set(v.running_with_metadata))
        if not nets:
            continue
        why_none = ("libvirt writes no rules for an open network, so without vnetfw's hook "
                    "such a network runs with no firewall at all: its guests reach whatever "
                    "the host routes to.")
        if v.hook != "ours":
            out.append(Finding(
                "libvirt-hook-missing", "problem",
                f"{v.who}: network(s) {', '.join(nets)} carry vnetfw metadata, but vnetfw's "
                "network hook is not installed"
                + (" (hooks/network.d/vnetfw is another program)" if v.hook == "foreign"
                   else "") + ".",
                why_none,
                f"vnetfw libvirt-hook install, then {RESTART_LIBVIRT}.",
                networks=tuple(nets)))
        elif v.started is not None and v.hook_mtime is not None \
                and v.hook_mtime > v.started and not v.older_hooks:
            out.append(Finding(
                "libvirt-hook-unseen", "problem",
                f"{v.who} started before vnetfw's hook was written, into a hooks folder that "
                f"was empty then: it will not run the hook for {', '.join(nets)}.",
                "libvirt looks for hooks only when it starts. " + why_none,
                f"{RESTART_LIBVIRT[0].upper()}{RESTART_LIBVIRT[1:]}.",
                networks=tuple(nets)))
        bare = [n for n in v.running_with_metadata if n not in facts.active]
        if bare:
            out.append(Finding(
                "libvirt-network-unfirewalled", "problem",
                f"{v.who}: network(s) {', '.join(bare)} run with vnetfw metadata, but vnetfw "
                "has no rules for them (they started while the hook was missing or unseen).",
                why_none,
                "Apply them now: vnetfw apply /etc/libvirt/qemu/networks/NAME.xml (or restart "
                "them with virsh net-destroy/net-start once the hook runs).",
                networks=tuple(bare)))
    return out


CHECKS = (check_forwarding, check_forward_policy, check_firewalld, check_other_managers,
          check_mixed_iptables, check_br_netfilter, check_bridges, check_libvirt_hook)


def run_checks(facts: Facts) -> list[Finding]:
    """Every finding, problems first, in check order within each severity."""
    found = [f for check in CHECKS for f in check(facts)]
    return [f for f in found if f.severity == "problem"] + \
        [f for f in found if f.severity == "note"]

