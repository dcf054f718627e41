"""Progress bars for every pass over data (rich), silent when not on a terminal or on rank > 0."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from qffs import settings

T = TypeVar("T")


def progress_enabled() -> bool:
    """Bars only for a human: a terminal, rank 0, and not disabled by ``QFFS_PROGRESS=0``."""
    forced = settings.progress_forced()
    if forced is False or settings.torchrun_rank() != 0:
        return False
    return forced is True or sys.stderr.isatty()


def track(items: Iterable[T], description: str, total: int | None = None,
          enabled: bool | None = None) -> Iterator[T]:
    """Iterate ``items`` showing a transient progress bar with rate and ETA."""
    if enabled is None:
        enabled = progress_enabled()
    if not enabled:
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
