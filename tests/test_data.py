"""Dataset loaders on small real data, and their error messages."""

from __future__ import annotations

import gzip
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from qffs.data import DATASETS, FASHION_MNIST_DEBIAN, cifar10_jpeg_path, dataset_info, load_dataset, make_loader
from qffs.errors import QffsError

REPO = Path(__file__).resolve().parents[1]
CIFAR_ZIP = REPO.parent / "shared" / "datasets" / "cifar10-jpeg.zip"


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def test_fashion_mnist_from_debian_files():
    test = load_dataset("fashion-mnist", "test")
    assert len(test) == 10_000 and len(load_dataset("fashion-mnist", "train")) == 60_000
    x, y = test[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and 0 <= y <= 9
    batch = torch.stack([test[i][0] for i in range(500)])
    assert abs(batch.mean().item()) < 0.1 and abs(batch.std().item() - 1) < 0.1  # normalised
    assert {test[i][1] for i in range(200)} == set(range(10))


def test_limit_is_the_first_n_in_file_order():
    full, first = load_dataset("fashion-mnist", "test"), load_dataset("fashion-mnist", "test", limit=100)
    assert len(first) == 100
    assert all(torch.equal(full[i][0], first[i][0]) and full[i][1] == first[i][1] for i in (0, 57, 99))


def test_augmentation_changes_images_not_labels_and_is_seeded():
    plain = load_dataset("fashion-mnist", "train", limit=64, augment=False)
    aug = load_dataset("fashion-mnist", "train", limit=64)
    assert [plain[i][1] for i in range(64)] == [aug[i][1] for i in range(64)]
    assert sum(not torch.equal(plain[i][0], aug[i][0]) for i in range(64)) > 32
    torch.manual_seed(1)   # augmentation draws from the global generator, as torchvision's transforms do
    a = next(iter(make_loader(load_dataset("fashion-mnist", "train", limit=256), 32, shuffle=True, seed=1)))
    torch.manual_seed(1)
    b = next(iter(make_loader(load_dataset("fashion-mnist", "train", limit=256), 32, shuffle=True, seed=1)))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_fashion_mnist_torchvision_root(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):  # decompressed, as torchvision keeps them
        (raw / stem).write_bytes(gzip.open(FASHION_MNIST_DEBIAN / f"{stem}.gz").read())
    ours, debian = load_dataset("fashion-mnist", "test", root=tmp_path, limit=50), load_dataset("fashion-mnist",
                                                                                                limit=50)
    assert all(torch.equal(ours[i][0], debian[i][0]) for i in range(50))


def test_mnist_idx_root(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.random.default_rng(0).integers(0, 256, (7, 28, 28))
    _write_idx(raw / "t10k-images-idx3-ubyte.gz", images)
    _write_idx(raw / "t10k-labels-idx1-ubyte", np.arange(7))
    ds = load_dataset("mnist", "test", root=tmp_path)
    assert len(ds) == 7 and [ds[i][1] for i in range(7)] == list(range(7))
    expected = (torch.tensor(images[3], dtype=torch.float32) / 255 - 0.1307) / 0.3081
    assert torch.allclose(ds[3][0][0], expected, atol=1e-6)


def test_cifar10_python_batches(tmp_path):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    data = np.random.default_rng(0).integers(0, 256, (5, 3072), dtype=np.uint8)
    with (base / "test_batch").open("wb") as f:
        pickle.dump({b"data": data, b"labels": [0, 1, 2, 3, 4]}, f)
    ds = load_dataset("cifar10", "test", root=tmp_path)
    assert len(ds) == 5 and ds[2][1] == 2 and ds[0][0].shape == (3, 32, 32)
    with pytest.raises(QffsError, match="missing data_batch_1"):
        load_dataset("cifar10", "train", root=tmp_path)


def _fake_jpeg_tree(tmp_path: Path, classes=("cat", "dog"), per_class=3) -> Path:
    from PIL import Image

    zpath = tmp_path / "cifar10-jpeg.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for split in ("train", "test"):
            for c in classes:
                for i in range(per_class):
                    img = Image.new("RGB", (32, 32), color=(40 * i, 100 if c == "cat" else 200, 0))
                    buf = Path(tmp_path / "tmp.jpg")
                    img.save(buf)
                    zf.write(buf, f"{split}/{c}/{i:04d}.jpg")
    return zpath


def test_jpeg_zip_reader_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QFFS_CACHE_DIR", str(tmp_path / "cache"))
    zpath = _fake_jpeg_tree(tmp_path)
    ds = load_dataset("cifar10-jpeg", "test", root=zpath)
    assert len(ds) == 6 and sorted(ds[i][1] for i in range(6)) == [3, 3, 3, 5, 5, 5]   # CIFAR-10's own indices
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    again = load_dataset("cifar10-jpeg", "test", root=tmp_path)  # a directory holding the zip; from cache
    assert all(torch.equal(ds[i][0], again[i][0]) for i in range(6))


@pytest.mark.skipif(not CIFAR_ZIP.is_file() and not os.environ.get("CI"), reason="shared CIFAR-10 zip absent (not CI)")
def test_cifar10_jpeg_shared_zip():
    assert cifar10_jpeg_path() == CIFAR_ZIP or cifar10_jpeg_path().samefile(CIFAR_ZIP)
    ds = load_dataset("cifar10-jpeg", "test", limit=200)
    labels = [ds[i][1] for i in range(len(ds))]
    assert len(ds) == 200 and ds[0][0].shape == (3, 32, 32)
    assert set(labels) == set(range(10))  # the class-grouped zip is sampled across classes


def test_imagefolder(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for c in ("a", "b", "c"):
            (tmp_path / split / c).mkdir(parents=True)
            Image.new("RGB", (300, 260), color=(10, 20, 30)).save(tmp_path / split / c / "x.png")
    info = dataset_info("imagefolder", tmp_path)
    assert info.num_classes == 3 and info.classes == ("a", "b", "c")
    x, y = load_dataset("imagefolder", "test", root=tmp_path)[2]
    assert x.shape == (3, 224, 224) and y == 2


def test_known_names_and_info():
    assert DATASETS == ("fashion-mnist", "mnist", "cifar10", "cifar10-jpeg", "imagefolder")
    assert dataset_info("cifar10-jpeg").in_channels == 3 and dataset_info("fashion-mnist").num_classes == 10


@pytest.mark.parametrize(("call", "message"), [
    (lambda tmp: load_dataset("svhn"), "unknown dataset 'svhn'; known: fashion-mnist, mnist"),
    (lambda tmp: load_dataset("fashion-mnist", root=tmp), "fashion-mnist not found in .*: install it with `sudo "
                                                          "apt-get install dataset-fashion-mnist`"),
    (lambda tmp: load_dataset("mnist"), "mnist needs its location: pass --data-root"),
    (lambda tmp: load_dataset("cifar10"), "cifar10 needs its location"),
    (lambda tmp: load_dataset("cifar10-jpeg", root=tmp / "nope.zip"), "cifar10-jpeg.zip not found at .*nope.zip"),
    (lambda tmp: load_dataset("imagefolder", root=tmp), "no val or test/ folder in"),
    (lambda tmp: dataset_info("imagefolder", tmp), "no train/, val/ or test/ folder in"),
    (lambda tmp: load_dataset("fashion-mnist", "valid"), "split must be 'train' or 'test'"),
    (lambda tmp: load_dataset("fashion-mnist", limit=0), "limit must be positive"),
])
def test_error_messages(tmp_path, monkeypatch, call, message):
    monkeypatch.delenv("QFFS_DATA_ROOT", raising=False)
    monkeypatch.delenv("QFFS_CIFAR10_JPEG", raising=False)
    with pytest.raises(QffsError, match=message):
        call(tmp_path)


class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_cifar10_batches_are_unpickled_as_plain_data_only(tmp_path):
    """A 'batch' that asks pickle to call something is refused before anything is called."""
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    marker = tmp_path / "MARKER"
    with (base / "test_batch").open("wb") as f:
        pickle.dump({b"data": _RunsCode(marker), b"labels": [0]}, f)
    with pytest.raises(QffsError, match="test_batch is not a CIFAR-10 python batch of plain data"):
        load_dataset("cifar10", "test", root=tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_batches_load_whatever_pickle_protocol_wrote_them(tmp_path, protocol):
    """Re-pickled batches: protocol 2 stores bytes via _codecs.encode, protocol 5 arrays via _frombuffer."""
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    data = np.random.default_rng(1).integers(0, 256, (3, 3072), dtype=np.uint8)
    with (base / "test_batch").open("wb") as f:
        pickle.dump({b"batch_label": b"testing batch 1 of 1", b"data": data, b"labels": [7, 8, 9]}, f,
                    protocol=protocol)
    ds = load_dataset("cifar10", "test", root=tmp_path)
    assert [ds[i][1] for i in range(3)] == [7, 8, 9]
