"""The CLI's output into a pipe whose reader goes away (``vnetfw render ... | head``): not
an error, no traceback. (No root needed: render touches nothing.)"""

from __future__ import annotations

import subprocess
import sys

from benchmarks import netdefs


def test_render_into_a_closed_pipe_is_not_an_error(tmp_path):
    defs = netdefs.write_dir(tmp_path / "defs", netdefs.xmls("nat", 300))
    p = subprocess.Popen([sys.executable, "-m", "vnetfw", "render", "--backend", "nftables",
                          str(defs)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.readline().startswith(b"table inet vnetfw {")
    p.stdout.close()                        # the reader goes away; ~1 MB is still to come
    err = p.stderr.read().decode()
    assert p.wait() == 0 and "Traceback" not in err, err


def test_the_entry_point_runs_exit_handlers_and_keeps_the_exit_status(tmp_path):
    """``vnetfw.cli.run`` skips the interpreter's teardown (os._exit) but must still run
    exit handlers (the lab deletes its namespaces in one) and flush what was printed."""
    mark = tmp_path / "handler-ran"
    code = ("import atexit, vnetfw.cli as c\n"
            "def main():\n"
            f"    atexit.register(lambda: open({str(mark)!r}, 'w').write('ran'))\n"
            "    print('buffered output')\n"
            "    return 3\n"
            "c.main = main\n"
            "c.run()\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 3 and p.stdout == "buffered output\n" and mark.read_text() == "ran"


def test_stdout_gone_only_when_its_reader_left(monkeypatch):
    """A broken pipe counts as 'render | head' only if stdout itself lost its reader:
    a pipe (POLLERR) or a socket (POLLHUP) with nobody on the other end."""
    import io
    import os
    import socket
    from vnetfw import output
    r, w = os.pipe()
    with io.open(w, "w") as out:
        monkeypatch.setattr(sys, "stdout", out)
        assert not output.stdout_gone()           # a reader is there
        os.close(r)
        assert output.stdout_gone()
    a, b = socket.socketpair()
    with a, io.open(a.fileno(), "w", closefd=False) as out:
        monkeypatch.setattr(sys, "stdout", out)
        assert not output.stdout_gone()
        b.close()
        assert output.stdout_gone()


def test_an_interrupt_says_what_state_it_leaves(monkeypatch, capsys):
    """Ctrl-C: exit 130 and one line that says what it left and what to run next (at 3 a.m.
    a silent 130 says nothing)."""
    import vnetfw.cli as cli

    def interrupted(_args):
        raise KeyboardInterrupt
    monkeypatch.setitem(cli.COMMANDS, "list", interrupted)
    assert cli.main(["list"]) == 130
    err = capsys.readouterr().err
    assert err.startswith("vnetfw: interrupted") and "vnetfw check" in err
