"""One simulation engine over explicit state, in three forms of the same graph.

:func:`threaded` rewrites the converted fx graph so that each spiking module's call becomes a
call of one of its forms with its state, and the graph returns ``(output, states, events)``;
the generated code has no per-node interpretation cost. :class:`Engine` runs it:

- ``step``: the per-step reference with the fused kernels; a sample that has gone quiet is
  dropped from every state (one operation on the state tuples) and its final counts kept;
- ``layer``: every layer over all T steps at once, time folded into the batch;
- ``functional``: per step without mutation: differentiable, and what the exporters trace.

The engine owns the clock and the state; the monitor only observes the events it returns.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import fx

from qffs.snn.exits import ConfidenceRule
from qffs.snn.monitor import Monitor
from qffs.snn.neuron import SpikingNeuron
from qffs.snn.readout import output_readout
from qffs.snn.spiking import Clock, Events, SpikingModule, State
from qffs.snn.surrogate import Surrogate

#: ``observer(t, states)``: every site's state after step t (0-based; rows still simulated only).
Observer = Callable[[int, list[State]], None]

#: The forms, and the method of each spiking module that each one calls.
FORMS = {"step": "step", "layer": "scan", "functional": "transition"}


@dataclass(frozen=True)
class Site:
    """One call of a spiking module in the graph: its state's slot and the module."""

    node: str
    target: str
    module: SpikingModule


def spiking_sites(gm: fx.GraphModule) -> list[Site]:
    """Every call of a spiking module, in graph order (the order of the threaded state)."""
    return [Site(n.name, str(n.target), gm.get_submodule(str(n.target))) for n in gm.graph.nodes
            if n.op == "call_module" and isinstance(gm.get_submodule(str(n.target)), SpikingModule)]


def neuron_modules(gm: fx.GraphModule) -> list[tuple[str, SpikingNeuron]]:
    """The neuron layers in module order (``named_modules``): the order of records and exports."""
    return [(name, m) for name, m in gm.named_modules() if isinstance(m, SpikingNeuron)]


def threaded(gm: fx.GraphModule, form: str) -> fx.GraphModule:
    """``gm`` as ``f(x, states, clock) -> (output, states, events)``: each spiking module's call
    becomes ``module.<form method>(input, states[i], clock)`` (i in :func:`spiking_sites` order)."""
    method = FORMS[form]
    spiking = {site.node for site in spiking_sites(gm)}
    graph = fx.Graph()
    x, states, clock = graph.placeholder("x"), graph.placeholder("states"), graph.placeholder("clock")
    env: dict[fx.Node, fx.Node] = {}
    new_states: list[fx.Node] = []
    events: list[fx.Node] = []
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            env[node] = x
        elif node.name in spiking:
            (arg,) = node.args
            module = graph.get_attr(str(node.target))
            state = graph.call_function(operator.getitem, (states, len(new_states)))
            result = graph.call_method(method, (module, env[arg], state, clock))
            env[node] = graph.call_function(operator.getitem, (result, 0))
            new_states.append(graph.call_function(operator.getitem, (result, 1)))
            events.append(graph.call_function(operator.getitem, (result, 2)))
        elif node.op == "output":
            graph.output((fx.node.map_arg(node.args[0], lambda n: env[n]), tuple(new_states), tuple(events)))
        else:
            env[node] = graph.node_copy(node, lambda n: env[n])
    return fx.GraphModule(gm, graph, f"{type(gm).__name__}_{form}")


@dataclass
class Run:
    """What one run of the engine produced, before records and readouts (:mod:`qffs.snn.records`)."""

    active: torch.Tensor                                   # [t, B] bool: any spike, per step and sample
    history: dict[str, torch.Tensor] = field(default_factory=dict)  # spiking output: "count", "membrane" [T, B, ...]
    analog: list[torch.Tensor] = field(default_factory=list)        # analog output: integrated current / T_in
    finals: dict[str, torch.Tensor] = field(default_factory=dict)   # neuron target → final counts [B, ...]
    rows: list[int] = field(default_factory=list)                   # samples simulated at each step
    exits: torch.Tensor | None = None                               # [B] long: confidence exit step, 0: none


