"""``qffs quantize --weight-bits`` as a job (issue 28): BatchNorm re-estimated on the calibrated QANN and
folded, the folded network's learning rate, the saved QANN rebuilt by convert, and resume."""

from __future__ import annotations

import pytest
import torch

from qffs.io import load_checkpoint
from qffs.jobs.options import DataOptions
from qffs.jobs.quantize import quantize_checkpoint
from qffs.jobs.recipes import RECIPES, qat_config, resolve_recipe
from qffs.resume import resume_path
from tests.test_cli import SHIPPED

pytestmark = pytest.mark.usefixtures("one_thread")

QUICK = ("--limit", "384", "--test-limit", "64", "--batch-size", "64", "--val-size", "128")


def test_quantized_weights_take_the_recipes_weight_lr_unless_lr_is_given():
    for name, recipe in RECIPES.items():
        assert recipe.weight_lr < recipe.lr
        assert resolve_recipe(name, quantized_weights=True).lr == recipe.weight_lr
        assert resolve_recipe(name, quantized_weights=True, lr=0.02).lr == 0.02
        assert resolve_recipe(name, quantized_weights=False).lr == recipe.lr


def test_weight_qat_folds_re_estimated_batchnorm_and_convert_rebuilds_it(cli, tmp_path):
    r = cli("quantize", SHIPPED, "--out", tmp_path / "q.pt", "--epochs", "1", "--weight-bits", "4", *QUICK)
    assert r.returncode == 0, r.stderr
    assert "with the activation quantizers in place, before it is folded" in r.stdout
    assert "BatchNorm layer(s) folded" in r.stdout
    qann = load_checkpoint(tmp_path / "q.pt")
    assert qann.meta["train_config"]["lr"] == RECIPES["qffs"].weight_lr
    assert not [k for k in qann.state_dict if "running_mean" in k]   # no BatchNorm left to save
    assert "batchnorm_reestimated" not in qann.meta["metrics"]      # nothing to re-estimate after QAT
    r = cli("convert", tmp_path / "q.pt", "--out", tmp_path / "s.pt")
    assert r.returncode == 0, r.stderr


class Interrupt(Exception):
    pass


def _interrupt_at_epoch_2(line: str) -> None:
    if line.startswith("epoch 2/"):   # epoch 2 trained, its state not yet saved: resume redoes it
        raise Interrupt


def test_weight_qat_resumed_equals_an_uninterrupted_run(tmp_path):
    def run(out, log=lambda _: None, resume=False):
        data = DataOptions(limit=384, test_limit=64, batch_size=64, val_size=128)
        return quantize_checkpoint(SHIPPED, out, data, qat_config(2, lr=0.001),
                                   resolve_recipe(quantized_weights=True).quant_config(weight_bits=2),
                                   resume=resume, log=log)

    run(tmp_path / "straight.pt")
    with pytest.raises(Interrupt):
        run(tmp_path / "q.pt", log=_interrupt_at_epoch_2)
    assert resume_path(tmp_path / "q.pt").exists() and not (tmp_path / "q.pt").exists()
    run(tmp_path / "q.pt", resume=True)
    a, b = load_checkpoint(tmp_path / "straight.pt"), load_checkpoint(tmp_path / "q.pt")
    assert a.state_dict.keys() == b.state_dict.keys()
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
