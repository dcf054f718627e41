"""The second hardening pass (issue 22), in-process where a subprocess is not the point: foreign
networks as a new user brings them, and files that are not what they claim. Each case exits 0
and is correct, or exits 2 with one line naming the cause, and writes nothing it should not."""

from __future__ import annotations

import importlib.util
import json
import textwrap
from pathlib import Path

import pytest
import torch

from qffs.io import load_checkpoint
from tests.test_cli import _one_line_error

SUBSET = ("--limit", "128", "--test-limit", "32", "--batch-size", "32")

HEAD = '''
import torch
from torch import nn
import torch.nn.functional as F


class Base(nn.Module):
    def __init__(self, channels=1, norm=None):
        super().__init__()
        self.conv = nn.Conv2d(channels, 4, 3, padding=1)
        self.norm = norm or nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(4)
        self.fc = nn.Linear(4 * 49, 10)

    def features(self, x):
        return self.fc(self.pool(F.relu(self.norm(self.conv(x)))).flatten(1))
'''


def _model(tmp_path: Path, body: str, name: str = "net.py") -> tuple[Path, Path]:
    """A model file (HEAD + ``body``, which defines ``net()``) and an FP state dict saved from it."""
    code = tmp_path / name
    code.parent.mkdir(parents=True, exist_ok=True)
    code.write_text(HEAD + textwrap.dedent(body))
    spec = importlib.util.spec_from_file_location(f"hardening_{abs(hash(str(code)))}", code)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    weights = code.with_suffix(".pth")
    torch.save(module.net().state_dict(), weights)
    return code, weights


def test_a_model_that_squeezes_its_output_converts_and_runs(cli, tmp_path):
    code, weights = _model(tmp_path, '''
        class Net(Base):
            def forward(self, x):
                return self.features(x).unsqueeze(1).squeeze()   # batch 1 would lose its batch dimension

        def net():
            return Net()
    ''')
    spec = f"{code}:net"
    assert cli("quantize", weights, "--model", spec, "--out", tmp_path / "q.pt", "--epochs", "0",
               *SUBSET).returncode == 0
    r = cli("convert", tmp_path / "q.pt", "--model", spec, "--out", tmp_path / "s.pt")
    assert r.returncode == 0, r.stderr
    r = cli("evaluate", tmp_path / "s.pt", "--model", spec, "-T", "16", "--limit", "32", "--double",
            "--out-dir", tmp_path / "ev")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "ev" / "curve.json").read_text())
    assert report["snn_accuracy"][-1] == report["qann_accuracy"]


