"""The training loop shared by full-precision training and quantization-aware training.

Plain supervised classification (torchvision's reference recipe, trimmed): SGD with momentum
and weight decay, cosine or exponential learning-rate decay, per-epoch evaluation, the best
epoch kept. Works on CPU, one GPU, or under ``torchrun`` (DistributedDataParallel; rank 0 writes).
"""

from __future__ import annotations

import copy
import math
import numbers
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from qffs import settings
from qffs.distributed import active, all_reduce_sum, broadcast_module, is_main_process
from qffs.metrics import predict
from qffs.progress import track
from qffs.resume import TrainState, rng_state, set_rng_state


def _check_interval(name: str, value: float, low: float, high: float, *, low_open: bool = False,
                    high_open: bool = False) -> None:
    """A finite number in [low, high] (ends open where said), or a one-line QffsError."""
    from qffs.errors import QffsError

    real = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    inside = real and (low < value if low_open else low <= value) and (value < high if high_open else value <= high)
    if not inside:
        span = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise QffsError(f"{name} must be a finite number in {span}, got {value}")


#: The largest float32: options that scale float32 tensors must not exceed it.
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


@dataclass
class TrainConfig:
    """Optimiser and schedule. Defaults: the paper's QAT recipe (SGD 0.01, momentum 0.9, wd 5e-4)."""

    epochs: int = 10
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"          # "cosine" | "exp" | "constant"
    gamma: float = 0.9                # per-epoch factor for "exp"
    label_smoothing: float = 0.0
    distill: float = 0.0              # weight of the teacher's soft targets in the loss (0: plain cross-entropy)
    temperature: float = 1.0          # softmax temperature of the distillation term
    freeze_bn: bool = False           # BatchNorm uses (and keeps) its running statistics while training
    no_decay_names: tuple[str, ...] = field(default_factory=tuple)  # parameter-name suffixes without weight decay

    def validate(self) -> None:
        from qffs.errors import QffsError

        if isinstance(self.epochs, bool) or not isinstance(self.epochs, numbers.Integral) or self.epochs < 0:
            raise QffsError(f"epochs must be an integer >= 0, got {self.epochs!r}")
        # the optimiser multiplies float32 parameters and gradients by these: they must be float32 numbers
        _check_interval("learning rate (--lr)", self.lr, 0.0, FLOAT32_MAX, low_open=True)
        _check_interval("momentum", self.momentum, 0.0, 1.0, high_open=True)
        _check_interval("weight decay", self.weight_decay, 0.0, FLOAT32_MAX)
        _check_interval("gamma", self.gamma, 0.0, 1.0, low_open=True)
        _check_interval("label smoothing", self.label_smoothing, 0.0, 1.0, high_open=True)
        if self.schedule not in ("cosine", "exp", "constant"):
            raise QffsError(f"unknown schedule {self.schedule!r}; use cosine, exp or constant")
        if not 0.0 <= self.distill <= 1.0:
            raise QffsError(f"distillation weight must be in [0, 1], got {self.distill}")
        _check_interval("distillation temperature", self.temperature, 0.0, FLOAT32_MAX, low_open=True)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """"auto" → the local CUDA device when present (LOCAL_RANK under torchrun), else CPU; a device
    this machine does not have is a one-line error, not a failure halfway through."""
    from qffs.errors import QffsError

    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", settings.torchrun_local_rank() or 0)
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise QffsError(f"--device {device!r} is not a device: use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (dev.index is not None and dev.index >= count):
            raise QffsError(f"--device {device}: this machine has {count} CUDA device(s); use --device cpu or auto")
        if dev.index is None and (local := settings.torchrun_local_rank()) is not None:   # torchrun: each its own GPU
            dev = torch.device("cuda", local)
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise QffsError(f"--device {device}: MPS is not available on this machine; use --device cpu or auto")
    elif dev.type not in ("cpu", "mps"):
        raise QffsError(f"--device {device!r}: qffs runs on cpu or cuda")
    return dev


def _all_reduce(values: list[float]) -> list[float]:
    """Sums over the ranks of a torchrun job (the values themselves alone): exact counts."""
    return all_reduce_sum(values).tolist()


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device | str = "cpu",
             description: str = "eval") -> dict[str, float]:
    """Top-1 accuracy (ties to the lowest class), mean loss and tied-prediction rate."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    correct = loss_sum = ties = count = 0.0
    for x, y in track(loader, description):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        out = model(x)
        pred, tied = predict(out)
        correct += (pred == y).sum().item()
        ties += tied.sum().item()
        loss_sum += nn.functional.cross_entropy(out.float(), y, reduction="sum").item()
        count += y.numel()
    correct, loss_sum, ties, count = _all_reduce([correct, loss_sum, ties, count])
    model.train(was_training)
    count = max(count, 1.0)
    return {"accuracy": correct / count, "loss": loss_sum / count, "tied": ties / count, "samples": int(count)}


def freeze_batchnorm(model: nn.Module) -> None:
    """Put every BatchNorm in eval mode: it normalises with its running statistics and stops updating them.

    In QAT this makes training see the normalisation that evaluation (and the SNN, where BN is
    folded into the weights) will use, so quantizer steps are learned against the final
    pre-activations; the affine parameters still train.
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Hinton's soft-target term: τ²·KL(softmax(teacher/τ) ‖ softmax(student/τ)), batch mean."""
    log_p = nn.functional.log_softmax(student.float() / temperature, dim=-1)
    log_q = nn.functional.log_softmax(teacher.float() / temperature, dim=-1)
    return nn.functional.kl_div(log_p, log_q, log_target=True, reduction="batchmean") * temperature**2


