"""Shared fixtures: repo paths and determinism."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHIPPED_FMNIST = REPO / "models" / "fmnist_vgg_small.pt"

os.environ.setdefault("QFFS_PROGRESS", "0")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
