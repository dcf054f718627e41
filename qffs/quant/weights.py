"""Weight quantizers: a conv/linear weight as ``scale · level``, level a small signed integer.

Both quantizers share one level set per width B (as the sigmoid-sum paper's table):

    B = 1: {−1, +1} (binary);   B ≥ 2: {−p, …, p}, p = 2^(B−1) − 1 (8 bits: ±127, 2 bits: ternary)

so a channel holds at most 2^B distinct values. Each is a :mod:`torch.nn.utils.parametrize`
parametrization of ``weight``: the layer keeps its float weight as ``original``, and every forward
reads the quantized one.

- :class:`LSQWeight` (Esser et al. 2019): ``w_q = s · clamp(round(w/s), −p, p)`` (binary: ``s·sign``),
  straight-through for w inside the range, the LSQ step gradient scaled by 1/sqrt(N·p); the same
  hard values in training and evaluation.
- :class:`SigmoidSumWeight` (Yang et al. 2019; Shymyrbay et al. 2022, METHODS §2):
  ``w_q = α·(Σ_i s_i·σ(T(βw − b_i)) − o)`` while training, the exact steps ``Θ(βw − b_i)`` in
  evaluation; α = 1/β learned (tied, see the class), the temperature T raised by the caller every
  epoch. Autograd differentiates it (the paper's printed gradients have errors, METHODS §2.4).

Both start from the step that minimises ‖w − w_q‖² (the paper's rule β = 5p/(4·max|w|) zeroes
most weights at 2 bits), per tensor or per output channel, and both scale the step's gradient
by 1/sqrt(N·p) as LSQ does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from qffs.errors import QffsError

#: Weight quantizers by name (the ``--weight-quantizer`` choices).
WEIGHT_QUANTIZERS = ("lsq", "sigmoid")

#: Borders each side of a weight summed exactly while training the sigmoid sum; the others are
#: taken as 0 or 1 (σ(±T·WINDOW) differs from them by < 4e-4 at T = 1, < 1e-30 at T = 20).
WINDOW = 8

#: Candidate steps, as fractions of max |w| / p, searched for the initial step.
_FRACTIONS = torch.linspace(0.02, 1.0, 99)


def check_weight_bits(name: str, bits: Any) -> int:
    """A weight width: an integer from 1 to 8."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise QffsError(f"{name} must be an integer from 1 to 8 (levels −(2^(B−1)−1)…2^(B−1)−1, ±1 at 1 bit), "
                        f"got {bits!r}")
    return bits


def level_bound(bits: int) -> int:
    """p, the largest level: 1 for binary (levels ±1), else 2^(B−1) − 1."""
    return 1 if bits == 1 else 2 ** (bits - 1) - 1


def hard_levels(v: torch.Tensor, bits: int) -> torch.Tensor:
    """The integer level of ``v = w / scale``: sign (0 → +1) for binary, else clamp(round(v), −p, p)."""
    if bits == 1:
        return torch.where(v >= 0, 1.0, -1.0).to(v.dtype)
    p = level_bound(bits)
    return torch.round(v).clamp_(-p, p)


def _channel_view(w: torch.Tensor, per_channel: bool) -> tuple[int, ...]:
    return (w.shape[0],) + (1,) * (w.dim() - 1) if per_channel else ()


def initial_step(w: torch.Tensor, bits: int, per_channel: bool) -> torch.Tensor:
    """The step (per tensor or per output channel) minimising ‖w − s·level(w/s)‖²."""
    w = w.detach().double()
    rows = w.reshape(w.shape[0], -1) if per_channel else w.reshape(1, -1)
    top = rows.abs().amax(1, keepdim=True).clamp_min(1e-12) / level_bound(bits)      # [R, 1]
    if bits == 1:   # binary: the mean |w| is the L2-optimal scale
        best = rows.abs().mean(1, keepdim=True).clamp_min(1e-12)
    else:   # one candidate at a time: a large linear layer times 99 candidates would not fit
        errors = []
        for fraction in _FRACTIONS.tolist():
            step = top * fraction
            errors.append(((hard_levels(rows / step, bits) * step - rows) ** 2).sum(1))
        best = top * _FRACTIONS.to(w)[torch.stack(errors, 1).argmin(1)].unsqueeze(1)
    return best.reshape(_channel_view(w, per_channel)).float()


class WeightQuantizer(nn.Module):
    """What both quantizers share: width, level bound, granularity and the (levels, scale) view."""

    name = ""

    def __init__(self, bits: int, per_channel: bool = False):
        super().__init__()
        self.bits = check_weight_bits("weight bits", bits)
        self.bound = level_bound(self.bits)
        self.per_channel = bool(per_channel)

    def scale(self) -> torch.Tensor:
        """The per-tensor (0-dim) or per-channel ([C, 1, …]) factor: weight = scale · level."""
        raise NotImplementedError

    def levels(self, w: torch.Tensor) -> torch.Tensor:
        """The integer level of each weight at inference (float tensor holding integers)."""
        raise NotImplementedError

    def hard(self, w: torch.Tensor) -> torch.Tensor:
        """The deployed weight, ``scale · level``: what evaluation and the SNN use."""
        return self.levels(w) * self.scale().to(w.dtype)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, levels=±{self.bound}{', per channel' if self.per_channel else ''}"


