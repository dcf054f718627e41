"""Shared fixtures: repo paths and determinism."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHIPPED_FMNIST = REPO / "models" / "fmnist_vgg_small.pt"

os.environ.setdefault("QFFS_PROGRESS", "0")


def calibrated_shipped_qann(train_images: int) -> torch.nn.Module:
    """The shipped network's 2/3-bit QANN, step sizes calibrated on the first ``train_images``
    Fashion-MNIST training images (batches of 128), in eval mode."""
    from qffs.data import load_dataset, make_loader
    from qffs.io import load_model
    from qffs.quant import calibrate, quantize

    fp, _ = load_model(SHIPPED_FMNIST)
    qann = quantize(fp.eval(), bits=2, output_bits=3)
    calibrate(qann, [x for x, _ in make_loader(load_dataset("fashion-mnist", "train", limit=train_images,
                                                                augment=False), 128)])
    return qann.eval()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """Small graphs run several times faster on one thread (no thread-pool overhead; on a shared
    2-core machine two threads were up to 10x slower per step). Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cli(capsys):
    """The ``qffs`` entry point in-process (fast): returns (exit code, stdout, stderr) as a CompletedProcess."""
    from qffs.cli.main import main

    def call(*args: str) -> subprocess.CompletedProcess:
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out.out, out.err)

    return call
