"""What a person at the terminal sees: the one-line 'needs root' before anything else, a
doctor that never says ok about what it could not read, a line per network changed,
headers, ``show NAME`` with real counters, and a lock wait that names the real holder."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from tests.conftest import nsrun
from tests.netns.test_cli_json import Cli, toml
from vnetfw import output

FIX = Path(__file__).parent.parent / "fixtures" / "libvirt"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
# root without CAP_NET_ADMIN (as in a container that drops it): the bounding set limits
# what even uid 0 gets at exec
NO_NET_ADMIN = ["setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin", "--"]


@pytest.mark.parametrize("who", ["nobody", "root without CAP_NET_ADMIN"])
@pytest.mark.parametrize("args", [["status"], ["check"], ["diff"], ["reload"], ["setup"],
                                  ["teardown"], ["apply", "x.xml"], ["sync", "x.xml"],
                                  ["remove", "x"], ["show", "x"], ["doctor"]])
def test_a_command_that_needs_root_says_so_in_one_line(netns, tmp_path, who, args):
    pre = NOBODY if who == "nobody" else NO_NET_ADMIN
    base = [sys.executable, "-m", "vnetfw", *args, "--state-dir", str(tmp_path / "st")]
    for backend in ("nftables", "iptables-nft", "auto"):
        p = subprocess.run([*pre, *base, "--backend", backend], capture_output=True,
                           text=True, cwd="/")
        assert (p.returncode, p.stdout, p.stderr) == (
            3, "", f"vnetfw: error: {args[0]} needs root (CAP_NET_ADMIN)\n"), backend
    p = subprocess.run([*pre, *base, "--json"], capture_output=True, text=True, cwd="/")
    doc = json.loads(p.stdout)
    jsonschema.Draft202012Validator(output.schema("error")).validate(doc)
    assert p.returncode == 3 and doc["error"]["kind"] == "permission"


def test_what_needs_no_root_still_runs_without_it(tmp_path):
    def as_nobody(*args, stdin=None):
        return subprocess.run([*NOBODY, sys.executable, "-m", "vnetfw", *args],
                              capture_output=True, text=True, cwd="/", input=stdin)
    p = as_nobody("render", "-", stdin=toml("a", 1))
    assert p.returncode == 0 and "vb-a" in p.stdout, p.stderr
    # a path it may not read: one line, no traceback (tmp_path is root's, mode 0700)
    (tmp_path / "n.toml").write_text(toml("a", 1))
    p = as_nobody("render", str(tmp_path / "n.toml"))
    assert (p.returncode, p.stderr) == (
        2, f"vnetfw: error: {tmp_path / 'n.toml'}: cannot read: Permission denied\n")


def test_doctor_never_says_ok_about_what_it_did_not_check(netns, tmp_path):
    """As root, what could not be read (here: a tool that is missing) is counted in the
    verdict line, not passed over with 'nothing found'."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("ip", "nft", "sysctl", "cat", "iptables-nft-save", "ip6tables-nft-save"):
        real = subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True,
                              text=True).stdout.strip()
        if real:
            (bin_dir / tool).symlink_to(real)
    env = {**os.environ, "PATH": str(bin_dir)}
    p = subprocess.run([sys.executable, "-m", "vnetfw", "doctor", "--netns", netns,
                        "--state-dir", str(tmp_path / "st")], capture_output=True, text=True,
                       env=env)
    assert "nothing found that would break the virtual networks\n" not in p.stdout, p.stdout
    assert "could not be checked" in p.stdout or "PROBLEM" in p.stdout, p.stdout
    assert "not checked" in p.stdout.splitlines()[-1]


def test_one_line_per_network_changed_and_every_rule_with_v(netns, tmp_path):
    cli = Cli(netns, tmp_path, "nftables")
    d = tmp_path / "defs"
    d.mkdir()
    for i, name in enumerate(["a", "b"]):
        (d / f"{name}.toml").write_text(toml(name, i))
    p = cli.run("apply", str(d))
    lines = p.stdout.splitlines()
    assert lines[0].startswith("apply: changed ") and len(lines) == 4, p.stdout
    assert lines[1].startswith("  layout: ") and lines[2].startswith("  a: ") \
        and lines[3].startswith("  b: ")
    (d / "c.toml").write_text(toml("c", 2))
    v = cli.run("apply", "--dry-run", "-v", str(d)).stdout.splitlines()
    n = int(v[0].split()[3])
    assert len(v) == n + 1 and all(l.startswith("  ") and "[c]" in l for l in v[1:]), v
    dry = cli.run("sync", "--dry-run", str(d / "c.toml")).stdout.splitlines()
    assert dry[0].startswith("sync: would change ")
    assert [l.split(":")[0] for l in dry[1:]] == ["  a", "  b", "  c"]
    assert cli.run("sync", str(d / "c.toml")).stdout.splitlines()[1:] == dry[1:]


