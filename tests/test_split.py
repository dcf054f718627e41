"""The validation split (issue 23): held out of the training split, deterministic, recorded, and
where the best epoch is chosen; the test set is evaluated once, on the kept weights."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from qffs.errors import QffsError
from qffs.split import default_size, validation_split
from qffs.train import TrainConfig, evaluate, fit


@pytest.mark.parametrize("pool, size, seed", [(60_000, 5_000, 0), (50_000, 5_000, 3), (10, 1, 0), (7, 6, 1)])
def test_the_split_is_disjoint_complete_and_deterministic(pool, size, seed):
    split = validation_split(pool, size, seed)
    train, held = set(split.train.tolist()), set(split.validation.tolist())
    assert not train & held and train | held == set(range(pool)) and len(held) == size
    again = validation_split(pool, size, seed)
    assert torch.equal(again.validation, split.validation) and again.digest() == split.digest()
    assert split.validation.tolist() == sorted(held)          # the pool's own order


def test_the_seed_and_the_size_name_the_split():
    a, b = validation_split(1000, 100, 0), validation_split(1000, 100, 1)
    assert a.digest() != b.digest() and set(a.validation.tolist()) != set(b.validation.tolist())
    assert a.record() == {"size": 100, "seed": 0, "sha256": a.digest(), "train_samples": 900}


def test_default_sizes():
    assert default_size("cifar10-jpeg", 50_000, limited=False) == 5_000
    assert default_size("fashion-mnist", 60_000, limited=False) == 5_000
    assert default_size("imagefolder", 1_300, limited=False) == 130
    assert default_size("fashion-mnist", 512, limited=True) == 51
    assert default_size("fashion-mnist", 5, limited=True) == 1


@pytest.mark.parametrize("pool, size, message", [(100, 100, "leaves no training samples"), (100, 0, "positive"),
                                                 (100, -3, "positive")])
def test_impossible_splits_are_refused(pool, size, message):
    with pytest.raises(QffsError, match=message):
        validation_split(pool, size)


@pytest.mark.parametrize("kwargs, message", [({"val_size": 0}, "--select-on-test"),
                                             ({"select_on_test": True}, "--val-size 0"),
                                             ({"val_size": 10, "select_on_test": True}, "drop one"),
                                             ({"val_size": -1}, ">= 0"), ({"val_seed": -1}, "--val-seed")])
def test_data_options_check_the_split_options(kwargs, message):
    from qffs.jobs.options import DataOptions

    with pytest.raises(QffsError, match=message):
        DataOptions(**kwargs)


def _blobs(n, seed, flip=False):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 2, generator=g) * 1.5 + torch.tensor([[1.0, 0.0], [-1.0, 0.0]])[y]
    return TensorDataset(x, 1 - y if flip else y)


def test_the_kept_epoch_is_the_validation_best_even_where_the_test_set_disagrees():
    # validation labels are the test labels swapped: the more the model learns, the worse it scores
    # there, so validation and test prefer opposite epochs
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))
    train = DataLoader(_blobs(256, 0), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    val, test = DataLoader(_blobs(200, 1, flip=True), batch_size=100), DataLoader(_blobs(200, 2), batch_size=100)
    snapshots = []
    history, best = fit(model, train, val, TrainConfig(epochs=4, lr=0.003, schedule="constant"), log=lambda _: None,
                        on_epoch=lambda r, m: snapshots.append({k: v.clone() for k, v in m.state_dict().items()}))
    val_best = max(range(4), key=lambda i: history[i]["val_accuracy"])
    assert [bool(r.get("best")) for r in history].index(True) == 0 and history[val_best].get("best")
    assert all(torch.equal(best[k], snapshots[val_best][k]) for k in best)
    test_acc = []
    for snap in snapshots:
        model.load_state_dict(snap)
        test_acc.append(evaluate(model, test)["accuracy"])
    assert max(range(4), key=test_acc.__getitem__) != val_best   # the test set would have chosen otherwise
    assert all(r["val_samples"] == 200 for r in history)


@pytest.mark.slow
def test_quantize_chooses_on_validation_and_tests_the_kept_weights_once(cli, tmp_path):
    from qffs.artifacts import load_qann
    from qffs.jobs.loaders import make_test_loader
    from qffs.jobs.options import DataOptions

    out = tmp_path / "q.pt"
    r = cli("quantize", "models/fmnist_vgg_small.pt", "--out", out, "--epochs", "2", "--limit", "600",
            "--test-limit", "300", "--val-size", "100", "--val-seed", "4")
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "q.pt.metrics.json").read_text())
    m, history = meta["metrics"], meta["history"]
    assert meta["selection"] == {"selected_on": "validation", "validation": validation_split(600, 100, 4).record()}
    assert m["selected_on"] == "validation" and all(h["val_samples"] == 100 for h in history)
    assert "test_accuracy" not in history[0]                      # epochs are never tested
    best = max([{"val_accuracy": m["calibrated_val_accuracy"], "epoch": 0}, *history], key=lambda h: h["val_accuracy"])
    assert m["best_epoch"] == best["epoch"]
    bn = m.get("batchnorm_reestimated", {})   # kept only if it raised the validation accuracy
    assert m["qann_val_accuracy"] == (bn["val_accuracy_after"] if bn.get("kept") else best["val_accuracy"])
    assert not bn or bn["val_accuracy_before"] == best["val_accuracy"]
    qann, _ = load_qann(out)
    test = evaluate(qann, make_test_loader(DataOptions(dataset="fashion-mnist", test_limit=300)))
    assert m["qann_accuracy"] == test["accuracy"]
    assert f"QANN {100 * test['accuracy']:.2f}% on the test set (epoch {m['best_epoch']}, validation" in r.stdout
    info = cli("info", out).stdout
    assert "recipe: qffs — QAT 2 epoch(s), SGD lr 0.01 cosine" in info
    assert "distillation from the FP network 0.5" in info
    sha = meta["selection"]["validation"]["sha256"]
    assert f"epoch chosen on validation (100 training images held out, seed 4, sha256 {sha})" in info


@pytest.mark.slow
def test_select_on_test_is_marked_in_every_report(cli, tmp_path):
    r = cli("run", "models/fmnist_vgg_small.pt", "--out-dir", tmp_path / "run", "--epochs", "1", "--limit", "256",
            "--test-limit", "64", "--val-size", "0", "--select-on-test", "-T", "2")
    assert r.returncode == 0, r.stderr
    assert "epoch chosen on the TEST set" in r.stdout
    report = json.loads((tmp_path / "run" / "curve.json").read_text())
    assert report["qann_selected_on"] == "test" and report["title"].endswith("QANN epoch chosen on the test set")
    assert json.loads((tmp_path / "run" / "qann.pt.metrics.json").read_text())["selection"] == \
        {"selected_on": "test", "validation": None}
