"""The spiking dynamics as functions over explicit state (SPEC §3, §4).

``if_step`` advances IF neurons by one step in place (the per-step form), ``if_sequence`` runs
all T steps of a layer at once (the layer-by-layer form), ``if_transition`` is one step without
mutation (the functional form), and ``event_max_pool_sequence`` is event max pooling over a
whole sequence: cumsum → pool → difference. The modules in :mod:`qffs.snn.neuron` and
:mod:`qffs.snn.pooling` hold parameters and call these on the state the engine passes in, so
the three forms share one definition of the arithmetic and give identical counts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from qffs.snn import native
from qffs.snn.surrogate import Surrogate


def count_dtype(z_max: int) -> torch.dtype:
    """The smallest integer type that holds counts 0…``z_max``: counts are compared and updated
    every step, and a byte per neuron moves a quarter of the memory of a float."""
    return torch.int8 if z_max <= 127 else torch.int16 if z_max <= 32767 else torch.int32


def any_per_row(x: torch.Tensor) -> torch.Tensor:
    """Per row (first dim): is any element nonzero? Two max-reductions beat ``any`` (which converts
    to bool first) severalfold on CPU; integer spikes are read as bytes (−1 is 255)."""
    if native.usable(x):
        return native.any_per_row(x)
    x = x.flatten(1)
    if x.dtype == torch.int8:
        return x.view(torch.uint8).amax(1) > 0
    return (x.amax(1) != 0) | (x.amin(1) != 0)


class IFStep(NamedTuple):
    """One IF step's result: the output z·θ, the spikes z (integer), and which neurons fired and unfired."""

    output: torch.Tensor
    spikes: torch.Tensor
    fire: torch.Tensor
    unfire: torch.Tensor | None


def if_step(membrane: torch.Tensor, count: torch.Tensor, current: torch.Tensor, threshold: torch.Tensor,
            z_max: int, negative_spikes: bool = True) -> IFStep:
    """One IF step, updating ``membrane`` and the integer ``count`` (:func:`count_dtype`) in place.

    u ← u + I; +1 if u ≥ θ and Z < Z_max; −1 if u < 0 and Z > 0 (with negative spikes); the
    output is z·θ (exact, z ∈ {−1, 0, 1}). ``unfire`` is None without negative spikes.
    """
    u = membrane.add_(current)
    fire = u.ge(threshold).logical_and_(count.lt(z_max))
    unfire = None
    if negative_spikes:                                  # never together with fire, as θ > 0
        unfire = u.lt(0).logical_and_(count.gt(0))
        spikes = fire.view(torch.int8) - unfire.view(torch.int8)
    else:
        spikes = fire.view(torch.int8)
    out = spikes.to(threshold.dtype).mul_(threshold)     # (a mixed-type mul casts first anyway)
    u.sub_(out)
    count.add_(spikes)
    return IFStep(out, spikes, fire, unfire)


def if_transition(membrane: torch.Tensor, count: torch.Tensor, current: torch.Tensor, threshold: torch.Tensor,
                  z_max: int, negative_spikes: bool = True, surrogate: Surrogate | None = None,
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`if_step` without mutation, counts in the membrane's floating type: (u', Z', z).

    The same operations in the same order, so the same values bit for bit; it is the form a
    graph exporter traces (ONNX has no in-place update and no int8 arithmetic) and autograd
    differentiates. With a ``surrogate`` (:mod:`qffs.snn.surrogate`) the two decisions u ≥ θ and
    u < 0 carry its gradient in u and θ (the spikes stay exact) and the gates Z < Z_max and Z > 0
    are masks without gradient.
    """
    u = membrane + current
    if surrogate is not None:
        spikes = surrogate.spikes(u, threshold, count < z_max, count > 0 if negative_spikes else None)
        out = spikes * threshold
        return u - out, count + spikes, spikes
    fire = (u >= threshold) & (count < z_max)
    spikes = fire.to(u.dtype)
    if negative_spikes:
        spikes = spikes - ((u < 0) & (count > 0)).to(u.dtype)
    out = spikes * threshold
    return u - out, count + spikes, spikes


@dataclass
class IFTrace:
    """What :func:`if_sequence` produced: outputs, per-step spike tallies, and (if asked) history."""

    output: torch.Tensor                  # [T, B, ...] z·θ
    pos: torch.Tensor                     # [T, B] positive spikes per sample and step
    neg: torch.Tensor                     # [T, B] negative spikes
    count_history: torch.Tensor | None    # [T, B, ...] Z after each step (output layer only)
    membrane_history: torch.Tensor | None


def if_sequence(currents: torch.Tensor, membrane: torch.Tensor, count: torch.Tensor, threshold: torch.Tensor,
                z_max: int, negative_spikes: bool = True, *, history: bool = False) -> IFTrace:
    """All T steps of an IF layer, ``currents`` [T, B, ...], state updated in place; ``threshold``
    is θ, or θ_t per step [T] (a fine-tuned network's per-step thresholds).

    A step with no current anywhere that follows a step which changed nothing (no current,
    no spike) changes nothing either, so it is skipped: once a layer is quiet after the input
    window, its remaining steps are free. (A step with no current is not skipped on its own:
    an overshoot still pays off one spike per step.)
    """
    T = currents.shape[0]
    out = torch.zeros_like(currents)
    pos = torch.zeros(currents.shape[:2], dtype=torch.int32, device=currents.device)
    neg = torch.zeros_like(pos)
    counts = torch.empty_like(currents) if history else None
    membranes = torch.empty_like(currents) if history else None
    has_current = currents.flatten(2).ne(0).any(2).any(1).tolist()   # [T]: one pass, one sync
    # a falling per-step threshold can fire a neuron without current: never skip into one
    falls = [False] * T if threshold.dim() == 0 else [False, *(threshold[1:] < threshold[:-1]).tolist()]
    idle = False
    for t in range(T):
        if not (idle and not has_current[t] and not falls[t]):
            step = if_step(membrane, count, currents[t], threshold if threshold.dim() == 0 else threshold[t], z_max,
                           negative_spikes)
            out[t] = step.output
            pos[t] = step.fire.view(torch.uint8).flatten(1).sum(1, dtype=torch.int32)
            if step.unfire is not None:
                neg[t] = step.unfire.view(torch.uint8).flatten(1).sum(1, dtype=torch.int32)
            idle = not has_current[t] and not bool(pos[t].any() or neg[t].any())
        if history:
            counts[t] = count
            membranes[t] = membrane
    return IFTrace(out, pos, neg, counts, membranes)


def event_max_pool_sequence(events: torch.Tensor, pool: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Event max pooling of a whole sequence [T, B, ...]: e_t = pool(C_t) − pool(C_{t−1}), C the cumulative input."""
    T, B = events.shape[:2]
    cumulative = torch.cumsum(events, 0)
    pooled = pool(cumulative.flatten(0, 1))
    pooled = pooled.view(T, B, *pooled.shape[1:])
    out = pooled.clone()
    out[1:] -= pooled[:-1]
    return out


__all__ = ["IFStep", "IFTrace", "any_per_row", "count_dtype", "event_max_pool_sequence", "if_sequence", "if_step",
           "if_transition"]
