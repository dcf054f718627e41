"""Converter: refusals by name, structure of the rewrite, the public call contract."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qffs.errors import QffsError, UnsupportedGraphError
from qffs.models import build_model
from qffs.quant import LSQActivation, calibrate, quantize
from qffs.snn import convert
from qffs.snn.layers import GatedAffine, GatedLayer
from qffs.snn.pooling import EventMaxPool


class Sigmoidal(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.q = nn.Linear(4, 4), LSQActivation(2)

    def forward(self, x):
        return self.q(torch.sigmoid(self.fc(x)))


class Product(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.qa, self.qb = nn.Linear(4, 4), nn.Linear(4, 4), LSQActivation(2), LSQActivation(2)

    def forward(self, x):
        return self.qa(self.a(x)) * self.qb(self.b(x))


class BareRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.q = nn.Linear(4, 4), LSQActivation(2)

    def forward(self, x):
        return self.q(F.relu(self.fc(x)))


class Softmaxed(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.q = nn.Linear(4, 4), LSQActivation(2)

    def forward(self, x):
        return F.softmax(self.q(self.fc(x)), dim=1)


class ConstantBias(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.q = nn.Linear(4, 4), LSQActivation(2)
        self.offset = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return self.q(self.fc(x) + self.offset)


class SharedQuantizer(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.q = nn.Linear(4, 4), nn.Linear(4, 4), LSQActivation(2)

    def forward(self, x):
        return self.q(self.b(self.q(self.a(x))))


@pytest.mark.parametrize(("model", "fragments"), [
    (Sigmoidal(), ["node 'sigmoid'", "torch.sigmoid", "no spiking equivalent"]),
    (Product(), ["node 'mul'", "operator.mul", "product or quotient of two activations"]),
    (BareRelu(), ["node 'relu'", "torch.nn.functional.relu", "a ReLU without quantizer", "qffs.quantize"]),
    (Softmaxed(), ["node 'softmax'", "torch.nn.functional.softmax"]),
    (ConstantBias(), ["node 'add'", "adds a constant", "bias"]),
    (SharedQuantizer(), ["node 'q_1'", "called from several places"]),
    (nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), LSQActivation(2)), ["torch.nn.LayerNorm at 1"]),
    (nn.Sequential(nn.Linear(4, 4), nn.ReLU()), ["torch.nn.ReLU at 1", "a ReLU without quantizer"]),
    (nn.Sequential(nn.Linear(4, 4)), ["no activation quantizers: run qffs.quantize first"]),
])
def test_unsupported_graphs_are_refused_by_name(model, fragments):
    with pytest.raises(UnsupportedGraphError) as err:
        convert(model)
    for fragment in fragments:
        assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_refusal_happens_before_anything_runs_and_leaves_the_qann_alone():
    model = Sigmoidal()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UnsupportedGraphError):
        convert(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _qann(spec="vgg_small", shape=(4, 1, 28, 28), **kwargs):
    torch.manual_seed(0)
    model = build_model(spec).eval()
    qann = quantize(model, **kwargs).eval()
    x = torch.randn(shape)
    calibrate(qann, [x])
    return qann, x


def test_structure_thresholds_and_bn_folding():
    qann, x = _qann()
    snn = convert(qann)
    assert snn.config["folded_batchnorms"] == 4 and snn.input_window == 3
    assert not any(isinstance(m, nn.BatchNorm2d) for m in snn.modules())
    neurons = dict(snn.named_neurons())
    for name, q in [(n, m) for n, m in qann.named_modules() if isinstance(m, LSQActivation)]:
        assert torch.allclose(neurons[name].threshold, 3 * q.step_size())   # θ = T_in · s
        assert neurons[name].z_max == q.levels
    assert neurons["output_quantizer"].z_max == 7 and neurons["output_quantizer"].is_output
    assert sum(isinstance(m, EventMaxPool) for m in snn.modules()) == 2
    assert all(isinstance(m, GatedLayer) for m in [snn.graph.get_submodule("features.0")])
    kinds = [row["kind"] for row in snn.summary()]
    assert kinds.count("IF") == 5 and kinds[-1] == "IF output" and "event max pool" in kinds


def test_input_window_override_and_validation():
    qann, _ = _qann()
    snn = convert(qann, input_window=5)
    assert snn.input_window == 5 and snn.engine.clock(8, False).input_window == 5   # the clock carries T_in
    assert all(torch.allclose(m.threshold, 5 * m.step_size) for _, m in snn.named_neurons())   # θ = T_in·s
    with pytest.raises(QffsError, match=r"input_window \(--input-window\) must be an integer in 1\.\.4096"):
        convert(qann, input_window=0)
    with pytest.raises(QffsError, match="max_pool must be one of"):
        convert(qann, max_pool="average")


def test_call_contract_shape_units_and_convergence():
    qann, x = _qann()
    snn = convert(qann.double())
    x = x.double()
    out = snn(x, timesteps=30)
    assert out.shape == (30, *qann(x).shape)
    assert torch.equal(out[-1], qann(x))                      # same units as qann(x)
    step = qann.output_quantizer.step_size()
    assert torch.equal(out / step, torch.round(out / step))   # multiples of the output step
    for bad in (0, 4097, 2.5, True):
        with pytest.raises(QffsError, match=r"timesteps must be an integer in 1\.\.4096"):
            snn(x, timesteps=bad)


def test_simulate_until_quiet_pads_and_records():
    qann, x = _qann()
    snn = convert(qann.double())
    r = snn.simulate(x.double(), 40, until_quiet=True)
    assert r.converged.all() and r.steps_run < 40 and r.output.shape[0] == 40
    assert torch.equal(r.output[r.steps_run - 1], r.output[-1])
    assert (r.convergence_step <= r.steps_run).all() and (r.convergence_step >= 1).all()
    assert [n.name for n in r.neurons][-1] == "output_quantizer"
    first = r.synapses[0]
    # MACs = real synapses (zero padding excluded): 1-D valid taps over 28 outputs = 28·3 − 2 = 82
    assert first.macs == 32 * 82 * 82
    # the analog image feeds the first layer only during the input window
    assert torch.allclose(first.events, torch.full_like(first.events, 3 * 28 * 28))


def test_until_quiet_without_recording_still_runs_to_quiet():
    """Quiet detection does not depend on the spike statistics: record=False stops at the same step."""
    qann, x = _qann()
    snn = convert(qann.double())
    recorded = snn.simulate(x.double(), 40, until_quiet=True)
    bare = snn.simulate(x.double(), 40, until_quiet=True, record=False)
    assert bare.steps_run == recorded.steps_run > snn.input_window
    assert torch.equal(bare.convergence_step, recorded.convergence_step)
    assert torch.equal(bare.output[-1], qann.double()(x.double()))


def test_fan_out_is_exact_at_padded_borders():
    conv = GatedLayer(nn.Conv2d(1, 2, 3, padding=1, bias=False))
    fan = conv.fanout(torch.zeros(1, 1, 4, 4))
    assert fan[0, 0, 0].item() == 2 * 4 and fan[0, 1, 1].item() == 2 * 9  # corner: 4 windows, inside: 9
    # 1-D valid taps over 4 outputs: 2 + 3 + 3 + 2 = 10, so 10 × 10 per output channel
    assert conv.macs_per_sample(torch.Size([1, 4, 4])) == 2 * 10 * 10 == int(fan.sum().item())


def test_unfolded_batchnorm_becomes_gated_affine():
    class AfterPool(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.fc = nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.Linear(2 * 2 * 2, 3)

        def forward(self, x):
            return self.fc(F.relu(self.bn(F.max_pool2d(F.relu(self.conv(x)), 2))).flatten(1))

    torch.manual_seed(0)
    model = AfterPool().eval()
    model.bn.running_mean.uniform_(-1, 1)
    qann = quantize(model).eval()
    x = torch.randn(3, 1, 4, 4)
    calibrate(qann, [x])
    snn = convert(qann.double())
    assert any(isinstance(m, GatedAffine) for m in snn.modules())
    assert torch.equal(snn(x.double(), 40)[-1], qann(x.double()))


def test_resnet18_from_quantize_converts_and_matches():
    qann, x = _qann("resnet18", (1, 3, 16, 16))
    snn = convert(qann.double())
    r = snn.simulate(x.double(), 60, until_quiet=True)
    assert r.converged.all() and torch.equal(r.output[-1], qann(x.double()))
    assert len(snn.named_neurons()) == 18


def test_float32_predictions_match_the_qann():
    qann, x = _qann("vgg_small", (64, 1, 28, 28))
    snn = convert(qann)
    out = snn.simulate(x, 40, until_quiet=True).output[-1]
    assert (out.argmax(1) == qann(x).argmax(1)).float().mean() >= 0.95


def test_double_and_device_move():
    qann, _ = _qann()
    snn = convert(qann).double()
    assert all(m.threshold.dtype == torch.float64 for _, m in snn.named_neurons())
    if torch.cuda.is_available():  # exercised on GPU machines
        snn = snn.cuda()
        assert snn(torch.randn(2, 1, 28, 28, dtype=torch.float64, device="cuda"), 4).is_cuda
