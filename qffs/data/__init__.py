"""Datasets by name, read from local files only, with their standard transforms.

    load_dataset("fashion-mnist", "train", limit=1000)   # (image tensor, label) pairs
    dataset_info("cifar10-jpeg").num_classes               # 10

| name            | source (no downloads)                                                        |
| --------------- | ---------------------------------------------------------------------------- |
| `fashion-mnist` | Debian's `/usr/share/datasets/fashion-mnist` (IDX gz) or a torchvision root   |
| `mnist`         | a torchvision root (`<root>/MNIST/raw/`) or a directory of IDX files          |
| `cifar10`       | a torchvision root with the python batches (`<root>/cifar-10-batches-py/`)   |
| `cifar10-jpeg`  | the JPEG zip of `../shared/datasets/` (or `root`, or `$QFFS_CIFAR10_JPEG`)    |
| `imagefolder`   | any ImageFolder tree: `root/train/<class>/*`, `root/val/<class>/*` (ImageNet) |

Small datasets live in memory as uint8 tensors and are normalised per sample; training
augmentation (random crop with padding, horizontal flip) runs on tensors and draws from torch's
global generator, as torchvision's transforms do: the job seeds it, the DataLoader seeds each
worker from the loader's generator, and a resumed run restores it (qffs.resume). ``limit``
keeps the first N samples in the dataset's own order, except for the
class-grouped JPEG zip, whose first N come from a fixed seeded permutation so that every
class is present.

Preprocessing travels with the model (:class:`Preprocessing`): a checkpoint trained with other
normalisation constants (ImageNet's mean/std on CIFAR, or none) or another image size gets
exactly its own, given once and recorded in every artifact qffs writes.

The package's modules: :mod:`~qffs.data.registry` (names, :class:`DatasetInfo`,
:class:`Preprocessing`), :mod:`~qffs.data.arrays` (IDX files, CIFAR-10 python batches,
:class:`TensorImages`), :mod:`~qffs.data.cifar_jpeg` (the JPEG zip and its cache),
:mod:`~qffs.data.imagefolder` (ImageFolder trees) and :mod:`~qffs.data.loaders` (the functions
below, re-exported here).
"""

from __future__ import annotations

from qffs.data.arrays import FASHION_MNIST_DEBIAN, TensorImages, read_idx
from qffs.data.cifar_jpeg import cifar10_jpeg_path
from qffs.data.loaders import dataset_info, load_dataset, load_training_pool, make_loader, resolve_preprocessing
from qffs.data.registry import DATASETS, IMAGE_SIZES, SMALL_IMAGE_MAX, DatasetInfo, Preprocessing

__all__ = ["DATASETS", "FASHION_MNIST_DEBIAN", "IMAGE_SIZES", "SMALL_IMAGE_MAX", "DatasetInfo", "Preprocessing",
           "TensorImages", "cifar10_jpeg_path", "dataset_info", "load_dataset", "load_training_pool", "make_loader",
           "read_idx", "resolve_preprocessing"]
