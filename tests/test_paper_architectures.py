"""The paper's CIFAR architectures (VGG-16, ResNet-18) through the whole pipeline on a few images.

Train one short epoch on 128 CIFAR-10 (JPEG) images, then quantize, convert and simulate to
T = 32 in float64: the SNN must settle on exactly the QANN's levels and predictions. Full-scale
commands are in docs/results.md.
"""

from __future__ import annotations

import json

import pytest

from tests.test_cli import qffs

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("model", ["vgg16", "resnet18"])
def test_paper_architecture_runs_the_pipeline_exactly(model, tmp_path):
    small = ("--limit", "128", "--test-limit", "16", "--batch-size", "64")
    r = qffs("train", "--model", model, "--dataset", "cifar10-jpeg", "--epochs", "1", *small, "--out",
             tmp_path / "fp.pt")
    assert r.returncode == 0, r.stderr
    r = qffs("run", tmp_path / "fp.pt", "--epochs", "1", *small, "-T", "32", "--double", "--out-dir", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "run" / "curve.json").read_text())
    assert report["samples"] == 16 and report["dataset"] == "cifar10-jpeg" and model in report["model"]
    assert report["convergence"]["unconverged"] == 0
    assert report["qann_agreement"][-1] == 1.0 and report["snn_accuracy"][-1] == report["qann_accuracy"]
    assert all(layer["mismatch_fraction"] == 0 for layer in report["layers"])
    assert len(report["layers"]) >= (13 if model == "vgg16" else 17)   # every IF layer reported
