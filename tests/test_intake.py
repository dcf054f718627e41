"""Bring your own network, through the command line: foreign checkpoints, their preprocessing,
refusal before any data is read, and ImageFolder data end to end."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qffs.io import load_checkpoint
from tests.test_cli import SHIPPED, _one_line_error, qffs

SUBSET = ("--limit", "128", "--test-limit", "128", "--batch-size", "64")


def _shipped_weights() -> dict[str, torch.Tensor]:
    return load_checkpoint(SHIPPED).state_dict


def _fp_accuracy(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout.split("FP ")[1].split()[0]


@pytest.fixture(scope="module")
def reference_accuracy(tmp_path_factory) -> str:
    """The shipped checkpoint's FP accuracy on the subset, loaded from qffs' own format."""
    from qffs.cli.main import main

    out = tmp_path_factory.mktemp("ref") / "q.pt"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["quantize", str(SHIPPED), "--out", str(out), "--epochs", "0", *SUBSET]) == 0
    return buffer.getvalue().split("FP ")[1].split()[0]


def _no_num_batches_tracked(sd):
    return {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}


def _save_cuda_tagged(obj, path):
    original = torch.serialization.location_tag
    torch.serialization.location_tag = lambda storage: "cuda:0"
    try:
        torch.save(obj, path)
    finally:
        torch.serialization.location_tag = original


FORMS = {
    "no-num-batches-tracked": lambda sd, p: torch.save(_no_num_batches_tracked(sd), p),
    "cuda-storages": lambda sd, p: _save_cuda_tagged({"state_dict": sd, "epoch": 3}, p),
    "orig-mod-prefix": lambda sd, p: torch.save({f"_orig_mod.{k}": v for k, v in sd.items()}, p),
    "module-prefix": lambda sd, p: torch.save({"net": {f"module.{k}": v for k, v in sd.items()}, "acc": 93.4}, p),
    "nested-with-extras": lambda sd, p: torch.save(
        {"model_state_dict": sd, "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 0.1}]},
         "epoch": 15, "best_acc": np.float64(0.934), "args": argparse.Namespace(arch="vgg_small")}, p),
    "all-at-once": lambda sd, p: _save_cuda_tagged(
        {"ema": {f"module._orig_mod.{k}": v for k, v in _no_num_batches_tracked(sd).items()}, "epoch": 1}, p),
}


@pytest.mark.parametrize("form", list(FORMS))
def test_foreign_checkpoint_forms_through_qffs_quantize(cli, tmp_path, form, reference_accuracy):
    """Each form loads first time, and the FP accuracy is exactly that of the original weights."""
    path = tmp_path / "downloaded.pth"
    FORMS[form](_shipped_weights(), path)
    result = cli("quantize", path, "--model", "vgg_small", "--out", tmp_path / "q.pt", "--epochs", "0", *SUBSET)
    assert result.returncode == 0, result.stderr
    assert _fp_accuracy(result) == reference_accuracy
    assert load_checkpoint(tmp_path / "q.pt").kind == "qann"


def test_wrong_number_of_classes_is_named_before_any_data(cli, tmp_path):
    sd = dict(_shipped_weights())
    head = [k for k in sd if k.startswith("classifier") and k.endswith("weight")][-1]
    sd[head], sd[head.replace("weight", "bias")] = torch.zeros(100, sd[head].shape[1]), torch.zeros(100)
    torch.save(sd, tmp_path / "c100.pt")
    result = cli("quantize", tmp_path / "c100.pt", "--model", "vgg_small", "--out", tmp_path / "q.pt",
                 "--data-root", tmp_path / "no-data-here")
    _one_line_error(result, "only the classifier head", "predicts 100 classes, the model 10",
                    "--model 'vgg_small(num_classes=100, in_channels=1, image_size=28)'")
    assert not (tmp_path / "q.pt").exists()


UNCONVERTIBLE = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 26 * 26, 10)

    def forward(self, x):
        x = self.conv(x).abs()          # not a ReLU: no spiking equivalent
        return self.fc(x.flatten(1))
'''


def test_unconvertible_model_refused_by_quantize_before_data_in_under_15_s(tmp_path):
    """The real script: one line naming node and op, exit 2, nothing written — before any data.

    The data root does not exist, so reading data first would fail differently.
    """
    model_file = tmp_path / "net.py"
    model_file.write_text(UNCONVERTIBLE)
    spec = importlib.util.spec_from_file_location("unconvertible_net", model_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.save(module.Net().state_dict(), tmp_path / "net.pt")

    started = time.perf_counter()
    result = qffs("quantize", tmp_path / "net.pt", "--model", f"{model_file}:Net", "--out", tmp_path / "q.pt",
                  "--dataset", "fashion-mnist", "--data-root", tmp_path / "no-data-here", "--epochs", "3")
    seconds = time.perf_counter() - started
    _one_line_error(result, "cannot quantize node 'abs", "(Tensor.abs())", "no spiking equivalent")
    assert seconds < 15, f"refusal took {seconds:.1f} s"
    assert not (tmp_path / "q.pt").exists()


def test_preprocessing_is_recorded_and_reused_by_evaluate(cli, tmp_path):
    """--mean/--std given once to quantize; evaluate reproduces its QANN accuracy without them."""
    q, s = tmp_path / "q.pt", tmp_path / "s.pt"
    result = cli("quantize", SHIPPED, "--out", q, "--epochs", "0", "--mean", "0.5", "--std", "0.25", *SUBSET)
    assert result.returncode == 0, result.stderr
    printed_qann = result.stdout.split("QANN ")[1].split("%")[0]
    recorded = load_checkpoint(q).meta
    assert recorded["preprocessing"] == {"mean": [0.5], "std": [0.25], "image_size": 28}
    assert recorded["input_shape"] == [1, 28, 28]
    assert cli("convert", q, "--out", s).returncode == 0
    assert load_checkpoint(s).meta["preprocessing"] == recorded["preprocessing"]

    assert cli("evaluate", s, "-T", "4", "--limit", "128", "--out-dir", tmp_path / "ev").returncode == 0
    report = json.loads((tmp_path / "ev" / "curve.json").read_text())
    assert report["config"]["preprocessing"] == recorded["preprocessing"]
    assert f"{100 * report['qann_accuracy']:.2f}" == printed_qann

    # the recorded values are what made the difference: the dataset's usual ones give another accuracy
    assert cli("evaluate", s, "-T", "4", "--limit", "128", "--mean", "0.286", "--std", "0.353",
               "--out-dir", tmp_path / "ev2").returncode == 0
    other = json.loads((tmp_path / "ev2" / "curve.json").read_text())
    assert other["qann_accuracy"] != report["qann_accuracy"]


@pytest.mark.parametrize(("args", "fragment"), [
    (("--mean", "0.5,0.5,0.5"), "--mean has 3 value(s) but the data has 1 channel(s)"),
    (("--std", "0.3,zero"), "--std expects comma-separated numbers"),
    (("--std", "0"), "--std values must be finite and > 0"),
    (("--image-size", "32"), "applies to --dataset imagefolder"),
])
def test_bad_preprocessing_options_are_one_line_errors(cli, tmp_path, args, fragment):
    _one_line_error(cli("quantize", SHIPPED, "--out", tmp_path / "q.pt", *args), fragment)
    assert not (tmp_path / "q.pt").exists()


def _tiny_tree(root: Path, size: int = 32) -> Path:
    """Two classes told apart by brightness, train/ and val/, size×size RGB PNGs."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("val", 8)):
        for label, base in (("dark", 40), ("light", 200)):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(base + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


def test_imagefolder_32px_tree_through_train_run_convert_evaluate(cli, tmp_path, monkeypatch):
    """Dataset, data root (relative when given) and preprocessing are given once, to train."""
    monkeypatch.chdir(tmp_path)
    tree = _tiny_tree(tmp_path / "tree")
    fp = tmp_path / "fp.pt"
    r = cli("train", "--model", "vgg_small", "--dataset", "imagefolder", "--data-root", "tree", "--epochs", "1",
            "--batch-size", "16", "--out", fp)
    assert r.returncode == 0, r.stderr
    meta = load_checkpoint(fp).meta
    assert meta["model"] == "vgg_small(num_classes=2, in_channels=3, image_size=32)"
    assert meta["preprocessing"]["image_size"] == 32 and meta["data_root"] == str(tree.resolve())

    run = tmp_path / "run"
    monkeypatch.chdir(tree / "train")          # the recorded root is absolute: any directory works
    r = cli("run", fp, "--epochs", "1", "--batch-size", "16", "-T", "8", "--out-dir", run)
    assert r.returncode == 0, r.stderr
    report = json.loads((run / "curve.json").read_text())
    assert report["dataset"] == "imagefolder" and report["samples"] == 16
    assert report["config"]["preprocessing"]["image_size"] == 32

    # later stages need neither the data root nor the preprocessing again
    r = cli("convert", run / "qann.pt", "--out", tmp_path / "snn.pt")
    assert r.returncode == 0, r.stderr
    assert "output_quantizer" in r.stdout
    r = cli("evaluate", tmp_path / "snn.pt", "-T", "8", "--out-dir", tmp_path / "ev")
    assert r.returncode == 0, r.stderr
    again = json.loads((tmp_path / "ev" / "curve.json").read_text())
    assert again["qann_accuracy"] == report["qann_accuracy"]
    assert again["snn_accuracy"] == report["snn_accuracy"]


def test_a_model_other_than_the_recorded_one_says_which_is_recorded(cli, tmp_path):
    result = cli("quantize", SHIPPED, "--model", "resnet20", "--out", tmp_path / "q.pt")
    _one_line_error(result, "does not match the model: missing keys: conv1.weight",
                    "records its model as 'vgg_small(num_classes=10, in_channels=1)': leave out --model")


def test_options_are_checked_before_data_and_the_recorded_dataset_is_the_default(cli, tmp_path):
    # an unknown calibration method is refused before any data is read (the data root does not exist)
    _one_line_error(cli("quantize", SHIPPED, "--out", tmp_path / "q.pt", "--calibration", "foo",
                        "--data-root", tmp_path / "none"), "unknown calibration method 'foo'")
    _one_line_error(cli("train", "--dataset", "imagefolder", "--out", tmp_path / "f.pt"),
                    "imagefolder needs --data-root DIR")
