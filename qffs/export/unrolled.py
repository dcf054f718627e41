"""The spiking network unrolled over a fixed number of steps, as plain tensor code (for export).

:class:`UnrolledSNN` runs the engine's functional form (:mod:`qffs.snn.engine`) T times: every
piece of state explicit, no mutation, no skipped rows, no dropped quiet samples, the input
window and bias gating decided per step at trace time. Tracing it gives one graph for all T
steps: what the ONNX exporter writes. Its arithmetic is each module's ``transition``, the same
operations as the runtimes' steps, so its outputs equal ``snn(x, timesteps=T)``.
"""

from __future__ import annotations

import torch
from torch import nn

from qffs.errors import UnsupportedGraphError
from qffs.snn.layers import GatedLayer
from qffs.snn.network import SpikingNetwork
from qffs.snn.neuron import SpikingNeuron
from qffs.snn.spiking import Clock

#: Outputs of the deployable graph, and the extra ones ``diagnostics=True`` adds for reports.
OUTPUTS = ("readout",)
DIAGNOSTIC_OUTPUTS = ("counts", "membranes", "active", "pos_spikes", "neg_spikes", "synops", "events")


class UnrolledSNN(nn.Module):
    """``snn`` over ``timesteps`` steps: ``forward(x)`` returns the cumulative count readout
    ``[T, B, ...]`` (analog output: the integrated current / T_in), as ``snn(x, timesteps=T)``.

    With ``diagnostics`` it also returns, in :data:`DIAGNOSTIC_OUTPUTS` order: the output
    layer's counts and membranes after each step ``[T, B, ...]`` (``[T, B, 0]`` for an analog output), whether
    any neuron spiked ``[T, B]``, positive and negative spikes per IF layer and sample ``[L, B]``,
    synaptic operations and input events per weighted layer and sample ``[W, B]`` (these four
    int64: exact totals), and then
    every IF layer's final counts (one output each, :attr:`neuron_names` order).
    ``fanouts`` (weighted layer name → synapses per input element) is needed for the SOPs.
    """

    def __init__(self, snn: SpikingNetwork, timesteps: int, *, diagnostics: bool = False,
                 fanouts: dict[str, torch.Tensor] | None = None):
        super().__init__()
        self.net = snn.graph
        self.engine = snn.engine
        self.step_graph = self.engine.form("functional")
        self.timesteps = int(timesteps)
        self.input_window = snn.input_window
        self.output_neuron = snn.output_neuron
        self.diagnostics = diagnostics
        # the runtime's order (named_modules), which the records and the metadata use too
        self.neuron_names = [name for name, _ in snn.named_neurons()]
        self.synapse_names = [name for name, _ in snn.named_synapses()]
        sites: dict[str, int] = {}
        for i, site in enumerate(self.engine.sites):
            if isinstance(site.module, (SpikingNeuron, GatedLayer)) and site.target in sites:
                raise UnsupportedGraphError(f"cannot export node '{site.node}': {site.target} is called from "
                                            "several places (its state and statistics would be shared)")
            sites[site.target] = i
        self.site = sites                         # module name → its slot in the threaded state
        fanouts = fanouts or {}
        if diagnostics and set(self.synapse_names) - set(fanouts):
            raise ValueError("diagnostics need the fan-out of every weighted layer (fanouts=)")
        self._fanout_keys = {}
        for i, name in enumerate(self.synapse_names):
            if name in fanouts:
                self.register_buffer(f"fanout_{i}", fanouts[name].detach().round().to(torch.int64))
                self._fanout_keys[name] = f"fanout_{i}"

    def _step(self, x: torch.Tensor, t: int, states: list, tally: dict, window: torch.Tensor | None = None):
        """One call of the functional graph at step t (``window``: a 0/1 tensor for t < T_in, streaming);
        returns (output, states). With diagnostics, per-element running sums go into ``tally``."""
        clock = Clock(input_window=self.input_window, timesteps=self.timesteps, t=t, measure=self.diagnostics,
                      window=window)
        if window is not None:
            x = x * window.to(x.dtype)                       # input shutoff
        elif not clock.in_window:
            x = torch.zeros_like(x)
        out, new, events = self.step_graph(x, states, clock)
        if self.diagnostics:   # running sums per element; one reduction at the end (fewer graph nodes)
            active = []
            for site, ev in zip(self.engine.sites, events):
                key = None
                if ev.spikes is not None:
                    key, value = ("spikes", site.target), ev.spikes.abs()
                    active.append(value.flatten(1).amax(1) > 0)
                elif ev.nonzero is not None:
                    key, value = ("inputs", site.target), ev.nonzero
                if key is not None:
                    tally[key] = tally[key] + value if key in tally else value
            tally.setdefault("active_by_step", []).append(
                torch.stack(active).any(0) if active else torch.zeros(x.shape[0], dtype=torch.bool))
        return out, list(new)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        states: list = [None] * len(self.engine.sites)
        tally: dict = {}
        counts, membranes, outputs = [], [], []
        out_site = self.site.get(self.output_neuron) if self.output_neuron else None
        for t in range(self.timesteps):
            out, states = self._step(x, t, states, tally)
            if out_site is not None:
                count, membrane = self.engine.sites[out_site].module.readout_state(states[out_site])
                counts.append(count)
                membranes.append(membrane)
            else:
                outputs.append(out)
        if out_site is not None:
            neuron = self.net.get_submodule(self.output_neuron)
            count_history = torch.stack(counts)
            readout = count_history * neuron.step_size.to(count_history.dtype)
        else:
            readout = torch.cumsum(torch.stack(outputs), 0) / self.input_window
        if not self.diagnostics:
            return (readout,)

        def rows(values: list[torch.Tensor]) -> torch.Tensor:
            return torch.stack(values) if values else torch.zeros((0, x.shape[0]), dtype=torch.int64)

        def total(t: torch.Tensor) -> torch.Tensor:   # per sample, exact: int64 before summing
            return t.round().to(torch.int64).flatten(1).sum(1)

        finals = [self.engine.sites[self.site[name]].module.readout_state(states[self.site[name]])[0]
                  for name in self.neuron_names]
        pos, neg = [], []
        for name, count in zip(self.neuron_names, finals):
            spikes = tally[("spikes", name)]   # Σ|z| = pos + neg, Z = pos − neg
            pos.append(total((spikes + count) / 2))
            neg.append(total((spikes - count) / 2))
        synops, events = [], []
        for name in self.synapse_names:
            steps = tally[("inputs", name)].round().to(torch.int64)
            synops.append((steps * getattr(self, self._fanout_keys[name])).flatten(1).sum(1))
            events.append(steps.flatten(1).sum(1))
        # an analog output has no counts or membranes: two empty [T, B, 0] outputs keep the output list fixed
        history = (count_history, torch.stack(membranes)) if out_site is not None else \
            (readout[..., :0] + 0, readout[..., :0] * 1)
        return (readout, *history, torch.stack(tally["active_by_step"]), rows(pos), rows(neg), rows(synops),
                rows(events), *finals)


