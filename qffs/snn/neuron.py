"""The integrate-and-fire neuron of SPEC §3: pre-charge, signed spikes, bounded count.

Per element and step t:

    u ← u + I_t
    if   u ≥ θ and Z < Z_max:  z = +1, u ← u − θ, Z ← Z + 1
    elif u < 0 and Z > 0:      z = −1, u ← u + θ, Z ← Z − 1    (negative spike; strict u < 0)
    else:                      z = 0
    emit z·θ

State (u from θ/2 with pre-charge, Z from 0) is created lazily at the first input's shape and
cleared by :meth:`IFNeuron.reset`. Spikes are reported to a :class:`~qffs.snn.monitor.Monitor`
when one is attached.
"""

from __future__ import annotations

import torch

from qffs.snn import native
from qffs.snn.dynamics import any_per_row, count_dtype, if_sequence, if_step
from qffs.snn.state import Stateful


class IFNeuron(Stateful):
    """IF neuron layer with threshold θ = T_in·s and at most ``z_max`` net spikes per element.

    Buffers: ``threshold`` (θ) and ``step_size`` (s, so readouts can use ``count · s``).
    ``precharge`` and ``negative_spikes`` exist for ablations; both are on in QFFS.
    """

    def __init__(self, threshold: torch.Tensor, step_size: torch.Tensor, z_max: int, *,
                 precharge: bool = True, negative_spikes: bool = True, is_output: bool = False):
        super().__init__()
        self.register_buffer("threshold", threshold.detach().clone().reshape(()))
        self.register_buffer("step_size", step_size.detach().clone().reshape(()))
        self.z_max = int(z_max)
        self.precharge = bool(precharge)
        self.negative_spikes = bool(negative_spikes)
        self.is_output = bool(is_output)
        self.reset()

    def reset(self) -> None:
        """Forget membrane, counts and statistics (call before each new input)."""
        self.membrane: torch.Tensor | None = None
        self.count: torch.Tensor | None = None
        self.batch = 0                                # samples of the simulation (rows may be fewer later)
        self.active: torch.Tensor | None = None       # per sample: spiked at the last step ([T, B] layer by layer)
        self.history: tuple[torch.Tensor, torch.Tensor] | None = None   # layer by layer, output: Z and u per step
        self.settled: torch.Tensor | None = None      # per step: final counts of the samples dropped when quiet
        self.rows = None

    def initial_membrane(self) -> torch.Tensor:
        """u₀: θ/2 with pre-charge (the neuron rounds), else 0 (it floors)."""
        return self.threshold / 2 if self.precharge else torch.zeros_like(self.threshold)

    def _init_state(self, current: torch.Tensor) -> None:
        self.membrane = self.initial_membrane().to(current.dtype).expand_as(current).clone()
        self.count = torch.zeros(current.shape, dtype=count_dtype(self.z_max), device=current.device)
        self.settled = None
        self.batch = current.shape[0]

    def forward(self, current: torch.Tensor) -> torch.Tensor:
        if self.timesteps is not None:
            return self._forward_sequence(current)
        if self.membrane is None or self.membrane.shape != current.shape or self.membrane.dtype != current.dtype:
            self._init_state(current)
        if self.count.dtype == torch.int8 and native.usable(current, self.membrane):   # one fused pass
            out, pos, neg = native.if_step(self.membrane, self.count, current, self.threshold.item(), self.z_max,
                                           self.negative_spikes)
            if self.monitor is not None:
                self.monitor.spikes(self, pos, neg if self.negative_spikes else None)
            self.active = (pos + neg) > 0
            return out
        step = if_step(self.membrane, self.count, current, self.threshold.to(current.dtype), self.z_max,
                       self.negative_spikes)
        if self.monitor is not None:
            # per-sample spike counts: summing bytes is ~20x faster than summing a bool tensor
            pos = step.fire.view(torch.uint8).flatten(1).sum(1, dtype=torch.int32)
            neg = step.unfire.view(torch.uint8).flatten(1).sum(1, dtype=torch.int32) if step.unfire is not None else None
            self.monitor.spikes(self, pos, neg)
        self.active = any_per_row(step.spikes)          # the network detects quiet from this
        return step.output

    def keep(self, mask: torch.Tensor) -> None:
        """Drop the quiet samples' rows from the state; their counts are final (:meth:`final_counts`)."""
        if self.count is None:
            return
        if self.settled is None:
            self.settled = torch.zeros((self.batch, *self.count.shape[1:]), dtype=self.count.dtype,
                                       device=self.count.device)
        rows = self.rows if self.rows is not None else torch.arange(self.count.shape[0], device=self.count.device)
        self.settled[rows[~mask]] = self.count[~mask]
        self.membrane, self.count = self.membrane[mask], self.count[mask]

    def final_counts(self) -> torch.Tensor | None:
        """Every sample's signed spike counts at the end of the run (also those dropped when quiet),
        in the membrane's floating type (the QANN's levels' type)."""
        if self.settled is None or self.count is None:
            return None if self.count is None else self.count.to(self.membrane.dtype)
        full = self.settled.clone()
        if self.rows is not None and self.rows.numel():
            full[self.rows] = self.count
        return full.to(self.membrane.dtype)

    def _forward_sequence(self, current: torch.Tensor) -> torch.Tensor:
        """Layer-by-layer: ``current`` holds all T steps, [T·B, ...]; scan them (:func:`if_sequence`)."""
        T = self.timesteps
        steps = current.view(T, current.shape[0] // T, *current.shape[1:])
        self._init_state(steps[0])
        trace = if_sequence(steps, self.membrane, self.count, self.threshold.to(current.dtype), self.z_max,
                            self.negative_spikes, history=self.is_output)
        if self.monitor is not None:
            self.monitor.spikes(self, trace.pos.flatten(), trace.neg.flatten())
        self.active = (trace.pos + trace.neg) > 0                   # [T, B]: per step, as the network reads it
        self.history = (trace.count_history, trace.membrane_history) if self.is_output else None
        return trace.output.flatten(0, 1)

    def extra_repr(self) -> str:
        return (f"threshold={float(self.threshold):.4g}, z_max={self.z_max}, precharge={self.precharge}, "
                f"negative_spikes={self.negative_spikes}" + (", output" if self.is_output else ""))