def test_a_model_file_imports_the_package_it_came_with(cli, tmp_path, monkeypatch):
    import sys

    repo = tmp_path / "repo"
    (repo / "models").mkdir(parents=True)
    (repo / "models" / "blocks.py").write_text("from torch import nn\n\ndef block():\n    return nn.ReLU()\n")
    monkeypatch.syspath_prepend(str(repo))             # only to save the weights here
    code, weights = _model(repo, '''
        from models.blocks import block

        class Net(Base):
            def forward(self, x):
                return self.features(x)

        def net():
            return Net()
    ''', name="models/resnet_blocks.py")
    monkeypatch.undo()
    for name in [m for m in sys.modules if m == "models" or m.startswith("models.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.chdir(tmp_path)                        # not the repository, and no PYTHONPATH=.
    r = cli("quantize", weights, "--model", f"{code}:net", "--out", tmp_path / "q.pt", "--epochs", "0", *SUBSET)
    assert r.returncode == 0, r.stderr


def test_a_final_softmax_is_dropped_with_a_note(cli, tmp_path):
    code, weights = _model(tmp_path, '''
        class Net(Base):
            def forward(self, x):
                return F.softmax(self.features(x), dim=1)

        def net():
            return Net()
    ''')
    r = cli("quantize", weights, "--model", f"{code}:net", "--out", tmp_path / "q.pt", "--epochs", "0", *SUBSET)
    assert r.returncode == 0, r.stderr
    assert "note: the final torch.nn.functional.softmax was dropped: it does not change any prediction" in r.stdout
    m = load_checkpoint(tmp_path / "q.pt").meta["metrics"]
    assert 0 <= m["qann_accuracy"] <= 1


def test_batchnorm_without_running_statistics_is_refused_at_quantize(cli, tmp_path):
    code, weights = _model(tmp_path, '''
        class Net(Base):
            def forward(self, x):
                return self.features(x)

        def net():
            return Net(norm=nn.BatchNorm2d(4, track_running_stats=False))
    ''')
    _one_line_error(cli("quantize", weights, "--model", f"{code}:net", "--out", tmp_path / "q.pt", "--epochs", "0",
                        *SUBSET), "cannot quantize node 'norm'", "track_running_stats=False")
    assert not (tmp_path / "q.pt").exists()


def test_a_forgotten_dataset_is_named_before_the_model_runs(cli, tmp_path):
    code, weights = _model(tmp_path, '''
        class Net(Base):
            def forward(self, x):
                return self.features(x)

        def net():
            return Net(channels=3)
    ''')
    _one_line_error(cli("quantize", weights, "--model", f"{code}:net", "--out", tmp_path / "q.pt", "--epochs", "0",
                        *SUBSET), "the model takes 3 input channel(s), fashion-mnist has 1: pass --dataset")


def test_a_torchscript_archive_is_named_as_one(cli, tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "scripted.pt")
    for command in (("info", tmp_path / "scripted.pt"),
                    ("quantize", tmp_path / "scripted.pt", "--model", "vgg_small", "--out", tmp_path / "q.pt")):
        _one_line_error(cli(*command), "is a TorchScript archive (torch.jit.save)", "torch.jit.load(path).state_dict()")


def test_the_summary_says_on_how_many_images_the_fp_accuracy_was_measured():
    from qffs.cli.render import summary_lines

    report = {"samples": 10_000, "fp_accuracy": 0.738, "fp_samples": 1_000, "qann_accuracy": 0.5, "timesteps": [1],
              "snn_accuracy": [0.5], "spikes_per_neuron_per_sample": 0.1, "synops_per_sample": 1.0,
              "ann_macs_per_sample": 1.0}
    assert "samples 10,000   FP 73.80% (1,000 test images)" in summary_lines(report)[0]
    assert "FP 73.80%   " in summary_lines({**report, "fp_samples": 10_000})[0]


def test_sys_path_additions_never_shadow_installed_modules():
    import sys

    from qffs.models import _make_siblings_importable

    before = list(sys.path)
    _make_siblings_importable(Path(__file__))
    assert sys.path[: len(before)] == before        # appended, never in front


# --- nothing overwritten: --out-dir against the command's own input, locks for every writer -----
@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """A calibrated QANN and its SNN of the shipped network (no training)."""
    from qffs.io import save_checkpoint
    from qffs.jobs.convert import convert_checkpoint
    from tests.conftest import calibrated_shipped_qann

    folder = tmp_path_factory.mktemp("artifacts")
    save_checkpoint(folder / "qann.pt", calibrated_shipped_qann(128).state_dict(), kind="qann",
                    model="vgg_small(num_classes=10, in_channels=1)", dataset="fashion-mnist", bits=2, output_bits=3)
    convert_checkpoint(folder / "qann.pt", folder / "snn.pt")
    return folder


@pytest.mark.parametrize("command, name", [
    (("run", "{d}/snn.pt", "--out-dir", "{d}", "--epochs", "0"), "snn.pt"),
    (("run", "{d}/curve.json", "--out-dir", "{d}", "--epochs", "0"), "curve.json"),
    (("evaluate", "{d}/curve.png", "--out-dir", "{d}"), "curve.png"),
    (("ablate", "{d}/ablation.json", "--out-dir", "{d}"), "ablation.json"),
])
def test_an_out_dir_never_overwrites_the_commands_own_input(cli, tmp_path, artifacts, command, name):
    import shutil

    source = {"run": SHIPPED_COPY, "evaluate": artifacts / "snn.pt", "ablate": artifacts / "qann.pt"}[command[0]]
    shutil.copy(source, tmp_path / name)
    before = (tmp_path / name).read_bytes()
    _one_line_error(cli(*(a.format(d=tmp_path) for a in command)), "would overwrite", name,
                    "which belongs to the input")
    assert (tmp_path / name).read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [name]


SHIPPED_COPY = Path(__file__).resolve().parents[1] / "models" / "fmnist_vgg_small.pt"


def test_a_stop_in_stage_3_of_run_leaves_no_earlier_curve_beside_the_new_networks(cli, tmp_path, monkeypatch):
    import qffs.jobs.pipeline

    for name in ("curve.csv", "curve.json", "curve.png", "snn.pt"):   # an earlier, complete run
        (tmp_path / name).write_text("an earlier run")

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(qffs.jobs.pipeline, "evaluate_checkpoint", stopped)
    r = cli("run", SHIPPED_COPY, "--out-dir", tmp_path, "--epochs", "0", *SUBSET)
    assert r.returncode == 130 and r.stderr.count("\n") == 1, r.stderr
    assert "interrupted in stage 3 (evaluate)" in r.stderr and f"qffs evaluate {tmp_path / 'snn.pt'}" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qann.pt", "qann.pt.metrics.json", "snn.pt"]
    assert load_checkpoint(tmp_path / "snn.pt").kind == "snn"


@pytest.mark.parametrize("command", ["convert", "export"])
def test_convert_and_export_refuse_an_out_that_another_run_is_writing(cli, tmp_path, artifacts, command):
    from qffs.files import exclusive

    out = tmp_path / ("s.pt" if command == "convert" else "s.onnx")
    source = artifacts / ("qann.pt" if command == "convert" else "snn.pt")
    with exclusive(out, "--out"):
        _one_line_error(cli(command, source, "--out", out), "another qffs run is writing", str(out))
    assert not out.exists()


# --- data: every split checked, every image decoded with an error naming it, the cache trusted -----
def _cifar_zip(tmp_path: Path, entries: dict[str, bytes]) -> Path:
    import zipfile

    path = tmp_path / "cifar10-jpeg.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def _jpeg() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 20, 30)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("entries, fragment", [
    ({"train/cat/0.jpg": b""}, "holds no test/<class>/*.jpg images"),                      # no test split
    ({"test/cat/0.jpg": b"", "test/unicorn/0.jpg": b""}, "test/unicorn/ is not a CIFAR-10 class"),
    ({"test/cat/0.jpg": b"not a jpeg"}, "test/cat/0.jpg is not a readable image"),
    ({"test/cat/0.jpg": b""}, "test/cat/0.jpg is not a readable image"),                     # zero bytes
])
def test_a_broken_cifar_zip_is_one_line_naming_what_is_wrong(tmp_path, monkeypatch, entries, fragment):
    monkeypatch.setenv("QFFS_CACHE_DIR", str(tmp_path / "cache"))
    entries = {k: (_jpeg() if v == b"" and "train" in k else v) for k, v in entries.items()}
    path = _cifar_zip(tmp_path, entries)
    from qffs.data import load_dataset
    from qffs.errors import QffsError

    with pytest.raises(QffsError, match=fragment.replace("*", r"\*").replace("(", r"\(")):
        load_dataset("cifar10-jpeg", "test", root=path)


