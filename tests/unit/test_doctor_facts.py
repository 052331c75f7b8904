"""doctor's fact readers on canned command output (no D-Bus, no kernel): firewalld's zones
and targets, links, and that a missing or unreachable tool is reported, not fatal."""

from __future__ import annotations

from vnetfw.backends.runner import CommandFailed
from vnetfw.doctor_facts import Firewalld, read_firewalld, read_links


class FakeRunner:
    def __init__(self, answers: dict[tuple[str, ...], str | CommandFailed],
                 missing: tuple[str, ...] = ()) -> None:
        self.answers = answers
        self.missing = missing
        self.calls: list[list[str]] = []

    def which(self, prog: str) -> str | None:
        return None if prog in self.missing else f"/usr/bin/{prog}"

    def run(self, argv, stdin=None, *, check=True):
        self.calls.append(list(argv))
        ans = self.answers.get(tuple(argv))
        if isinstance(ans, CommandFailed):
            if check:
                raise ans
            return ""
        assert ans is not None, f"unexpected command {argv}"
        return ans


def test_firewalld_zones_and_targets():
    r = FakeRunner({
        ("firewall-cmd", "--state"): "running\n",
        ("firewall-cmd", "--get-default-zone"): "public\n",
        ("firewall-cmd", "--get-zones"): "block dmz libvirt public trusted\n",
        ("firewall-cmd", "--get-zone-of-interface=virbr0"): "libvirt\n",
        ("firewall-cmd", "--get-zone-of-interface=virbr1"):
            CommandFailed(["firewall-cmd"], 2, "no zone"),
        ("firewall-cmd", "--info-zone=libvirt"): "libvirt (active)\n  target: ACCEPT\n",
        ("firewall-cmd", "--info-zone=public"): "public\n  target: default\n  icmp-block-"
                                                 "inversion: no\n",
    })
    fw = read_firewalld(r, ["virbr0", "virbr1"])
    assert isinstance(fw, Firewalld) and fw.running
    assert fw.zone_of == {"virbr0": "libvirt", "virbr1": None}
    assert fw.target == {"libvirt": "ACCEPT", "public": "default"}
    # every command was a query
    assert all(c[0] == "firewall-cmd" and all(a.startswith("--get") or a.startswith("--info")
                                              or a == "--state" for a in c[1:])
               for c in r.calls)


def test_firewalld_not_running_or_unreachable_or_absent():
    r = FakeRunner({("firewall-cmd", "--state"):
                    CommandFailed(["firewall-cmd"], 252, "not running")})
    assert read_firewalld(r, ["virbr0"]) == Firewalld(running=False)
    r = FakeRunner({("firewall-cmd", "--state"):
                    CommandFailed(["firewall-cmd"], 36, "Error: DBUS_ERROR: no bus")})
    assert "DBUS_ERROR" in read_firewalld(r, ["virbr0"])
    assert "not installed" in read_firewalld(FakeRunner({}, missing=("firewall-cmd",)), [])


def test_links():
    r = FakeRunner({("ip", "-j", "-d", "link", "show"):
                    '[{"ifname":"lo","flags":["LOOPBACK","UP"]},'
                    '{"ifname":"virbr0","flags":["BROADCAST","UP"],'
                    '"linkinfo":{"info_kind":"bridge"}},'
                    '{"ifname":"vnet0","flags":["BROADCAST"],"linkinfo":{"info_kind":"tun"}}]'})
    links = read_links(r)
    assert links["virbr0"].kind == "bridge" and links["virbr0"].up
    assert links["vnet0"].kind == "tun" and not links["vnet0"].up
    assert links["lo"].kind is None
