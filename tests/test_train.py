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
    best_acc = max(r["val_accuracy"] for r in history)
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


def test_distillation_loss_is_zero_for_the_teachers_logits_and_positive_otherwise():
    from qffs.train import distillation_loss

    t = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, 1.0]])
    assert distillation_loss(t, t).item() == pytest.approx(0.0, abs=1e-7)
    assert distillation_loss(t + 5.0, t).item() == pytest.approx(0.0, abs=1e-6)   # softmax is shift-invariant
    assert distillation_loss(t.flip(-1), t).item() > 0.1
    # τ² scaling: at high temperature the term tends to (1/2N)·Σ(centred logit differences)² per sample
    s = t + torch.tensor([[0.3, -0.3, 0.0], [0.0, 0.2, -0.2]])
    hot = distillation_loss(s, t, temperature=100.0).item()
    centred = (s - t) - (s - t).mean(-1, keepdim=True)
    assert hot == pytest.approx(float(centred.pow(2).sum(-1).mean() / (2 * 3)), rel=5e-2)  # O(logit/τ) off


def test_fit_with_a_teacher_pulls_the_student_towards_its_outputs():
    """distill = 1: labels are ignored, so a student trained on a teacher that swaps two classes learns the swap."""
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3))
    train = DataLoader(_blobs(), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    test = DataLoader(_blobs(seed=1), batch_size=64)
    fit(teacher, train, test, TrainConfig(epochs=3, lr=0.1), log=lambda _: None)
    swapped = nn.Sequential(teacher, nn.Linear(3, 3, bias=False))
    with torch.no_grad():
        swapped[1].weight.copy_(torch.eye(3)[[1, 0, 2]])
    student = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3))
    fit(student, train, test, TrainConfig(epochs=4, lr=0.1, distill=1.0, temperature=2.0), teacher=swapped,
        log=lambda _: None)
    x, y = next(iter(test))
    agree = (student(x).argmax(-1) == swapped(x).argmax(-1)).float().mean().item()
    assert agree > 0.9 and evaluate(student, test)["accuracy"] < 0.5


def test_distillation_needs_a_teacher_and_a_valid_weight():
    model = nn.Linear(2, 3)
    loader = DataLoader(_blobs(32), batch_size=16)
    with pytest.raises(QffsError, match="teacher"):
        fit(model, loader, loader, TrainConfig(epochs=1, distill=0.5), log=lambda _: None)
    for bad in ({"distill": 1.5}, {"temperature": 0.0}):
        with pytest.raises(QffsError, match="distillation"):
            TrainConfig(**bad).validate()


def test_freeze_bn_keeps_running_statistics_and_still_trains_the_affine_parameters():
    loader = DataLoader(_blobs(64), batch_size=16)
    for freeze in (True, False):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
        stats = model[1].running_mean.clone(), model[1].running_var.clone()
        weight = model[1].weight.detach().clone()
        fit(model, loader, loader, TrainConfig(epochs=1, lr=0.1, freeze_bn=freeze), log=lambda _: None)
        same_stats = torch.equal(model[1].running_mean, stats[0]) and torch.equal(model[1].running_var, stats[1])
        assert same_stats is freeze
        assert not torch.equal(model[1].weight.detach(), weight)


@pytest.mark.parametrize(("options", "fragment"), [
    ({"lr": float("nan")}, "learning rate (--lr) must be a finite number in (0, 3.40282e+38]"),
    ({"lr": 0.0}, "learning rate"),
    ({"momentum": 1.0}, "momentum must be a finite number in [0, 1)"),
    ({"weight_decay": float("inf")}, "weight decay"),
    ({"gamma": 0.0}, "gamma must be a finite number in (0, 1]"),
    ({"label_smoothing": 1.0}, "label smoothing"),
    ({"epochs": 1.5}, "epochs must be an integer"),
])
def test_config_refuses_values_that_would_train_garbage(options, fragment):
    with pytest.raises(QffsError) as err:
        TrainConfig(**options).validate()
    assert fragment in str(err.value)


def test_a_non_finite_loss_stops_training_with_an_error():
    class Diverged(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 3)

        def forward(self, x):
            return self.fc(x) * float("inf")

    kept = []
    train = DataLoader(_blobs(64), batch_size=32)
    with pytest.raises(QffsError, match="training diverged: the loss is nan at epoch 1"):
        fit(Diverged(), train, train, TrainConfig(epochs=2), log=lambda _: None,
            on_epoch=lambda record, model: kept.append(record))
    assert kept == []   # no epoch was reported, so nothing was saved


def test_a_device_this_machine_lacks_is_a_user_error():
    from qffs.train import resolve_device

    with pytest.raises(QffsError, match="is not a device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(QffsError, match="this machine has 0 CUDA device"):
            resolve_device("cuda")
    assert resolve_device("cpu").type == "cpu"


@pytest.mark.parametrize("schedule", ["cosine", "exp", "constant"])
def test_the_lr_scheduler_gives_the_formulas_rates_bit_for_bit(schedule):
    """The LambdaLR steps once per batch: at step s, lr · factor(s / total steps, epoch s // steps per epoch)."""
    import math

    from qffs.train_config import lr_schedule

    cfg = TrainConfig(epochs=3, lr=0.037, schedule=schedule, gamma=0.83)
    steps_per_epoch, total = 7, 21
    optimizer = torch.optim.SGD([{"params": [nn.Parameter(torch.zeros(1))]},
                                 {"params": [nn.Parameter(torch.zeros(1))], "weight_decay": 0.0}], lr=cfg.lr)
    scheduler = lr_schedule(optimizer, cfg, steps_per_epoch)
    for step in range(total):
        factor = {"cosine": 0.5 * (1 + math.cos(math.pi * (step / total))),
                  "exp": cfg.gamma**(step // steps_per_epoch), "constant": 1.0}[schedule]
        assert [g["lr"] for g in optimizer.param_groups] == [cfg.lr * factor] * 2 == scheduler.get_last_lr()
        optimizer.step()
        scheduler.step()
    # a resumed run's scheduler starts where the steps left off
    again = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    again.param_groups[0]["initial_lr"] = cfg.lr
    assert lr_schedule(again, cfg, steps_per_epoch,
                       step=10).get_last_lr() == [scheduler.base_lrs[0] * scheduler.lr_lambdas[0](10)]


def test_the_recorded_learning_rate_is_that_of_each_epochs_last_step():
    import math

    train = DataLoader(_blobs(96), batch_size=32)   # 3 steps per epoch
    history, _ = fit(nn.Linear(2, 3), train, train, TrainConfig(epochs=2, lr=0.1), log=lambda _: None)
    assert [r["lr"] for r in history] == [0.1 * 0.5 * (1 + math.cos(math.pi * (s / 6))) for s in (2, 5)]
