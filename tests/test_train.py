"""The shared training loop: it learns, keeps the best epoch, and counts ties."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from qffs.errors import QffsError
from qffs.metrics import predict
from qffs.train import TrainConfig, evaluate, fit


def _blobs(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 2, generator=g) * 0.3 + torch.tensor([[0.0, 2.0], [2.0, 0.0], [-2.0, -2.0]])[y]
    return TensorDataset(x, y)


def test_fit_learns_and_returns_best_state():
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3))
    train = DataLoader(_blobs(), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    test = DataLoader(_blobs(seed=1), batch_size=64)
    before = evaluate(model, test)["accuracy"]
    history, best = fit(model, train, test, TrainConfig(epochs=3, lr=0.1), log=lambda _: None)
    assert len(history) == 3 and history[-1]["lr"] < 0.1  # cosine decays
    best_acc = max(r["test_accuracy"] for r in history)
    assert best_acc > 0.95 > before
    model.load_state_dict(best)
    assert evaluate(model, test)["accuracy"] == pytest.approx(best_acc)


def test_predict_ties_go_to_lowest_index():
    logits = torch.tensor([[1.0, 3.0, 3.0], [2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    pred, tied = predict(logits)
    assert pred.tolist() == [1, 0, 0]
    assert tied.tolist() == [True, False, True]


@pytest.mark.parametrize(("kwargs", "message"), [({"epochs": -1}, "epochs"), ({"lr": 0.0}, "learning rate"),
                                                  ({"schedule": "step"}, "unknown schedule")])
def test_bad_config(kwargs, message):
    with pytest.raises(QffsError, match=message):
        TrainConfig(**kwargs).validate()
