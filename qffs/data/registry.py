"""The datasets qffs knows by name, what a model needs to know about each, and the preprocessing
(normalisation constants and image size) that travels with a model."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from qffs import settings
from qffs.errors import QffsError

DATASETS: tuple[str, ...] = ("fashion-mnist", "mnist", "cifar10", "cifar10-jpeg", "imagefolder")
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot")
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]


INFO = {
    "fashion-mnist": DatasetInfo("fashion-mnist", 10, 1, 28, (0.2860,), (0.3530,), FMNIST_CLASSES),
    "mnist": DatasetInfo("mnist", 10, 1, 28, (0.1307,), (0.3081,), tuple(str(i) for i in range(10))),
    "cifar10": DatasetInfo("cifar10", 10, 3, 32, CIFAR_MEAN, CIFAR_STD, CIFAR_CLASSES),
    "cifar10-jpeg": DatasetInfo("cifar10-jpeg", 10, 3, 32, CIFAR_MEAN, CIFAR_STD, CIFAR_CLASSES),
}


#: ImageFolder images up to this size are treated as CIFAR-style (no resize margin, random-crop
#: augmentation with padding); larger ones the ImageNet way (resize to 256/224·N, centre crop N).
SMALL_IMAGE_MAX = 64


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the model's input: scaled to [0, 1], resized to ``image_size``
    (ImageFolder only), then ``(x - mean) / std`` per channel."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int

    def as_dict(self) -> dict[str, object]:
        return {"mean": list(self.mean), "std": list(self.std), "image_size": self.image_size}


def channel_values(option: str, values: Sequence[float], channels: int, positive: bool) -> tuple[float, ...]:
    """``values`` (of ``option``, for messages) as floats, if there is one per channel and each lies
    in range (std > 0 when ``positive``); else a one-line QffsError."""
    values = tuple(float(v) for v in values)
    if len(values) != channels:
        example = ",".join(["0.5"] * channels)
        raise QffsError(f"{option} has {len(values)} value(s) but the data has {channels} channel(s): give one "
                        f"comma-separated value per channel, e.g. --{option.split()[-1].lstrip('-')} {example}")
    if not all(math.isfinite(v) and (v > 0 or not positive) for v in values):
        raise QffsError(f"{option} values must be {'finite and > 0' if positive else 'finite'}, "
                        f"got {','.join(map(str, values))}")
    low, high = (_MIN_STD, 1.0 / _MIN_STD) if positive else (-_MAX_MEAN, _MAX_MEAN)
    if not all(low <= v <= high for v in values):   # (x − mean) / std of x in [0, 1] lands in float32
        raise QffsError(f"{option} values must lie in [{low:g}, {high:g}] (images are scaled to [0, 1] and normalised "
                        f"in float32), got {','.join(map(str, values))}")
    return values


#: Bounds of the normalisation constants: every normalised pixel then stays a float32 number of
#: sensible size (|x| ≤ 2·10¹²), far from overflow and from the subnormals.
_MIN_STD, _MAX_MEAN = 1e-6, 1e6
#: Image sizes an ImageFolder job resizes to.
IMAGE_SIZES = (8, 4096)


def check_name(name: str) -> None:
    if name not in DATASETS:
        raise QffsError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")


def check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise QffsError(f"split must be 'train' or 'test', got {split!r}")


def default_root(root: str | Path | None) -> Path | None:
    """``root``, else ``$QFFS_DATA_ROOT``, as a path; None when neither is given."""
    root = root or settings.data_root()
    return Path(root).expanduser() if root else None


__all__ = ["DATASETS", "IMAGE_SIZES", "INFO", "SMALL_IMAGE_MAX", "DatasetInfo", "Preprocessing", "channel_values",
           "check_name", "check_split", "default_root"]
