"""Measures: float64 sums kept batch by batch, added across the ranks of a torchrun job at once.

The pattern of ``torchmetrics.Metric`` in the few lines qffs needs (no extra dependency): a
measure declares named states with :meth:`Measure.add_state` — float64 tensors of *sums*, never
averages, so adding them over ranks is exact for counts up to 2^53 —, adds a batch to them in
``update`` and turns them into the reported numbers in ``compute``. :func:`reduce_measures`
sums the states of any set of measures over the ranks with one all-reduce of one float64 vector;
without torchrun it changes nothing. Every rank must hold the same states in the same order:
the same measures, of the same network.

The two measures of a classifier are here (:class:`Classification` for an evaluation,
:class:`TrainingSums` for a training epoch); the spiking network's are in :mod:`qffs.evaluate`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from qffs import distributed
from qffs.metrics import predict


class Measure:
    """Named float64 sum states; subclasses add ``update(...)`` and ``compute(...)``."""

    def __init__(self) -> None:
        self.state_names: list[str] = []

    def add_state(self, name: str, shape: int | tuple[int, ...] = ()) -> None:
        """A float64 state of zeros, read and written as ``self.<name>``; summed over ranks."""
        self.state_names.append(name)
        setattr(self, name, torch.zeros(shape, dtype=torch.float64))

    def states(self) -> list[torch.Tensor]:
        """The states, in the order they were added."""
        return [getattr(self, name) for name in self.state_names]


def reduce_measures(*measures: Measure) -> None:
    """Sum every state of ``measures`` over the ranks of a torchrun job, with one all-reduce (alone:
    nothing). Collective: every rank calls it with the same measures."""
    if not distributed.active():
        return
    owned = [(measure, name) for measure in measures for name in measure.state_names]
    states = [getattr(measure, name) for measure, name in owned]
    if not states:
        return
    summed = distributed.all_reduce_sum(torch.cat([s.reshape(-1) for s in states]))
    for (measure, name), state, part in zip(owned, states, summed.split([s.numel() for s in states])):
        setattr(measure, name, part.reshape(state.shape).clone())


class Classification(Measure):
    """A classifier over labelled samples: top-1 correct (ties to the lowest class), summed
    cross-entropy, tied predictions and samples."""

    def __init__(self) -> None:
        super().__init__()
        for name in ("correct", "loss_sum", "ties", "count"):
            self.add_state(name)

    def update(self, out: torch.Tensor, y: torch.Tensor) -> None:
        pred, tied = predict(out)
        self.correct += (pred == y).sum().item()
        self.ties += tied.sum().item()
        self.loss_sum += nn.functional.cross_entropy(out.float(), y, reduction="sum").item()
        self.count += y.numel()

    def compute(self) -> dict[str, Any]:
        """Accuracy, mean loss and tied-prediction rate per sample, and the number of samples."""
        correct, loss_sum, ties, count = (float(s) for s in self.states())
        count = max(count, 1.0)
        return {"accuracy": correct / count, "loss": loss_sum / count, "tied": ties / count, "samples": int(count)}


class TrainingSums(Measure):
    """A training epoch as it ran: the loss summed over samples, correct predictions, samples."""

    def __init__(self) -> None:
        super().__init__()
        for name in ("loss_sum", "correct", "seen"):
            self.add_state(name)

    def update(self, loss: float, out: torch.Tensor, y: torch.Tensor) -> None:
        """``loss``: the batch mean, weighted by the batch's samples."""
        self.loss_sum += loss * y.numel()
        self.correct += (out.argmax(-1) == y).sum().item()
        self.seen += y.numel()

    def compute(self) -> dict[str, float]:
        """The epoch's mean training loss and accuracy."""
        loss_sum, correct, seen = (float(s) for s in self.states())
        return {"train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1)}


__all__ = ["Classification", "Measure", "TrainingSums", "reduce_measures"]
