"""qffs' one cache folder, and the rule for trusting what is in it.

Compiled kernels (:mod:`qffs.snn.native`) and decoded datasets (:mod:`qffs.data.cifar_jpeg`) are kept in
:func:`cache_dir` (:func:`qffs.settings.cache_dir`: ``$QFFS_CACHE_DIR``, else
``$XDG_CACHE_HOME/qffs``, else ``~/.cache/qffs``). A library found there runs inside every qffs
process and a decoded dataset decides every accuracy, so both are used only from a folder that
is this user's alone (:func:`private_cache`: created 0700 whatever the umask) and only if they
are the files qffs wrote (:func:`verified`: ours alone, with the SHA-256 recorded beside them
when they were written). Anything else is rebuilt, and where there is no private cache the
caller builds into a private temporary folder instead.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from qffs.settings import cache_dir  # looked up here at call time: tests replace qffs.cache.cache_dir


def ours_alone(path: Path) -> bool:
    """Owned by this user and writable by nobody else (where the system has owners)."""
    if not hasattr(os, "getuid"):
        return True
    info = path.stat()
    return info.st_uid == os.getuid() and not info.st_mode & 0o022


def private_cache() -> Path | None:
    """:func:`cache_dir`, created 0700 (missing parents too, whatever the umask), if it is this
    user's alone; else None (someone else's, shared, or not creatable)."""
    try:
        folder = cache_dir()
        missing = []
        probe = folder
        while not probe.exists() and probe != probe.parent:
            missing.append(probe)
            probe = probe.parent
        for path in reversed(missing):
            try:
                path.mkdir(mode=0o700)
            except FileExistsError:
                pass
        if folder.is_dir() and not folder.is_symlink() and folder.stat().st_uid == getattr(os, "getuid", lambda: -1)():
            os.chmod(folder, 0o700)   # ours, perhaps made group-writable by an earlier qffs: make it private
        return folder if folder.is_dir() and ours_alone(folder) else None
    except (OSError, RuntimeError):   # RuntimeError: Path.home() without a home
        return None


def digest(path: Path) -> str:
    """The SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _stamp(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def verified(path: Path) -> bool:
    """A file qffs wrote into the cache: ours alone, with the SHA-256 recorded when it was written."""
    stamp = _stamp(path)
    try:
        return (path.is_file() and stamp.is_file() and ours_alone(path) and ours_alone(stamp)
                and stamp.read_text().strip() == digest(path))
    except OSError:
        return False


def publish(written: Path, target: Path) -> None:
    """Move the finished file ``written`` (in ``target``'s folder) onto ``target``, its SHA-256 recorded
    first: a file without a matching stamp is never trusted, only rebuilt."""
    os.chmod(written, 0o700 if target.suffix in (".so", ".dll",
                                                 ".dylib") else 0o600)   # whatever the umask or the linker made
    fd, stamp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}", suffix=".part")
    with os.fdopen(fd, "w") as fh:
        fh.write(digest(written))
    os.replace(stamp, _stamp(target))
    os.replace(written, target)


__all__ = ["cache_dir", "digest", "ours_alone", "private_cache", "publish", "verified"]
