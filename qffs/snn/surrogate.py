"""Surrogate gradients for the IF neuron's two decisions, and membrane potential rectification (MPR).

Fine-tuning a converted SNN by back-propagation through time (:mod:`qffs.finetune`) needs a
derivative of each spike decision. The QFFS neuron (SPEC §3) makes two: a positive spike when
u ≥ θ, and a negative spike when u < 0. A :class:`Surrogate` gives each the exact step in the
forward pass — the spikes are bit for bit those of the exact neuron — and a smooth derivative in
the backward pass (straight-through: ``step + p(v) − p(v).detach()``). The gates Z < Z_max and
Z > 0 stay exact masks without gradient.

Both decisions are measured on the membrane normalised to its decision interval, x = u/(2θ) for
the spike (θ at x = ½) and x = u/(2θ) + ½ for the negative spike (0 at x = ½), so that the width
means the same in every layer whatever its θ; v = x − ½ is the signed distance to the decision.

- ``sigmoid`` (ATIF, Castagnetti et al. 2023): p(v) = σ(α·v), derivative α·σ(1−σ), α = ``width``
  (default 4, SpikingJelly's; the paper lost its value).
- ``rectangular`` (MPR, Guo et al. 2022): derivative 1/a on |v| < a/2, a = ``width`` (default 1:
  support u ∈ (0, 2θ) around θ, as the paper's (0, 1) around V_th = ½).

MPR (``mpr=k``) passes x through φ(x) = tanh(k(x − ½)) / (2·tanh(k/2)) + ½ before the decision.
φ is strictly increasing with φ(½) = ½, so no spike changes (the decision is taken on u); only
the surrogate's argument becomes φ(x) − ½, which sharpens the derivative near the decision and
damps it far from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from qffs.errors import QffsError

SURROGATES = ("sigmoid", "rectangular")
#: The default width of each surrogate (sigmoid: slope α; rectangular: support a).
DEFAULT_WIDTH = {"sigmoid": 4.0, "rectangular": 1.0}


def mpr(x: torch.Tensor, k: float) -> torch.Tensor:
    """Membrane potential rectification φ(x) = tanh(k(x − ½)) / (2·tanh(k/2)) + ½ (Guo et al., Eq. 8)."""
    return torch.tanh(k * (x - 0.5)) / (2 * math.tanh(k / 2)) + 0.5


@dataclass(frozen=True)
class Surrogate:
    """The backward pass of the spike decisions: ``kind`` (:data:`SURROGATES`), its ``width``
    (None: :data:`DEFAULT_WIDTH`) and the MPR shape ``mpr`` (None: no rectification)."""

    kind: str = "sigmoid"
    width: float | None = None
    mpr: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in SURROGATES:
            raise QffsError(f"unknown surrogate {self.kind!r}: choose {' or '.join(SURROGATES)}")
        if self.width is not None and not (math.isfinite(self.width) and self.width > 0):
            raise QffsError(f"the surrogate width must be positive, got {self.width!r}")
        if self.mpr is not None and not (math.isfinite(self.mpr) and self.mpr > 0):
            raise QffsError(f"--mpr k must be positive (the paper's best: 3), got {self.mpr!r}")

    @property
    def scale(self) -> float:
        """The width in use."""
        return DEFAULT_WIDTH[self.kind] if self.width is None else float(self.width)

    def primitive(self, v: torch.Tensor) -> torch.Tensor:
        """p(v), whose derivative is the surrogate of the step at v = 0 (v: distance to the
        decision in units of 2θ, before MPR)."""
        if self.mpr is not None:
            v = mpr(v + 0.5, self.mpr) - 0.5
        if self.kind == "sigmoid":
            return torch.sigmoid(self.scale * v)
        return torch.clamp(v / self.scale + 0.5, 0.0, 1.0)

    def derivative(self, v: torch.Tensor) -> torch.Tensor:
        """dp/dv, in closed form (what the fused :meth:`spikes` back-propagates; :meth:`primitive`
        differentiated by autograd gives the same)."""
        if self.mpr is not None:
            k = self.mpr
            slope = k / (2 * math.tanh(k / 2)) / torch.cosh(k * v) ** 2
            v = torch.tanh(k * v) / (2 * math.tanh(k / 2))
        if self.kind == "sigmoid":
            sig = torch.sigmoid(self.scale * v)
            d = self.scale * sig * (1 - sig)
        else:
            d = (v.abs() <= self.scale / 2).to(v.dtype) / self.scale
        return d * slope if self.mpr is not None else d

    def spikes(self, u: torch.Tensor, threshold: torch.Tensor, up: torch.Tensor,
               down: torch.Tensor | None) -> torch.Tensor:
        """One step's signed spikes z = [u ≥ θ]·up − [u < 0]·down (the gates as 0/1 masks), exact,
        with the surrogate's gradient in u and θ: :meth:`fire` and :meth:`unfire` fused into one
        autograd node (a few elementwise passes instead of a dozen: BPTT's cost is there)."""
        return _Spikes.apply(u, threshold, up, down, self)

    def fire(self, u: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
        """[u ≥ θ] as 0/1 in u's type, with the surrogate's gradient in u and θ."""
        exact = (u >= threshold).to(u.dtype)
        p = self.primitive(u / (2 * threshold) - 0.5)
        return exact + (p - p.detach())

    def unfire(self, u: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
        """[u < 0] as 0/1 (strict, SPEC §3), with the surrogate's gradient in u and θ."""
        exact = (u < 0).to(u.dtype)
        p = self.primitive(u / (2 * threshold))
        return exact - (p - p.detach())

    def describe(self) -> dict[str, float | str | None]:
        """What a fine-tuned artifact records of its surrogate."""
        return {"kind": self.kind, "width": self.scale, "mpr": self.mpr}


class _Spikes(torch.autograd.Function):
    """:meth:`Surrogate.spikes`: the exact spikes forward; backward, with x = u/(2θ), both decisions'
    dp/dv (at v = x − ½ for the spike, v = x for the negative spike, each under its gate) times
    ∂v/∂u = 1/(2θ) and ∂v/∂θ = −x/θ."""

    @staticmethod
    def forward(ctx, u, threshold, up, down, surrogate):  # type: ignore[override]
        z = ((u >= threshold) & up).to(u.dtype)
        if down is not None:
            z = z - ((u < 0) & down).to(u.dtype)
        ctx.save_for_backward(u, threshold, up, down)
        ctx.surrogate = surrogate
        return z

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        u, threshold, up, down = ctx.saved_tensors
        s: Surrogate = ctx.surrogate
        x = u / (2 * threshold)
        d = s.derivative(x - 0.5) * up
        if down is not None:
            d = d + s.derivative(x) * down
        g = grad * d
        grad_u = g / (2 * threshold) if ctx.needs_input_grad[0] else None
        grad_theta = None
        if ctx.needs_input_grad[1]:
            grad_theta = -(g * x).sum_to_size(threshold.shape) / threshold
        return grad_u, grad_theta, None, None, None


__all__ = ["DEFAULT_WIDTH", "SURROGATES", "Surrogate", "mpr"]