def test_a_truncated_zip_is_one_line(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("QFFS_CACHE_DIR", str(tmp_path / "cache"))
    path = _cifar_zip(tmp_path, {"test/cat/0.jpg": _jpeg()})
    path.write_bytes(path.read_bytes()[:40])
    _one_line_error(cli("train", "--model", "resnet20", "--dataset", "cifar10-jpeg", "--data-root", path,
                        "--epochs", "1", "--out", tmp_path / "fp.pt"), "cifar10-jpeg.zip")
    assert not (tmp_path / "fp.pt").exists()


def test_a_split_lacking_a_class_keeps_cifars_labels(tmp_path, monkeypatch):
    from qffs.data import load_dataset

    monkeypatch.setenv("QFFS_CACHE_DIR", str(tmp_path / "cache"))
    path = _cifar_zip(tmp_path, {"test/ship/0.jpg": _jpeg(), "test/truck/0.jpg": _jpeg()})
    ds = load_dataset("cifar10-jpeg", "test", root=path)
    assert sorted(ds[i][1] for i in range(2)) == [8, 9]          # not re-indexed to 0, 1


def test_a_planted_or_stale_decode_is_never_used(tmp_path, monkeypatch):
    import numpy as np

    from qffs.data import load_dataset

    cache = tmp_path / "cache"
    monkeypatch.setenv("QFFS_CACHE_DIR", str(cache))
    path = _cifar_zip(tmp_path, {"test/cat/0.jpg": _jpeg()})
    assert load_dataset("cifar10-jpeg", "test", root=path)[0][1] == 3
    (decoded,) = cache.glob("*.npz")
    with decoded.open("wb") as fh:                                     # replaced behind qffs' back
        np.savez(fh, images=np.zeros((1, 3, 32, 32), np.uint8), labels=np.array([7]))
    assert load_dataset("cifar10-jpeg", "test", root=path)[0][1] == 3   # the stamp did not match: decoded anew
    path.unlink()
    path = _cifar_zip(tmp_path, {"test/dog/0.jpg": _jpeg()})           # same path, new content
    assert load_dataset("cifar10-jpeg", "test", root=path)[0][1] == 5


# --- every number checked against the type it lands in; metadata checked when read ---------------
@pytest.mark.parametrize("args, fragment", [
    (("quantize", "{fp}", "--std", "1e-300"), "--std values must lie in [1e-06, 1e+06]"),
    (("quantize", "{fp}", "--mean", "1e308"), "--mean values must lie in [-1e+06, 1e+06]"),
    (("quantize", "{fp}", "--image-size", "1"), "--image-size must be an integer in 8..4096"),
    (("quantize", "{fp}", "--image-size", "100000"), "--image-size must be an integer in 8..4096"),
    (("quantize", "{fp}", "--lr", "1e308"), "learning rate (--lr) must be a finite number in (0, 3.40282e+38]"),
    (("quantize", "{fp}", "--weight-decay", "1e300"), "weight decay must be a finite number in [0, 3.40282e+38]"),
    (("convert", "{qann}", "--input-window", str(10**30)),
     "input_window (--input-window) must be an integer in 1..4096"),
])
def test_numbers_are_checked_against_their_type(cli, tmp_path, artifacts, args, fragment):
    out = tmp_path / ("q.pt" if args[0] == "quantize" else "s.pt")
    args = [a.format(fp=SHIPPED_COPY, qann=artifacts / "qann.pt") for a in args]
    _one_line_error(cli(*args, "--out", out, *(("--epochs", "1") if args[0] == "quantize" else ())), fragment)
    assert not out.exists()


def _tampered(tmp_path: Path, artifacts: Path, **changes) -> Path:
    ckpt = load_checkpoint(artifacts / "qann.pt")
    path = tmp_path / "tampered.pt"
    torch.save({"state_dict": ckpt.state_dict, "qffs": {**ckpt.meta, **changes}}, path)
    return path


@pytest.mark.parametrize("changes, fragment", [
    ({"metrics": "high"}, "its metadata field 'metrics' is a str, not a dict"),
    ({"quant": {"bits": 40}}, "recorded quantization config is invalid (--bits must be an integer from 1 to 8"),
    ({"quant": {"bits": 2, "levels": 3}}, "recorded quantization config is not one qffs writes"),
    ({"quant": "2-bit"}, "its metadata field 'quant' is a str, not a dict"),
    ({"bits": True}, "its metadata field 'bits' is a bool, not a int"),
    ({"input_shape": [100000, 100000, 100000]},
     "recorded input_shape [100000, 100000, 100000] is not a sample's shape"),
    ({"preprocessing": ["mean"]}, "its metadata field 'preprocessing' is a list, not a dict"),
])
def test_tampered_metadata_is_refused_by_name(cli, tmp_path, artifacts, changes, fragment):
    path = _tampered(tmp_path, artifacts, **changes)
    for command in (("info", path), ("convert", path, "--out", tmp_path / "s.pt")):
        _one_line_error(cli(*command), fragment)
    assert not (tmp_path / "s.pt").exists()


@pytest.mark.parametrize("metadata, fragment", [("{not json", "its qffs metadata is not JSON"),
                                                ("[1, 2]", "its qffs metadata is a list, not a mapping")])
def test_tampered_safetensors_metadata_is_refused_by_name(cli, tmp_path, metadata, fragment):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"w": torch.ones(2)}, str(path), metadata={"qffs": metadata})
    _one_line_error(cli("info", path), fragment)


