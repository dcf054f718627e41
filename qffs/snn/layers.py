"""Weighted layers with bias shutoff, and BatchNorm kept as a gated per-channel affine op.

A bias is a constant current: QFFS adds it only during the input window (t < T_in), so over
the window a layer integrates exactly T_in·(W·y + b). Weights are used as trained.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qffs.snn.dynamics import any_per_row
from qffs.snn.state import Stateful


class GatedLayer(Stateful):
    """A conv/linear layer whose bias is added only while t < T_in.

    Only the rows (samples; layer by layer, (step, sample) pairs) with any nonzero input are
    multiplied. An attached monitor counts synaptic operations: each nonzero input element
    costs its fan-out (the number of synapses it drives, exact at padded borders).
    """

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer
        self.bias = layer.bias
        layer.bias = None  # the layer runs weight-only; the gate adds the bias
        self._fanout: torch.Tensor | None = None

    def reset(self) -> None:
        self.rows = None

    def fanout(self, x: torch.Tensor) -> torch.Tensor:
        """Synapses driven by each input element (shape of one sample), computed once per shape."""
        if self._fanout is None or self._fanout.shape != x.shape[1:] or self._fanout.device != x.device:
            one = x[:1]
            with torch.enable_grad():
                probe = torch.zeros_like(one, requires_grad=True)
                w = self.layer.weight
                out = self._weighted(probe, torch.ones_like(w))
                (grad,) = torch.autograd.grad(out.sum(), probe)
            self._fanout = grad[0].detach()
        return self._fanout

    def fanout_total(self) -> int:
        """Synapses per sample (= the ANN's MACs) at the last input shape seen."""
        return int(self._fanout.sum().item())

    def _weighted(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        if isinstance(layer, nn.Linear):
            return F.linear(x, weight)
        if isinstance(layer, nn.Conv2d):
            return F.conv2d(x, weight, None, layer.stride, layer.padding, layer.dilation, layer.groups) \
                if layer.padding_mode == "zeros" else layer._conv_forward(x, weight, None)
        return layer._conv_forward(x, weight, None)

    def macs_per_sample(self, sample_shape: torch.Size) -> int:
        """ANN multiply–accumulates of this layer per sample (= the number of synapses)."""
        probe = torch.zeros((1, *sample_shape), dtype=self.layer.weight.dtype, device=self.layer.weight.device)
        return int(self.fanout(probe).sum().item())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        active = self.monitor.inputs(self, x, self.fanout(x)) if self.monitor is not None else any_per_row(x)
        # only the rows with any input cost a product: the others' weighted input is exactly 0
        rows = active.nonzero().squeeze(1)
        if rows.numel() == x.shape[0]:
            out = self.layer(x)
        else:
            computed = self.layer(x[rows] if rows.numel() else x[:1])
            out = computed.new_zeros((x.shape[0], *computed.shape[1:]))
            if rows.numel():
                out[rows] = computed
        if self.bias is not None:
            bias = self.bias.view((1, -1) + (1,) * (out.dim() - 2))
            if self.timesteps is not None:                   # layer by layer: the window's rows
                window = self.window_rows(out)
                window += bias
            elif self.in_window:
                out += bias
        return out

    def extra_repr(self) -> str:
        return "bias gated to t < T_in" if self.bias is not None else "no bias"


class GatedAffine(Stateful):
    """A BatchNorm that could not be folded: x·scale + shift per channel, shift only while t < T_in."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm):
        super().__init__()
        scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(bn.running_var + bn.eps)
        beta = bn.bias.detach() if bn.affine else torch.zeros_like(bn.running_mean)
        self.register_buffer("scale", scale.clone())
        self.register_buffer("shift", (beta - bn.running_mean * scale).clone())

    def reset(self) -> None:
        pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        out = x * self.scale.view(shape)
        if self.timesteps is not None:                       # layer by layer: the shift on the window's rows
            window = self.window_rows(out)
            window += self.shift.view(shape)
            return out
        return out + self.shift.view(shape) if self.in_window else out
