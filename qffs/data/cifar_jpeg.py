"""CIFAR-10 as a zip of JPEG files (``split/<class>/*.jpg``), decoded once and cached.

The decoded arrays are kept in qffs' private cache (:mod:`qffs.cache`), named by the zip's
SHA-256, and used only if they are the file qffs wrote.
"""

from __future__ import annotations

import functools
import io
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from qffs import settings
from qffs.cache import digest, private_cache, publish, verified
from qffs.data.registry import CIFAR_CLASSES
from qffs.errors import QffsError

_REPO = Path(__file__).resolve().parents[2]
#: Larger than any image a CIFAR-style zip holds: a bigger one is refused before it is decoded.
_MAX_PIXELS = 4096 * 4096


def cifar10_jpeg_path(root: str | Path | None = None) -> Path:
    """Locate ``cifar10-jpeg.zip``: ``root`` (file or dir), ``$QFFS_CIFAR10_JPEG``, ``../shared/datasets``."""
    given = root or settings.cifar10_jpeg()
    if given:  # an explicit location must hold the zip: never fall back silently
        p = Path(given).expanduser()
        candidates = [p, p / "cifar10-jpeg.zip"]
    else:
        candidates = [Path.cwd().parent / "shared" / "datasets" / "cifar10-jpeg.zip",
                      _REPO.parent / "shared" / "datasets" / "cifar10-jpeg.zip"]
    for c in candidates:
        if c.is_file():
            return c
    if given:
        raise QffsError(f"cifar10-jpeg.zip not found at {given}: pass the zip file or the directory holding it")
    raise QffsError("cifar10-jpeg.zip not found: pass --data-root PATH_TO_ZIP or set QFFS_CIFAR10_JPEG "
                    "(it ships in ../shared/datasets/ beside the repository)")


@functools.cache
def _zip_digest(path: Path, size: int, mtime_ns: int) -> str:
    """The zip's SHA-256 (once per process and file version): what its decoded cache is named by."""
    return digest(path)


def decode_jpeg_zip(path: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode one split of the zip into uint8 [N,3,32,32] + labels (indexed by CIFAR-10's own class
    list, whichever classes the split holds); kept in qffs' private cache (:mod:`qffs.cache`),
    named by the zip's content, and used only if it is the file qffs wrote."""
    stat = path.stat()
    key = _zip_digest(path.resolve(), stat.st_size, stat.st_mtime_ns)[:20]
    folder = private_cache()
    cache = folder / f"cifar10-jpeg-{split}-{key}.npz" if folder is not None else None
    if cache is not None and verified(cache):
        with np.load(cache) as f:
            return torch.from_numpy(f["images"]), torch.from_numpy(f["labels"])
    images, labels = _read_jpeg_split(path, split)
    if cache is not None:
        fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=f".{cache.name}", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, images=images, labels=labels)
            publish(Path(tmp), cache)
        except OSError:
            pass  # a full or read-only cache only costs the decode next time
        finally:
            Path(tmp).unlink(missing_ok=True)
    return torch.from_numpy(images), torch.from_numpy(labels)


def _read_jpeg_split(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The images of ``split/<class>/*`` in the zip, every one checked: a corrupt zip or image, an
    empty split or a folder that is no CIFAR-10 class is a one-line error naming it."""
    from PIL import Image, UnidentifiedImageError  # start-up time: Pillow and rich only when a zip is decoded

    from qffs.progress import track  # (rich)

    try:
        with zipfile.ZipFile(path) as zf:
            names = sorted(n for n in zf.namelist() if n.startswith(f"{split}/") and n.count("/") >= 2
                           and n.lower().endswith((".jpg", ".jpeg", ".png")))
            if not names:
                raise QffsError(f"{path} holds no {split}/<class>/*.jpg images: not the CIFAR-10 JPEG zip, or its "
                                f"{split} split is missing")
            unknown = sorted({n.split("/")[1] for n in names} - set(CIFAR_CLASSES))
            if unknown:
                raise QffsError(f"{path}: {split}/{unknown[0]}/ is not a CIFAR-10 class (the ten are "
                                f"{', '.join(CIFAR_CLASSES)})")
            index = {c: i for i, c in enumerate(CIFAR_CLASSES)}
            images = np.empty((len(names), 3, 32, 32), dtype=np.uint8)
            labels = np.empty(len(names), dtype=np.int64)
            for i, name in enumerate(track(names, f"decoding {split} JPEGs (cached afterwards)")):
                try:
                    with Image.open(io.BytesIO(zf.read(name))) as img:
                        if img.width * img.height > _MAX_PIXELS:
                            raise QffsError(f"{path}: {name} is {img.width}x{img.height} pixels, not a CIFAR image")
                        images[i] = np.asarray(img.convert("RGB").resize((32, 32))).transpose(2, 0, 1)
                except (UnidentifiedImageError, OSError, SyntaxError, ValueError, zipfile.BadZipFile,
                        Image.DecompressionBombError) as exc:
                    if isinstance(exc, QffsError):
                        raise
                    raise QffsError(f"{path}: {name} is not a readable image ({exc})") from None
                labels[i] = index[name.split("/")[1]]
    except zipfile.BadZipFile as exc:
        raise QffsError(f"{path} is not a readable zip file ({exc})") from None
    return images, labels


__all__ = ["cifar10_jpeg_path", "decode_jpeg_zip"]
