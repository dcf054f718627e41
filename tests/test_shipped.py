"""The shipped Fashion-MNIST checkpoint reloads through the public loader with its accuracy."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from qffs import load_model
from qffs.data import load_dataset, make_loader
from qffs.train import evaluate

MODELS = Path(__file__).resolve().parents[1] / "models"
CHECKPOINT = MODELS / "fmnist_vgg_small.pt"
CARD = MODELS / "fmnist_vgg_small.md"


def test_shipped_checkpoint_is_small_and_self_describing():
    assert CHECKPOINT.stat().st_size < 5 * 2**20
    model, ckpt = load_model(CHECKPOINT)
    assert ckpt.kind == "fp" and ckpt.meta["dataset"] == "fashion-mnist"
    assert ckpt.meta["model"] == "vgg_small(num_classes=10, in_channels=1)"


def test_shipped_checkpoint_reaches_its_recorded_accuracy():
    model, ckpt = load_model(CHECKPOINT)
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    result = evaluate(model, make_loader(load_dataset("fashion-mnist", "test"), 500))
    assert result["samples"] == 10_000
    assert result["accuracy"] >= 0.925
    assert result["accuracy"] == pytest.approx(ckpt.meta["metrics"]["test_accuracy"], abs=1e-4)


def test_model_card_states_the_measured_accuracy_and_command():
    card = CARD.read_text()
    _, ckpt = load_model(CHECKPOINT)
    assert f"{100 * ckpt.meta['metrics']['test_accuracy']:.2f} %" in card
    assert re.search(r"qffs train .*--model vgg_small", card)


RESNET20 = MODELS / "resnet20_cifar10.pt"
RESNET20_CARD = MODELS / "resnet20_cifar10.md"


def _card_accuracy(card: str, label: str) -> float:
    """The percentage the model card's table gives in the row starting with ``label``."""
    match = re.search(rf"^\| {re.escape(label)}[^|]*\| \*\*([0-9.]+) %\*\*", card, re.MULTILINE)
    assert match, f"the card has no row '{label}' with a bold percentage"
    return float(match.group(1))


def test_shipped_resnet20_reaches_its_card_accuracy_on_1000_test_images():
    card = RESNET20_CARD.read_text()
    model, ckpt = load_model(RESNET20)
    assert RESNET20.stat().st_size < 5 * 2**20
    assert ckpt.kind == "fp" and ckpt.meta["dataset"] == "cifar10-jpeg"
    assert _card_accuracy(card, "test accuracy") == pytest.approx(100 * ckpt.meta["metrics"]["test_accuracy"],
                                                                  abs=0.005)
    result = evaluate(model, make_loader(load_dataset("cifar10-jpeg", "test", limit=1000), 250))
    assert result["samples"] == 1000
    assert 100 * result["accuracy"] == pytest.approx(_card_accuracy(card, "accuracy on 1,000 test images"), abs=1.0)
    assert re.search(r"qffs train .*--model resnet20 .*--dataset cifar10-jpeg", card)


RESNET20_QANN = MODELS / "resnet20_cifar10_q2_3.pt"
RESNET20_QANN_CARD = MODELS / "resnet20_cifar10_q2_3.md"


def test_shipped_resnet20_qann_was_chosen_on_validation_and_its_card_says_how_it_was_made():
    from qffs.artifacts import describe_recipe, load_qann

    card = RESNET20_QANN_CARD.read_text()
    qann, meta = load_qann(RESNET20_QANN)
    assert RESNET20_QANN.stat().st_size < 5 * 2**20
    assert (meta["bits"], meta["output_bits"], meta["dataset"]) == (2, 3, "cifar10-jpeg")
    metrics = meta["metrics"]
    assert metrics["selected_on"] == "validation" and meta["selection"]["validation"]["size"] == 5000
    assert _card_accuracy(card, "test accuracy") == pytest.approx(100 * metrics["qann_accuracy"], abs=0.005)
    assert _card_accuracy(card, "validation accuracy") == pytest.approx(100 * metrics["qann_val_accuracy"], abs=0.005)
    assert re.search(r"qffs quantize models/resnet20_cifar10\.pt .*--epochs 20", card)
    assert describe_recipe(meta).startswith("qffs — QAT 20 epoch(s)")


def test_shipped_resnet20_qann_reaches_its_card_accuracy_and_converts_exactly():
    from qffs.artifacts import load_qann
    from qffs.snn import convert

    qann, _ = load_qann(RESNET20_QANN)
    result = evaluate(qann, make_loader(load_dataset("cifar10-jpeg", "test", limit=1000), 250))
    card = RESNET20_QANN_CARD.read_text()
    assert 100 * result["accuracy"] == pytest.approx(_card_accuracy(card, "accuracy on 1,000 test images"), abs=0.2)
    x = next(iter(make_loader(load_dataset("cifar10-jpeg", "test", limit=8), 8)))[0].double()
    qann = qann.double()
    snn = convert(qann)
    run = snn.simulate(x, 64, until_quiet=True)
    assert run.converged.all()
    with torch.no_grad():
        assert torch.equal(run.output[-1], qann(x))          # invariant E on the shipped QANN, float64
