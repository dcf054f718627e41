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
worker from the loader's generator, and a resumed run restores it (qffs.resume). ``limit`` keeps the first N samples in the dataset's own order, except for the
class-grouped JPEG zip, whose first N come from a fixed seeded permutation so that every
class is present.

Preprocessing travels with the model (:class:`Preprocessing`): a checkpoint trained with other
normalisation constants (ImageNet's mean/std on CIFAR, or none) or another image size gets
exactly its own, given once and recorded in every artifact qffs writes.
"""

from __future__ import annotations

import copy
import functools
import gzip
import io
import math
import os
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from qffs import settings
from qffs.errors import QffsError
from qffs.unpickle import PlainDataUnpickler

DATASETS: tuple[str, ...] = ("fashion-mnist", "mnist", "cifar10", "cifar10-jpeg", "imagefolder")
FASHION_MNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
_REPO = Path(__file__).resolve().parents[1]
_CIFAR_MEAN, _CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
_CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


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


_INFO = {
    "fashion-mnist": DatasetInfo("fashion-mnist", 10, 1, 28, (0.2860,), (0.3530,), _FMNIST_CLASSES),
    "mnist": DatasetInfo("mnist", 10, 1, 28, (0.1307,), (0.3081,), tuple(str(i) for i in range(10))),
    "cifar10": DatasetInfo("cifar10", 10, 3, 32, _CIFAR_MEAN, _CIFAR_STD, _CIFAR_CLASSES),
    "cifar10-jpeg": DatasetInfo("cifar10-jpeg", 10, 3, 32, _CIFAR_MEAN, _CIFAR_STD, _CIFAR_CLASSES),
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


def _channel_values(option: str, values: Sequence[float], channels: int, positive: bool) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) != channels:
        raise QffsError(f"{option} has {len(values)} value(s) but the data has {channels} channel(s): give one "
                        f"comma-separated value per channel, e.g. --{option.split()[-1].lstrip('-')} " + ",".join(["0.5"] * channels))
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
            return _channel_values(f"--{name}", given, info.in_channels, positive)
        if recorded.get(name) is not None:
            return _channel_values(f"recorded {name}", recorded[name], info.in_channels, positive)
        return default

    size = image_size if image_size is not None else recorded.get("image_size", info.image_size)
    if isinstance(size, bool) or not isinstance(size, int) or not IMAGE_SIZES[0] <= size <= IMAGE_SIZES[1]:
        raise QffsError(f"--image-size must be an integer in {IMAGE_SIZES[0]}..{IMAGE_SIZES[1]} (pixels), got {size!r}")
    if dataset != "imagefolder" and size != info.image_size:
        raise QffsError(f"--image-size {size}: {dataset} images are {info.image_size}×{info.image_size} and are not "
                        "resized; --image-size applies to --dataset imagefolder")
    return Preprocessing(pick("mean", mean, info.mean, False), pick("std", std, info.std, True), size)


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise QffsError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise QffsError(f"split must be 'train' or 'test', got {split!r}")


def _default_root(root: str | Path | None) -> Path | None:
    root = root or settings.data_root()
    return Path(root).expanduser() if root else None


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


def _idx_dataset(name: str, split: str, root: Path | None, torchvision_dir: str, hint: str) -> tuple[torch.Tensor, torch.Tensor]:
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
def _cifar_batches(split: str, root: Path | None) -> tuple[torch.Tensor, torch.Tensor]:
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


# --- CIFAR-10 JPEG zip --------------------------------------------------------------------------
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
    from qffs.cache import digest

    return digest(path)


def _decode_jpeg_zip(path: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode one split of the zip into uint8 [N,3,32,32] + labels (indexed by CIFAR-10's own class
    list, whichever classes the split holds); kept in qffs' private cache (:mod:`qffs.cache`),
    named by the zip's content, and used only if it is the file qffs wrote."""
    from qffs.cache import private_cache, publish, verified

    stat = path.stat()
    key = _zip_digest(path.resolve(), stat.st_size, stat.st_mtime_ns)[:20]
    folder = private_cache()
    cache = folder / f"cifar10-jpeg-{split}-{key}.npz" if folder is not None else None
    if cache is not None and verified(cache):
        with np.load(cache) as f:
            return torch.from_numpy(f["images"]), torch.from_numpy(f["labels"])
    images, labels = _read_jpeg_split(path, split)
    if cache is not None:
        import tempfile

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
    from PIL import Image, UnidentifiedImageError

    try:
        with zipfile.ZipFile(path) as zf:
            names = sorted(n for n in zf.namelist() if n.startswith(f"{split}/") and n.count("/") >= 2
                           and n.lower().endswith((".jpg", ".jpeg", ".png")))
            if not names:
                raise QffsError(f"{path} holds no {split}/<class>/*.jpg images: not the CIFAR-10 JPEG zip, or its "
                                f"{split} split is missing")
            unknown = sorted({n.split("/")[1] for n in names} - set(_CIFAR_CLASSES))
            if unknown:
                raise QffsError(f"{path}: {split}/{unknown[0]}/ is not a CIFAR-10 class (the ten are "
                                f"{', '.join(_CIFAR_CLASSES)})")
            index = {c: i for i, c in enumerate(_CIFAR_CLASSES)}
            images = np.empty((len(names), 3, 32, 32), dtype=np.uint8)
            labels = np.empty(len(names), dtype=np.int64)
            from qffs.progress import track

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


#: Larger than any image a CIFAR-style zip holds: a bigger one is refused before it is decoded.
_MAX_PIXELS = 4096 * 4096
#: ImageFolder images above this many pixels (PIL's own decompression-bomb limit, ~89 million, at
#: which it only warns) are refused before they are decoded.
_MAX_FOLDER_PIXELS = 89_478_485


# --- public API ---------------------------------------------------------------------------------
def dataset_info(name: str, root: str | Path | None = None) -> DatasetInfo:
    """Classes, channels, image size and normalisation of a dataset."""
    _check_name(name)
    if name != "imagefolder":
        return _INFO[name]
    base = _default_root(root)
    if base is None:
        _imagefolder_split_dir(base, "train")   # says that --data-root is needed
    try:
        tree = _imagefolder_split_dir(base, "train")
    except QffsError:  # an evaluation-only tree: its val/ or test/ split says the same
        tree = next((base / n for n in ("val", "test") if base is not None and (base / n).is_dir()), None)
        if tree is None:
            raise QffsError(f"no train/, val/ or test/ folder in {base}: expected an ImageFolder tree "
                            "root/train/<class>/* and root/val/<class>/*") from None
    classes = tuple(sorted(d.name for d in tree.iterdir() if d.is_dir()))
    if not classes:
        raise QffsError(f"{tree} has no class folders: expected {tree}/<class>/<image files>")
    return DatasetInfo("imagefolder", len(classes), 3, _native_size(tree), _IMAGENET_MEAN, _IMAGENET_STD, classes)


def _native_size(tree: Path) -> int:
    """The default ImageFolder input size: a small tree's own image size (≤ 64 px, CIFAR-style),
    else ImageNet's 224."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.datasets.folder import IMG_EXTENSIONS

    for class_dir in sorted(d for d in tree.iterdir() if d.is_dir()):
        for file in sorted(class_dir.rglob("*")):
            if file.suffix.lower() in IMG_EXTENSIONS:
                try:
                    with Image.open(file) as img:
                        side = max(img.size)
                except (OSError, UnidentifiedImageError) as exc:
                    raise QffsError(f"cannot read image {file}: {exc}") from exc
                return side if side <= SMALL_IMAGE_MAX else 224
    raise QffsError(f"no images in {tree}: expected {tree}/<class>/<image files> ({', '.join(IMG_EXTENSIONS)})")


def _imagefolder_split_dir(root: Path | None, split: str) -> Path:
    if root is None:
        raise QffsError("imagefolder needs --data-root DIR (with train/<class>/ and val/<class>/ folders)")
    names = ("train",) if split == "train" else ("val", "test")
    for n in names:
        if (root / n).is_dir():
            return root / n
    raise QffsError(f"no {' or '.join(names)}/ folder in {root}: expected an ImageFolder tree "
                    "root/train/<class>/* and root/val/<class>/*")


def _limit(images: torch.Tensor, labels: torch.Tensor, limit: int | None, permute: bool) -> tuple[torch.Tensor, torch.Tensor]:
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
    _check_name(name)
    _check_split(split)
    augment = (split == "train") if augment is None else augment
    base = _default_root(root)
    if name == "imagefolder":
        tree = _imagefolder_split_dir(base, split)
        return _imagefolder(tree, limit, augment, preprocessing or resolve_preprocessing(name, root),
                            dataset_info(name, root).classes)
    prep = preprocessing or resolve_preprocessing(name, root)
    permute = False
    if name == "fashion-mnist":
        images, labels = _idx_dataset(name, split, base, "FashionMNIST",
                                      "install it with `sudo apt-get install dataset-fashion-mnist` or pass "
                                      "--data-root pointing to a torchvision root (FashionMNIST/raw/)")
    elif name == "mnist":
        if base is None:
            raise QffsError("mnist needs its location: pass --data-root DIR (a torchvision root with MNIST/raw/ "
                            "or a directory of IDX files) or set QFFS_DATA_ROOT")
        images, labels = _idx_dataset(name, split, base, "MNIST", "pass the torchvision root that contains MNIST/raw/")
    elif name == "cifar10":
        images, labels = _cifar_batches(split, base)
    else:
        images, labels = _decode_jpeg_zip(cifar10_jpeg_path(root), split)
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


def _read_image(path: str):
    """An ImageFolder image as RGB, or one line naming the file (empty, not an image, truncated, huge)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:   # reads the header only: the size is known before any decoding
            if img.width * img.height > _MAX_FOLDER_PIXELS:
                raise QffsError(f"{path} is {img.width}x{img.height} pixels: too large to decode "
                                f"(more than {_MAX_FOLDER_PIXELS:,}; a decompression bomb?) — remove or resize it")
            return img.convert("RGB")
    except QffsError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise QffsError(f"{path} is not a readable image ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                        " — remove or replace it") from None


def _class_folders(root: Path, classes: tuple[str, ...], **kwargs: Any) -> Dataset:
    """torchvision's ImageFolder with the class list fixed (the training split's): a split that lacks
    a class keeps every other class's label, and a folder that is no class is refused by name."""
    from torchvision import datasets

    class ClassFolders(datasets.ImageFolder):
        def __init__(self, root: Path, classes: tuple[str, ...], **kwargs: Any):
            self.fixed_classes = tuple(classes)
            super().__init__(str(root), loader=_read_image, allow_empty=True, **kwargs)

        def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
            present = sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())
            unknown = [c for c in present if c not in self.fixed_classes]
            if unknown:
                raise QffsError(f"{directory}/{unknown[0]}/ is not one of the {len(self.fixed_classes)} classes of the "
                                f"training split ({', '.join(self.fixed_classes[:4])}"
                                f"{', …' if len(self.fixed_classes) > 4 else ''}): every split needs the same classes")
            return list(self.fixed_classes), {c: i for i, c in enumerate(self.fixed_classes)}

    return ClassFolders(root, classes, **kwargs)


def _imagefolder(tree: Path, limit: int | None, augment: bool, prep: Preprocessing,
                 classes: tuple[str, ...]) -> Dataset:
    from torchvision import transforms

    n = prep.image_size
    norm = transforms.Normalize(prep.mean, prep.std)
    if n <= SMALL_IMAGE_MAX:  # CIFAR-style: the whole image at N×N; pad-and-crop augmentation
        resize = [transforms.Resize((n, n))]
        extra = [transforms.RandomCrop(n, padding=max(1, n // 8)), transforms.RandomHorizontalFlip()] if augment else []
        tf = transforms.Compose([*resize, *extra, transforms.ToTensor(), norm])
    elif augment:
        tf = transforms.Compose([transforms.RandomResizedCrop(n), transforms.RandomHorizontalFlip(),
                                 transforms.ToTensor(), norm])
    else:
        tf = transforms.Compose([transforms.Resize(round(n * 256 / 224)), transforms.CenterCrop(n),
                                 transforms.ToTensor(), norm])
    ds = _class_folders(tree, classes, transform=tf)
    if len(ds) == 0:
        raise QffsError(f"{tree} holds no images in its class folders ({', '.join(classes[:4])}"
                        f"{', …' if len(classes) > 4 else ''})")
    if limit is not None and limit < len(ds):
        order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(1234))[:limit].tolist()
        return torch.utils.data.Subset(ds, order)
    return ds


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool = False, seed: int = 0, num_workers: int = 0,
                drop_last: bool = False) -> DataLoader:
    """A seeded DataLoader. Under torchrun (:mod:`qffs.distributed`) each rank gets its shard: a
    shuffled (training) loader through ``DistributedSampler`` (equal shards, padded by repeats,
    reshuffled per epoch), an ordered (evaluation) loader through
    :class:`~qffs.distributed.ShardSampler` (every sample exactly once over all ranks)."""
    if batch_size <= 0:
        raise QffsError(f"batch size must be positive, got {batch_size}")
    from qffs import distributed

    if distributed.active():
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(dataset, shuffle=True, seed=seed, drop_last=drop_last) if shuffle else \
            distributed.ShardSampler(len(dataset), distributed.rank(), distributed.world_size())
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                          drop_last=drop_last, pin_memory=torch.cuda.is_available())
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=num_workers,
                      drop_last=drop_last, pin_memory=torch.cuda.is_available())


__all__ = ["DATASETS", "DatasetInfo", "Preprocessing", "TensorImages", "cifar10_jpeg_path", "dataset_info",
           "load_dataset", "load_training_pool", "make_loader", "read_idx", "resolve_preprocessing"]
