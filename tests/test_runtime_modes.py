"""The two runtimes on the shipped network: the layer-by-layer one gives the per-step reference's
spike counts and curves exactly in float64, and agrees with the QANN as well in float32."""

from __future__ import annotations

import copy

import pytest
import torch

from qffs.data import load_dataset, make_loader
from qffs.errors import QffsError
from qffs.io import load_model
from qffs.metrics import predict
from qffs.quant import calibrate, quantize
from qffs.snn import convert
from tests.conftest import SHIPPED_FMNIST


@pytest.fixture(scope="module")
def shipped():
    fp, _ = load_model(SHIPPED_FMNIST)
    calib = [x for x, _ in make_loader(load_dataset("fashion-mnist", "train", limit=512, augment=False), 128)]
    qann = quantize(fp.eval(), bits=2, output_bits=3)
    calibrate(qann, calib)
    x, _ = next(iter(make_loader(load_dataset("fashion-mnist", "test", limit=128), 128)))
    return qann.eval(), x


def test_both_modes_give_identical_curves_in_float64(shipped):
    qann, x = shipped
    snn = convert(qann).double()
    step = snn.simulate(x.double(), 16, mode="step", record_counts=True)
    layer = snn.simulate(x.double(), 16, mode="layer", record_counts=True)
    assert torch.equal(step.output, layer.output)
    assert torch.equal(predict(step.readouts["tiebreak"])[0], predict(layer.readouts["tiebreak"])[0])
    for a, b in zip(step.neurons, layer.neurons, strict=True):
        assert torch.equal(a.counts, b.counts), a.name
    assert torch.equal(layer.output[-1], copy.deepcopy(qann).double()(x.double()))   # quiet by t = 16: the QANN exactly


def test_float32_agreement_with_the_qann_is_no_worse_layer_by_layer(shipped):
    qann, x = shipped
    snn = convert(qann)
    target = predict(qann(x))[0]
    agree = {mode: float((predict(snn.simulate(x, 16, mode=mode).output[-1])[0] == target).float().mean())
             for mode in ("step", "layer")}
    assert agree["layer"] >= agree["step"] > 0.95


def test_an_unknown_mode_is_a_one_line_error(shipped):
    qann, x = shipped
    with pytest.raises(QffsError, match="mode must be one of step, layer"):
        convert(qann).simulate(x[:2], 4, mode="fast")


class FixedBatch(torch.nn.Module):
    """A network that writes its batch size into a reshape: it cannot run on fewer samples."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 16, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).reshape(4, -1))


def test_a_graph_with_a_fixed_batch_size_runs_every_sample_every_step_in_both_modes():
    torch.manual_seed(0)
    x = torch.randn(4, 1, 4, 4, dtype=torch.float64)
    qann = quantize(FixedBatch().double().eval(), bits=2, output_bits=3)
    calibrate(qann, [x])
    snn = convert(qann)
    assert not snn.batch_free(x)
    for mode in ("step", "layer"):
        result = snn.simulate(x, 40, mode=mode, until_quiet=True)
        assert result.converged.all() and torch.equal(result.output[-1], qann(x)), mode