# --- a full disk: one line naming the file, nothing half-written, no empty folder left --------------
@pytest.mark.parametrize("command, failure", [("quantize", "ENOSPC"), ("quantize", "torch writer"),
                                              ("convert", "ENOSPC"), ("evaluate", "ENOSPC"), ("export", "ENOSPC")])
def test_a_full_disk_is_one_line_and_leaves_nothing(cli, tmp_path, artifacts, monkeypatch, command, failure):
    import errno
    import os

    import qffs.files

    real_replace = os.replace

    def full(src, dst):
        if failure == "ENOSPC":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0: PytorchStreamWriter "
                           "failed writing file data/0")

    monkeypatch.setattr(qffs.files.os, "replace", full)
    out = tmp_path / "new" / "folder"
    args = {"quantize": ("quantize", SHIPPED_COPY, "--out", out / "q.pt", "--epochs", "0", *SUBSET),
            "convert": ("convert", artifacts / "qann.pt", "--out", out / "s.pt"),
            "evaluate": ("evaluate", artifacts / "snn.pt", "-T", "2", "--limit", "8", "--out-dir", out),
            "export": ("export", artifacts / "qann.pt", "--out", out / "q.onnx")}[command]
    r = cli(*args)
    monkeypatch.setattr(qffs.files.os, "replace", real_replace)
    _one_line_error(r, "cannot write", "the disk is full" if failure == "ENOSPC" else "is the disk full?")
    assert not (tmp_path / "new").exists()


