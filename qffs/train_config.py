"""What a training run is: its options (:class:`TrainConfig`), the optimiser's parameter groups
and the learning-rate schedule, as :func:`qffs.train.fit` uses them."""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from qffs.errors import QffsError


def _check_interval(name: str, value: float, low: float, high: float, *, low_open: bool = False,
                    high_open: bool = False) -> None:
    """A finite number in [low, high] (ends open where said), or a one-line QffsError."""
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


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """The optimiser's parameter groups: weight decay on every trainable parameter but those whose
    names end in ``cfg.no_decay_names``."""
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
    """The schedule's multiple of ``cfg.lr`` at ``progress`` (steps done / all steps) in ``epoch`` (0-based)."""
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if cfg.schedule == "exp":
        return cfg.gamma**epoch
    return 1.0


def lr_schedule(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int, step: int = 0) -> LambdaLR:
    """``cfg``'s learning rate as a scheduler stepped after every batch: at optimizer step ``s``
    (0-based) ``cfg.lr · _lr_factor(cfg, s / total steps, epoch s // steps_per_epoch)``. ``step``:
    the steps already taken (a resumed run; the groups then need their ``initial_lr``)."""
    total_steps = max(cfg.epochs * steps_per_epoch, 1)

    def factor(s: int) -> float:
        return _lr_factor(cfg, s / total_steps, s // steps_per_epoch)

    return LambdaLR(optimizer, factor, last_epoch=step - 1)


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    return asdict(cfg)


__all__ = ["FLOAT32_MAX", "TrainConfig", "config_dict", "lr_schedule", "param_groups"]
