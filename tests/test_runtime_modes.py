"""The two runtimes on the shipped network: the layer-by-layer one gives the per-step reference's
spike counts and curves exactly in float64, and agrees with the QANN as well in float32."""

from __future__ import annotations

import copy

import pytest
import torch

from qffs.data import load_dataset, make_loader
from qffs.errors import QffsError
from qffs.metrics import predict
from qffs.quant import calibrate, quantize
from qffs.snn import convert
from tests.conftest import calibrated_shipped_qann


@pytest.fixture(scope="module")
def shipped():
    x, _ = next(iter(make_loader(load_dataset("fashion-mnist", "test", limit=128), 128)))
    return calibrated_shipped_qann(512), x


def test_both_modes_give_identical_curves_in_float64(shipped):
    qann, x = shipped
    snn = convert(copy.deepcopy(qann).double())   # BN folded in float64: exact
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


@pytest.mark.parametrize("mode", ["step", "layer"])
def test_a_memory_budget_splits_the_batch_into_chunks_with_identical_results(shipped, mode):
    qann, x = shipped
    snn = convert(qann).double()
    x = x[:40].double()
    whole = snn.simulate(x, 12, mode=mode, until_quiet=True, record_counts=True)
    per_sample = snn.bytes_per_sample(x, 12, mode)
    calls: list[int] = []
    form = snn.engine.form(mode)   # the engine's generated graph of this form: one call per step (or per run)
    hook = form.register_forward_pre_hook(lambda _, args: calls.append(args[0].shape[0]))
    try:
        chunked = snn.simulate(x, 12, mode=mode, until_quiet=True, record_counts=True, memory=7 * per_sample)
    finally:
        hook.remove()
    steps = 12 if mode == "layer" else 1
    assert max(calls) <= 7 * steps                   # never more than 7 samples at once
    assert torch.equal(whole.output, chunked.output)
    assert torch.equal(whole.convergence_step, chunked.convergence_step)
    for name in whole.readouts:
        assert torch.equal(whole.readouts[name], chunked.readouts[name]), name
    for a, b in zip(whole.neurons + whole.synapses, chunked.neurons + chunked.synapses, strict=True):
        for field in ("pos_spikes", "neg_spikes", "counts", "synops", "events", "active_slices"):
            mine, theirs = getattr(a, field, None), getattr(b, field, None)
            assert (mine is None and theirs is None) or torch.equal(mine, theirs), (a.name, field)


def test_the_per_sample_estimate_grows_with_t_only_layer_by_layer(shipped):
    qann, x = shipped
    snn = convert(qann)
    step4, step32 = snn.bytes_per_sample(x, 4), snn.bytes_per_sample(x, 32)
    layer4, layer32 = snn.bytes_per_sample(x, 4, "layer"), snn.bytes_per_sample(x, 32, "layer")
    assert step32 < 1.2 * step4 and layer32 > 6 * layer4 and layer4 > step4
    # the state alone: three copies of every neuron's input (membrane, count, settled), 4 bytes each
    neurons = sum(rec.neurons for rec in snn.simulate(x[:1], 1).neurons)
    assert step4 > 3 * 4 * neurons


@pytest.mark.parametrize("text, expected", [("4GB", 4 * 10**9), ("512MiB", 512 * 2**20), ("1.5g", 1.5e9),
                                            ("2000000", 2000000), (" 3 KiB ", 3072)])
def test_memory_amounts_parse(text, expected):
    from qffs.snn.memory import parse_memory

    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["", "4XB", "-1GB", "0", "GB", "1e9", "0.1b"])
def test_bad_memory_amounts_are_one_line_errors(text):
    from qffs.snn.memory import parse_memory

    with pytest.raises(QffsError, match="--memory must be an amount of memory"):
        parse_memory(text)