# --- ImageFolder trees: one class list for every split, every image read with an error naming it ---
def _tree(tmp_path: Path, splits: dict[str, list[str]], bad: dict[str, bytes] | None = None) -> Path:
    from PIL import Image

    root = tmp_path / "tree"
    for split, classes in splits.items():
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(2):
                Image.new("RGB", (16, 16), (30 * i, 80, 160)).save(root / split / c / f"{i}.png")
    for name, data in (bad or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_a_test_split_lacking_a_class_keeps_the_training_labels(tmp_path):
    from qffs.data import load_dataset

    root = _tree(tmp_path, {"train": ["ant", "bee", "cat"], "val": ["bee", "cat"]})
    ds = load_dataset("imagefolder", "test", root=root)
    assert sorted({ds[i][1] for i in range(len(ds))}) == [1, 2]       # bee and cat, not 0 and 1


@pytest.mark.parametrize("splits, bad, fragment", [
    ({"train": ["ant", "bee"], "val": ["ant", "bee", "cow"]}, None, "val/cow/ is not one of the 2 classes"),
    ({"train": ["ant", "bee"], "val": ["ant"]}, {"val/ant/2.png": b""}, "val/ant/2.png is not a readable image"),
    ({"train": ["ant", "bee"], "val": ["ant"]}, {"val/ant/2.jpg": b"just some text"}, "val/ant/2.jpg is not a "
                                                                                      "readable image"),
    ({"train": ["ant", "bee"], "val": ["ant"]}, {"val/ant/2.png": None}, "val/ant/2.png is not a readable image"),
    ({"train": ["ant", "bee"], "val": []}, {"val/ant/readme.txt": b"no images"},
     "holds no images in its class folders"),
])
def test_a_broken_imagefolder_tree_is_one_line_naming_it(tmp_path, splits, bad, fragment):
    if bad and None in bad.values():                      # a truncated PNG
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, format="PNG")
        bad = {k: buf.getvalue()[: len(buf.getvalue()) // 2] for k in bad}
    root = _tree(tmp_path, splits, bad)
    from qffs.data import load_dataset
    from qffs.errors import QffsError

    with pytest.raises(QffsError, match=fragment.replace("(", r"\(")):
        ds = load_dataset("imagefolder", "test", root=root)
        for i in range(len(ds)):
            ds[i]


def test_a_bad_image_in_the_training_tree_stops_training_with_one_line(cli, tmp_path):
    root = _tree(tmp_path, {"train": ["ant", "bee"], "val": ["ant", "bee"]}, {"train/bee/broken.jpg": b""})
    _one_line_error(cli("train", "--model", "vgg_small", "--dataset", "imagefolder", "--data-root", root, "--epochs",
                        "1",
                        "--image-size", "16", "--out", tmp_path / "fp.pt"), "train/bee/broken.jpg is not a readable "
                                                                            "image")
    assert not (tmp_path / "fp.pt").exists()


def test_a_killed_onnxruntime_evaluation_leaves_no_folder_for_good(tmp_path, monkeypatch):
    import contextlib
    import subprocess
    import sys
    import tempfile

    from qffs.export.runtime import export_folder

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = tmp_path / f"qffs-onnx-{dead.stdout.strip()}-abcd"       # what a SIGKILLed run left
    left.mkdir()
    (left / "snn.onnx").write_bytes(b"x")
    alive = tmp_path / "qffs-onnx-1-efgh"                            # pid 1 is alive: not ours to touch
    alive.mkdir()
    with contextlib.ExitStack() as stack:
        folder = export_folder(stack)
        assert folder.is_dir() and folder.name.startswith(f"qffs-onnx-{__import__('os').getpid()}-")
    assert not left.exists() and alive.exists() and not folder.exists()


@pytest.mark.parametrize("args, fragment", [
    (("--input-shape", "3,32,32"), "the network does not take --input-shape 3,32,32"),
    (("--input-shape", "100000,100000,100000"), "is not a sample's shape"),
    (("-T", "4096"), "--timesteps 4096: an unrolled export holds every step"),
])
def test_export_checks_its_shape_and_its_length_before_tracing(cli, tmp_path, artifacts, args, fragment):
    source = artifacts / ("snn.pt" if "-T" in args else "qann.pt")
    _one_line_error(cli("export", source, "--out", tmp_path / "x.onnx", *args), fragment)
    assert not (tmp_path / "x.onnx").exists()


def test_a_lock_folder_made_by_someone_else_is_refused(cli, tmp_path, monkeypatch):
    import os
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    planted = tmp_path / f"qffs-locks-{os.getuid()}"
    planted.mkdir()
    planted.chmod(0o777)                                   # anyone may replace the locks in it
    _one_line_error(cli("convert", "models/fmnist_vgg_small.pt", "--out", tmp_path / "s.pt"),
                    f"the lock folder {planted} belongs to another user or others can write to it")


def test_an_empty_class_folder_is_allowed_and_keeps_the_labels(tmp_path):
    from qffs.data import dataset_info, load_dataset

    root = _tree(tmp_path, {"train": ["ant", "cat"], "val": ["ant", "cat"]})
    (root / "train" / "bee").mkdir()                      # a class with no images yet
    assert dataset_info("imagefolder", root).classes == ("ant", "bee", "cat")
    ds = load_dataset("imagefolder", "train", root=root, augment=False)
    assert sorted({ds[i][1] for i in range(len(ds))}) == [0, 2]


def test_an_image_too_large_to_decode_is_refused_from_its_header(tmp_path, monkeypatch):
    import qffs.data.imagefolder
    from qffs.data import load_dataset
    from qffs.errors import QffsError

    root = _tree(tmp_path, {"train": ["ant"], "val": ["ant"]})
    monkeypatch.setattr(qffs.data.imagefolder, "_MAX_FOLDER_PIXELS", 100)     # the 16x16 images stand in for a bomb
    with pytest.raises(QffsError, match="is 16x16 pixels: too large to decode"):
        load_dataset("imagefolder", "test", root=root)[0]


def test_qat_of_a_network_without_hidden_quantizers_runs(cli, tmp_path):
    code, weights = _model(tmp_path, '''
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(784, 10)

            def forward(self, x):
                return self.fc(x.flatten(1))

        def net():
            return Net()
    ''')
    r = cli("quantize", weights, "--model", f"{code}:net", "--out", tmp_path / "q.pt", "--epochs", "1", *SUBSET)
    assert r.returncode == 0, r.stderr
