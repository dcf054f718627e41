"""Progressive precision (issue 23): a bit schedule's stages, what a change of width does to the
quantizers and BatchNorm, and that a resume across a stage boundary equals an uninterrupted run."""

from __future__ import annotations

import copy

import pytest
import torch

from qffs.errors import QffsError
from qffs.quant import calibrate, quantize, quantizers
from qffs.quant.schedule import (
    first_final_epoch,
    hidden_bits,
    parse_bit_schedule,
    reestimate_batchnorm,
    set_hidden_bits,
    stage_bits,
    stage_epochs,
)
from qffs.snn import convert
from tests.conftest import SHIPPED_FMNIST


@pytest.mark.parametrize("text, bits, expected", [("4,3,2", 2, (4, 3, 2)), (" 8, 2 ", 2, (8, 2)), ("2", 2, None),
                                                  (None, 2, None), ("5,3", 3, (5, 3))])
def test_parse_bit_schedule(text, bits, expected):
    assert parse_bit_schedule(text, bits) == expected


@pytest.mark.parametrize("text, message", [("4,3", "must end at the hidden width"), ("2,3,2", "decrease strictly"),
                                           ("4,x,2", "comma-separated"), ("9,2", "from 1 to 8"), ("4,0,2",
                                                                                                  "from 1 to 8")])
def test_bad_bit_schedules_are_refused(text, message):
    with pytest.raises(QffsError, match=message):
        parse_bit_schedule(text, 2)


def test_epochs_are_split_across_stages_and_only_the_last_stage_is_kept():
    assert stage_epochs(20, 3) == [7, 7, 6] and stage_epochs(3, 3) == [1, 1, 1]
    assert [stage_bits((4, 3, 2), 20, e) for e in range(20)] == [4] * 7 + [3] * 7 + [2] * 6
    assert first_final_epoch((4, 3, 2), 20) == 14
    with pytest.raises(QffsError, match="at least 3 epochs"):
        stage_epochs(2, 3)


def _images(n=256, offset=0):
    from qffs.data import load_dataset

    ds = load_dataset("fashion-mnist", "train", limit=offset + n, augment=False)
    return torch.stack([ds[i][0] for i in range(offset, offset + n)])


def _converged_equals_qann(qann, x) -> bool:
    """Invariant E in float64: the SNN run until quiet gives the QANN's output exactly."""
    q = copy.deepcopy(qann).double().eval()
    r = convert(q).simulate(x.double(), 64, until_quiet=True)
    return bool(r.converged.all()) and torch.equal(r.output[-1], q(x.double()))


def test_each_stage_keeps_steps_positive_and_the_qann_exact():
    from qffs.io import load_model

    fp, _ = load_model(SHIPPED_FMNIST)
    qann = quantize(fp.eval(), bits=2, output_bits=3)
    set_hidden_bits(qann, 4, keep_range=False)
    calib, probe = [_images(128)], _images(32, offset=200)
    calibrate(qann, calib)
    output_step = float(qann.output_quantizer.step.detach())
    assert hidden_bits(qann) == 4 and _converged_equals_qann(qann, probe)
    for old, width in ((4, 3), (3, 2)):
        ranges = {n: float(q.step_size().detach()) * q.levels for n, q in quantizers(qann) if not q.is_output}
        set_hidden_bits(qann, width)
        after = {n: float(q.step_size().detach()) * q.levels for n, q in quantizers(qann) if not q.is_output}
        assert after == pytest.approx(ranges, rel=1e-6)               # s·Q_old/Q_new keeps each clipping range
        calibrate(qann, calib, only_hidden=True)
        assert reestimate_batchnorm(qann, [_images(64, offset=300)]) == 64
        assert float(qann.output_quantizer.step.detach()) == output_step        # the output keeps its width and step
        assert all(q.levels == 2**width - 1 for _, q in quantizers(qann) if not q.is_output)
        assert all(float(q.step) > 0 for _, q in quantizers(qann))
        assert _converged_equals_qann(qann, probe), f"invariant E after {old} -> {width} bits"


def test_batchnorm_reestimation_uses_the_batches_and_restores_modes():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU()).train()
    net[1].momentum = 0.3
    x = torch.randn(16, 1, 8, 8) * 3 + 1
    assert reestimate_batchnorm(net, [x[:8], x[8:]]) == 16
    conv = net[0](x)
    assert torch.allclose(net[1].running_mean, conv.mean((0, 2, 3)), atol=1e-5)   # equal-weight average of 2 batches
    assert net.training and net[1].momentum == 0.3


def _quantize_job(out, resume=False, log=lambda _: None):
    from qffs.artifacts import QuantConfig
    from qffs.jobs.options import DataOptions
    from qffs.jobs.quantize import quantize_checkpoint
    from qffs.jobs.recipes import qat_config

    return quantize_checkpoint(SHIPPED_FMNIST, out, DataOptions(limit=384, test_limit=64, batch_size=64, val_size=64),
                               qat_config(2), QuantConfig(bit_schedule="3,2"), resume=resume, log=log)


@pytest.mark.slow
def test_resume_across_a_stage_boundary_equals_an_uninterrupted_run(tmp_path):
    from qffs.errors import Interrupted
    from qffs.io import load_checkpoint

    straight = _quantize_job(tmp_path / "straight.pt")

    def stop_at_the_change(line: str) -> None:   # epoch 1's state is saved; the width changes next
        if line.startswith("bit schedule:"):
            raise KeyboardInterrupt

    with pytest.raises(Interrupted, match="--resume"):
        _quantize_job(tmp_path / "q.pt", log=stop_at_the_change)
    resumed = _quantize_job(tmp_path / "q.pt", resume=True)
    a, b = load_checkpoint(tmp_path / "straight.pt"), load_checkpoint(tmp_path / "q.pt")
    assert a.state_dict.keys() == b.state_dict.keys()
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert resumed["qann_accuracy"] == straight["qann_accuracy"] and resumed["best_epoch"] == 2
    from qffs.artifacts import QuantConfig

    recorded = QuantConfig.from_meta(a.meta)
    assert recorded.bit_schedule == (3, 2) and recorded.bits == 2 and a.meta["quant"]["bit_schedule"] == [3, 2]