def _param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if name.endswith(cfg.no_decay_names) and cfg.no_decay_names else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def _lr_factor(cfg: TrainConfig, progress: float, epoch: int) -> float:
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if cfg.schedule == "exp":
        return cfg.gamma**epoch
    return 1.0


def fit(model: nn.Module, train_loader, val_loader, cfg: TrainConfig, *,
        device: torch.device | str = "cpu", teacher: nn.Module | None = None,
        on_epoch: Callable[[dict[str, Any], nn.Module], None] | None = None,
        log: Callable[[str], None] = print,
        baseline: float = -1.0, start: TrainState | None = None,
        on_state: Callable[[TrainState], None] | None = None,
        on_epoch_start: Callable[[int], None] | None = None, keep_from: int = 0) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    """Train ``model`` in place; return (per-epoch history, best state dict by validation accuracy).

    After every epoch the model is evaluated on ``val_loader`` (the held-out part of the training
    split, :mod:`qffs.split`; never the test set unless the caller chose so and says so). An epoch
    is "best" (``record["best"]``) only if its validation accuracy beats ``baseline`` and every
    earlier epoch: QAT passes the calibrated QANN's, so an epoch worse than the starting point is
    never kept. If none beats it, the returned state is the starting one. The test set is the
    caller's, evaluated once on the returned state. Epochs before the 0-based ``keep_from`` are
    never kept, and ``on_epoch_start(epoch)`` runs before each epoch (also the first one resumed):
    a bit schedule (:mod:`qffs.quant.schedule`) changes widths there and keeps only final-width epochs.

    ``on_epoch(record, model)`` is called on every rank after each evaluation (rank 0 decides
    what to write). The cosine schedule decays per iteration to zero at the last step.
    With ``teacher`` and ``cfg.distill = w > 0`` the loss is
    ``(1 − w)·CE(model(x), y) + w·distillation_loss(model(x), teacher(x))``, the teacher in eval mode.

    Resume (:mod:`qffs.resume`): after every epoch ``on_state`` receives the full training state
    (on rank 0); ``start`` continues from such a state with the next epoch, restoring weights,
    momentum, schedule position, random generators and the data order, so the result equals
    that of an uninterrupted run.
    """
    cfg.validate()
    if cfg.distill > 0 and teacher is None:
        from qffs.errors import QffsError

        raise QffsError("cfg.distill > 0 needs a teacher model")
    if teacher is not None:
        teacher = teacher.to(device).eval()
    device = torch.device(device)
    model.to(device)
    net: nn.Module = model
    if active():
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.SGD(_param_groups(model, cfg), lr=cfg.lr, momentum=cfg.momentum)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    steps_per_epoch = max(len(train_loader), 1)
    total_steps = max(cfg.epochs * steps_per_epoch, 1)
    history: list[dict[str, Any]] = []
    best_acc, best_state = baseline, copy.deepcopy(model.state_dict())
    step = first = 0
    shuffle_rng = getattr(train_loader, "generator", None)   # the data order (DistributedSampler: by epoch)
    if start is not None:
        model.load_state_dict(start.model)
        optimizer.load_state_dict(start.optimizer)
        history, best_acc, best_state = list(start.history), start.best_accuracy, start.best_state
        step, first = start.step, start.epoch
        set_rng_state(start.rng)
        if shuffle_rng is not None and start.loader_rng is not None:
            shuffle_rng.set_state(start.loader_rng)
    for epoch in range(first, cfg.epochs):
        if hasattr(getattr(train_loader, "sampler", None), "set_epoch"):
            train_loader.sampler.set_epoch(epoch)
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        net.train()
        if cfg.freeze_bn:
            freeze_batchnorm(model)
        began = time.perf_counter()
        loss_sum = seen = correct = 0.0
        for x, y in track(train_loader, f"epoch {epoch + 1}/{cfg.epochs}"):
            lr = cfg.lr * _lr_factor(cfg, step / total_steps, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            out = net(x)
            loss = criterion(out, y)
            if cfg.distill > 0:
                with torch.no_grad():
                    soft = teacher(x)
                loss = (1 - cfg.distill) * loss + cfg.distill * distillation_loss(out, soft, cfg.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            value = loss.item()
            if not math.isfinite(value):   # nothing of this epoch is kept: the last good checkpoint stays
                from qffs.errors import QffsError

                raise QffsError(f"training diverged: the loss is {value} at epoch {epoch + 1}, step {step} — "
                                "lower the learning rate (--lr)")
            loss_sum += value * y.numel()
            correct += (out.argmax(-1) == y).sum().item()
            seen += y.numel()
        train_time = time.perf_counter() - began
        broadcast_module(model, buffers_only=True)   # torchrun: rank 0's BatchNorm statistics on every rank
        loss_sum, correct, seen = _all_reduce([loss_sum, correct, seen])
        val = evaluate(model, val_loader, device, description="validation")
        record = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
                  "val_accuracy": val["accuracy"], "val_loss": val["loss"], "val_tied": val["tied"],
                  "val_samples": val["samples"],
                  "lr": lr, "epoch_seconds": round(train_time, 2)}
        history.append(record)
        if epoch >= keep_from and val["accuracy"] > best_acc:
            best_acc, best_state = val["accuracy"], copy.deepcopy(model.state_dict())
            record["best"] = True
        if is_main_process():
            log(f"epoch {epoch + 1}/{cfg.epochs}: loss {record['train_loss']:.4f}  "
                f"train {100 * record['train_accuracy']:.2f}%  validation {100 * val['accuracy']:.2f}%  "
                f"({train_time:.0f}s)" + ("  *best" if record.get("best") else ""))
        if on_epoch is not None:
            on_epoch(record, model)
        if on_state is not None and is_main_process():
            on_state(TrainState(epoch=epoch + 1, step=step, model=model.state_dict(),
                                optimizer=optimizer.state_dict(), history=history, best_accuracy=best_acc,
                                best_state=best_state, rng=rng_state(),
                                loader_rng=None if shuffle_rng is None else shuffle_rng.get_state()))
    return history, best_state


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    return asdict(cfg)
