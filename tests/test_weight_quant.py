"""Low-bit weights (issue 28): the LSQ and sigmoid-sum weight quantizers, and invariant E with them.

Checked against formulas written out here (the full sum over every border, the LSQ gradients),
not against the implementation's own helpers.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from qffs.quant import quantize
from qffs.quant.weight_graph import (
    WeightSpec,
    bake_weights,
    drop_stale_levels,
    integer_weights,
    weight_quantizers,
    weight_size,
)
from qffs.quant.weights import LSQWeight, SigmoidSumWeight, level_bound
from qffs.snn import convert
from qffs.snn.layers import GatedLayer
from tests.snn_graphs import build_qann, genomes, quantizer_levels

pytestmark = pytest.mark.usefixtures("one_thread")


def full_sum(x: torch.Tensor, bits: int, temperature: float | None) -> torch.Tensor:
    """Σ_i s_i·f(x − b_i) − o over every border (METHODS §2.3): f = σ(T·) or, T None, Θ (Θ(0) = 1)."""
    if bits == 1:
        borders, gaps, offset = torch.tensor([0.0]), torch.tensor([2.0]), 1.0
    else:
        p = level_bound(bits)
        borders = torch.arange(2 * p, dtype=torch.float64) - p + 0.5
        gaps, offset = torch.ones(2 * p, dtype=torch.float64), float(p)
    d = x.unsqueeze(-1) - borders.to(x)
    f = (d >= 0).to(x.dtype) if temperature is None else torch.sigmoid(temperature * d)
    return (gaps.to(x) * f).sum(-1) - offset


def weights_near_borders(bits: int, scale: float = 0.05) -> torch.Tensor:
    """Weights spread over the whole grid and past it, some exactly on borders."""
    p = level_bound(bits)
    w = torch.linspace(-(p + 2) * scale, (p + 2) * scale, 2001, dtype=torch.float64)
    on_border = (torch.arange(-p, p, dtype=torch.float64) + 0.5) * scale if bits > 1 else torch.zeros(1)
    return torch.cat([w, on_border.double()]).reshape(1, -1)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_sigmoid_sum_at_inference_is_the_step_function(bits):
    w = weights_near_borders(bits)
    q = SigmoidSumWeight(w, bits).double().eval()
    s = float(q.scale())
    expected = s * full_sum(w / s, bits, None)
    assert torch.equal(q(w), expected)
    assert set(torch.unique(q.levels(w)).tolist()) <= set(range(-level_bound(bits), level_bound(bits) + 1)) - (
        {0} if bits == 1 else set())


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_sigmoid_sum_training_form_and_its_gradient(bits):
    w0 = weights_near_borders(bits)
    q = SigmoidSumWeight(w0, bits).double().train()
    s = float(q.scale())
    gaps = []
    for temperature in (5.0, 20.0, 100.0, 1000.0):
        q.temperature.fill_(temperature)
        w = w0.clone().requires_grad_(True)
        out = q(w)
        torch.testing.assert_close(out, s * full_sum(w0 / s, bits, temperature), rtol=0, atol=1e-12)
        (grad,) = torch.autograd.grad(out.sum(), w)
        # closed form (METHODS §2.4, α = 1/β = s): dW_Q/dW = T·Σ_i s_i σ_i(1 − σ_i)
        sig = torch.sigmoid(temperature * (w0.unsqueeze(-1) / s - _borders(bits).to(w0)))
        closed = temperature * (_gaps(bits).to(w0) * sig * (1 - sig)).sum(-1)
        torch.testing.assert_close(grad, closed, rtol=1e-9, atol=1e-12)
        assert torch.isfinite(grad).all()
        on_border = (s * _borders(bits)).reshape(1, -1).requires_grad_(True)
        (border_grad,) = torch.autograd.grad(q(on_border).sum(), on_border)
        assert (border_grad > 0).all()                            # nonzero at the borders
        q.eval()
        hard = q(w0)
        q.train()
        gaps.append(float((out.detach() - hard).abs().mean()))
    assert all(later < earlier for earlier, later in zip(gaps, gaps[1:], strict=False)), gaps   # → the step
    assert gaps[-1] < 0.02 * s


def _borders(bits: int) -> torch.Tensor:
    p = level_bound(bits)
    return torch.zeros(1, dtype=torch.float64) if bits == 1 else torch.arange(2 * p, dtype=torch.float64) - p + 0.5


def _gaps(bits: int) -> torch.Tensor:
    return torch.full((1,), 2.0, dtype=torch.float64) if bits == 1 else torch.ones(2 * level_bound(bits),
                                                                                     dtype=torch.float64)


@pytest.mark.parametrize("bits", [1, 2, 4])
@pytest.mark.parametrize("per_channel", [False, True])
def test_lsq_weight_gradients_match_the_formulas(bits, per_channel):
    torch.manual_seed(bits)
    w0 = torch.randn(3, 4, 3, 3, dtype=torch.float64) * 0.2
    q = LSQWeight(w0, bits, per_channel).double().train()
    w = w0.clone().requires_grad_(True)
    upstream = torch.randn_like(w0)
    (q(w) * upstream).sum().backward()
    s = q.scale().detach()
    v = w0 / s
    p = level_bound(bits)
    level = torch.where(v >= 0, 1.0, -1.0).double() if bits == 1 else torch.round(v).clamp(-p, p)
    torch.testing.assert_close(q(w0).detach(), level * s, rtol=0, atol=0)      # forward: s·level
    inside = (v.abs() <= p).double()
    torch.testing.assert_close(w.grad, upstream * inside)                       # straight through inside
    dq_ds = torch.where(v.abs() <= p, level - v, torch.sign(v) * p)             # LSQ: round(v) − v, ±p outside
    n = w0[0].numel() if per_channel else w0.numel()
    per = (upstream * dq_ds).sum(dim=(1, 2, 3), keepdim=True) if per_channel else (upstream * dq_ds).sum()
    torch.testing.assert_close(q.step.grad, per / (n * p) ** 0.5)


def _net() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1),
                         nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 25, 4)).eval()


@pytest.mark.parametrize("quantizer", ["lsq", "sigmoid"])
@pytest.mark.parametrize("bits,per_channel", [(1, False), (2, True), (4, False)])
def test_snn_weights_are_integers_times_a_scale(quantizer, bits, per_channel):
    qann = quantize(_net(), weights=WeightSpec(bits, quantizer, per_channel, edge_bits=None))
    assert sum(isinstance(m, nn.BatchNorm2d) for m in qann.modules()) == 2   # they train beside the weights
    assert [q.bits for _, q in weight_quantizers(qann)] == [bits] * 3
    qann(torch.randn(4, 2, 5, 5))                                          # the caller's QANN keeps working
    snn = convert(qann)
    layers = [m for m in snn.modules() if isinstance(m, GatedLayer)]
    assert len(layers) == 3
    for gated in layers:
        layer = gated.layer
        levels, scale = layer.weight_levels.to(layer.weight.dtype), layer.weight_scale.to(layer.weight.dtype)
        assert torch.equal(layer.weight, levels * scale)         # weight = scale · integer level
        assert int(levels.abs().max()) <= level_bound(bits)
        assert (scale.numel() == layer.weight.shape[0]) == per_channel
        for channel in layer.weight:
            assert torch.unique(channel).numel() <= 2 ** bits
        assert gated.describe()["weight_bits"] == bits
    size = weight_size(qann)
    assert size["compression"] > 32 / (bits + 4)                          # the biases stay float32


def test_batchnorm_trains_beside_weights_quantized_on_the_folded_grid():
    net = _net()
    net[0] = nn.Conv2d(2, 6, 3, padding=1, bias=False)   # its BatchNorm's shift becomes its bias
    for bn in (net[1], net[4]):
        bn.running_mean.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.3, 3.0)
        bn.weight.data.uniform_(0.5, 2.0)
    qann = quantize(net, weights=WeightSpec(3, per_channel=True, edge_bits=None))
    x = torch.randn(8, 2, 5, 5)
    baked = copy.deepcopy(qann)
    bake_weights(baked)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in baked.modules())  # folded for good
    assert weight_size(baked)["bits"] == weight_size(qann)["bits"]           # the BatchNorms' biases counted before
    conv = baked.get_submodule("0")
    assert torch.equal(conv.weight, conv.weight_levels.float() * conv.weight_scale)
    torch.testing.assert_close(baked(x), qann(x), rtol=1e-5, atol=1e-5)    # evaluation: the folded network
    qann.train()
    qann(x).sum().backward()
    assert qann.get_submodule("1").weight.grad.abs().sum() > 0                # γ learns, through the grid too
    copied = copy.deepcopy(qann).eval()   # the copy's quantizers see the copy's BatchNorm, not the original's
    copied.get_submodule("1").running_var.mul_(4.0)
    assert not torch.equal(copied.get_submodule("0").weight, qann.eval().get_submodule("0").weight)


@pytest.mark.parametrize("bits", [1, 3])
def test_the_folded_grid_is_exact_for_tiny_and_zero_batchnorm_scales(bits):
    """Binary weights cannot shrink with c: QAT drove running variances to 1e23 on ResNet-20. The
    pair must still equal its folded form (a clamped c made them differ), and γ = 0 gives β alone."""
    net = _net().double()
    net[1].running_var[:3] = torch.tensor([1e23, 1e30, 4.0], dtype=torch.float64)
    net[1].weight.data[2] = 0.0
    qann = quantize(net, weights=WeightSpec(bits, edge_bits=None)).eval()
    x = torch.randn(8, 2, 5, 5, dtype=torch.float64)
    baked = copy.deepcopy(qann)
    bake_weights(baked)
    torch.testing.assert_close(baked(x), qann(x), rtol=1e-12, atol=1e-12)
    conv = baked.get_submodule("0")
    assert torch.equal(conv.weight[2], torch.zeros_like(conv.weight[2])) and not conv.weight_levels[2].any()


def test_weights_moved_off_their_grid_lose_their_integer_levels():
    snn = convert(quantize(_net(), weights=WeightSpec(3, edge_bits=None)))
    layers = [(name, m.layer) for name, m in snn.named_modules() if isinstance(m, GatedLayer)]
    assert integer_weights(snn) and not drop_stale_levels(snn)            # freshly baked: all on the grid
    with torch.no_grad():
        layers[1][1].weight.add_(1e-3)                                    # as fine-tuning does
    assert drop_stale_levels(snn) == [f"{layers[1][0]}.layer"]
    assert not hasattr(layers[1][1], "weight_levels") and hasattr(layers[0][1], "weight_levels")
    assert not integer_weights(snn)


def test_edge_layers_keep_their_own_width():
    qann = quantize(_net(), weights=WeightSpec(2, "lsq"))
    assert [q.bits for _, q in weight_quantizers(qann)] == [8, 2, 8]


SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)


@settings(max_examples=60, **SETTINGS)
@given(genomes(), st.sampled_from([1, 2, 4, 8]), st.sampled_from(["lsq", "sigmoid"]), st.booleans(),
       st.sampled_from([None, 8]))
def test_invariant_e_with_quantized_weights(g, bits, quantizer, per_channel, edge_bits):
    qann, x = build_qann(g, weights=WeightSpec(bits, quantizer, per_channel, edge_bits))
    result = convert(qann).simulate(x, 200, until_quiet=True, record_counts=True)
    assert result.converged.all()
    assert torch.equal(result.output[-1], qann(x))
    counts = {r.name: r.counts for r in result.neurons}
    for name, level in quantizer_levels(qann, x).items():
        assert torch.equal(counts[name], level), name
