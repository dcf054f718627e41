"""Writing files: whole or not at all, never two runs into one output, on every platform.

Below everything else in qffs (it imports only the standard library, ``filelock`` and qffs'
settings, signals, errors and cache rule):

- :func:`atomic_path`, :func:`atomic_files`, :func:`write_text_atomic`: write to a temporary
  file beside the target (``.NAME.PID.xxxx.tmp``), rename it into place on success: a crash never
  leaves half a file, and a set of files appears together or not at all;
- the temporary files of killed runs are removed by the next write (:func:`remove_orphans`);
- a failed write (a full disk, a quota, a read-only folder, torch's writer giving up) is one line
  naming the file, and leaves no folder it made;
- :func:`exclusive`: a lock on a job's output, so that a second run writing it is refused.

Outputs get the usual permissions (``0666`` less the umask; ``mkstemp`` makes them private) where
the platform has permission bits; nothing here needs ``os.fchmod``, ``fcntl`` or ``os.getuid``,
which Windows lacks.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import filelock

from qffs import settings
from qffs.cache import ours_alone
from qffs.errors import QffsError
from qffs.signals import held

#: Hold off Ctrl-C and SIGTERM over the renames that publish a set of files together (qffs.signals).
interrupts_held = held

#: torch's writer reports a failed write (a full disk among others) as a RuntimeError with these words.
_WRITER_FAILURES = ("PytorchStreamWriter", "file write failed", "unexpected pos")
_WINDOWS = os.name == "nt"


def pid_alive(pid: int) -> bool:
    """Is process ``pid`` running (another user's counts as running; so does any doubt)?"""
    if _WINDOWS:   # os.kill(pid, 0) would terminate the process there
        return _windows_pid_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True   # someone else's process: leave its file alone
    return True


def _windows_pid_alive(pid: int) -> bool:
    import ctypes  # Windows only: the process query of kernel32

    try:
        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)   # type: ignore[attr-defined]
        handle = kernel32.OpenProcess(0x1000, False, pid)           # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return ctypes.get_last_error() != 87  # type: ignore[attr-defined]   # ERROR_INVALID_PARAMETER: none
        try:
            code = ctypes.c_ulong()
            return not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)) or code.value == 259   # STILL_ACTIVE
        finally:
            kernel32.CloseHandle(handle)
    except (AttributeError, OSError):
        return True


def remove_orphans(target: Path) -> None:
    """Remove temporary files of ``target`` left by a killed run (``.NAME.PID.*.tmp`` whose
    process is gone): a SIGKILL mid-write leaves one, and the next run clears it."""
    for tmp in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        pid = tmp.name[len(target.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                tmp.unlink()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _temporary_beside(target: Path) -> Path:
    """A new empty ``.NAME.PID.xxxx.tmp`` beside ``target`` (killed runs' ones removed first)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    if not _WINDOWS:   # mkstemp makes it private (0600); outputs get the usual permissions (Windows has no bits)
        os.chmod(tmp, 0o666 & ~_UMASK)
    return Path(tmp)


@contextlib.contextmanager
def _removing_made_folders(target: Path) -> Iterator[None]:
    """If the block fails, remove the folders that did not exist before it and are left empty."""
    missing = []
    folder = Path(target).parent
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    try:
        yield
    except BaseException:
        for made in missing:   # deepest first
            with contextlib.suppress(OSError):
                made.rmdir()
        raise


@contextlib.contextmanager
def _translated(target: Path) -> Iterator[None]:
    """A failed write of ``target`` (a full disk, a quota, a read-only or vanished folder, torch's
    writer giving up) as one line naming the file and the cause."""
    try:
        yield
    except OSError as exc:
        full = exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
        cause = "the disk is full: free some space or write elsewhere" if full else (exc.strerror or str(exc))
        raise QffsError(f"cannot write {target}: {cause}") from exc
    except RuntimeError as exc:
        if not any(words in str(exc) for words in _WRITER_FAILURES):
            raise
        raise QffsError(f"cannot write {target}: {str(exc).splitlines()[0]} (is the disk full?)") from exc


@contextlib.contextmanager
def failed_writes_named(target: Path) -> Iterator[None]:
    """Around every atomic write: a failure is one line naming the file and the cause, and leaves
    no empty folder behind."""
    with _removing_made_folders(target), _translated(target):
        yield


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (``.NAME.PID.xxxx.tmp``); rename it onto ``path``
    only on success. Temporary files of killed runs are removed first (:func:`remove_orphans`)."""
    target = Path(path)
    with failed_writes_named(target):
        tmp = _temporary_beside(target)
        try:
            yield tmp
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


@contextlib.contextmanager
def atomic_files(paths: list[Path]) -> Iterator[list[Path]]:
    """Temporary paths for several files, moved into place together when the block succeeds
    (Ctrl-C held off during the moves), else removed: never a mix of two runs' files."""
    temps: list[Path] = []
    with failed_writes_named(Path(paths[0]) if paths else Path(".")):
        try:
            temps.extend(_temporary_beside(Path(p)) for p in paths)
            yield temps
            with interrupts_held():
                for tmp, target in zip(temps, paths):
                    os.replace(tmp, target)
        finally:
            for tmp in temps:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write a text file atomically (reports, JSON, CSV)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def lock_folder() -> Path:
    """This user's folder of output locks in the temporary directory (``qffs-locks-UID``; on
    Windows, whose temporary directory is the user's own, ``qffs-locks``), created 0700."""
    user = f"-{os.getuid()}" if hasattr(os, "getuid") else ""
    folder = Path(tempfile.gettempdir()) / f"qffs-locks{user}"
    folder.mkdir(mode=0o700, exist_ok=True)
    if folder.is_symlink() or not ours_alone(folder):   # its name is predictable: someone else may have made it first
        raise QffsError(f"the lock folder {folder} belongs to another user or others can write to it: remove it, "
                        "or point TMPDIR at a folder of your own")
    return folder


def lock_file(path: str | Path) -> Path:
    """The lock of an output: named by the SHA-256 of its absolute path, in :func:`lock_folder`."""
    key = hashlib.sha256(str(Path(path).expanduser().resolve()).encode()).hexdigest()[:32]
    return lock_folder() / f"{key}.lock"


@contextlib.contextmanager
def exclusive(path: str | Path, option: str) -> Iterator[None]:
    """Hold an exclusive lock on a job's output, a file or a directory, while the job runs; a
    second qffs run writing the same output (another process, or the same one) is refused at once,
    naming ``option`` to change. The lock (:func:`lock_file`) lives in the temporary directory,
    so nothing is created beside the output; it is an OS lock (``filelock``: flock, or Windows'
    own), so it dies with its process and is never stale. The empty lock file stays, for the next
    run to lock. Ranks of torchrun other than 0 take none: rank 0 holds it for the job, and the
    others write nothing."""
    if settings.torchrun_rank() != 0:
        yield
        return
    target = Path(path)
    lock = filelock.FileLock(lock_file(target), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise QffsError(f"another qffs run is writing {target}: wait for it to finish, or choose another "
                        f"{option}") from None
    try:
        yield
    finally:
        lock.release()


__all__ = ["atomic_files", "atomic_path", "exclusive", "failed_writes_named", "interrupts_held", "lock_file",
           "lock_folder", "pid_alive", "remove_orphans", "write_text_atomic"]
