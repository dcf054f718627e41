"""Stopping signals (issue 22): SIGTERM stops a job as Ctrl-C does, with its own exit code; renames
that publish files together are never split; after a command finished a signal changes nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from qffs import signals


@pytest.fixture
def handlers():
    saved = {sig: signal.getsignal(sig) for sig in signals.STOPPING}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"),
                                              (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_a_stopping_signal_raises_where_the_job_is_and_names_itself(handlers, sig, code, word):
    previous = signals.stop_on_signals()
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), sig)
        signal.sigtimedwait([], 0.5) if hasattr(signal, "sigtimedwait") else None
    assert (signals.exit_code(), signals.stop_word()) == (code, word)
    signals.restore(previous)
    assert signal.getsignal(sig) is previous[sig]


def test_held_signals_arrive_after_the_block(handlers):
    signals.stop_on_signals()
    done = []
    with pytest.raises(KeyboardInterrupt):
        with signals.held():
            os.kill(os.getpid(), signal.SIGTERM)
            done.append("the renames finished")
    assert done and signals.exit_code() == 143


def test_after_ignore_further_a_signal_is_recorded_not_raised(handlers):
    signals.stop_on_signals()
    signals.ignore_further()
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGTERM)
    assert signals.exit_code() == 130          # the first one names the stop


def test_the_console_script_ignores_a_signal_once_the_command_is_done(tmp_path):
    """A SIGTERM sent as the command returns: the command's own exit code, not a silent kill (rc −15)."""
    script = textwrap.dedent("""
        import os, signal, sys
        import qffs.cli.main as m
        real = m.main
        def main(argv=None, console=False):
            code = real(["--help"], console=True)
            os.kill(os.getpid(), signal.SIGTERM)   # just after the output is complete
            return code
        m.main = main
        from qffs.cli import entry
        entry()
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (r.returncode, r.stderr)
