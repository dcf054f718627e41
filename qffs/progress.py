"""Progress for every pass over data and every slow phase, silent on rank > 0.

On a terminal: transient rich bars and spinners. In a pipe (logs, batch jobs): plain lines on
stderr, a pass's at most every ``QFFS_PROGRESS_SECONDS`` (30 s) and at its end, so that a long
run's log shows life. ``QFFS_PROGRESS=0`` silences both, ``1`` forces bars.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from qffs import settings

T = TypeVar("T")


def progress_enabled() -> bool:
    """Bars only for a human: a terminal, rank 0, and not disabled by ``QFFS_PROGRESS=0``."""
    forced = settings.progress_forced()
    if forced is False or settings.torchrun_rank() != 0:
        return False
    return forced is True or sys.stderr.isatty()


def lines_enabled() -> bool:
    """Plain progress lines: rank 0, no bars (stderr is no terminal), not disabled by ``QFFS_PROGRESS=0``."""
    return settings.progress_forced() is None and settings.torchrun_rank() == 0 and not sys.stderr.isatty()


def _line(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _clock(seconds: float) -> str:
    """``75.2`` → ``'1:15'``."""
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}" if minutes < 60 else f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def progress_line(description: str, done: int, total: int | None, elapsed: float) -> str:
    """``'epoch 1/3: 120/352 (34%), 0:31 elapsed, eta 1:00'`` (without a total: count and time)."""
    if not total:
        return f"{description}: {done}, {_clock(elapsed)} elapsed"
    eta = elapsed / done * (total - done) if done else 0.0
    return f"{description}: {done}/{total} ({100 * done // total}%), {_clock(elapsed)} elapsed, eta {_clock(eta)}"


def _lines(items: Iterable[T], description: str, total: int | None) -> Iterator[T]:
    """``items``, with a progress line every ``QFFS_PROGRESS_SECONDS`` and one at the end."""
    interval = settings.progress_seconds()
    start = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= interval and (total is None or done < total):
            _line(progress_line(description, done, total, now - start))
            last = now
    taken = time.monotonic() - start
    if taken >= 1.0 or interval == 0:   # a quick pass stays quiet
        _line(progress_line(description, done, total, taken) + " - done")


def track(items: Iterable[T], description: str, total: int | None = None,
          enabled: bool | None = None) -> Iterator[T]:
    """Iterate ``items`` showing a transient progress bar with rate and ETA (in a pipe: lines)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if enabled is None:
        enabled = progress_enabled()
        if not enabled and lines_enabled():
            yield from _lines(items, description, total)
            return
    if not enabled:
        yield from items
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)


@contextlib.contextmanager
def status(description: str) -> Iterator[None]:
    """Say what a phase without a count (loading, calibration) is doing while it runs: a spinner
    on a terminal, a line ``description ...`` in a pipe (and its time, if it took over a second)."""
    if progress_enabled():
        with Console(stderr=True).status(description + " ..."):
            yield
        return
    if not lines_enabled():
        yield
        return
    _line(description + " ...")
    start = time.monotonic()
    yield
    if (taken := time.monotonic() - start) >= 1.0:
        _line(f"{description}: done in {_clock(taken)}")
