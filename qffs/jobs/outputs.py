"""The one output policy of every job: what it may write, checked before any work, and locked
while it writes (by the job itself, never by the command line).

A file output must carry a suffix its writer supports and must not be, or have as its sidecar,
an input or an input's sidecar; a folder output must be creatable and writable, and none of the
fixed names the job writes there may be an input. A training job's result appears only when it
finishes (:func:`staged_output`): until then it lives in ``NAME.partial.pt``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from qffs.distributed import is_main_process
from qffs.errors import Interrupted, QffsError
from qffs.files import exclusive, interrupts_held
from qffs.io import CHECKPOINT_SUFFIXES
from qffs.resume import resume_path


def metrics_path(checkpoint: str | Path) -> Path:
    """``models/net.pt`` → ``models/net.pt.metrics.json``: named after the whole file, so that
    ``net.safetensors`` written from ``net.pt`` never overwrites the input's own sidecar."""
    p = Path(checkpoint)
    return p.with_name(p.name + ".metrics.json")


def partial_path(out: Path) -> Path:
    """Where a run keeps its best result so far until it finishes: ``net.pt`` → ``net.partial.pt``."""
    return out.with_name(f"{out.stem}.partial{out.suffix}")


def training_files(out: Path) -> tuple[Path, ...]:
    """Every file a training job writing ``out`` may leave: the result, the partial result, their
    sidecars and the resume state."""
    return (out, metrics_path(out), partial_path(out), metrics_path(partial_path(out)), resume_path(out))


def _clash(option: str, target: Path, written: Iterable[Path], inputs: Iterable[str | Path | None]) -> None:
    """Refuse writing over an input or an input's sidecar."""
    written = {p.resolve() for p in written}
    for given in (Path(i) for i in inputs if i is not None):
        clash = {given.resolve(), metrics_path(given).resolve()} & written
        if clash:
            raise QffsError(f"{option} {target} would overwrite {sorted(map(str, clash))[0]}, which belongs to the "
                            f"input {given}: choose another {'output name' if option == '--out' else option}")


def check_output_dir(folder: str | Path, option: str = "--out-dir", *, writes: tuple[str, ...] = (),
                     inputs: tuple[str | Path | None, ...] = ()) -> Path:
    """A folder a job may write into, checked before any work: not a file, its nearest existing
    ancestor a writable directory (the rest is created when the job writes), and none of the
    files the job ``writes`` there (fixed names) one of its ``inputs`` or an input's sidecar."""
    folder = Path(folder)
    _clash(option, folder, (folder / name for name in writes), inputs)
    if folder.exists() and not folder.is_dir():
        raise QffsError(f"{option} {folder} is a file, not a folder")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise QffsError(f"{option} {folder}: {existing} is a file, so no folder can be created there")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise QffsError(f"{option} {folder}: {existing} is not writable")
    return folder


def check_output(out: str | Path, *inputs: str | Path | None, suffixes: tuple[str, ...] = CHECKPOINT_SUFFIXES,
                 writes: tuple[Path, ...] | None = None, option: str = "--out") -> Path:
    """A file output as a path, refused unless it is not a directory, ends in one of ``suffixes``
    (default: the checkpoint formats :mod:`qffs.io` writes), its folder is writable, and none of the
    files it ``writes`` (default: a training job's, :func:`training_files`) is an input or an
    input's sidecar."""
    out = Path(out)
    if out.is_dir():
        raise QffsError(f"{option} {out} is a directory: give a file name, e.g. {out / ('model' + suffixes[0])}")
    if out.suffix not in suffixes:
        names = ", ".join(suffixes[:-1]) + (" or " if len(suffixes) > 1 else "") + suffixes[-1]
        raise QffsError(f"{option} must end in {names}, got {out.name}")
    check_output_dir(out.parent, f"{option} {out}: the folder")
    _clash(option, out, training_files(out) if writes is None else writes, inputs)
    return out


@contextlib.contextmanager
def writing(out: str | Path, *inputs: str | Path | None, option: str = "--out",
            suffixes: tuple[str, ...] = CHECKPOINT_SUFFIXES, writes: tuple[Path, ...] | None = None) -> Iterator[Path]:
    """:func:`check_output`, then hold the output's lock while the job writes it: a second qffs run
    writing the same file is refused at once."""
    path = check_output(out, *inputs, suffixes=suffixes, writes=writes, option=option)
    with exclusive(path, option):
        yield path


@contextlib.contextmanager
def writing_dir(folder: str | Path, *, writes: tuple[str, ...], inputs: tuple[str | Path | None, ...] = (),
                option: str = "--out-dir") -> Iterator[Path]:
    """:func:`check_output_dir`, then hold the folder's lock: two runs never mix their files there."""
    path = check_output_dir(folder, option, writes=writes, inputs=inputs)
    with exclusive(path, option):
        yield path


@contextlib.contextmanager
def staged_output(out: Path, *, resuming: bool = False) -> Iterator[Path]:
    """Yield the path a training job writes to while it runs (:func:`partial_path`); move it and
    its sidecar onto ``out`` only when the job finishes (and drop its resume state), so an
    interrupted run never leaves a file that looks complete. An earlier run's partial files are
    removed unless this run continues it (``resuming``). Ctrl-C becomes
    :class:`~qffs.errors.Interrupted`, naming what was kept."""
    partial = partial_path(out)
    if not resuming:
        for stale in (partial, metrics_path(partial)):   # an earlier interrupted run's: not this run's result
            if stale.exists():
                stale.unlink()
    try:
        yield partial
    except KeyboardInterrupt:
        kept = f"the best result so far is in {partial}" if partial.exists() else "nothing was written"
        again = "; add --resume to the same command to continue" if resume_path(out).exists() else ""
        raise Interrupted(f"interrupted: {out} was not written; {kept}{again}") from None
    if is_main_process() and partial.exists():
        with interrupts_held():   # the result, its sidecar and the end of its resume state: together
            os.replace(partial, out)
            if metrics_path(partial).exists():
                os.replace(metrics_path(partial), metrics_path(out))
            resume_path(out).unlink(missing_ok=True)
