"""The Ctrl-C deferral (pure signal handling in this process; no firewall)."""

from __future__ import annotations

import os
import signal

import pytest

from vnetfw.interrupts import Deferral


def press() -> None:
    os.kill(os.getpid(), signal.SIGINT)


def test_before_arm_ctrl_c_acts_at_once():
    with pytest.raises(KeyboardInterrupt):
        with Deferral():
            press()


def test_one_press_after_arm_is_raised_when_the_outermost_with_ends(capsys):
    d = Deferral()
    done = []
    with pytest.raises(KeyboardInterrupt):
        with d:
            with d:                 # migrate's outer step around the engine's command
                d.arm()
                press()
                done.append("inner")
            done.append("outer")    # still running: the interrupt waits for the outermost
    assert done == ["inner", "outer"]
    assert "finishing the change in progress" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_press_acts_at_once():
    d = Deferral()
    with pytest.raises(KeyboardInterrupt):
        with d:
            d.arm()
            press()
            press()
            pytest.fail("not stopped at the second press")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_abandon_after_a_refused_commit_acts_on_a_press_at_once():
    d = Deferral()
    with d:
        d.arm()
        d.abandon()                 # nothing pending: carries on, default handling back
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        d.arm()
        press()
        with pytest.raises(KeyboardInterrupt):
            d.abandon()


def test_an_error_on_its_way_is_not_replaced_by_the_held_back_press():
    d = Deferral()
    with pytest.raises(ValueError):
        with d:
            d.arm()
            press()
            raise ValueError("the command's own failure")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_callers_own_sigint_handling_is_left_alone():
    """vnetfw watch stops gracefully on SIGINT; a background job ignores it."""
    seen = []
    for own in (lambda *_: seen.append("graceful"), signal.SIG_IGN):
        old = signal.signal(signal.SIGINT, own)
        try:
            with Deferral() as d:
                d.arm()
                press()
        finally:
            signal.signal(signal.SIGINT, old)
    assert seen == ["graceful"]


def test_the_engine_arms_a_vacant_load_only_after_its_last_network():
    from vnetfw.engine import Engine
    eng = Engine.__new__(Engine)
    eng.interrupts = Deferral()
    opened = []
    eng._enter_window = lambda: opened.append(eng.interrupts._armed)
    gen = eng._then_arm(iter([("a", ()), ("b", ())]))
    assert [next(gen), next(gen)] == [("a", ()), ("b", ())]
    assert not eng.interrupts._armed          # the last one planned, not yet taken
    with pytest.raises(StopIteration):
        next(gen)
    assert eng.interrupts._armed
    assert opened == [False]        # the record of the change is written before that
    eng.interrupts.abandon()


def test_after_a_commit_went_through_a_refusal_does_not_stop_the_command():
    """A backend switch: the new backend committed, the old one's teardown is refused. The
    command goes on to record what happened; the press is raised at the end."""
    d = Deferral()
    with pytest.raises(KeyboardInterrupt):
        with d:
            d.arm()
            d.landed()
            press()
            d.abandon()             # does not raise: the command finishes first
            d.arm()


def test_the_cli_prints_its_report_then_says_it_stopped(monkeypatch, capsys):
    """The CLI takes the held-back press as a note, not an exception: the command's own
    output comes first, then one line, exit 130."""
    import vnetfw.cli as cli
    from vnetfw.interrupts import DEFERRAL

    def command(_args):
        with DEFERRAL:
            DEFERRAL.arm()
            press()
            print("the report")
        return 0
    monkeypatch.setitem(cli.COMMANDS, "list", command)
    assert cli.main(["list"]) == 130
    out, err = capsys.readouterr()
    assert out == "the report\n" and "finished and recorded" in err
    assert DEFERRAL.raise_at_end            # put back for in-process callers after it


class _GoneReader:
    """A stderr whose reader left (``| tee`` ended by the same Ctrl-C)."""

    def write(self, _text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        raise BrokenPipeError(32, "Broken pipe")


def test_a_stderr_whose_reader_left_does_not_turn_the_held_press_into_an_abort(monkeypatch):
    import sys
    monkeypatch.setattr(sys, "stderr", _GoneReader())
    d = Deferral()
    done = []
    with pytest.raises(KeyboardInterrupt):
        with d:
            d.arm()
            press()                 # its message cannot be written: still only noted
            done.append("finished")
    assert done == ["finished"]


def test_the_cli_says_it_stopped_even_to_a_gone_reader(monkeypatch):
    import sys

    import vnetfw.cli as cli
    from vnetfw.interrupts import DEFERRAL

    def command(_args):
        with DEFERRAL:
            DEFERRAL.arm()
            press()
        return 0
    monkeypatch.setitem(cli.COMMANDS, "list", command)
    monkeypatch.setattr(sys, "stderr", _GoneReader())
    assert cli.main(["list"]) == 130
