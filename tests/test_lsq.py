"""The LSQ activation quantizer against SPEC §1: forward values, hand-written gradients."""

from __future__ import annotations

import math

import pytest
import torch

from qffs.quant.lsq import STEP_EPS, LSQActivation, lsq_quantize


def _quantizer(bits: int, step: float, dtype=torch.float64) -> LSQActivation:
    return LSQActivation(bits, step=step).to(dtype)


def test_forward_hand_values_ties_half_to_even_and_clamp():
    q = _quantizer(2, 1.0)  # Q = 3
    x = torch.tensor([-5.0, -0.4, 0.0, 0.4, 0.5, 0.6, 1.5, 2.5, 2.6, 3.0, 3.4, 3.5, 100.0], dtype=torch.float64)
    expected = torch.tensor([0, 0, 0, 0, 0, 1, 2, 2, 3, 3, 3, 3, 3], dtype=torch.float64)
    assert torch.equal(q(x), expected)
    assert torch.equal(q.level(x), expected)


def test_forward_scales_with_step_and_levels():
    q = _quantizer(3, 0.25)  # Q = 7, range [0, 1.75]
    x = torch.tensor([0.1, 0.13, 0.3, 1.0, 1.7, 2.0], dtype=torch.float64)
    assert torch.allclose(q(x), torch.tensor([0.0, 0.25, 0.25, 1.0, 1.75, 1.75], dtype=torch.float64))
    assert q.levels == 7 and q.bits == 3


def _hand_gradients(x, s, levels, grad_out):
    """SPEC §1's backward, written out independently of the implementation."""
    v = x / s
    inside = (v >= 0) & (v <= levels)
    grad_x = grad_out * inside.to(x.dtype)
    dq_ds = torch.where(inside, torch.round(v) - v, torch.where(v > levels, torch.full_like(v, levels),
                                                                torch.zeros_like(v)))
    features = x[0].numel()
    g = 1.0 / math.sqrt(features * levels)
    return grad_x, (grad_out * dq_ds).sum() * g


@pytest.mark.parametrize("bits", [2, 3])
def test_gradients_match_spec_formulas_with_grad_scale(bits):
    torch.manual_seed(0)
    x = (torch.randn(4, 3, 5, 5, dtype=torch.float64) * 2).requires_grad_()
    q = _quantizer(bits, 0.7)
    grad_out = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    q(x).backward(grad_out)
    s = q.step.detach()  # 0.7 as stored (a float32 literal widened to float64)
    hand_x, hand_s = _hand_gradients(x.detach(), s, q.levels, grad_out)
    assert torch.allclose(x.grad, hand_x)
    assert torch.allclose(q.step.grad, hand_s, rtol=1e-12, atol=0)
    # g = 1/sqrt(N·Q) with N = 75 features per sample, not the 300 elements of the batch
    v = x.detach() / s
    dq_ds = torch.where((v >= 0) & (v <= q.levels), torch.round(v) - v, (v > q.levels).double() * q.levels)
    unscaled = float((grad_out * dq_ds).sum())
    assert math.isclose(float(q.step.grad), unscaled / math.sqrt(75 * q.levels), rel_tol=1e-12)


def test_boundaries_v0_and_vQ_are_inside_the_straight_through_range():
    q = _quantizer(2, 0.5)  # Q = 3: v = 0 at x = 0, v = Q at x = 1.5
    x = torch.tensor([[-1e-9, 0.0, 1.5, 1.5 + 1e-9]], dtype=torch.float64, requires_grad=True)
    q(x).sum().backward()
    assert x.grad.tolist() == [[0.0, 1.0, 1.0, 0.0]]
    # dq/ds: 0 below, round(v) − v = 0 at both boundaries, Q above; g = 1/sqrt(4·3)
    assert math.isclose(float(q.step.grad), 3.0 / math.sqrt(4 * 3), rel_tol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bits", [1, 2, 3])
def test_straight_through_range_is_closed_to_the_last_representable_value(dtype, bits):
    """dq/dx = 1 exactly on [0, Q]: at 0 and Q, and 0 at their nearest neighbours outside, in every dtype."""
    q = LSQActivation(bits, step=1.0).to(dtype)  # s = 1, so v = x
    levels = torch.tensor(float(q.levels), dtype=dtype)
    below = -torch.finfo(dtype).tiny * torch.finfo(dtype).eps          # largest negative value of dtype
    above = torch.nextafter(levels.double(), torch.tensor(100.0, dtype=torch.float64)).to(dtype)
    if not above > levels:  # half types: the double neighbour rounds back to Q; step one ulp of Q up
        above = levels + 2.0 ** math.floor(math.log2(q.levels)) * torch.finfo(dtype).eps
        ulp = torch.finfo(dtype).eps * 2.0 ** math.floor(math.log2(q.levels))
        assert (above - levels) > 0 and float(above - levels) == float(ulp)
    x = torch.tensor([[below, 0.0, 0.5, float(levels), float(above)]], dtype=dtype)
    assert x[0, 0] < 0 and x[0, 4] > levels
    x.requires_grad_()
    q(x).sum().backward()
    assert x.grad.float().tolist() == [[0.0, 1.0, 1.0, 1.0, 0.0]]


def test_step_stays_positive_and_a_gradient_step_brings_it_back():
    q = _quantizer(2, 1.0)
    with torch.no_grad():
        q.step.fill_(-0.3)
    assert q.step_size().item() == pytest.approx(STEP_EPS) and q.step_size().item() > 0
    x = torch.tensor([[0.5, 2.0, -1.0]], dtype=torch.float64)
    out = q(x)
    assert torch.isfinite(out).all() and (out >= 0).all()
    # every input is far above Q·eps, so dq/ds = Q everywhere: loss = −Σq pushes s up
    (-q(x).sum()).backward()
    assert float(q.step.grad) < 0
    with torch.no_grad():
        q.step -= 1.0 * q.step.grad
    assert q.step.item() > 0 and q.step_size().item() == q.step.item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_float32_and_float64(dtype):
    q = LSQActivation(2, step=0.5).to(dtype)
    x = torch.linspace(-1, 3, 17, dtype=dtype).reshape(1, -1).requires_grad_()
    out = q(x)
    assert out.dtype == dtype
    out.sum().backward()
    assert x.grad.dtype == dtype and q.step.grad.dtype == dtype
    assert torch.equal(out.detach() / 0.5, torch.clamp(torch.round(x.detach() / 0.5), 0, 3))


def test_functional_form_matches_module():
    x = torch.randn(2, 6, dtype=torch.float64)
    q = _quantizer(2, 0.4)
    assert torch.equal(lsq_quantize(x, q.step, q.levels), q(x))


def test_rejects_zero_bits():
    with pytest.raises(ValueError):
        LSQActivation(0)


@pytest.mark.parametrize("bits", [0, 9, 64, 2.0, True])
def test_job_bit_widths_outside_1_to_8_are_refused(bits):
    from qffs.errors import QffsError
    from qffs.quant.lsq import check_bits

    with pytest.raises(QffsError, match="--bits must be an integer from 1 to 8"):
        check_bits("--bits", bits)
    if bits in (0, 2.0, True):   # the library takes any positive integer width, nothing else
        with pytest.raises(QffsError, match="bits must be an integer >= 1"):
            LSQActivation(bits)
