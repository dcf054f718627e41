"""The training loop shared by full-precision training and quantization-aware training.

Plain supervised classification (torchvision's reference recipe, trimmed): SGD with momentum
and weight decay, cosine or exponential learning-rate decay (a ``LambdaLR`` stepped once per
batch), per-epoch evaluation, the best epoch kept. Works on CPU, one GPU, or under ``torchrun``
(DistributedDataParallel; rank 0 writes; sums over ranks by :func:`qffs.measures.reduce_measures`).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from qffs import settings
from qffs.distributed import active, broadcast_module, is_main_process
from qffs.errors import QffsError
from qffs.measures import Classification, TrainingSums, reduce_measures
from qffs.progress import track
from qffs.resume import TrainState, rng_state, set_rng_state
from qffs.train_config import FLOAT32_MAX, TrainConfig, config_dict, lr_schedule, param_groups


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """"auto" → the local CUDA device when present (LOCAL_RANK under torchrun), else CPU; a device
    this machine does not have is a one-line error, not a failure halfway through."""
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


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device | str = "cpu",
             description: str = "eval") -> dict[str, float]:
    """Top-1 accuracy (ties to the lowest class), mean loss and tied-prediction rate."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    measure = Classification()
    for x, y in track(loader, description):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        measure.update(model(x), y)
    reduce_measures(measure)
    model.train(was_training)
    return measure.compute()


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


#: A training loss: (model output, labels) → scalar.
Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class _Run:
    """What the epochs of one :func:`fit` share, and what its resume state is made of."""

    model: nn.Module
    net: nn.Module                       # the model, or its DistributedDataParallel wrapper under torchrun
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    history: list[dict[str, Any]]
    best_accuracy: float
    best_state: dict[str, torch.Tensor]
    shuffle_rng: torch.Generator | None  # the data order (DistributedSampler: by epoch)
    first_epoch: int = 0

    def state(self, epochs_done: int) -> TrainState:
        """The resume state after ``epochs_done`` epochs."""
        return TrainState(epoch=epochs_done, step=self.scheduler.last_epoch, model=self.model.state_dict(),
                          optimizer=self.optimizer.state_dict(), history=self.history,
                          best_accuracy=self.best_accuracy, best_state=self.best_state, rng=rng_state(),
                          loader_rng=None if self.shuffle_rng is None else self.shuffle_rng.get_state(),
                          scheduler=self.scheduler.state_dict())


def _start(model: nn.Module, train_loader, cfg: TrainConfig, device: torch.device, baseline: float,
           start: TrainState | None) -> _Run:
    """The model on ``device`` (wrapped in DDP under torchrun), its optimizer and schedule: new, or
    as ``start`` left them (weights, momentum, schedule position, random generators, data order)."""
    model.to(device)
    net: nn.Module = model
    if active():
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.SGD(param_groups(model, cfg), lr=cfg.lr, momentum=cfg.momentum)
    steps_per_epoch = max(len(train_loader), 1)
    shuffle_rng = getattr(train_loader, "generator", None)
    if start is None:
        return _Run(model, net, optimizer, lr_schedule(optimizer, cfg, steps_per_epoch), [], baseline,
                    copy.deepcopy(model.state_dict()), shuffle_rng)
    model.load_state_dict(start.model)
    optimizer.load_state_dict(start.optimizer)
    for group in optimizer.param_groups:   # a state saved before the schedule was a LambdaLR has none
        group.setdefault("initial_lr", cfg.lr)
    scheduler = lr_schedule(optimizer, cfg, steps_per_epoch, step=start.step)
    if start.scheduler is not None:
        scheduler.load_state_dict(start.scheduler)
    set_rng_state(start.rng)
    if shuffle_rng is not None and start.loader_rng is not None:
        shuffle_rng.set_state(start.loader_rng)
    return _Run(model, net, optimizer, scheduler, list(start.history), start.best_accuracy, start.best_state,
                shuffle_rng, start.epoch)


def final_logits(out: torch.Tensor) -> torch.Tensor:
    """A model's logits for accuracy and distillation: ``out`` [B, C], or per step [B, C, T] (a
    spiking network in training, :mod:`qffs.finetune`): its last step."""
    return out if out.dim() == 2 else out[..., -1]


