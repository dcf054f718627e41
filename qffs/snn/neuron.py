"""The integrate-and-fire neuron of SPEC §3: pre-charge, signed spikes, bounded count.

Per element and step t:

    u ← u + I_t
    if   u ≥ θ and Z < Z_max:  z = +1, u ← u − θ, Z ← Z + 1
    elif u < 0 and Z > 0:      z = −1, u ← u + θ, Z ← Z − 1    (negative spike; strict u < 0)
    else:                      z = 0
    emit z·θ

State (u from θ/2 with pre-charge, Z from 0) is created lazily at the first input's shape and
cleared by :meth:`IFNeuron.reset`. Per-sample statistics are kept for reports.
"""

from __future__ import annotations

import torch

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
        self.record = True
        self.reset()

    def reset(self) -> None:
        """Forget membrane, counts and statistics (call before each new input)."""
        self.membrane: torch.Tensor | None = None
        self.count: torch.Tensor | None = None
        self.pos_spikes: torch.Tensor | None = None   # per sample, summed over elements and steps
        self.neg_spikes: torch.Tensor | None = None
        self.active: torch.Tensor | None = None       # per sample: spiked at the last step

    def initial_membrane(self) -> torch.Tensor:
        """u₀: θ/2 with pre-charge (the neuron rounds), else 0 (it floors)."""
        return self.threshold / 2 if self.precharge else torch.zeros_like(self.threshold)

    def _init_state(self, current: torch.Tensor) -> None:
        self.membrane = self.initial_membrane().to(current.dtype).expand_as(current).clone()
        self.count = torch.zeros_like(current)
        batch = current.shape[0]
        self.pos_spikes = torch.zeros(batch, dtype=torch.long, device=current.device)
        self.neg_spikes = torch.zeros(batch, dtype=torch.long, device=current.device)

    def forward(self, current: torch.Tensor) -> torch.Tensor:
        if self.membrane is None or self.membrane.shape != current.shape or self.membrane.dtype != current.dtype:
            self._init_state(current)
        theta = self.threshold.to(current.dtype)
        u = self.membrane.add_(current)                      # the state is ours: update in place
        fire = u.ge(theta).logical_and_(self.count.lt(self.z_max))
        if self.negative_spikes:                             # never together with fire, as θ > 0
            unfire = u.lt(0).logical_and_(self.count.gt(0))
            spikes = (fire.view(torch.int8) - unfire.view(torch.int8)).to(current.dtype)
        else:
            spikes = fire.to(current.dtype)
        out = spikes * theta                                 # exact: spikes ∈ {−1, 0, 1}
        u.sub_(out)
        self.count.add_(spikes)
        # per-sample spike counts: summing bytes is ~20x faster than summing a bool tensor
        pos = fire.view(torch.uint8).flatten(1).sum(1, dtype=torch.int32)
        neg = unfire.view(torch.uint8).flatten(1).sum(1, dtype=torch.int32) if self.negative_spikes else None
        if self.record:
            self.pos_spikes += pos
            if neg is not None:
                self.neg_spikes += neg
        self.active = (pos > 0) if neg is None else (pos + neg > 0)  # the network detects quiet from this
        return out

    def extra_repr(self) -> str:
        return (f"threshold={float(self.threshold):.4g}, z_max={self.z_max}, precharge={self.precharge}, "
                f"negative_spikes={self.negative_spikes}" + (", output" if self.is_output else ""))
