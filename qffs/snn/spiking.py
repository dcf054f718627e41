"""The protocol every time-dependent module of a spiking graph follows: explicit state, a shared clock.

A :class:`SpikingModule` holds parameters only. The engine (:mod:`qffs.snn.engine`) owns the
state and the :class:`Clock`, and calls one of three forms of each module:

- ``step(x, state, clock) -> (y, state, events)``: one time step; may update ``state`` in place
  and use the fused kernels (the per-step reference runtime);
- ``scan(x, state, clock) -> (y, state, events)``: all T steps at once, time folded into the
  batch (``x`` is [T·B, ...], step-major: the layer-by-layer runtime);
- ``transition(x, state, clock) -> (y, state, events)``: one step without mutation, every
  operation differentiable and traceable (the functional form: export and fine-tuning).

``state`` is a tuple of tensors (``()`` for a module without state); ``None`` asks the module for
its initial state at the input's shape (:meth:`SpikingModule.init_state`, or the kernels' own
layout, e.g. integer counts, in a form that has one). What a call produced for reports is
returned as :class:`Events`; nothing is written back into the module, and forward hooks on it
do not fire during a simulation (the engine calls the forms, not ``forward``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from qffs.snn.surrogate import Surrogate

State = tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class Clock:
    """Where a call stands in time, shared by every module of one run.

    ``t``: the 0-based time step (per step); ``input_window``: T_in, the steps during which the
    input and the biases flow; ``timesteps``: the run's horizon T (layer by layer, the number of
    steps folded into each call's batch); ``measure``: whether the call should tally events for
    reports. The functional form may also be given ``window`` — a 0/1 tensor that replaces the
    ``t < T_in`` test, for a streaming graph whose step is an input — and ``surrogate``, the
    gradient of the spike decisions (None: the exact neuron; :mod:`qffs.snn.surrogate`).
    """

    input_window: int
    timesteps: int = 1
    t: int = 0
    measure: bool = False
    window: torch.Tensor | None = None
    surrogate: Surrogate | None = None

    @property
    def in_window(self) -> bool:
        """True while t < T_in: inputs and biases flow only then (input and bias shutoff). A
        streaming clock (``window`` given) has no step to compare: use :meth:`gate`."""
        if self.window is not None:
            raise TypeError("a streaming clock's window is a tensor: gate with Clock.gate, not in_window")
        return self.t < self.input_window

    def at(self, t: int) -> Clock:
        return replace(self, t=t)

    def gate(self, value: torch.Tensor, added: torch.Tensor) -> torch.Tensor:
        """``value + added`` while t < T_in, else ``value`` (a 0/1 ``window`` tensor: ``value + added·window``)."""
        if self.window is not None:
            return value + added * self.window.to(added.dtype)
        return value + added if self.in_window else value

    def window_rows(self, folded: torch.Tensor) -> torch.Tensor:
        """Layer by layer: the view [T, B, ...] of ``folded`` [T·B, ...] cut to the steps t < T_in."""
        T = self.timesteps
        return folded.view(T, folded.shape[0] // T, *folded.shape[1:])[: self.input_window]


@dataclass(frozen=True)
class Events:
    """What one call produced, for the monitor (all optional; a module fills what it has).

    Per row of the call's input (per step: the samples simulated; layer by layer: [T, B]):
    ``pos``/``neg`` spikes, ``active`` (any spike, or for a weighted layer any nonzero input),
    ``synops`` (nonzero inputs × their fan-out) and ``inputs`` (nonzero inputs). The functional
    form gives per-element tensors instead, which an exporter sums exactly over steps:
    ``spikes`` (z ∈ {−1, 0, 1}) and ``nonzero`` (1 where an input element is nonzero).
    ``history``: a neuron layer's (counts, membranes) after each step, [T, B, ...], from the
    output layer's :meth:`~SpikingModule.scan` (the readouts need every step).
    """

    pos: torch.Tensor | None = None
    neg: torch.Tensor | None = None
    active: torch.Tensor | None = None
    synops: torch.Tensor | None = None
    inputs: torch.Tensor | None = None
    spikes: torch.Tensor | None = None
    nonzero: torch.Tensor | None = None
    history: tuple[torch.Tensor, torch.Tensor] | None = None


NO_EVENTS = Events()


class SpikingModule(nn.Module):
    """A module of a spiking graph: parameters here, state and clock passed in (see the module docstring).

    Subclasses give :meth:`transition`; :meth:`step` and :meth:`scan` default to it (one step,
    and a loop over the T folded steps), and fast subclasses override them with the same
    arithmetic. ``forward(x)`` is one step from rest at t = 0, so the graph can be shape-propagated
    and called like any module.
    """

    #: The kind named in summaries (``describe``).
    kind = "spiking module"
    #: The names of the state's tensors (exporters name a streaming graph's inputs by them).
    state_parts: tuple[str, ...] = ()

    def init_state(self, x: torch.Tensor) -> State:
        """The state before the first step, for an input like ``x`` (one step's batch)."""
        return ()

    def transition(self, x: torch.Tensor, state: State | None, clock: Clock) -> tuple[torch.Tensor, State, Events]:
        raise NotImplementedError

    def step(self, x: torch.Tensor, state: State | None, clock: Clock) -> tuple[torch.Tensor, State, Events]:
        return self.transition(x, state, clock)

    def scan(self, x: torch.Tensor, state: State | None, clock: Clock) -> tuple[torch.Tensor, State, Events]:
        """All ``clock.timesteps`` steps of ``x`` [T·B, ...] through :meth:`step`, one by one."""
        T = clock.timesteps
        steps = x.view(T, x.shape[0] // T, *x.shape[1:])
        outputs, tallies = [], []
        for t in range(T):
            y, state, events = self.step(steps[t], state, clock.at(t))
            outputs.append(y)
            tallies.append(events)
        return torch.stack(outputs).flatten(0, 1), state, stack_events(tallies)

    def per_row(self, events: Events, measure: bool) -> Events:
        """The functional form's per-element events as the per-row ones of :meth:`step` (same values)."""
        return events

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.step(x, None, Clock(input_window=1))[0]

    def describe(self) -> dict[str, Any]:
        """This module's row of the network summary (``kind`` and its parameters)."""
        return {"kind": self.kind}


def stack_events(per_step: list[Events]) -> Events:
    """Per-step per-row events stacked into [T, B] ones (fields every step has)."""
    fields = {}
    for name in ("pos", "neg", "active", "synops", "inputs"):
        values = [getattr(e, name) for e in per_step]
        if values and all(v is not None for v in values):
            fields[name] = torch.stack(values)
    return Events(**fields)


__all__ = ["Clock", "Events", "NO_EVENTS", "SpikingModule", "State", "stack_events"]
