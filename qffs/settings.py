"""Every environment variable qffs reads, in one place, each read when it is asked for (not at
import), so a test or a caller that changes the environment is heard at once.

| variable                  | read by                          | meaning                                             |
| ------------------------- | -------------------------------- | --------------------------------------------------- |
| ``QFFS_PROGRESS``         | :mod:`qffs.progress`             | ``0``: no progress bars; ``1``: bars even in a pipe |
| ``QFFS_PROGRESS_SECONDS`` | :mod:`qffs.progress`             | in a pipe: seconds between progress lines (30)      |
| ``QFFS_NATIVE``           | :mod:`qffs.snn.native`           | ``0``: PyTorch operations instead of the C kernels  |
| ``QFFS_MALLOC``           | :mod:`qffs.snn.allocator`        | ``0``: leave glibc's malloc as it is                |
| ``QFFS_DATA_ROOT``        | :mod:`qffs.data`                 | the data root when ``--data-root`` is not given     |
| ``QFFS_CIFAR10_JPEG``     | :mod:`qffs.data`                 | the CIFAR-10 JPEG zip (or the folder holding it)    |
| ``QFFS_CACHE_DIR``        | :mod:`qffs.cache`                | qffs' cache folder (else the XDG one, see below)    |
| ``XDG_CACHE_HOME``        | :mod:`qffs.cache`                | the cache is ``$XDG_CACHE_HOME/qffs`` without it    |
| ``CC``                    | :mod:`qffs.snn.native`           | the C compiler tried first                          |
| ``QFFS_COMMAND``          | :mod:`qffs.report`               | the command line a report records (set by ``qffs``) |
| ``COLUMNS``               | the command line's tables        | set: rich's width is left alone in a pipe           |
| ``RANK``, ``WORLD_SIZE``, | :mod:`qffs.distributed` and jobs | what torchrun tells each process (before the group  |
| ``LOCAL_RANK``            |                                  | is joined; afterwards the group says)               |

Malformed torchrun values fail as ``int()`` fails, as they always did: torchrun writes them.
"""

from __future__ import annotations

import os
from pathlib import Path

from qffs.errors import QffsError

#: Set by the ``qffs`` command line while it runs a command: that command, as a shell line.
COMMAND_VARIABLE = "QFFS_COMMAND"


def command() -> str | None:
    """``QFFS_COMMAND``: the ``qffs`` command line being run (None outside one)."""
    return os.environ.get(COMMAND_VARIABLE) or None


def progress_forced() -> bool | None:
    """``QFFS_PROGRESS``: False for ``0`` (never bars), True for ``1`` (bars even when stderr is no
    terminal), None otherwise (bars on a terminal)."""
    value = os.environ.get("QFFS_PROGRESS", "")
    return False if value == "0" else True if value == "1" else None


def progress_seconds() -> float:
    """``QFFS_PROGRESS_SECONDS``: the least time between two plain progress lines when stderr is
    no terminal (default 30; ``0``: a line per item). A value that is no number is refused by name."""
    value = os.environ.get("QFFS_PROGRESS_SECONDS", "")
    if not value:
        return 30.0
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise QffsError(f"QFFS_PROGRESS_SECONDS must be a number of seconds >= 0, got {value!r}")
    return seconds


def native_kernels() -> bool:
    """``QFFS_NATIVE`` is not ``0``: the fused C kernels may be used."""
    return os.environ.get("QFFS_NATIVE", "1") != "0"


def malloc_tuning() -> bool:
    """``QFFS_MALLOC`` is not ``0``: a CPU simulation may tell glibc's malloc to keep freed memory."""
    return os.environ.get("QFFS_MALLOC", "1") != "0"


def data_root() -> str | None:
    """``QFFS_DATA_ROOT``, or None when unset or empty."""
    return os.environ.get("QFFS_DATA_ROOT") or None


def cifar10_jpeg() -> str | None:
    """``QFFS_CIFAR10_JPEG`` (the zip, or the folder holding it), or None when unset or empty."""
    return os.environ.get("QFFS_CIFAR10_JPEG") or None


def cache_dir() -> Path:
    """qffs' one cache folder: ``$QFFS_CACHE_DIR``, else ``$XDG_CACHE_HOME/qffs``, else
    ``~/.cache/qffs`` (``Path.home()`` raises RuntimeError where there is no home). Whether it may
    be trusted is :mod:`qffs.cache`'s business."""
    given = os.environ.get("QFFS_CACHE_DIR")
    if given:
        return Path(given).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "qffs"


def c_compiler() -> str | None:
    """``CC``, the C compiler to try first, or None when unset or empty."""
    return os.environ.get("CC") or None


def columns_given() -> bool:
    """Is ``COLUMNS`` set (the terminal width chosen by the user)?"""
    return "COLUMNS" in os.environ


def torchrun_rank() -> int:
    """torchrun's ``RANK`` (0 without torchrun)."""
    return int(os.environ.get("RANK", "0"))


def torchrun_world_size() -> int:
    """torchrun's ``WORLD_SIZE`` (1 without torchrun), as written."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def torchrun_local_rank() -> int | None:
    """torchrun's ``LOCAL_RANK`` (this process's GPU on its machine), or None without torchrun."""
    value = os.environ.get("LOCAL_RANK")
    return None if value is None else int(value)


__all__ = ["c_compiler", "cache_dir", "cifar10_jpeg", "columns_given", "data_root", "malloc_tuning", "native_kernels",
           "progress_forced", "torchrun_local_rank", "torchrun_rank", "torchrun_world_size"]
