"""ImageFolder trees (``root/train/<class>/*``, ``root/val/<class>/*``: ImageNet and the like),
read through torchvision with one class list for every split and every image checked."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from qffs.data.registry import IMAGENET_MEAN, IMAGENET_STD, SMALL_IMAGE_MAX, DatasetInfo, Preprocessing, default_root
from qffs.errors import QffsError

#: ImageFolder images above this many pixels (PIL's own decompression-bomb limit, ~89 million, at
#: which it only warns) are refused before they are decoded.
_MAX_FOLDER_PIXELS = 89_478_485


def imagefolder_info(root: str | Path | None) -> DatasetInfo:
    """The classes (the training split's folders, else the val/ or test/ split's) and native size of a tree."""
    base = default_root(root)
    if base is None:
        split_dir(base, "train")   # says that --data-root is needed
    try:
        tree = split_dir(base, "train")
    except QffsError:  # an evaluation-only tree: its val/ or test/ split says the same
        tree = next((base / n for n in ("val", "test") if base is not None and (base / n).is_dir()), None)
        if tree is None:
            raise QffsError(f"no train/, val/ or test/ folder in {base}: expected an ImageFolder tree "
                            "root/train/<class>/* and root/val/<class>/*") from None
    classes = tuple(sorted(d.name for d in tree.iterdir() if d.is_dir()))
    if not classes:
        raise QffsError(f"{tree} has no class folders: expected {tree}/<class>/<image files>")
    return DatasetInfo("imagefolder", len(classes), 3, native_size(tree), IMAGENET_MEAN, IMAGENET_STD, classes)


def native_size(tree: Path) -> int:
    """The default ImageFolder input size: a small tree's own image size (≤ 64 px, CIFAR-style),
    else ImageNet's 224."""
    # start-up time: Pillow and torchvision only for ImageFolder trees
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


def split_dir(root: Path | None, split: str) -> Path:
    """The tree's folder of ``split`` (train/; for "test" val/, else test/), or a one-line error."""
    if root is None:
        raise QffsError("imagefolder needs --data-root DIR (with train/<class>/ and val/<class>/ folders)")
    names = ("train",) if split == "train" else ("val", "test")
    for n in names:
        if (root / n).is_dir():
            return root / n
    raise QffsError(f"no {' or '.join(names)}/ folder in {root}: expected an ImageFolder tree "
                    "root/train/<class>/* and root/val/<class>/*")


def _read_image(path: str):
    """An ImageFolder image as RGB, or one line naming the file (empty, not an image, truncated, huge)."""
    from PIL import Image, UnidentifiedImageError  # start-up time: Pillow only for ImageFolder trees

    try:
        with Image.open(path) as img:   # reads the header only: the size is known before any decoding
            if img.width * img.height > _MAX_FOLDER_PIXELS:
                raise QffsError(f"{path} is {img.width}x{img.height} pixels: too large to decode "
                                f"(more than {_MAX_FOLDER_PIXELS:,}; a decompression bomb?) — remove or resize it")
            return img.convert("RGB")
    except QffsError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise QffsError(f"{path} is not a readable image "
                        f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                        " — remove or replace it") from None


def _class_folders(root: Path, classes: tuple[str, ...], **kwargs: Any) -> Dataset:
    """torchvision's ImageFolder with the class list fixed (the training split's): a split that lacks
    a class keeps every other class's label, and a folder that is no class is refused by name."""
    from torchvision import datasets  # start-up time: torchvision only for ImageFolder trees

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


def imagefolder_dataset(tree: Path, limit: int | None, augment: bool, prep: Preprocessing,
                        classes: tuple[str, ...]) -> Dataset:
    """One split's folder as a dataset with ``classes`` as its labels: CIFAR-style (≤ 64 px: the whole
    image, pad-and-crop augmentation) or ImageNet-style (resize and centre crop, or random resized
    crops); ``limit`` keeps a fixed seeded sample."""
    from torchvision import transforms  # start-up time: torchvision only for ImageFolder trees

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


__all__ = ["imagefolder_dataset", "imagefolder_info", "split_dir"]
