"""Weighted layers with bias shutoff, and BatchNorm kept as a gated per-channel affine op.

A bias is a constant current: QFFS adds it only during the input window (t < T_in), so over
the window a layer integrates exactly T_in·(W·y + b). Weights are used as trained (a
weight-quantized layer's are ``scale · level``, its integer levels beside them). Neither
module has state; both read the clock (:class:`~qffs.snn.spiking.Clock`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from qffs.snn.dynamics import any_per_row
from qffs.snn.spiking import NO_EVENTS, Clock, Events, SpikingModule, State


class GatedLayer(SpikingModule):
    """A conv/linear layer whose bias is added only while t < T_in.

    Only the rows (samples; layer by layer, (step, sample) pairs) with any nonzero input are
    multiplied. When the clock asks for measurements it returns per row the synaptic operations
    (each nonzero input element costs its fan-out, the synapses it drives, exact at padded
    borders) and the input events, found in the same product that finds the active rows.
    """

    kind = "weighted"

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer
        self.bias = layer.bias
        layer.bias = None  # the layer runs weight-only; the gate adds the bias
        self._fanout: torch.Tensor | None = None
        self._tally: torch.Tensor | None = None    # [inputs per sample, 2]: fan-out, 1

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

    def _bias(self, out: torch.Tensor) -> torch.Tensor:
        return self.bias.view((1, -1) + (1,) * (out.dim() - 2))

    def _measured(self, x: torch.Tensor) -> Events:
        """Per row of ``x``: synaptic operations, input events and whether any input is nonzero, in one product."""
        return self._tallied((x != 0).to(x.dtype))

    def _tallied(self, nonzero: torch.Tensor) -> Events:
        fanout = self.fanout(nonzero)
        tally = self._tally
        if tally is None or tally.dtype != nonzero.dtype or tally.shape[0] != fanout.numel() \
                or tally.device != nonzero.device:
            tally = self._tally = torch.stack([fanout.flatten(), torch.ones_like(fanout).flatten()],
                                              1).to(nonzero.dtype)
        per_row = nonzero.flatten(1) @ tally   # [rows, inputs] events × [inputs, 2] (fan-out, 1)
        return Events(synops=per_row[:, 0], inputs=per_row[:, 1], active=per_row[:, 1] > 0)

    def per_row(self, events: Events, measure: bool) -> Events:
        return self._tallied(events.nonzero) if events.nonzero is not None else events

    def _active_rows(self, x: torch.Tensor, clock: Clock) -> tuple[torch.Tensor, Events]:
        """The product over the rows with any input (the others' weighted input is exactly 0), and the events."""
        events = self._measured(x) if clock.measure else Events(active=any_per_row(x))
        rows = events.active.nonzero().squeeze(1)
        if rows.numel() == x.shape[0]:
            return self.layer(x), events
        computed = self.layer(x[rows] if rows.numel() else x[:1])
        out = computed.new_zeros((x.shape[0], *computed.shape[1:]))
        if rows.numel():
            out[rows] = computed
        return out, events

    def step(self, x: torch.Tensor, state: State | None, clock: Clock) -> tuple[torch.Tensor, State, Events]:
        out, events = self._active_rows(x, clock)
        if self.bias is not None and clock.in_window:
            out += self._bias(out)
        return out, (), events

    def scan(self, x: torch.Tensor, state: State | None, clock: Clock) -> tuple[torch.Tensor, State, Events]:
        out, events = self._active_rows(x, clock)
        if self.bias is not None:                   # the window's rows
            window = clock.window_rows(out)
            window += self._bias(out)
        T = clock.timesteps
        per_step = {k: getattr(events, k).view(T, -1) for k in ("synops", "inputs", "active")
                    if getattr(events, k) is not None}
        return out, (), Events(**per_step)

    def transition(self, x: torch.Tensor, state: State | None, clock: Clock) -> tuple[torch.Tensor, State, Events]:
        out = self.layer(x)
        if self.bias is not None:
            out = clock.gate(out, self._bias(out))
        return out, (), Events(nonzero=x.ne(0).to(x.dtype)) if clock.measure else NO_EVENTS

    def describe(self) -> dict[str, Any]:
        described = {"kind": type(self.layer).__name__, "fan_in": int(self.layer.weight[0].numel()),
                     "bias": self.bias is not None}
        levels = getattr(self.layer, "weight_levels", None)
        if isinstance(levels, torch.Tensor):   # a weight-quantized QANN's layer: weight = scale · level
            described.update(weight_bits=int(getattr(self.layer, "weight_bits", 0)),
                             weight_values=int(levels.unique().numel()),
                             weight_scales=int(self.layer.weight_scale.numel()))
        return described

    def extra_repr(self) -> str:
        return "bias gated to t < T_in" if self.bias is not None else "no bias"


class GatedAffine(SpikingModule):
    """A BatchNorm that could not be folded: x·scale + shift per channel, shift only while t < T_in."""

    kind = "affine (BatchNorm)"

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm):
        super().__init__()
        std = torch.sqrt(bn.running_var + bn.eps)
        scale = bn.weight.detach() / std if bn.affine else 1 / std
        beta = bn.bias.detach() if bn.affine else torch.zeros_like(bn.running_mean)
        self.register_buffer("scale", scale.clone())
        self.register_buffer("shift", (beta - bn.running_mean * scale).clone())

    def _channels(self, x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return values.view((1, -1) + (1,) * (x.dim() - 2))

    def transition(self, x: torch.Tensor, state: State | None, clock: Clock) -> tuple[torch.Tensor, State, Events]:
        return clock.gate(x * self._channels(x, self.scale), self._channels(x, self.shift)), (), NO_EVENTS

    def scan(self, x: torch.Tensor, state: State | None, clock: Clock) -> tuple[torch.Tensor, State, Events]:
        out = x * self._channels(x, self.scale)
        window = clock.window_rows(out)              # the shift on the window's rows
        window += self._channels(x, self.shift)
        return out, (), NO_EVENTS
