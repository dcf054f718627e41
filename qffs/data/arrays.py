"""Datasets that live in memory as uint8 tensors: MNIST and Fashion-MNIST from IDX files,
CIFAR-10 from its python batches (unpickled as plain data only), and the dataset over them."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from qffs.errors import QffsError
from qffs.unpickle import PlainDataUnpickler

FASHION_MNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")


# --- in-memory tensor datasets ------------------------------------------------------------------
class TensorImages(Dataset):
    """uint8 images [N, C, H, W] + labels, normalised per sample; optional crop/flip augmentation."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: tuple[float, ...],
                 std: tuple[float, ...], *, crop_padding: int = 0, flip: bool = False):
        self.images, self.labels = images, labels.long()
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)
        self.crop_padding, self.flip = crop_padding, flip

    def __len__(self) -> int:
        return len(self.labels)

    def _augment(self, img: torch.Tensor) -> torch.Tensor:
        p = self.crop_padding
        if p:
            h, w = img.shape[-2:]
            padded = torch.nn.functional.pad(img, (p, p, p, p))
            dy, dx = torch.randint(0, 2 * p + 1, (2,)).tolist()
            img = padded[:, dy:dy + h, dx:dx + w]
        if self.flip and torch.rand(()) < 0.5:
            img = img.flip(-1)
        return img

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = self.images[index].float().div_(255)
        if self.crop_padding or self.flip:
            img = self._augment(img)
        return (img - self.mean) / self.std, int(self.labels[index])


# --- IDX (MNIST, Fashion-MNIST) -----------------------------------------------------------------
def read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file (optionally gzipped) into a uint8 tensor."""
    raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise QffsError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise QffsError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {data.size}")
    return torch.from_numpy(data.reshape(dims).copy())


def _find_idx(dirs: list[Path], stem: str) -> Path | None:
    for d in dirs:
        for candidate in (d / f"{stem}.gz", d / stem):
            if candidate.is_file():
                return candidate
    return None


def idx_dataset(name: str, split: str, root: Path | None, torchvision_dir: str, hint: str) -> tuple[torch.Tensor,
                                                                                                    torch.Tensor]:
    """(uint8 images [N, 1, H, W], labels) of MNIST or Fashion-MNIST, from ``root/<torchvision_dir>/raw``
    or ``root`` (Fashion-MNIST without a root: Debian's copy); ``hint`` says how to get it."""
    prefix = "train" if split == "train" else "t10k"
    dirs = [root / torchvision_dir / "raw", root] if root else []
    if name == "fashion-mnist" and root is None:
        dirs = [FASHION_MNIST_DEBIAN]
    images = _find_idx(dirs, f"{prefix}-images-idx3-ubyte")
    labels = _find_idx(dirs, f"{prefix}-labels-idx1-ubyte")
    if images is None or labels is None:
        where = dirs[0] if dirs else "(no location)"
        raise QffsError(f"{name} not found in {where}: {hint}")
    return read_idx(images).unsqueeze(1), read_idx(labels)


# --- CIFAR-10 python batches --------------------------------------------------------------------
def cifar_batches(split: str, root: Path | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images [N, 3, 32, 32], labels) of CIFAR-10's python batches under ``root``."""
    if root is None:
        raise QffsError("cifar10 needs its location: pass --data-root DIR (a torchvision root containing "
                        "cifar-10-batches-py/) or set QFFS_DATA_ROOT; for the JPEG copy use --dataset cifar10-jpeg")
    base = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    files = [base / f"data_batch_{i}" for i in range(1, 6)] if split == "train" else [base / "test_batch"]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise QffsError(f"cifar10 batches not found in {base} (missing {', '.join(missing)}): pass the torchvision "
                        "root that contains cifar-10-batches-py/")
    data, labels = [], []
    for f in files:
        try:
            images, batch_labels = _read_cifar_batch(f)
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as exc:
            raise QffsError(f"{f} is not a CIFAR-10 python batch of plain data ({exc}); refusing to read it") from exc
        data.append(images)
        labels.extend(batch_labels)
    return torch.from_numpy(np.concatenate(data)), torch.tensor(labels)


def _read_cifar_batch(f: Path) -> tuple[np.ndarray, list[int]]:
    """(uint8 images [N, 3, 32, 32], labels) of one python batch, unpickling plain data only."""
    with f.open("rb") as fh:
        batch = PlainDataUnpickler(fh, encoding="bytes").load()
    return np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32), list(batch[b"labels"])


__all__ = ["FASHION_MNIST_DEBIAN", "TensorImages", "cifar_batches", "idx_dataset", "read_idx"]
