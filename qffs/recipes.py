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


def _calibration_batches(loader, count: int) -> list[torch.Tensor]:
    batches = []
    for x, _ in loader:
        batches.append(x)
        if len(batches) >= count:
            break
    return batches


def load_qann(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a quantized ANN from its checkpoint alone: (GraphModule in eval mode, metadata).

    The QANN is re-derived from the recorded model spec and bit widths by ``qffs.quantize``
    (deterministic names), then its state dict — weights, BN statistics, step sizes — is loaded.
    """
    from qffs.quant import quantize

    ckpt = load_checkpoint(path)
    if ckpt.kind != "qann":
        hint = " (run qffs quantize on it first)" if ckpt.kind in ("fp", "foreign") else ""
        raise QffsError(f"{path} is a {ckpt.kind} checkpoint, not a quantized ANN{hint}")
    meta = ckpt.meta
    qann = quantize(build_model(meta["model"]), bits=int(meta["bits"]),
                    output_bits=None if meta.get("output_bits") is None else int(meta["output_bits"]))
    load_into(qann, ckpt.state_dict, source=str(path))
    return qann.eval(), meta


def quantize_checkpoint(checkpoint: str | Path, out: str | Path, data: DataOptions, cfg: TrainConfig, *,
                        bits: int = 2, output_bits: int | None = 3, calibration: str = "mse",
                        calibration_batches: int = 4, model: str | None = None,
                        device: str = "auto") -> dict[str, Any]:
    """QFFS stage 1: fine-tune a pretrained checkpoint into a ``bits``/``output_bits`` QANN.

    Steps: load the FP model, measure its accuracy; ``quantize`` it (every ReLU → LSQ
    quantizer, logits → output quantizer); initialise step sizes on a few training batches;
    QAT for ``cfg.epochs`` (step sizes without weight decay unless ``cfg.no_decay_names`` is
    emptied); keep the best epoch. Writes ``out`` (kind "qann": spec, bits, step sizes, state
    dict, metrics, provenance) and ``.metrics.json`` beside it.
    """
    from qffs.io import load_model
    from qffs.quant import calibrate, quantize, quantizers
    from qffs.train import evaluate

    cfg.validate()
    out = Path(out)
    if out.suffix not in (".pt", ".pth", ".safetensors"):
        raise QffsError(f"--out must end in .pt, .pth or .safetensors, got {out.name}")
    if bits < 1 or (output_bits is not None and output_bits < 1):
        raise QffsError(f"bit widths must be >= 1 (got bits={bits}, output_bits={output_bits})")
    init_distributed()
    dev = resolve_device(device)
    torch.manual_seed(data.seed)
    fp_model, fp_ckpt = load_model(checkpoint, spec=model)
    spec = str(fp_ckpt.meta.get("model") or model)
    started = time.perf_counter()
    train_loader, test_loader = make_loaders(data)
    fp = evaluate(fp_model.to(dev), test_loader, dev, description="FP accuracy")
    qann = quantize(fp_model, bits=bits, output_bits=output_bits).to(dev)
    calibrate(qann, [b.to(dev) for b in _calibration_batches(train_loader, calibration_batches)], method=calibration)
    ptq = evaluate(qann, test_loader, dev, description="QANN after calibration")
    meta = {"dataset": data.dataset, "bits": bits, "output_bits": output_bits, "calibration": calibration,
            "source_checkpoint": str(checkpoint), "train_config": config_dict(cfg),
            "batch_size": data.batch_size, "seed": data.seed, "limit": data.limit}
    history: list[dict[str, Any]] = []

    def summary() -> dict[str, Any]:
        best = max(history, key=lambda r: r["test_accuracy"]) if history else {"test_accuracy": ptq["accuracy"], "epoch": 0}
        return {"fp_accuracy": fp["accuracy"], "calibrated_accuracy": ptq["accuracy"],
                "qann_accuracy": best["test_accuracy"], "best_epoch": best["epoch"],
                "seconds": round(time.perf_counter() - started, 1)}

    def write(trained: torch.nn.Module, save: bool) -> None:
        if not is_main_process():
            return
        metrics = summary()
        steps = {name: float(q.step_size()) for name, q in quantizers(trained)}
        if save:
            save_checkpoint(out, trained.state_dict(), kind="qann", model=spec, metrics=metrics,
                            step_sizes=steps, **meta)
        write_text_atomic(metrics_path(out), json.dumps(
            {"model": spec, **meta, "metrics": metrics, "step_sizes": steps, "history": history}, indent=2))

    def on_epoch(record: dict[str, Any], trained: torch.nn.Module) -> None:
        history.append(record)
        write(trained, save=bool(record.get("best")))

    if cfg.epochs == 0:
        write(qann, save=True)
    else:
        fit(qann, train_loader, test_loader, cfg, device=dev, on_epoch=on_epoch)
    return {"model": spec, "checkpoint": str(out), **summary()}
