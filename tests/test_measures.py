"""Measures (qffs.measures): float64 sums with one reduction."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qffs.measures import Classification, Measure, TrainingSums, reduce_measures

pytestmark = pytest.mark.usefixtures("one_thread")


class Counter(Measure):
    def __init__(self):
        super().__init__()
        self.add_state("total")
        self.add_state("per_class", 3)


def test_a_measures_states_are_float64_sums_and_alone_nothing_reduces_them():
    m = Counter()
    assert m.state_names == ["total", "per_class"]
    assert all(s.dtype == torch.float64 for s in m.states())
    m.total += 2
    m.per_class += torch.tensor([1.0, 0.0, 5.0], dtype=torch.float64)
    reduce_measures(m, Counter())                          # no torchrun: the identity
    assert float(m.total) == 2.0 and m.per_class.tolist() == [1.0, 0.0, 5.0]


def test_classification_and_training_sums_give_per_sample_means():
    out = torch.tensor([[1.0, 3.0, 3.0], [2.0, 1.0, 0.0], [0.0, 0.0, 5.0], [0.0, 4.0, 0.0]])
    y = torch.tensor([1, 0, 1, 1])
    c = Classification()
    c.update(out[:2], y[:2])
    c.update(out[2:], y[2:])
    loss = float(nn.functional.cross_entropy(out, y, reduction="sum"))
    assert c.compute() == {"accuracy": 0.75, "loss": pytest.approx(loss / 4, rel=1e-6), "tied": 0.25, "samples": 4}
    t = TrainingSums()
    t.update(0.5, out[:2], y[:2])
    t.update(1.5, out[2:], y[2:])
    assert t.compute() == {"train_loss": 1.0, "train_accuracy": 0.75}