def test_list_and_status_have_headers(netns, tmp_path):
    cli = Cli(netns, tmp_path, "iptables-nft")
    cli.run("apply", str(FIX / "nat-default.xml"))
    ls = cli.run("list").stdout.splitlines()
    assert ls[0].split() == ["Name", "Mode", "Bridge", "Subnets", "Forward", "device"]
    assert set(ls[1]) == {"-"} and ls[2].split()[:4] == ["default", "nat", "virbr0",
                                                          "192.168.122.0/24"]
    st = cli.run("status").stdout.splitlines()
    i = st.index(" Name      Mode   Bridge   Subnets            Rules")
    assert st[i + 2].split()[0] == "default" and st[1] == "live firewall: in sync"


def test_show_a_network_with_the_counters_real_packets_moved(netns, tmp_path):
    """A network on lo: a UDP packet to port 53 passes its INP and OUT rules, and show says
    exactly those counted it. nftables keeps no counters and says so."""
    for backend in ("iptables-nft", "nftables"):
        cli = Cli(netns, tmp_path / backend, backend)
        net = 'name="lonet"\nbridge="lo"\nmode="isolated"\nip=[{address="10.93.0.1", ' \
              'prefix=24, dhcp=true}]\n'
        assert cli.run("apply", "-", stdin=net).returncode == 0
        nsrun(netns, sys.executable, "-c", "import socket; socket.socket(socket.AF_INET, "
              "socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', 53))")
        doc = cli.json("show", "lonet")
        jsonschema.Draft202012Validator(output.schema("show")).validate(doc)
        assert doc["network"]["name"] == "lonet" and doc["in_sync"] and doc["rules"]
        moved = {(r["chain"], r["rule"]) for r in doc["rules"] if r["packets"]}
        if backend == "nftables":
            assert not doc["counters"] and not moved
            assert "(no counters: nftables rules keep none)" in cli.run("show", "lonet").stdout
        else:
            assert doc["counters"]
            assert moved == {("INP", "in lo udp/53 -> accept"),
                             ("OUT", "out lo udp/53 -> accept")}, moved
            text = cli.run("show", "lonet").stdout
            assert "Name:           lonet" in text and " Family " in text
        missing = cli.json("show", "nosuch", code=2)
        assert missing["error"]["kind"] == "usage"
        nsrun(netns, *(["nft", "flush", "table", "inet", "vnetfw"] if backend == "nftables"
                       else ["iptables-nft", "-F", "VNETFW_INP"]))
        p = cli.run("show", "lonet")
        assert p.returncode == 1 and "DRIFT" in p.stdout
        cli.run("teardown")


def test_a_held_lock_names_its_real_holder_and_says_it_waits(netns, tmp_path):
    """The lock file names a pid that is long gone; another process holds the lock. vnetfw
    says at once that it waits, naming the holder, and goes on once it is free."""
    cli = Cli(netns, tmp_path, "nftables")
    cli.run("apply", "-", stdin=toml("a", 0))
    lock = tmp_path / "state" / "lock"
    lock.write_text("999999\n")
    holder = subprocess.Popen([sys.executable, "-c",
                               "import fcntl, sys, time\n"
                               f"f = open({str(lock)!r}, 'r+')\n"
                               "fcntl.flock(f, fcntl.LOCK_EX)\n"
                               "print('held', flush=True)\n"
                               "sys.stdin.read()\n"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        waiter = subprocess.Popen([sys.executable, "-m", "vnetfw", "remove", "a",
                                   *cli.common], stderr=subprocess.PIPE, text=True,
                                  stdout=subprocess.PIPE, env=cli.env)
        line = waiter.stderr.readline()
        assert line.startswith(f"vnetfw: waiting for the state lock {lock}, held by pid "
                               f"{holder.pid} (") and "999999" not in line, line
        time.sleep(0.3)
        assert waiter.poll() is None, "gave up while the lock was held"
    finally:
        holder.stdin.close()
        holder.wait()
    assert waiter.wait(timeout=20) == 0, waiter.stderr.read()
    assert cli.json("list")["networks"] == []


def test_the_lock_timeout_names_the_holder_not_the_file(tmp_path):
    from vnetfw.errors import LockTimeout
    from vnetfw.state import StateStore
    store = StateStore(tmp_path)
    with store.lock():
        (tmp_path / "lock").write_text("999999\n")
        other = StateStore(tmp_path)
        said: list[str] = []
        other.on_wait = said.append
        with pytest.raises(LockTimeout, match=f"held by pid {os.getpid()} .*for over 1s"):
            with other.lock(timeout=0.6):
                pass
        assert len(said) == 1 and f"held by pid {os.getpid()} " in said[0]
    fd = os.open(tmp_path / "lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)     # released: free again
    os.close(fd)


def test_status_with_no_state_shows_the_rules_it_found(netns, tmp_path):
    """No state on record (lost, or another state dir) while vnetfw's rules are live: the
    exit status says drift, and so does the text (it said 'nothing to check')."""
    Cli(netns, tmp_path / "a", "nftables").run("apply", str(FIX / "nat-default.xml"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("VNETFW_")}
    p = subprocess.run([sys.executable, "-m", "vnetfw", "status", "--netns", netns,
                        "--state-dir", str(tmp_path / "other")], capture_output=True,
                       text=True, env=env)
    assert p.returncode == 1 and "DRIFT" in p.stdout and "nothing to check" not in p.stdout
    assert "(network default)" in p.stdout and "'vnetfw teardown' removes them" in p.stdout