class SingleStepSNN(UnrolledSNN):
    """One step of ``snn`` with the state as inputs and outputs, for streaming runtimes.

    ``forward(x, in_window, *state)`` → ``(readout, *state')``: ``in_window`` is 1.0 while
    t < T_in (input and biases flow) and 0.0 after; ``readout`` the cumulative readout after
    this step, as row t of ``snn(x, timesteps=T)``. The state (:attr:`state_names`) is each IF
    layer's membrane and count, each event max pool's cumulative input and pooled value, and
    for an analog output its integrated current, in graph order; :meth:`initial_state` gives
    it for a batch (membranes u₀, the rest zero).
    """

    def __init__(self, snn: SpikingNetwork):
        super().__init__(snn, 1)
        self.state_sites = [i for i, site in enumerate(self.engine.sites) if site.module.state_parts]
        self.state_names = [f"{self.engine.sites[i].node}.{part}" for i in self.state_sites
                            for part in self.engine.sites[i].module.state_parts]
        if self.output_neuron is None:
            self.state_names.append("output.integrated")

    def _flat(self, states: list) -> list[torch.Tensor]:
        return [t for i in self.state_sites for t in states[i]]

    @torch.no_grad()
    def initial_state(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The state before step 0 for the batch ``x``: one silent step (no input, no bias) from
        the initial state changes nothing (no current, membranes below θ), so it *is* the start."""
        out, states = self._step(x, 0, [None] * len(self.engine.sites), {}, window=torch.tensor(0.0))
        return self._flat(states) + ([torch.zeros_like(out)] if self.output_neuron is None else [])

    def forward(self, x: torch.Tensor, in_window: torch.Tensor, *flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        states: list = [() for _ in self.engine.sites]
        it = iter(flat)
        for i in self.state_sites:
            states[i] = tuple(next(it) for _ in self.engine.sites[i].module.state_parts)
        out, states = self._step(x, 0, states, {}, window=in_window)
        new = self._flat(states)
        if self.output_neuron is not None:
            out_site = self.site[self.output_neuron]
            count = self.engine.sites[out_site].module.readout_state(states[out_site])[0]
            return (count * self.net.get_submodule(self.output_neuron).step_size.to(count.dtype), *new)
        integrated = flat[-1] + out
        return (integrated / self.input_window, *new, integrated)
