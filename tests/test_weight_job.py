"""``qffs quantize --weight-bits`` as a job (issue 28): BatchNorm trains beside the quantized weights
and is folded at conversion, the saved QANN is rebuilt by convert, and a run resumes."""

from __future__ import annotations

import json

import pytest
import torch

from qffs.io import load_checkpoint
from qffs.jobs.options import DataOptions
from qffs.jobs.quantize import quantize_checkpoint
from qffs.jobs.recipes import qat_config, resolve_recipe
from qffs.report import ENERGY_PRESETS
from qffs.resume import resume_path
from tests.test_cli import SHIPPED

pytestmark = pytest.mark.usefixtures("one_thread")

QUICK = ("--limit", "384", "--test-limit", "64", "--batch-size", "64", "--val-size", "128")


def test_weight_qat_keeps_batchnorm_until_convert_folds_it(cli, tmp_path):
    r = cli("quantize", SHIPPED, "--out", tmp_path / "q.pt", "--epochs", "1", "--weight-bits", "4", *QUICK)
    assert r.returncode == 0, r.stderr
    assert "BatchNorm layer(s) train beside their conv/linear" in r.stdout
    qann = load_checkpoint(tmp_path / "q.pt")
    assert [k for k in qann.state_dict if "running_mean" in k]        # the BatchNorms trained and are saved
    assert "batchnorm_reestimated" in qann.meta["metrics"]
    r = cli("convert", tmp_path / "q.pt", "--out", tmp_path / "s.pt")
    assert r.returncode == 0, r.stderr
    snn = load_checkpoint(tmp_path / "s.pt")
    assert snn.meta["conversion"]["folded_batchnorms"] == 0   # folded already, by the weights' baking
    info = cli("info", tmp_path / "s.pt").stdout
    assert "weights: 4-bit lsq (one scale per layer, first and last layer 8-bit);" in info and "x smaller" in info
    r = cli("evaluate", tmp_path / "s.pt", "--timesteps", "2", "--limit", "32", "--out-dir", tmp_path / "e")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "e" / "curve.json").read_text())
    assert report["weight_bits"] == 4 and report["weight_size"]["compression"] > 7
    assert "weights: 4-bit integers" in r.stdout
    energy = report["energy"]
    assert (energy["e_ac_pj"], energy["e_mac_pj"]) == ENERGY_PRESETS["int32-45nm"]   # integer synapses: --energy auto


class Interrupt(Exception):
    pass


def _interrupt_at_epoch_2(line: str) -> None:
    if line.startswith("epoch 2/"):   # epoch 2 trained, its state not yet saved: resume redoes it
        raise Interrupt


def test_weight_qat_resumed_equals_an_uninterrupted_run(tmp_path):
    def run(out, log=lambda _: None, resume=False):
        data = DataOptions(limit=384, test_limit=64, batch_size=64, val_size=128)
        return quantize_checkpoint(SHIPPED, out, data, qat_config(2),
                                   resolve_recipe().quant_config(weight_bits=2),
                                   resume=resume, log=log)

    run(tmp_path / "straight.pt")
    with pytest.raises(Interrupt):
        run(tmp_path / "q.pt", log=_interrupt_at_epoch_2)
    assert resume_path(tmp_path / "q.pt").exists() and not (tmp_path / "q.pt").exists()
    run(tmp_path / "q.pt", resume=True)
    a, b = load_checkpoint(tmp_path / "straight.pt"), load_checkpoint(tmp_path / "q.pt")
    assert a.state_dict.keys() == b.state_dict.keys()
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)


def test_a_fine_tuned_integer_snn_claims_float_weights(cli, tmp_path):
    assert cli("quantize", SHIPPED, "--out", tmp_path / "q.pt", "--epochs", "0", "--weight-bits", "2",
               *QUICK).returncode == 0
    assert cli("convert", tmp_path / "q.pt", "--out", tmp_path / "s.pt").returncode == 0
    r = cli("finetune", tmp_path / "s.pt", "--timesteps", "2", "--epochs", "1", "--out", tmp_path / "ft.pt", *QUICK)
    assert r.returncode == 0, r.stderr
    assert "fine-tuning moved the SNN's weights off that grid" in cli("info", tmp_path / "ft.pt").stdout
    r = cli("evaluate", tmp_path / "ft.pt", "--timesteps", "2", "--limit", "32", "--out-dir", tmp_path / "e")
    report = json.loads((tmp_path / "e" / "curve.json").read_text())
    assert report["weight_bits"] is None and report["weight_size"]["compression"] == 1.0
    assert (report["energy"]["e_ac_pj"], report["energy"]["e_mac_pj"]) == ENERGY_PRESETS["fp32-45nm"]
