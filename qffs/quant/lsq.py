"""The LSQ activation quantizer (SPEC §1): unsigned, per-tensor learned step size.

    q(x) = s · clamp(round(x / s), 0, Q),   Q = 2^bits − 1,  round = half-to-even

Backward (Esser et al. 2019), v = x / s:
    dq/dx = 1 if 0 ≤ v ≤ Q else 0
    dq/ds = round(v) − v inside, 0 below, Q above; scaled by g = 1 / sqrt(N · Q),
    N = features per sample.

The step is kept strictly positive by using ``max(step, eps)`` in the forward pass while the
gradient still reaches the raw parameter, so a step pushed below ``eps`` can recover.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import nn

from qffs.errors import QffsError
from qffs.ops import OPS, OpKind, OpRecord

#: Smallest step size used in the forward pass; keeps s > 0 whatever the optimiser does.
STEP_EPS = 1e-8


@functools.cache
def _open_bounds(dtype: torch.dtype, levels: int) -> tuple[float, float]:
    """(lo, hi) with lo < v < hi  ⇔  0 ≤ v ≤ Q for every v of ``dtype``: the neighbours of 0 and Q.

    ``hardtanh_backward(g, v, lo, hi)`` passes g exactly where lo < v < hi, so these bounds give
    SPEC §1's closed range [0, Q] in one fused pass (a bool mask times g costs three).
    lo is minus the smallest subnormal (tiny·eps), hi is Q plus one ulp of Q.
    """
    info = torch.finfo(dtype)
    return -info.tiny * info.eps, levels + 2.0 ** math.floor(math.log2(levels)) * info.eps


class _LSQFunction(torch.autograd.Function):
    """Forward and SPEC §1 backward in few passes over the tensor (they dominate QAT's extra time).

    With v = x/s and level = clamp(round(v), 0, Q), the step gradient
    dq/ds = round(v) − v inside, Q above, 0 below equals ``level − v·inside`` everywhere, so
    Σ grad·dq/ds = ⟨grad, level⟩ − ⟨grad·inside, v⟩ = ⟨grad, level⟩ − ⟨grad_x, v⟩:
    two dot products, no temporary for dq/ds.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, step: torch.Tensor, levels: int, grad_scale: float):
        s = step.clamp_min(STEP_EPS)
        v = x / s
        level = torch.round(v).clamp_(0, levels)
        ctx.save_for_backward(v, level, s)
        ctx.levels = levels
        ctx.grad_scale = grad_scale
        return level * s

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        v, level, s = ctx.saved_tensors
        grad_x = torch.ops.aten.hardtanh_backward(grad_out, v, *_open_bounds(v.dtype, ctx.levels))
        grad_s = None
        if ctx.needs_input_grad[1]:
            dq = torch.dot(grad_out.reshape(-1), level.reshape(-1)) - torch.dot(grad_x.reshape(-1), v.reshape(-1))
            grad_s = dq.mul(ctx.grad_scale).reshape(s.shape).to(s.dtype)
        return (grad_x if ctx.needs_input_grad[0] else None), grad_s, None, None


def lsq_quantize(x: torch.Tensor, step: torch.Tensor, levels: int) -> torch.Tensor:
    """Fake-quantize ``x`` with step ``step`` to ``levels + 1`` unsigned levels (SPEC §1)."""
    features = x[0].numel() if x.dim() > 1 else x.numel()
    grad_scale = 1.0 / math.sqrt(max(features, 1) * levels)
    return _LSQFunction.apply(x, step, levels, grad_scale)


#: Widest activation a job accepts: Z_max = 255 spikes per neuron, levels fit a QDQ export's uint8.
#: The library itself takes any width (very fine quantizers are a tool for checking a graph).
MAX_BITS = 8


def check_bits(name: str, bits: Any, max_bits: int | None = MAX_BITS) -> int:
    """An activation bit width: an integer from 1 to ``max_bits`` (None: no upper bound)."""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits < 1 or (max_bits is not None and bits > max_bits):
        span = f"from 1 to {max_bits} (Z_max = 2^bits − 1 spikes)" if max_bits is not None else ">= 1"
        raise QffsError(f"{name} must be an integer {span}, got {bits!r}")
    return bits


class LSQActivation(nn.Module):
    """ReLU replacement: unsigned LSQ quantizer with one learned step per tensor.

    Attributes read by the converter: :attr:`bits`, :attr:`levels` (Q = Z_max) and
    :meth:`step_size` (the positive step s, a 0-dim tensor in the module's dtype).
    """

    def __init__(self, bits: int = 2, step: float = 1.0, is_output: bool = False):
        super().__init__()
        self.bits = check_bits("bits", bits, max_bits=None)
        self.levels = 2**self.bits - 1
        self.is_output = bool(is_output)
        self.step = nn.Parameter(torch.tensor(float(step)))

    def step_size(self) -> torch.Tensor:
        """The step s actually used: ``max(step, STEP_EPS)``."""
        return self.step.clamp_min(STEP_EPS)

    def level(self, x: torch.Tensor) -> torch.Tensor:
        """Integer activation level clamp(round(x/s), 0, Q), as a float tensor."""
        return torch.clamp(torch.round(x / self.step_size()), 0, self.levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lsq_quantize(x, self.step, self.levels)

    def extra_repr(self) -> str:
        role = ", output" if self.is_output else ""
        return f"bits={self.bits}, levels={self.levels}, step={float(self.step):.4g}{role}"


#: The default op table learns its activation quantizer here, on import, so that ``qffs.ops`` imports
#: nothing of ``qffs.quant``: whoever holds an ``LSQActivation`` has imported this module.
QUANTIZER = OPS.register(OpRecord(LSQActivation, OpKind.QUANTIZER))
