"""Runner.feed: a command that reads its input while vnetfw writes it (no namespace needed:
plain commands in the test's own namespace, touching nothing but a temporary folder)."""

from __future__ import annotations

import sys

import pytest

from vnetfw.backends.runner import FEED_PATH, CommandFailed, Runner

PY = sys.executable


def test_stdin_feed_returns_the_output():
    feed = Runner().feed(["cat"])
    for k in range(1000):
        feed.write(f"line {k}\n")          # far more than a pipe holds: the reader keeps up
    assert feed.finish().splitlines()[-1] == "line 999"


def test_feed_path_is_the_pipe():
    feed = Runner().feed(["cat", FEED_PATH])
    feed.write("through /dev/fd\n")
    assert feed.finish() == "through /dev/fd\n"


def test_a_command_that_fails_early_raises_its_failure():
    feed = Runner().feed([PY, "-c", "import sys; sys.stdin.read(1); "
                                    "sys.stderr.write('refused\\n'); sys.exit(3)"])
    with pytest.raises(CommandFailed) as e:
        for _ in range(10_000):
            feed.write("x" * 1000)          # the pipe breaks once the command has gone
        feed.finish()
    assert e.value.returncode == 3 and "refused" in e.value.stderr


def test_abort_stops_the_command_before_it_sees_the_end(tmp_path):
    out = tmp_path / "got"
    feed = Runner().feed([PY, "-c", "import sys; d = sys.stdin.read(); "
                                    f"open({str(out)!r}, 'w').write(d)"])
    feed.write("half of the input\n")
    feed.abort()
    assert not out.exists()


def test_missing_command():
    from vnetfw.errors import BackendError
    with pytest.raises(BackendError, match="command not found"):
        Runner().feed(["/nonexistent/vnetfw-test-command"])


def test_a_command_that_stops_reading_is_killed_when_time_runs_out():
    """A command that never reads (one waiting for a lock) cannot block vnetfw's writes
    for ever: the watchdog kills it and the write fails with the reason."""
    from vnetfw.errors import BackendError
    feed = Runner(timeout=0.5).feed([PY, "-c", "import time; time.sleep(30)"])
    with pytest.raises(BackendError, match="did not read its input for 0.5s"):
        for _ in range(10_000):
            feed.write("x" * 4096)          # 40 MB: far beyond any pipe
        feed.finish()


def test_vnetfw_s_own_time_between_writes_is_not_counted():
    """Reading files and planning between writes may take longer than the time limit: only
    a write the command does not take counts."""
    import time
    feed = Runner(timeout=0.3).feed(["cat"])
    feed.write("first\n")
    time.sleep(0.6)
    feed.write("second\n")
    assert feed.finish() == "first\nsecond\n"


def test_abort_kills_a_wrapper_and_what_it_started(tmp_path):
    """A wrapper script that does not exec (distros and Kubernetes put such wrappers where
    iptables is): abort kills its whole process group, so nothing is left reading."""
    out = tmp_path / "child"
    script = tmp_path / "wrapper"
    script.write_text(f"#!/bin/sh\n{PY} -c 'import sys, time; sys.stdin.read(); "
                      f"time.sleep(1); open({str(out)!r}, \"w\").write(\"late\")'\necho done\n")
    script.chmod(0o755)
    feed = Runner().feed([str(script)])
    feed.write("some input\n")
    feed.abort()
    import time
    time.sleep(1.5)
    assert not out.exists()


@pytest.mark.parametrize("stderr, said", [
    # nft: the error, the input line it quotes; not the carets under it
    ("/dev/fd/3:3:41-47: Error: Could not process rule: No such file or directory\n"
     'add rule inet t c meta iifname "x" jump nochain\n'
     "                                        ^^^^^^^\n",
     "/dev/fd/3:3:41-47: Error: Could not process rule: No such file or directory; "
     'add rule inet t c meta iifname "x" jump nochain'),
    # iptables-restore: the reason and the line; not the closing hint
    ("iptables-nft-restore v1.8.9 (nf_tables): Chain 'NO_SUCH_TARGET' does not exist\n"
     "Error occurred at line: 3\n"
     "Try `iptables-nft-restore -h' or 'iptables-nft-restore --help' for more information.\n",
     "iptables-nft-restore v1.8.9 (nf_tables): Chain 'NO_SUCH_TARGET' does not exist; "
     "Error occurred at line: 3"),
    ("", "exit status 4"),
    ("\n".join(f"line {i}" for i in range(9)), "line 0; line 1; line 2; line 3; (5 more lines)"),
])
def test_a_failure_says_what_the_tool_said(stderr, said):
    assert str(CommandFailed(["tool"], 4, stderr)) == f"tool failed: {said}"


def _interrupted_after(seconds: float, argv: list[str]) -> None:
    """``Runner().run(argv)`` with a Ctrl-C (KeyboardInterrupt) arriving after ``seconds``."""
    import signal

    def interrupt(*_):
        raise KeyboardInterrupt
    old = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        Runner().run(argv)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_an_interrupted_run_kills_and_reaps_the_command_before_the_interrupt_goes_on(tmp_path):
    """Ctrl-C while a command runs: by the time the interrupt reaches the caller, the
    command is gone, not merely signalled (the undo that follows reads the firewall and must
    see whatever a killed restore's last system call did). subprocess.run leaves it for
    later: its /proc entry would still be there."""
    import os
    pidfile = tmp_path / "pid"
    code = (f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); "
            "time.sleep(30)")
    with pytest.raises(KeyboardInterrupt):
        _interrupted_after(0.7, [PY, "-c", code])
    pid = int(pidfile.read_text())
    assert not os.path.exists(f"/proc/{pid}"), "the command was not waited for"


def test_a_command_that_never_ran_says_so(monkeypatch):
    """Not found, or unable to enter the namespace (setns refused: here an fd that is no
    namespace): NotStarted, so a caller knows nothing the command was to do happened."""
    import os

    from vnetfw.backends import runner as rn
    with pytest.raises(rn.NotStarted, match="command not found"):
        Runner().run(["/nonexistent/vnetfw-test-tool"])
    fd = os.open(os.devnull, os.O_RDONLY)
    os.set_inheritable(fd, True)
    monkeypatch.setattr(Runner, "_netns_kwargs", lambda self: (
        os.dup(fd), {"preexec_fn": rn._setns_preexec(fd), "pass_fds": (fd,)}))
    try:
        with pytest.raises(rn.NotStarted, match="could not enter"):
            Runner().run(["true"])
    finally:
        os.close(fd)


def test_an_interrupted_run_kills_the_commands_whole_session(tmp_path):
    """The command runs in a session of its own (so that the terminal's Ctrl-C is vnetfw's
    to decide on); when vnetfw stops it, its children go too (a wrapper's real tool)."""
    import time
    pidfile = tmp_path / "grandchild"
    script = f"sleep 30 & echo $! > {pidfile}; wait"
    with pytest.raises(KeyboardInterrupt):
        _interrupted_after(0.7, ["sh", "-c", script])
    pid = int(pidfile.read_text())
    for _ in range(100):                    # killed at once; reaped by init meanwhile
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split()[2] == "Z":
                    break
        except FileNotFoundError:
            break
        time.sleep(0.01)
    else:
        pytest.fail("the command's child outlived it")
