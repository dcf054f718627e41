"""Spiking neurons: one base protocol, and the integrate-and-fire neuron of SPEC §3.

Per element and step t, the IF neuron does

    u ← u + I_t
    if   u ≥ θ and Z < Z_max:  z = +1, u ← u − θ, Z ← Z + 1
    elif u < 0 and Z > 0:      z = −1, u ← u + θ, Z ← Z − 1    (negative spike; strict u < 0)
    else:                      z = 0
    emit z·θ

with u from θ/2 (pre-charge) and Z from 0. A neuron's state is ``(membrane, count)``; the
engine creates, threads and drops it (:mod:`qffs.snn.engine`).

A new neuron kind is a subclass of :class:`SpikingNeuron` that gives :meth:`~SpikingNeuron.transition`
(its dynamics, once, without mutation): the per-step and layer-by-layer forms, the summary and
the readouts follow from the base; its NIR form is one entry of :data:`NIR_FORMS`
(:mod:`qffs.export.nir`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from qffs.snn import native
from qffs.snn.dynamics import any_per_row, count_dtype, if_sequence, if_step, if_transition
from qffs.snn.spiking import Clock, Events, SpikingModule, State, stack_events


def spike_tally(spikes: torch.Tensor, measure: bool) -> Events:
    """Per-row events of one step's spikes z: whether any neuron spiked, and (``measure``) the
    positive and negative spikes. Summing bytes is ~20x faster than summing a bool tensor."""
    if not measure:
        return Events(active=any_per_row(spikes))
    flat = spikes.flatten(1)
    pos = (flat > 0).view(torch.uint8).sum(1, dtype=torch.int32)
    neg = (flat < 0).view(torch.uint8).sum(1, dtype=torch.int32)
    return Events(pos=pos, neg=neg, active=(pos + neg) > 0)


class SpikingNeuron(SpikingModule):
    """A layer of neurons with threshold θ, step size s (readouts give ``count · s``) and at most
    ``z_max`` net spikes per element; state ``(membrane, count)``.

    Subclasses give :meth:`transition`. :meth:`step` and :meth:`scan` run it with the engine's
    per-row tallies; the IF neuron replaces them with fused kernels of the same arithmetic.
    """

    kind = "neuron"
    state_parts = ("membrane", "count")
    step_thresholds: torch.Tensor | None

    def __init__(self, threshold: torch.Tensor, step_size: torch.Tensor, z_max: int, *, is_output: bool = False):
        super().__init__()
        self.register_buffer("threshold", threshold.detach().clone().reshape(()))
        self.register_buffer("step_size", step_size.detach().clone().reshape(()))
        self.register_buffer("step_thresholds", None)   # per-step θ_t of a fine-tuned SNN (ATIF-nu), else None
        self.z_max = int(z_max)
        self.is_output = bool(is_output)

    def threshold_at(self, t: int) -> torch.Tensor:
        """θ at the 0-based step t: θ_t with per-step thresholds (the last one from step K on), else θ."""
        steps = self.step_thresholds
        return self.threshold if steps is None else steps[min(t, steps.shape[0] - 1)]

    def set_step_thresholds(self, thresholds: torch.Tensor | None, input_window: int) -> None:
        """Give the layer per-step thresholds θ_1…θ_K (None: back to its one θ): positive, as every
        θ (SPEC §3), and not falling from the input window's last step on, so that a sample quiet
        after the window stays quiet (what the runtime relies on to drop it)."""
        if thresholds is not None:
            thresholds = thresholds.detach().clone().reshape(-1).to(self.threshold)
            if thresholds.numel() == 0 or not bool((thresholds > 0).all()):
                raise ValueError("per-step thresholds must be a non-empty list of positive numbers")
            after = thresholds[max(input_window - 1, 0):]
            if bool((after[1:] < after[:-1]).any()):
                raise ValueError(f"per-step thresholds may not fall from step {input_window} (T_in) on: "
                                 "a quiet sample would fire again")
        self._buffers["step_thresholds"] = thresholds

    def initial_membrane(self) -> torch.Tensor:
        """u₀ (0 unless a subclass pre-charges)."""
        return torch.zeros_like(self.threshold)

    def init_state(self, x: torch.Tensor) -> State:
        """Membranes u₀ and counts 0 (in ``x``'s floating type: the functional form's state)."""
        return (torch.zeros_like(x) + self.initial_membrane().to(x.dtype), torch.zeros_like(x))

    @staticmethod
    def readout_state(state: State) -> tuple[torch.Tensor, torch.Tensor]:
        """(counts, membranes) of a neuron state, as the readouts and records read them."""
        membrane, count = state
        return count, membrane

    def per_row(self, events: Events, measure: bool) -> Events:
        return spike_tally(events.spikes, measure)

    def step(self, x: torch.Tensor, state: State | None, clock: Clock) -> tuple[torch.Tensor, State, Events]:
        y, state, events = self.transition(x, state, clock)
        return y, state, spike_tally(events.spikes, clock.measure)

    def scan(self, x: torch.Tensor, state: State | None, clock: Clock) -> tuple[torch.Tensor, State, Events]:
        """All T steps (``x`` [T·B, ...]); the output layer also returns its (count, membrane) after each step."""
        T = clock.timesteps
        steps = x.view(T, x.shape[0] // T, *x.shape[1:])
        outputs, tallies, counts, membranes = [], [], [], []
        for t in range(T):
            y, state, events = self.step(steps[t], state, clock.at(t))
            outputs.append(y)
            tallies.append(events)
            if self.is_output:
                count, membrane = self.readout_state(state)
                counts.append(count.to(membrane.dtype, copy=True))
                membranes.append(membrane.clone())
        history = (torch.stack(counts), torch.stack(membranes)) if self.is_output else None
        return torch.stack(outputs).flatten(0, 1), state, replace(stack_events(tallies), history=history)

    def describe(self) -> dict[str, Any]:
        described = {"kind": f"{self.kind} output" if self.is_output else self.kind,
                     "threshold": float(self.threshold.detach()), "z_max": self.z_max,
                     "step_size": float(self.step_size)}
        if self.step_thresholds is not None:
            described["step_thresholds"] = [float(v) for v in self.step_thresholds]
        return described

    def notes(self) -> dict[str, Any]:
        """What an exporter records beside the threshold (NIR metadata)."""
        return {"kind": self.kind, "z_max": self.z_max, "initial_membrane": float(self.initial_membrane()),
                "step_size": float(self.step_size), "output": self.is_output}


class IFNeuron(SpikingNeuron):
    """The QFFS IF neuron: θ = T_in·s, pre-charge θ/2 and negative spikes (both switchable for ablations)."""

    kind = "IF"

    def __init__(self, threshold: torch.Tensor, step_size: torch.Tensor, z_max: int, *,
                 precharge: bool = True, negative_spikes: bool = True, is_output: bool = False):
        super().__init__(threshold, step_size, z_max, is_output=is_output)
        self.precharge = bool(precharge)
        self.negative_spikes = bool(negative_spikes)

    def initial_membrane(self) -> torch.Tensor:
        """u₀: θ/2 with pre-charge (the neuron rounds), else 0 (it floors)."""
        return self.threshold / 2 if self.precharge else torch.zeros_like(self.threshold)

    def _integer_state(self, current: torch.Tensor) -> State:
        """The kernels' state: membranes u₀ and counts in the smallest integer type that holds Z_max."""
        return (self.initial_membrane().to(current.dtype).expand_as(current).clone(),
                torch.zeros(current.shape, dtype=count_dtype(self.z_max), device=current.device))

    def transition(self, x: torch.Tensor, state: State | None, clock: Clock) -> tuple[torch.Tensor, State, Events]:
        membrane, count = self.init_state(x) if state is None else state
        threshold = self.threshold_at(clock.t).to(x.dtype)
        u, z, spikes = if_transition(membrane, count, x, threshold, self.z_max, self.negative_spikes,
                                     clock.surrogate)
        return spikes * threshold, (u, z), Events(spikes=spikes)

    def step(self, x: torch.Tensor, state: State | None, clock: Clock) -> tuple[torch.Tensor, State, Events]:
        membrane, count = self._integer_state(x) if state is None else state
        if count.dtype == torch.int8 and native.usable(x, membrane):   # one fused pass
            out, pos, neg = native.if_step(membrane, count, x, self.threshold_at(clock.t).item(), self.z_max,
                                           self.negative_spikes)
            return out, (membrane, count), Events(pos=pos, neg=neg, active=(pos + neg) > 0)
        result = if_step(membrane, count, x, self.threshold_at(clock.t).to(x.dtype), self.z_max, self.negative_spikes)
        if not clock.measure:
            return result.output, (membrane, count), Events(active=any_per_row(result.spikes))
        pos = result.fire.view(torch.uint8).flatten(1).sum(1, dtype=torch.int32)
        neg = result.unfire.view(torch.uint8).flatten(1).sum(1, dtype=torch.int32) if result.unfire is not None \
            else torch.zeros_like(pos)
        return result.output, (membrane, count), Events(pos=pos, neg=neg, active=(pos + neg) > 0)

    def scan(self, x: torch.Tensor, state: State | None, clock: Clock) -> tuple[torch.Tensor, State, Events]:
        T = clock.timesteps
        steps = x.view(T, x.shape[0] // T, *x.shape[1:])
        membrane, count = self._integer_state(steps[0]) if state is None else state
        thresholds = torch.stack([self.threshold_at(t) for t in range(T)]).to(x.dtype) \
            if self.step_thresholds is not None else self.threshold.to(x.dtype)
        trace = if_sequence(steps, membrane, count, thresholds, self.z_max, self.negative_spikes,
                            history=self.is_output)
        history = (trace.count_history, trace.membrane_history) if self.is_output else None
        return trace.output.flatten(0, 1), (membrane, count), Events(pos=trace.pos, neg=trace.neg,
                                                                     active=(trace.pos + trace.neg) > 0,
                                                                     history=history)

    def notes(self) -> dict[str, Any]:
        return {**super().notes(), "negative_spikes": self.negative_spikes, "reset": "subtract",
                "fires_at": "v >= v_threshold"}

    def extra_repr(self) -> str:
        return (f"threshold={float(self.threshold.detach()):.4g}, z_max={self.z_max}, precharge={self.precharge}, "
                f"negative_spikes={self.negative_spikes}" + (", output" if self.is_output else ""))


__all__ = ["IFNeuron", "SpikingNeuron", "spike_tally"]