class Engine:
    """Runs a converted graph in its three forms (generated once each, on first use)."""

    def __init__(self, gm: fx.GraphModule, input_window: int, output_neuron: str | None):
        self.gm = gm
        self.input_window = int(input_window)
        self.sites = spiking_sites(gm)
        self.neurons = [i for i, s in enumerate(self.sites) if isinstance(s.module, SpikingNeuron)]
        self.output = next((i for i, s in enumerate(self.sites) if s.target == output_neuron), None)
        self._forms: dict[str, fx.GraphModule] = {}

    def form(self, name: str) -> fx.GraphModule:
        """The graph threaded for form ``name`` (:data:`FORMS`), generated on first use."""
        if name not in self._forms:
            self._forms[name] = threaded(self.gm, name)
        return self._forms[name]

    def clock(self, timesteps: int, measure: bool, surrogate: Surrogate | None = None,
              ) -> Clock:
        """The clock of a run of ``timesteps`` steps (``measure``: tally events for a monitor)."""
        return Clock(input_window=self.input_window, timesteps=timesteps, measure=measure, surrogate=surrogate)

    def _active(self, events: tuple[Events, ...], shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """Whether any neuron spiked, per row ([rows]; layer by layer [T, B])."""
        active = torch.zeros(shape, dtype=torch.bool, device=device)
        for i in self.neurons:
            active |= events[i].active
        return active

    def _observe(self, monitor: Monitor | None, events: tuple[Events, ...], rows: torch.Tensor | None) -> None:
        if monitor is not None:
            for site, ev in zip(self.sites, events):
                monitor.observe(site.target, ev, rows)

    def run_steps(self, x: torch.Tensor, timesteps: int, until_quiet: bool, drop_quiet: bool,
                  monitor: Monitor | None, functional: bool = False, surrogate: Surrogate | None = None,
                  exit_rule: ConfidenceRule | None = None, observer: Observer | None = None) -> Run:
        """Per step (``functional``: without mutation, nothing dropped). A sample quiet at a step
        t ≥ T_in − 1 can never spike again and its readout is final, so (``drop_quiet``) it leaves
        every state; once none is left, the remaining rows repeat the last. With ``exit_rule``
        (and ``drop_quiet``) a sample whose readout the rule finds confident leaves too, its
        answer frozen from that step (``Run.exits``). ``observer`` sees the states after each step."""
        form = self.form("functional" if functional else "step")
        clock = self.clock(timesteps, monitor is not None, surrogate)
        batch, device = x.shape[0], x.device
        alive = torch.arange(batch, device=device)     # the samples still simulated
        inputs, silent = x, torch.zeros_like(x)
        states: list[State | None] = [None] * len(self.sites)
        settled: dict[int, torch.Tensor] = {}           # neuron site → final counts of the dropped samples
        run = Run(torch.empty(0))
        actives: list[torch.Tensor] = []
        quiet = torch.zeros(batch, dtype=torch.bool, device=device)
        if exit_rule is not None:
            run.exits = torch.zeros(batch, dtype=torch.long, device=device)
        integrated = None
        for t in range(timesteps):
            if alive.numel() == 0:                      # every sample is final
                if until_quiet:
                    break
                self._repeat_last(run, t)
                actives.append(torch.zeros(batch, dtype=torch.bool, device=device))
                continue
            run.rows.append(int(alive.numel()))
            out, new, events = form(inputs if t < self.input_window else silent[: alive.numel()], states, clock.at(t))
            states = list(new)
            if observer is not None:
                observer(t, states)
            if functional:
                events = tuple(s.module.per_row(e, clock.measure) for s, e in zip(self.sites, events))
            if self.output is not None:
                self._record_output(run, states[self.output], t, timesteps, batch, alive)
            else:
                integrated = out.new_zeros((batch, *out.shape[1:])) if integrated is None else integrated
                integrated = integrated.index_add(0, alive, out)
                run.analog.append(integrated / self.input_window)
            self._observe(monitor, events, alive if alive.numel() < batch else None)
            active = self._active(events, (alive.numel(),), device)
            actives.append(torch.zeros(batch, dtype=torch.bool, device=device).index_copy_(0, alive, active))
            keep = self._staying(run, exit_rule, t, alive) if drop_quiet else torch.ones_like(active)
            if t >= self.input_window - 1:
                quiet[alive] |= ~active
                if until_quiet and bool(quiet.all()):
                    break
                if drop_quiet:
                    keep &= active
            if not bool(keep.all()):
                self._settle(states, settled, alive, keep, batch)
                states = [tuple(v[keep] for v in s) for s in states]
                alive = alive[keep]
                inputs = x[alive]
        run.active = torch.stack(actives)
        self._finals(run, states, settled, alive)
        return run

    def _finals(self, run: Run, states: list[State | None], settled: dict[int, torch.Tensor],
                alive: torch.Tensor) -> None:
        """Every neuron's final counts: the dropped samples' as settled, the others' from their state."""
        for i in self.neurons:
            if states[i] is None:
                continue
            count = self.sites[i].module.readout_state(states[i])[0]
            full = settled.get(i)
            if full is None:
                full = count
            elif alive.numel():
                full = full.clone()
                full[alive] = count
            run.finals[self.sites[i].target] = full

    @staticmethod
    def _repeat_last(run: Run, t: int) -> None:
        """Step t of a run whose every sample is final: the readouts repeat."""
        for rows in run.history.values():
            rows[t] = rows[t - 1]
        if run.analog:
            run.analog.append(run.analog[-1])

    def _staying(self, run: Run, exit_rule: ConfidenceRule | None, t: int, alive: torch.Tensor) -> torch.Tensor:
        """Which rows stay after step t: all but those ``exit_rule`` finds confident (noted in ``run.exits``)."""
        if exit_rule is None or run.exits is None:
            return torch.ones(alive.numel(), dtype=torch.bool, device=alive.device)
        leaving = exit_rule(self._output_rows(run, t, alive, exit_rule.readout), t + 1)
        run.exits[alive[leaving]] = t + 1
        return ~leaving

    def _output_rows(self, run: Run, t: int, alive: torch.Tensor, readout: str) -> torch.Tensor:
        """The readout ``readout`` after step t of the samples still simulated ([rows, C])."""
        if self.output is None:
            return run.analog[-1][alive]
        module = self.sites[self.output].module
        return output_readout(readout, run.history["count"][t, alive], run.history["membrane"][t, alive],
                              threshold=module.threshold, step_size=module.step_size,
                              initial_membrane=module.initial_membrane(), input_window=self.input_window)

    def _record_output(self, run: Run, state: State, t: int, timesteps: int, batch: int, alive: torch.Tensor) -> None:
        """The output layer's counts and membranes after step t, for every sample (dropped ones repeat)."""
        count, membrane = self.sites[self.output].module.readout_state(state)
        for key, value in (("count", count), ("membrane", membrane)):
            if key not in run.history:   # counts too in the membrane's floating type, as readouts need
                run.history[key] = membrane.new_empty((timesteps, batch, *value.shape[1:]))
            rows = run.history[key]
            if alive.numel() < batch:
                rows[t] = rows[t - 1]
            rows[t, alive] = value.to(rows.dtype)

    def _settle(self, states: list, settled: dict[int, torch.Tensor], alive: torch.Tensor, active: torch.Tensor,
                batch: int) -> None:
        """Keep the final counts of the samples about to be dropped."""
        for i in self.neurons:
            count = self.sites[i].module.readout_state(states[i])[0]
            if i not in settled:
                settled[i] = torch.zeros((batch, *count.shape[1:]), dtype=count.dtype, device=count.device)
            settled[i][alive[~active]] = count[~active]

    def run_layers(self, x: torch.Tensor, timesteps: int, monitor: Monitor | None) -> Run:
        """Layer by layer: the graph once, on all T steps (time folded into the batch, step-major)."""
        T, batch = timesteps, x.shape[0]
        sequence = x.new_zeros((T, *x.shape))
        sequence[: min(self.input_window, T)] = x      # input shutoff: zero from T_in on
        out, states, events = self.form("layer")(sequence.flatten(0, 1), [None] * len(self.sites),
                                                 self.clock(T, monitor is not None))
        self._observe(monitor, events, None)
        run = Run(self._active(events, (T, batch), x.device))
        if self.output is not None:
            run.history["count"], run.history["membrane"] = events[self.output].history
        else:
            integrated = torch.cumsum(out.view(T, batch, *out.shape[1:]), 0)
            run.analog = list((integrated / self.input_window).unbind(0))
        for i in self.neurons:
            run.finals[self.sites[i].target] = self.sites[i].module.readout_state(states[i])[0]
        return run


__all__ = ["Engine", "FORMS", "Run", "Site", "neuron_modules", "spiking_sites", "threaded"]
