"""The public entry points: a dataset's description and preprocessing, the dataset itself (from
whichever reader its name needs), the training pool, and seeded (torchrun-sharded) loaders."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from qffs.data.arrays import TensorImages, cifar_batches, idx_dataset
from qffs.data.cifar_jpeg import cifar10_jpeg_path, decode_jpeg_zip
from qffs.data.imagefolder import imagefolder_dataset, imagefolder_info, split_dir
from qffs.data.registry import (
    IMAGE_SIZES,
    INFO,
    DatasetInfo,
    Preprocessing,
    channel_values,
    check_name,
    check_split,
    default_root,
)
from qffs.distributed import ShardSampler, active, rank, world_size
from qffs.errors import QffsError


def dataset_info(name: str, root: str | Path | None = None) -> DatasetInfo:
    """Classes, channels, image size and normalisation of a dataset."""
    check_name(name)
    if name != "imagefolder":
        return INFO[name]
    return imagefolder_info(root)


def resolve_preprocessing(dataset: str, root: str | Path | None = None, *, mean: Sequence[float] | None = None,
                          std: Sequence[float] | None = None, image_size: int | None = None,
                          recorded: Mapping[str, Any] | None = None) -> Preprocessing:
    """The preprocessing a job uses: each value from the caller, else the artifact's recorded one,
    else the dataset's usual one; validated here once (one value per channel, std > 0, a size
    only ImageFolder can change)."""
    info = dataset_info(dataset, root)
    recorded = recorded or {}

    def pick(name: str, given: Any, default: tuple[float, ...], positive: bool) -> tuple[float, ...]:
        if given is not None:
            return channel_values(f"--{name}", given, info.in_channels, positive)
        if recorded.get(name) is not None:
            return channel_values(f"recorded {name}", recorded[name], info.in_channels, positive)
        return default

    size = image_size if image_size is not None else recorded.get("image_size", info.image_size)
    if isinstance(size, bool) or not isinstance(size, int) or not IMAGE_SIZES[0] <= size <= IMAGE_SIZES[1]:
        raise QffsError(f"--image-size must be an integer in {IMAGE_SIZES[0]}..{IMAGE_SIZES[1]} (pixels), got {size!r}")
    if dataset != "imagefolder" and size != info.image_size:
        raise QffsError(f"--image-size {size}: {dataset} images are {info.image_size}×{info.image_size} and are not "
                        "resized; --image-size applies to --dataset imagefolder")
    return Preprocessing(pick("mean", mean, info.mean, False), pick("std", std, info.std, True), size)


def _limit(images: torch.Tensor, labels: torch.Tensor, limit: int | None, permute: bool) -> tuple[torch.Tensor,
                                                                                                  torch.Tensor]:
    if limit is None or limit >= len(labels):
        return images, labels
    if limit <= 0:
        raise QffsError(f"limit must be positive, got {limit}")
    if permute:  # class-grouped files: a fixed permutation so the first N cover every class
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1234))[:limit]
        return images[order], labels[order]
    return images[:limit], labels[:limit]


def load_dataset(name: str, split: str = "test", *, root: str | Path | None = None, limit: int | None = None,
                 augment: bool | None = None, preprocessing: Preprocessing | None = None) -> Dataset:
    """A dataset of (normalised float CHW image, int label); ``augment`` defaults to ``split == "train"``.

    ``preprocessing`` (see :func:`resolve_preprocessing`) defaults to the dataset's usual one.
    """
    check_name(name)
    check_split(split)
    augment = (split == "train") if augment is None else augment
    base = default_root(root)
    if name == "imagefolder":
        tree = split_dir(base, split)
        return imagefolder_dataset(tree, limit, augment, preprocessing or resolve_preprocessing(name, root),
                                   dataset_info(name, root).classes)
    prep = preprocessing or resolve_preprocessing(name, root)
    permute = False
    if name == "fashion-mnist":
        images, labels = idx_dataset(name, split, base, "FashionMNIST",
                                     "install it with `sudo apt-get install dataset-fashion-mnist` or pass "
                                     "--data-root pointing to a torchvision root (FashionMNIST/raw/)")
    elif name == "mnist":
        if base is None:
            raise QffsError("mnist needs its location: pass --data-root DIR (a torchvision root with MNIST/raw/ "
                            "or a directory of IDX files) or set QFFS_DATA_ROOT")
        images, labels = idx_dataset(name, split, base, "MNIST", "pass the torchvision root that contains MNIST/raw/")
    elif name == "cifar10":
        images, labels = cifar_batches(split, base)
    else:
        images, labels = decode_jpeg_zip(cifar10_jpeg_path(root), split)
        permute = True
    images, labels = _limit(images, labels, limit, permute)
    pad = {"fashion-mnist": 2, "mnist": 2}.get(name, 4)
    flip = name != "mnist"
    return TensorImages(images, labels, prep.mean, prep.std, crop_padding=pad if augment else 0,
                        flip=flip and augment)


def load_training_pool(name: str, *, root: str | Path | None = None, limit: int | None = None,
                       preprocessing: Preprocessing | None = None) -> tuple[Dataset, Dataset]:
    """The training split twice over the same samples in the same order: (augmented, plain).

    Training draws from the first; the validation split (:mod:`qffs.split`) is evaluated on the
    second, without augmentation, as the test set is."""
    augmented = load_dataset(name, "train", root=root, limit=limit, augment=True, preprocessing=preprocessing)
    if isinstance(augmented, TensorImages):   # the same uint8 tensors, no second decode
        plain = copy.copy(augmented)
        plain.crop_padding, plain.flip = 0, False
        return augmented, plain
    return augmented, load_dataset(name, "train", root=root, limit=limit, augment=False, preprocessing=preprocessing)


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool = False, seed: int = 0, num_workers: int = 0,
                drop_last: bool = False) -> DataLoader:
    """A seeded DataLoader. Under torchrun (:mod:`qffs.distributed`) each rank gets its shard: a
    shuffled (training) loader through ``DistributedSampler`` (equal shards, padded by repeats,
    reshuffled per epoch), an ordered (evaluation) loader through
    :class:`~qffs.distributed.ShardSampler` (every sample exactly once over all ranks)."""
    if batch_size <= 0:
        raise QffsError(f"batch size must be positive, got {batch_size}")
    if active():
        sampler = DistributedSampler(dataset, shuffle=True, seed=seed, drop_last=drop_last) if shuffle else \
            ShardSampler(len(dataset), rank(), world_size())
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                          drop_last=drop_last, pin_memory=torch.cuda.is_available())
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=num_workers,
                      drop_last=drop_last, pin_memory=torch.cuda.is_available())


__all__ = ["dataset_info", "load_dataset", "load_training_pool", "make_loader", "resolve_preprocessing"]
