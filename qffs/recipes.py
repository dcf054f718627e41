"""End-to-end jobs that compose data, models, training and checkpoints (the CLI calls these).

Each job validates its inputs before any long work, shows progress, and writes its outputs
atomically, so an interrupted run leaves nothing half-written.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qffs.errors import QffsError
from qffs.io import load_checkpoint, load_into, save_checkpoint, write_text_atomic
from qffs.models import build_model, with_defaults
from qffs.train import TrainConfig, config_dict, fit, init_distributed, is_main_process, resolve_device


@dataclass(frozen=True)
class DataOptions:
    """Which data, where, and how much: shared by every job."""

    dataset: str = "fashion-mnist"
    root: str | None = None
    limit: int | None = None          # first N training samples (quick runs)
    test_limit: int | None = None     # first N test samples
    batch_size: int = 128
    workers: int = 0
    seed: int = 0


def make_loaders(opts: DataOptions, *, train: bool = True):
    """(train loader or None, test loader) for ``opts``."""
    from qffs.data import load_dataset, make_loader

    test = make_loader(load_dataset(opts.dataset, "test", root=opts.root, limit=opts.test_limit),
                       max(opts.batch_size, 256), shuffle=False, num_workers=opts.workers)
    if not train:
        return None, test
    ds = load_dataset(opts.dataset, "train", root=opts.root, limit=opts.limit, seed=opts.seed)
    return make_loader(ds, opts.batch_size, shuffle=True, seed=opts.seed, num_workers=opts.workers,
                       drop_last=len(ds) > opts.batch_size), test


def metrics_path(checkpoint: str | Path) -> Path:
    """``models/net.pt`` → ``models/net.metrics.json``."""
    p = Path(checkpoint)
    return p.with_name(p.stem + ".metrics.json")


def train_fp(model: str, out: str | Path, data: DataOptions, cfg: TrainConfig, *,
             pretrained: str | None = None, device: str = "auto") -> dict[str, Any]:
    """Train (or fine-tune from ``pretrained``) a full-precision model; keep the best epoch.

    Writes ``out`` (best checkpoint, with spec, dataset, metrics, config) and its
    ``.metrics.json`` beside it after every epoch. Returns the final metrics dict.
    """
    from qffs.data import dataset_info

    cfg.validate()
    out = Path(out)
    if out.suffix not in (".pt", ".pth", ".safetensors"):
        raise QffsError(f"--out must end in .pt, .pth or .safetensors, got {out.name}")
    distributed = init_distributed()
    dev = resolve_device(device)
    torch.manual_seed(data.seed)
    info = dataset_info(data.dataset, data.root)
    spec = with_defaults(model, num_classes=info.num_classes, in_channels=info.in_channels)
    net = build_model(spec)
    if pretrained:
        load_into(net, load_checkpoint(pretrained).state_dict, source=pretrained)
    train_loader, test_loader = make_loaders(data)
    started = time.perf_counter()
    meta = {"dataset": data.dataset, "train_config": config_dict(cfg), "batch_size": data.batch_size,
            "seed": data.seed, "limit": data.limit, "pretrained": pretrained, "distributed": distributed}
    history: list[dict[str, Any]] = []

    def on_epoch(record: dict[str, Any], trained: torch.nn.Module) -> None:
        history.append(record)
        if not is_main_process():
            return
        best = max(history, key=lambda r: r["test_accuracy"])
        metrics = {"test_accuracy": best["test_accuracy"], "best_epoch": best["epoch"],
                   "seconds": round(time.perf_counter() - started, 1)}
        if record.get("best"):
            save_checkpoint(out, trained.state_dict(), kind="fp", model=spec, metrics=metrics, **meta)
        write_text_atomic(metrics_path(out), json.dumps(
            {"model": spec, **meta, "metrics": metrics, "history": history}, indent=2))

    fit(net, train_loader, test_loader, cfg, device=dev, on_epoch=on_epoch)
    best = max(history, key=lambda r: r["test_accuracy"]) if history else {}
    return {"model": spec, "checkpoint": str(out), "test_accuracy": best.get("test_accuracy"),
            "best_epoch": best.get("epoch"), "seconds": round(time.perf_counter() - started, 1)}