class LSQWeight(WeightQuantizer):
    """Signed LSQ: ``s · clamp(round(w/s), −p, p)`` with a learned step ``s`` (per tensor or channel)."""

    name = "lsq"

    def __init__(self, weight: torch.Tensor, bits: int, per_channel: bool = False):
        super().__init__(bits, per_channel)
        self.step = nn.Parameter(initial_step(weight, self.bits, self.per_channel).to(weight.dtype))
        per_scale = weight[0].numel() if self.per_channel else weight.numel()
        self.grad_scale = 1.0 / float(per_scale * self.bound) ** 0.5

    def scale(self) -> torch.Tensor:
        return self.step.abs().clamp_min(1e-12)

    def levels(self, w: torch.Tensor) -> torch.Tensor:
        return hard_levels(w / self.scale().to(w.dtype), self.bits)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        s = self.scale().to(w.dtype)
        s = s * self.grad_scale + (s - s * self.grad_scale).detach()   # LSQ's gradient scale, same value
        v = w / s
        inside = v.clamp(-self.bound, self.bound)                       # straight-through inside the range
        return (inside + (hard_levels(v, self.bits) - inside).detach()) * s


class SigmoidSumWeight(WeightQuantizer):
    """``α·(Σ_i s_i σ(T(βw − b_i)) − o)`` in training, the step function in evaluation (METHODS §2.3).

    Borders b_i at the midpoints of the levels (binary: one border at 0, s_1 = 2). α and β are
    tied, α = 1/β = ``step`` (the grid's step, learned as LSQ's is): learned apart, as the paper
    does, α's gradient (every weight's gradient times its level) threw the QAT of a pretrained
    network off at once (Fashion-MNIST, one epoch: loss 0.33 with LSQ, 6.1 untied, 0.24 tied).
    ``temperature`` is a buffer, so a resumed run continues at the temperature it had.
    """

    name = "sigmoid"

    def __init__(self, weight: torch.Tensor, bits: int, per_channel: bool = False):
        super().__init__(bits, per_channel)
        self.step = nn.Parameter(initial_step(weight, self.bits, self.per_channel).to(weight.dtype))
        self.register_buffer("temperature", torch.tensor(1.0, dtype=weight.dtype))
        per_scale = weight[0].numel() if self.per_channel else weight.numel()
        self.grad_scale = 1.0 / float(per_scale * self.bound) ** 0.5

    def scale(self) -> torch.Tensor:
        return self.step.abs().clamp_min(1e-12)

    def levels(self, w: torch.Tensor) -> torch.Tensor:
        x = w / self.scale().to(w.dtype)
        if self.bits == 1:
            return torch.where(x >= 0, 1.0, -1.0).to(w.dtype)
        return torch.floor(x + 0.5).clamp_(-self.bound, self.bound)   # Σ Θ(x − b_i) − p, Θ(0) = 1

    def soft_levels(self, x: torch.Tensor) -> torch.Tensor:
        """Σ_i s_i σ(T(x − b_i)) − o at x = βw, the borders within :data:`WINDOW` of x summed exactly."""
        t = self.temperature.to(x.dtype)
        if self.bits == 1:
            return 2 * torch.sigmoid(t * x) - 1
        p, n = self.bound, 2 * self.bound                     # borders b_j = j − p + ½, j = 0 … n−1
        below = torch.floor(x.detach() + p - 0.5)             # index of the border just below x
        j = below.unsqueeze(-1) + torch.arange(1 - WINDOW, WINDOW + 1, device=x.device, dtype=x.dtype)
        valid = (j >= 0) & (j < n)
        near = (torch.sigmoid(t * (x.unsqueeze(-1) - (j - p + 0.5))) * valid).sum(-1)
        far = (below - WINDOW + 1).clamp(0, n)                # borders further below: σ taken as 1
        return near + far - p

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.hard(w)
        s = self.scale().to(w.dtype)
        s = s * self.grad_scale + (s - s * self.grad_scale).detach()   # LSQ's gradient scale, same value
        return s * self.soft_levels(w / s)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, temperature={float(self.temperature):.4g}"


def make_weight_quantizer(kind: str, weight: torch.Tensor, bits: int, per_channel: bool) -> WeightQuantizer:
    """The quantizer named ``kind`` (:data:`WEIGHT_QUANTIZERS`), initialised on ``weight``."""
    classes: dict[str, type[LSQWeight] | type[SigmoidSumWeight]] = {"lsq": LSQWeight, "sigmoid": SigmoidSumWeight}
    if kind not in classes:
        raise QffsError(f"--weight-quantizer must be one of {', '.join(WEIGHT_QUANTIZERS)}, got {kind!r}")
    return classes[kind](weight, bits, per_channel)
