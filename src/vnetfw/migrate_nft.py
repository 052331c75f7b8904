"""Adopting from libvirt's nftables backend, the pure part: which rules of the tables
``ip libvirt_network`` / ``ip6 libvirt_network`` libvirt wrote for given networks, and the
nft script that deletes exactly those.

libvirt >= 10.4 with ``firewall_backend = "nftables"`` keeps every network's rules in those
two tables: the base chain ``forward`` jumps to ``guest_cross``, ``guest_input`` and
``guest_output`` (the FWX/FWI/FWO stages of its iptables layout), and ``guest_nat`` is a
postrouting base chain. It adds no host INPUT/OUTPUT rules. Per network and family with an
address (as libvirt 11.3 writes them, in nft 1.0's canonical listing)::

    guest_output  ip saddr NET iif "BR" [oifname "DEV"] accept     (nat/route subnets)
                  iif "BR" reject
    guest_input   [iifname "DEV"] oif "BR" ip daddr NET ct state established,related accept  (nat)
                  ip daddr NET [iifname "DEV"] oif "BR" accept     (route, IPv6 without NAT)
                  oif "BR" reject
    guest_cross   iif "BR" oif "BR" accept
    guest_nat     [oifname "DEV"] ip saddr NET ip daddr 224.0.0.0/24 return  (ip6: ff02::/16)
                  [oifname "DEV"] ip saddr NET ip daddr 255.255.255.255 return   (ip only)
                  meta l4proto tcp|udp ip saddr NET ip daddr != NET [oifname "DEV"]
                      masquerade to :A-B     (or: snat to S-E:A-B, S/32 for one address)
                  ip saddr NET ip daddr != NET [oifname "DEV"] masquerade   (or: snat to S-E)

Contract: ``expected(net)`` gives those rules as normalised text per (family, chain);
``find(listings, networks)`` reads ``nft -a list table`` output per family and returns every
rule that is *exactly* one of them (``NftRule``, with its handle), matching normalised text
(counters and handles stripped), never substrings; everything else in the tables stays.
``delete_script(found)`` deletes them by handle in one nft transaction: a rule that vanished
meanwhile fails the whole script, so nothing of a stale view is ever deleted. Nothing here
runs a command (``migrate_run`` does).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from .model import Mode, Network

TABLE = "libvirt_network"
FAMILIES = {4: "ip", 6: "ip6"}
CHAINS = ("guest_output", "guest_input", "guest_cross", "guest_nat")
_NOISE = re.compile(r"\bcounter(?: packets \d+ bytes \d+)?\s*")
_HANDLE = re.compile(r"\s*# handle (\d+)\s*$")


@dataclass(frozen=True)
class NftRule:
    """A live rule of libvirt's nftables tables that is exactly one libvirt wrote for
    ``network``."""

    family: int
    chain: str
    handle: int
    text: str                   # normalised
    network: str

    origin = "libvirt"

    def describe(self) -> str:
        return f"nftables {FAMILIES[self.family]} {TABLE} {self.chain}: {self.text}"

    def to_json(self) -> dict:
        return {"flavour": "nftables", "family": f"ipv{self.family}", "table": TABLE,
                "chain": self.chain, "rule": self.text, "handle": self.handle,
                "network": self.network, "origin": "libvirt", "layout": "libvirt-nftables"}


def normalise(line: str) -> str:
    return " ".join(_NOISE.sub("", _HANDLE.sub("", line)).split())


def expected(net: Network) -> dict[tuple[int, str], list[str]]:
    """Every rule libvirt's nftables backend writes for ``net`` (see the module text)."""
    out: dict[tuple[int, str], list[str]] = {}
    if not net.mode.firewalled or net.mode is Mode.OPEN or not net.bridge:
        return out
    br = f'"{net.bridge}"'
    dev = net.forward_dev
    for fam in (4, 6):
        blocks = net.ips_of(fam)
        if not blocks:
            continue
        ip = FAMILIES[fam]

        def add(chain: str, rule: str) -> None:
            out.setdefault((fam, chain), []).append(rule)

        for b in blocks:
            n = b.cidr
            if net.mode is Mode.ISOLATED:
                continue
            odev = f' oifname "{dev}"' if dev else ""
            idev = f'iifname "{dev}" ' if dev else ""
            add("guest_output", f"{ip} saddr {n} iif {br}{odev} accept")
            nat = net.mode is Mode.NAT and (fam == 4 or net.nat.ipv6)
            if nat:
                add("guest_input", f"{idev}oif {br} {ip} daddr {n} ct state established,related "
                                   "accept")
                _nat_rules(add, net, fam, ip, n)
            else:
                add("guest_input", f"{ip} daddr {n} {idev}oif {br} accept")
        add("guest_output", f"iif {br} reject")
        add("guest_input", f"oif {br} reject")
        add("guest_cross", f"iif {br} oif {br} accept")
    return out


