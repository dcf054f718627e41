"""Stopping signals: Ctrl-C (SIGINT) and SIGTERM (what ``timeout``, Slurm and systemd send) stop a
job the same way, with one line and the exit code 128 + the signal (130, 143).

The command line calls :func:`stop_on_signals` once; a signal then raises ``KeyboardInterrupt``
wherever the job is, so the job's own clean-up runs (a training job keeps its partial files and
resume state, :func:`qffs.jobs.outputs.staged_output`). :func:`held` defers signals over the few
renames that publish a set of files together; :func:`ignore_further` makes the line that reports
the stop (and the exit after a finished command) immune to a second signal.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

#: The signals that stop a job, in the order their names are tried.
STOPPING = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _stop(signum: int, frame) -> None:
    _received.append(signum)
    raise KeyboardInterrupt


def stop_on_signals() -> dict[int, object]:
    """SIGINT and SIGTERM raise ``KeyboardInterrupt`` in the main thread, remembering which came
    (the record starts empty). Returns the handlers they replace, for :func:`restore`."""
    _received.clear()
    if not _main_thread():
        return {}
    return {sig: signal.signal(sig, _stop) for sig in STOPPING}


def restore(previous: dict[int, object]) -> None:
    """Put back the handlers :func:`stop_on_signals` replaced (a command run in-process leaves none of its own)."""
    if _main_thread():
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def ignore_further() -> None:
    """From now on stopping signals are recorded, not raised: the job is already ending."""
    if _main_thread():
        for sig in STOPPING:
            signal.signal(sig, lambda signum, frame: _received.append(signum))


def exit_code() -> int:
    """128 + the first stopping signal received (130 for Ctrl-C, 143 for SIGTERM); 130 if none was."""
    return 128 + int(_received[0]) if _received else 130


def stop_word() -> str:
    """How the job was stopped, for its one line: "interrupted" (Ctrl-C) or "terminated (SIGTERM)"."""
    return "terminated (SIGTERM)" if _received and _received[0] == signal.SIGTERM else "interrupted"


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Hold off stopping signals (in the main thread) until the block is done, then deliver the
    first as ``KeyboardInterrupt``: for the few renames that publish a set of files together."""
    if not _main_thread():
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum)) for sig in STOPPING}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if caught:
        _received.append(caught[0])
        raise KeyboardInterrupt