def _train_epoch(run: _Run, loader, cfg: TrainConfig, epoch: int, device: torch.device,
                 teacher: nn.Module | None, criterion: Criterion | None) -> tuple[dict[str, float], float, float]:
    """One pass over ``loader``: (mean training loss and accuracy over every rank, the last
    batch's learning rate, seconds)."""
    run.net.train()
    if cfg.freeze_bn:
        freeze_batchnorm(run.model)
    criterion = criterion or nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    began = time.perf_counter()
    sums = TrainingSums()
    lr = run.scheduler.get_last_lr()[0]
    for x, y in track(loader, f"epoch {epoch + 1}/{cfg.epochs}"):
        lr = run.scheduler.get_last_lr()[0]           # this step's (the schedule moves on after it)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        out = run.net(x)
        loss = criterion(out, y)
        if cfg.distill > 0:
            assert teacher is not None   # cfg.distill > 0 needs one: checked when the run starts
            with torch.no_grad():
                soft = teacher(x)
            loss = (1 - cfg.distill) * loss + cfg.distill * distillation_loss(final_logits(out), soft, cfg.temperature)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        run.scheduler.step()
        value = loss.item()
        if not math.isfinite(value):   # nothing of this epoch is kept: the last good checkpoint stays
            raise QffsError(f"training diverged: the loss is {value} at epoch {epoch + 1}, "
                            f"step {run.scheduler.last_epoch} — lower the learning rate (--lr)")
        sums.update(value, final_logits(out), y)
    train_time = time.perf_counter() - began
    broadcast_module(run.model, buffers_only=True)   # torchrun: rank 0's BatchNorm statistics on every rank
    reduce_measures(sums)
    return sums.compute(), float(lr), train_time


def _end_epoch(run: _Run, epoch: int, cfg: TrainConfig, train: dict[str, float], lr: float, train_time: float,
               val_loader, device: torch.device, keep: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """Evaluate on ``val_loader``, record the epoch in the history (``keep``: it may be the best
    one) and log it; returns the record."""
    val = evaluate(run.model, val_loader, device, description="validation")
    record = {"epoch": epoch + 1, **train, "val_accuracy": val["accuracy"], "val_loss": val["loss"],
              "val_tied": val["tied"], "val_samples": val["samples"], "lr": lr, "epoch_seconds": round(train_time, 2)}
    run.history.append(record)
    if keep and val["accuracy"] > run.best_accuracy:
        run.best_accuracy, run.best_state = val["accuracy"], copy.deepcopy(run.model.state_dict())
        record["best"] = True
    if is_main_process():
        log(f"epoch {epoch + 1}/{cfg.epochs}: loss {record['train_loss']:.4f}  "
            f"train {100 * record['train_accuracy']:.2f}%  validation {100 * val['accuracy']:.2f}%  "
            f"({train_time:.0f}s)" + ("  *best" if record.get("best") else ""))
    return record


def fit(model: nn.Module, train_loader, val_loader, cfg: TrainConfig, *,
        device: torch.device | str = "cpu", teacher: nn.Module | None = None,
        on_epoch: Callable[[dict[str, Any], nn.Module], None] | None = None,
        log: Callable[[str], None] = print,
        baseline: float = -1.0, start: TrainState | None = None,
        on_state: Callable[[TrainState], None] | None = None,
        on_epoch_start: Callable[[int], None] | None = None, keep_from: int = 0,
        criterion: Criterion | None = None) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
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
    ``criterion(model(x), y)`` replaces the cross-entropy (a spiking network's loss over its steps;
    accuracy and distillation then use :func:`final_logits`).

    Resume (:mod:`qffs.resume`): after every epoch ``on_state`` receives the full training state
    (on rank 0); ``start`` continues from such a state with the next epoch, restoring weights,
    momentum, schedule position, random generators and the data order, so the result equals
    that of an uninterrupted run.
    """
    cfg.validate()
    if cfg.distill > 0 and teacher is None:
        raise QffsError("cfg.distill > 0 needs a teacher model")
    if teacher is not None:
        teacher = teacher.to(device).eval()
    device = torch.device(device)
    run = _start(model, train_loader, cfg, device, baseline, start)
    for epoch in range(run.first_epoch, cfg.epochs):
        if hasattr(getattr(train_loader, "sampler", None), "set_epoch"):
            train_loader.sampler.set_epoch(epoch)
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        train, lr, train_time = _train_epoch(run, train_loader, cfg, epoch, device, teacher, criterion)
        record = _end_epoch(run, epoch, cfg, train, lr, train_time, val_loader, device, epoch >= keep_from, log)
        if on_epoch is not None:
            on_epoch(record, model)
        if on_state is not None and is_main_process():
            on_state(run.state(epoch + 1))
    return run.history, run.best_state


# TrainConfig, config_dict, lr_schedule and FLOAT32_MAX live in qffs.train_config; callers import them from here
__all__ = ["FLOAT32_MAX", "Criterion", "TrainConfig", "config_dict", "distillation_loss", "evaluate", "final_logits",
           "fit", "freeze_batchnorm",
           "lr_schedule", "resolve_device"]
