"""Max pooling over spike trains (SPEC §4).

Event max pooling keeps the cumulative input C_t of the pool and emits the change of its
pooled maximum, e_t = maxpool(C_t) − maxpool(C_{t−1}) (value units; several spikes' worth or
negative), so Σ_t e_t = maxpool(C_T); its state is ``(C, maxpool(C))``. The naive variant
(ablation only) max-pools each step's spikes independently, which overcounts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from qffs.snn import native
from qffs.snn.dynamics import event_max_pool_sequence
from qffs.snn.spiking import NO_EVENTS, Clock, Events, SpikingModule, State


class BoundPool:
    """A functional max pool with its constant arguments bound: ``pool(c) = fn(c, *args, **kwargs)``."""

    def __init__(self, fn, args: tuple, kwargs: dict):
        self.fn, self.args, self.kwargs = fn, args, kwargs

    def __call__(self, cumulative: torch.Tensor) -> torch.Tensor:
        return self.fn(cumulative, *self.args, **self.kwargs)


_MAX_POOL2D_ARGS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")


def max_pool2d_window(pool: Callable) -> native.PoolWindow | None:
    """The window of a plain 2-D max pool (``nn.MaxPool2d`` or a bound ``F.max_pool2d``) that the
    fused kernel computes; None for anything else (adaptive, 1-D, ``ceil_mode``, indices)."""
    if isinstance(pool, nn.MaxPool2d):
        options = {name: getattr(pool, name) for name in _MAX_POOL2D_ARGS}
    elif isinstance(pool, BoundPool) and pool.fn in (F.max_pool2d, torch.max_pool2d):
        options = dict(zip(_MAX_POOL2D_ARGS, pool.args)) | pool.kwargs
    else:
        return None
    if options.get("ceil_mode") or options.get("return_indices"):
        return None

    def pair(value) -> tuple[int, int]:
        values = (value,) if isinstance(value, int) else tuple(value)
        return tuple(int(v) for v in values * (2 if len(values) == 1 else 1))   # type: ignore[return-value]

    kernel = pair(options["kernel_size"])
    stride = options.get("stride")
    window = native.PoolWindow(kernel, pair(stride) if stride not in (None, [], ()) else kernel,
                               pair(options.get("padding", 0)), pair(options.get("dilation", 1)))
    if any(p > k // 2 for p, k in zip(window.padding, window.kernel)):
        return None                                   # max_pool2d refuses it: let it say so
    return window


class EventMaxPool(SpikingModule):
    """Emits the step-to-step change of max-pooling of the cumulative input; state (C, maxpool(C))."""

    kind = "event max pool"
    state_parts = ("cumulative", "pooled")

    def __init__(self, pool: Callable[[torch.Tensor], torch.Tensor], description: str = ""):
        super().__init__()
        self.pool = pool
        self.description = description
        self.window = max_pool2d_window(pool)      # for the fused kernel (None: PyTorch only)

    def init_state(self, events: torch.Tensor) -> State:
        """C = 0 and M₋₁ = 0 (so the first output is M − 0 = M exactly)."""
        cumulative = torch.zeros_like(events)
        return cumulative, torch.zeros_like(self.pool(cumulative))

    def transition(self, events: torch.Tensor, state: State | None, clock: Clock) -> tuple[torch.Tensor, State, Events]:
        cumulative, pooled = self.init_state(events) if state is None else state
        cumulative = cumulative + events
        now = self.pool(cumulative)
        return now - pooled, (cumulative, now), NO_EVENTS

    def step(self, events: torch.Tensor, state: State | None, clock: Clock) -> tuple[torch.Tensor, State, Events]:
        cumulative, pooled = self.init_state(events) if state is None else state
        if self.window is not None and events.dim() == 4 and min(self.window.output_size(*events.shape[2:])) > 0 \
                and native.usable(events, cumulative, pooled):
            return native.event_pool_step(cumulative, events, pooled, self.window), (cumulative, pooled), NO_EVENTS
        cumulative.add_(events)                       # the state is the engine's to update in place
        now = self.pool(cumulative)
        return now - pooled, (cumulative, now), NO_EVENTS

    def scan(self, events: torch.Tensor, state: State | None, clock: Clock) -> tuple[torch.Tensor, State, Events]:
        """Layer by layer: cumsum → pool → difference (:func:`event_max_pool_sequence`); no state
        comes back (nothing after the run reads a pool's)."""
        T = clock.timesteps
        out = event_max_pool_sequence(events.view(T, events.shape[0] // T, *events.shape[1:]), self.pool)
        return out.flatten(0, 1), (), NO_EVENTS

    def extra_repr(self) -> str:
        return self.description


class NaiveMaxPool(SpikingModule):
    """Ablation: max pooling applied to each step's spike tensor on its own."""

    kind = "naive max pool"

    def __init__(self, pool: Callable[[torch.Tensor], torch.Tensor], description: str = ""):
        super().__init__()
        self.pool = pool
        self.description = description

    def transition(self, events: torch.Tensor, state: State | None, clock: Clock) -> tuple[torch.Tensor, State, Events]:
        return self.pool(events), (), NO_EVENTS

    def scan(self, events: torch.Tensor, state: State | None, clock: Clock) -> tuple[torch.Tensor, State, Events]:
        return self.pool(events), (), NO_EVENTS

    def extra_repr(self) -> str:
        return self.description
