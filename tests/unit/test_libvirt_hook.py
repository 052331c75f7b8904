"""``vnetfw libvirt-hook``: which libvirt events do what (against a fake engine), the hook
file it installs and removes, and the start-up path of events it ignores. The real daemon
running the installed hook is tests/netns/test_libvirt.py."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
from types import SimpleNamespace

import pytest

from vnetfw import libvirt_hook as lh
from vnetfw.cli import main
from vnetfw.errors import DefinitionError, GuardError
from vnetfw.model import Mode

META = '<metadata><v:firewall xmlns:v="urn:vnetfw:network:1" mode="{mode}"/></metadata>'


def hook_xml(name="web", bridge="vb0", mode="nat", forward="<forward mode='open'/>",
             meta=True) -> bytes:
    m = META.format(mode=mode) if meta else ""
    return (f"<hookData><network><name>{name}</name>{forward}<bridge name='{bridge}'/>{m}"
            "<ip address='10.0.0.1' prefix='24'/></network></hookData>").encode()


class FakeEngine:
    def __init__(self, active=()):
        self.active = {n.name: n for n in active}
        self.calls: list[tuple] = []

    def apply(self, nets):
        self.calls.append(("apply", [n.name for n in nets], [n.mode for n in nets]))
        self.active.update((n.name, n) for n in nets)
        return SimpleNamespace(changes=[1, 2], backend="fake", warnings=[], hook_failures=[])

    def list_networks(self):
        return list(self.active.values())

    def remove(self, names):
        self.calls.append(("remove", list(names)))
        return SimpleNamespace(changes=[1], backend="fake")


def event(args, data, eng):
    return lh.run_event(args, io.BytesIO(data), lambda: eng)


@pytest.mark.parametrize("op, sub", [("start", "begin"), ("updated", "begin")])
def test_start_and_update_apply_the_network_as_its_metadata_says(op, sub):
    eng = FakeEngine()
    assert event(["web", op, sub, "-"], hook_xml(mode="route"), eng).startswith("applied web")
    assert eng.calls == [("apply", ["web"], [Mode.ROUTE])]


@pytest.mark.parametrize("op, sub", [("started", "begin"), ("port-created", "begin"),
                                     ("port-deleted", "begin"), ("stopped", "begin"),
                                     ("start", "end"), ("reconnect", "begin")])
def test_every_other_event_changes_nothing(op, sub):
    eng = FakeEngine()
    assert event(["web", op, sub, "-"], hook_xml(), eng) is None
    assert eng.calls == []


@pytest.mark.parametrize("data", [hook_xml(meta=False), hook_xml(meta=False, forward="<forward/>"),
                                  # not parsed at all: vnetfw's strictness cannot stop
                                  # libvirt from starting a network vnetfw has no say in
                                  b"<hookData><network><name>x</name><ip netmask='junk'/>"])
def test_networks_without_vnetfw_metadata_are_left_alone(data):
    eng = FakeEngine()
    assert event(["web", "start", "begin", "-"], data, eng) is None
    assert eng.calls == []


def test_bad_metadata_fails_the_start_and_applies_nothing():
    eng = FakeEngine()
    with pytest.raises(DefinitionError, match="mode='bogus' must be one of"):
        event(["web", "start", "begin", "-"], hook_xml(mode="bogus"), eng)
    with pytest.raises(DefinitionError, match="libvirt already firewalls a nat network"):
        event(["web", "start", "begin", "-"], hook_xml(forward="<forward/>"), eng)
    assert eng.calls == []


def test_a_name_that_differs_from_libvirts_argument_is_refused():
    with pytest.raises(DefinitionError, match="arguments"):
        event(["other", "start", "begin", "-"], hook_xml(), FakeEngine())


def test_stop_removes_only_the_network_vnetfw_has_active_on_that_bridge():
    from vnetfw.sources.libvirt_xml import parse_hook_xml
    web = parse_hook_xml(hook_xml())
    eng = FakeEngine([web])
    assert event(["web", "stopped", "end", "-"], hook_xml(bridge="vb9"), eng) is None
    assert event(["web", "stopped", "end", "-"], hook_xml(meta=False), eng) is None
    assert eng.calls == []
    assert event(["web", "stopped", "end", "-"], hook_xml(), eng).startswith("removed web")
    assert eng.calls == [("remove", ["web"])]
    assert event(["new", "stopped", "end", "-"], hook_xml(name="new"), FakeEngine()) is None


def test_the_cli_wants_four_arguments_or_install():
    assert main(["libvirt-hook", "web", "start"]) == 2


# ---------------------------------------------------------------------------------------
# The installed file


def args(**kw):
    base = dict(backend="auto", profile=None, prefix=None, netns=None, state_dir=None,
                hooks_dir=None)
    return SimpleNamespace(**(base | kw))


def test_the_hook_runs_this_vnetfw_with_the_global_options(monkeypatch):
    monkeypatch.delenv("VNETFW_STATE_DIR", raising=False)
    monkeypatch.setenv("VNETFW_HOOKS_DIR", "/etc/h d")
    cmd = lh.hook_command(args(backend="iptables-nft", profile="libvirt", netns="n1",
                               state_dir="/s"))
    assert cmd == [sys.executable, "-m", "vnetfw", "--backend", "iptables-nft", "--profile",
                   "libvirt", "--netns", "n1", "--state-dir", "/s", "--hooks-dir", "/etc/h d"]
    assert lh.hook_command(args())[3:] == ["--hooks-dir", "/etc/h d"]


def test_install_writes_an_executable_hook_and_uninstall_removes_it(tmp_path, capsys):
    d = tmp_path / "network.d"
    assert main(["--state-dir", str(tmp_path / "st"), "libvirt-hook", "install",
                 "--hooks-dir", str(d)]) == 0
    out = capsys.readouterr().out
    assert "restart libvirtd" in out and "virtnetworkd" in out
    hook = d / "vnetfw"
    st = os.stat(hook)
    assert stat.S_IMODE(st.st_mode) == 0o755 and stat.S_ISREG(st.st_mode)
    text = hook.read_text()
    assert lh.MARKER in text and f"--state-dir {tmp_path / 'st'}" in text
    assert os.listdir(d) == ["vnetfw"]                        # no temporary left
    assert main(["libvirt-hook", "install", "--hooks-dir", str(d)]) == 0   # again: replaced
    assert main(["libvirt-hook", "uninstall", "--hooks-dir", str(d)]) == 0
    assert os.listdir(d) == []
    assert main(["libvirt-hook", "uninstall", "--hooks-dir", str(d)]) == 0
    assert "nothing to remove" in capsys.readouterr().out


def test_the_installed_hook_passes_only_its_events_to_vnetfw(tmp_path):
    log = tmp_path / "log"
    fake = tmp_path / "fake"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\ncat > /dev/null\n')
    fake.chmod(0o755)
    hook = lh.install(tmp_path / "d", [str(fake)])
    for ev in (("start", "begin"), ("started", "begin"), ("port-created", "begin"),
               ("updated", "begin"), ("stopped", "end")):
        p = subprocess.run([str(hook), "web", *ev, "-"], input=hook_xml(), capture_output=True)
        assert p.returncode == 0, p.stderr
    assert log.read_text().splitlines() == ["libvirt-hook web start begin -",
                                            "libvirt-hook web updated begin -",
                                            "libvirt-hook web stopped end -"]


def test_foreign_files_and_unsafe_folders_are_left_alone(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "vnetfw").write_text("#!/bin/sh\n# the admin's own\n")
    with pytest.raises(GuardError, match="not written by vnetfw"):
        lh.install(d, ["x"])
    with pytest.raises(GuardError, match="not written by vnetfw"):
        lh.uninstall(d)
    assert (d / "vnetfw").read_text().endswith("the admin's own\n")
    (d / "vnetfw").unlink()
    (d / "vnetfw").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(GuardError):
        lh.install(d, ["x"])
    assert not (tmp_path / "elsewhere").exists()
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with pytest.raises(GuardError, match="writable by others"):
        lh.install(open_dir, ["x"])
    link = tmp_path / "link"
    link.symlink_to(d)
    with pytest.raises(GuardError, match="symlink"):
        lh.install(link, ["x"])


def test_an_ignored_event_imports_no_engine_nor_parser():
    code = ("import io, sys\nfrom vnetfw.cli import main\n"
            "sys.stdin = io.TextIOWrapper(io.BytesIO(b'<hookData/>'))\n"
            "assert main(['libvirt-hook', 'web', 'port-created', 'begin', '-']) == 0\n"
            "print(' '.join(m for m in ('vnetfw.engine', 'vnetfw.sources', 'vnetfw.model')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == []


def test_a_failed_commit_fails_the_start(monkeypatch, capsys):
    """The engine's failure (nothing applied: its commit is atomic) becomes a non-zero exit
    with vnetfw's one line on stderr, which libvirt shows as the reason the start failed."""
    from vnetfw import cli
    from vnetfw.errors import BackendError

    class Failing(FakeEngine):
        def apply(self, nets):
            raise BackendError("nft: Could not process rule: No such file or directory")
    monkeypatch.setattr(cli, "_engine", lambda a: Failing())
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(hook_xml())))
    assert main(["libvirt-hook", "web", "start", "begin", "-"]) == BackendError.exit_code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Could not process rule" in err[0]
