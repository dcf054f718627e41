"""The command line as a user calls it: a subprocess of the installed ``qffs`` script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from qffs.io import save_checkpoint
from qffs.models import build_model

QFFS = str(Path(sys.executable).parent / "qffs")
ENV = {**os.environ, "QFFS_PROGRESS": "0", "COLUMNS": "80"}   # CI pipes are 80 wide
REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "fmnist_vgg_small.pt"


def qffs(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The installed console script in a subprocess, exactly as a user runs it."""
    return subprocess.run([QFFS, *map(str, args)], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=600)


@pytest.mark.parametrize("command", ["", "train", "quantize", "convert", "evaluate", "run", "demo", "info", "ablate"])
def test_every_command_has_help_with_an_example(cli, command):
    result = cli(*([command] if command else []), "--help")
    assert result.returncode == 0
    assert "Example" in result.stdout and "qffs " in result.stdout


@pytest.fixture(scope="module")
def fp_checkpoint(tmp_path_factory) -> Path:
    """A small FP checkpoint (random weights) that records its spec and dataset."""
    path = tmp_path_factory.mktemp("ckpt") / "fp.pt"
    torch.manual_seed(0)
    save_checkpoint(path, build_model("vgg_small").state_dict(), kind="fp",
                    model="vgg_small(num_classes=10, in_channels=1)", dataset="fashion-mnist")
    return path


def _one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qffs: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_file_from_the_real_script(tmp_path):
    _one_line_error(qffs("evaluate", tmp_path / "nope.pt"), "checkpoint not found", "nope.pt")


def test_missing_file(cli, tmp_path):
    _one_line_error(cli("quantize", tmp_path / "nope.pt", "--out", tmp_path / "q.pt"), "checkpoint not found")
    _one_line_error(cli("info", tmp_path / "nope.pt"), "checkpoint not found")


def test_wrong_artifact_kind(cli, fp_checkpoint, tmp_path):
    _one_line_error(cli("evaluate", fp_checkpoint), "full-precision checkpoint, not an SNN artifact")
    _one_line_error(cli("convert", fp_checkpoint, "--out", tmp_path / "s.pt"),
                    "not a quantized ANN", "qffs quantize")
    assert not (tmp_path / "s.pt").exists()


def test_bad_timesteps_and_unknown_dataset(cli, fp_checkpoint, tmp_path):
    _one_line_error(cli("run", fp_checkpoint, "--timesteps", "0", "--out-dir", tmp_path), "--timesteps must be an "
                                                                                          "integer in 1..4096")
    _one_line_error(cli("run", fp_checkpoint, "--dataset", "imagenet21k", "--out-dir", tmp_path),
                    "unknown dataset 'imagenet21k'")
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_debug_raises_instead_of_one_line(cli, tmp_path):
    from qffs.errors import QffsError

    with pytest.raises(QffsError, match="checkpoint not found"):
        cli("--debug", "evaluate", tmp_path / "nope.pt")


def test_usage_error_exit_code(cli):
    result = cli("train", "--epochs", "many", "--out", "x.pt")
    assert result.returncode == 2 and "Invalid value" in result.stderr


@pytest.mark.slow
def test_pipeline_end_to_end_on_a_fashion_mnist_subset(tmp_path):
    """quantize → convert → evaluate as three commands; files, exactness at the last step, a valid PNG."""
    assert SHIPPED.is_file(), "the shipped checkpoint models/fmnist_vgg_small.pt is missing"
    qann, snn, out = tmp_path / "qann.pt", tmp_path / "snn.pt", tmp_path / "results"
    r = qffs("quantize", SHIPPED, "--out", qann, "--epochs", "1", "--limit", "1024", "--test-limit", "256")
    assert r.returncode == 0, r.stderr
    r = qffs("convert", qann, "--out", snn)
    assert r.returncode == 0, r.stderr
    assert "output_quantizer" in r.stdout and "θ" in r.stdout
    # --memory: float64 needs ~4.5 MB per sample here, so 256 samples run in chunks of ~44
    r = qffs("evaluate", snn, "--timesteps", "24", "--limit", "256", "--double", "--memory", "200MB", "--out-dir", out)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["curve.csv", "curve.json", "curve.png"]
    report = json.loads((out / "curve.json").read_text())
    assert report["convergence"]["unconverged"] == 0 and report["config"]["memory"] == 200 * 10**6
    assert report["snn_accuracy"][-1] == report["qann_accuracy"]   # converged SNN = QANN
    assert report["qann_agreement"][-1] == 1.0                      # prediction by prediction
    assert all(layer["mismatch_fraction"] == 0 for layer in report["layers"])
    assert len((out / "curve.csv").read_text().splitlines()) == 25
    with Image.open(out / "curve.png") as img:
        img.verify()
    assert "results:" in r.stdout and "latency to lossless" in r.stdout
    # --exit auto: chosen on the QANN's validation split (102 images held out of 1,024), tested once
    r = qffs("evaluate", snn, "--timesteps", "12", "--limit", "256", "--exit", "auto", "--out-dir", tmp_path / "exit")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "exit" / "curve.json").read_text())
    exit_ = report["exit"]
    assert exit_["chosen_on"] == "validation" and exit_["validation"]["samples"] == 102
    assert exit_["test"]["samples"] == 256 and 1 <= exit_["test"]["mean_latency"] <= 12
    assert exit_["test"]["sample_steps"] <= exit_["test"]["sample_steps_fixed"]
    with Image.open(tmp_path / "exit" / "exit.png") as img:
        img.verify()
    assert f"exit {exit_['policy']} on the test set" in r.stdout


def test_cli_reference_in_docs_is_current():
    from qffs.cli.docs import render

    assert (REPO / "docs" / "cli.md").read_text() == render(), "regenerate: python -m qffs.cli.docs > docs/cli.md"


@pytest.mark.parametrize(("args", "fragment"), [
    (("--bits", "64"), "--bits must be an integer from 1 to 8"),
    (("--output-bits", "9"), "--output-bits must be an integer from 1 to 8"),
    (("--lr", "nan"), "learning rate (--lr) must be a finite number"),
    (("--momentum", "1.5"), "momentum must be a finite number in [0, 1)"),
    (("--device", "tpu"), "--device"),
    (("--calibration", "max"), "unknown calibration method 'max'"),
])
def test_quantize_options_are_refused_before_any_data(cli, tmp_path, args, fragment):
    """The data root does not exist: reading data first would fail with another message."""
    result = cli("quantize", SHIPPED, "--out", tmp_path / "q.pt", "--data-root", tmp_path / "none", *args)
    _one_line_error(result, fragment)
    assert list(tmp_path.iterdir()) == []


def test_outputs_never_overwrite_an_input_or_its_sidecar(cli, tmp_path):
    import shutil

    fp = tmp_path / "net.pt"
    shutil.copy(SHIPPED, fp)
    (tmp_path / "net.pt.metrics.json").write_text("{}")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    _one_line_error(cli("quantize", fp, "--out", fp, "--epochs", "0"), "would overwrite", "belongs to the input")
    _one_line_error(cli("quantize", fp, "--out", tmp_path, "--epochs", "0"), "is a directory")
    (tmp_path / "dir.pt").mkdir()
    _one_line_error(cli("quantize", fp, "--out", tmp_path / "dir.pt", "--epochs", "0"), "is a directory")
    (tmp_path / "dir.pt").rmdir()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    # another format beside the input: its own sidecar, the input's untouched
    from qffs.jobs.outputs import metrics_path

    assert metrics_path(tmp_path / "net.safetensors").name == "net.safetensors.metrics.json"