def _nat_rules(add, net: Network, fam: int, ip: str, n: str) -> None:
    dev = net.forward_dev
    pre = f'oifname "{dev}" ' if dev else ""
    post = f' oifname "{dev}"' if dev else ""
    add("guest_nat", f"{pre}{ip} saddr {n} {ip} daddr "
                     f"{'224.0.0.0/24' if fam == 4 else 'ff02::/16'} return")
    if fam == 4:
        add("guest_nat", f"{pre}{ip} saddr {n} {ip} daddr 255.255.255.255 return")
    nat = net.nat
    ports = f"{nat.port_start}-{nat.port_end}"
    if fam == 4 and nat.address_start is not None:
        a = (f"{nat.address_start}/32" if nat.address_start == nat.address_end
             else f"{nat.address_start}-{nat.address_end}")
        with_ports, plain = f"snat to {a}:{ports}", f"snat to {a}"
    else:
        with_ports, plain = f"masquerade to :{ports}", "masquerade"
    for proto in ("tcp", "udp"):
        add("guest_nat", f"meta l4proto {proto} {ip} saddr {n} {ip} daddr != {n}{post} "
                         f"{with_ports}")
    add("guest_nat", f"{ip} saddr {n} {ip} daddr != {n}{post} {plain}")


def parse_listing(text: str) -> list[tuple[str, int, str]]:
    """(chain, handle, normalised rule) of every rule in ``nft -a list table`` output."""
    out = []
    chain = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("chain "):
            chain = line.split()[1]
            continue
        m = _HANDLE.search(line)
        if chain is None or m is None or line.startswith(("table ", "type ", "}")):
            continue
        out.append((chain, int(m.group(1)), normalise(line)))
    return out


def find(listings: dict[int, str], networks: Iterable[Network]) -> list[NftRule]:
    """libvirt's rules for ``networks`` in the per-family listings (family -> text)."""
    want: dict[tuple[int, str, str], str] = {}
    for net in networks:
        for (fam, chain), rules in expected(net).items():
            for r in rules:
                want.setdefault((fam, chain, r), net.name)
    found = []
    for fam, text in sorted(listings.items()):
        for chain, handle, rule in parse_listing(text):
            owner = want.get((fam, chain, rule))
            if owner is not None:
                found.append(NftRule(fam, chain, handle, rule, owner))
    return found


def delete_script(found: Iterable[NftRule]) -> str:
    return "".join(f"delete rule {FAMILIES[r.family]} {TABLE} {r.chain} handle {r.handle}\n"
                   for r in found)


def left_over(listings: dict[int, str], found: Iterable[NftRule]) -> int:
    """Rules the tables keep once ``found`` is gone (the base chain's jumps not counted)."""
    gone = {(r.family, r.handle) for r in found}
    return sum(1 for fam, text in listings.items() for chain, handle, rule in
               parse_listing(text) if (fam, handle) not in gone
               and not (chain == "forward" and rule.startswith("jump guest_")))
