"""Max pooling over spike trains (SPEC §4).

Event max pooling keeps the cumulative input C_t of the pool and emits the change of its
pooled maximum, e_t = maxpool(C_t) − maxpool(C_{t−1}) (value units; several spikes' worth or
negative), so Σ_t e_t = maxpool(C_T). The naive variant (ablation only) max-pools each step's
spikes independently, which overcounts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from qffs.snn.dynamics import event_max_pool_sequence
from qffs.snn.state import Stateful


class EventMaxPool(Stateful):
    """Emits the step-to-step change of max-pooling of the cumulative input."""

    def __init__(self, pool: Callable[[torch.Tensor], torch.Tensor], description: str = ""):
        super().__init__()
        self.pool = pool
        self.description = description
        self.reset()

    def reset(self) -> None:
        self.cumulative: torch.Tensor | None = None
        self.pooled: torch.Tensor | None = None
        self.rows = None

    def keep(self, mask: torch.Tensor) -> None:
        if self.cumulative is not None:
            self.cumulative = self.cumulative[mask]
            self.pooled = None if self.pooled is None else self.pooled[mask]

    def forward(self, events: torch.Tensor) -> torch.Tensor:
        if self.timesteps is not None:                       # layer by layer: cumsum → pool → difference
            T = self.timesteps
            out = event_max_pool_sequence(events.view(T, events.shape[0] // T, *events.shape[1:]), self.pool)
            return out.flatten(0, 1)
        if self.cumulative is None or self.cumulative.shape != events.shape:
            self.cumulative = torch.zeros_like(events)
            self.pooled = None
        self.cumulative.add_(events)                       # the state is ours: update in place
        pooled = self.pool(self.cumulative)
        out = pooled if self.pooled is None else pooled - self.pooled
        self.pooled = pooled
        return out

    def extra_repr(self) -> str:
        return self.description


class NaiveMaxPool(Stateful):
    """Ablation: max pooling applied to each step's spike tensor on its own."""

    def __init__(self, pool: Callable[[torch.Tensor], torch.Tensor], description: str = ""):
        super().__init__()
        self.pool = pool
        self.description = description

    def reset(self) -> None:
        pass

    def forward(self, events: torch.Tensor) -> torch.Tensor:
        return self.pool(events)

    def extra_repr(self) -> str:
        return self.description
