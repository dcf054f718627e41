"""The spiking network unrolled over a fixed number of steps, as plain tensor code (for export).

:class:`UnrolledSNN` runs the converted graph T times with every piece of state explicit
(membranes, counts, the cumulative input of each event max pool) and no data-dependent
control flow: no skipped rows, no dropped quiet samples, the input window and bias gating
decided per step at trace time. Tracing it gives one graph for all T steps: what the ONNX
exporter writes. Its arithmetic is :func:`qffs.snn.dynamics.if_transition`, the same
operations as the runtimes' IF step, so its outputs equal ``snn(x, timesteps=T)``.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from qffs.errors import UnsupportedGraphError
from qffs.snn.dynamics import if_transition
from qffs.snn.layers import GatedAffine, GatedLayer
from qffs.snn.network import SpikingNetwork
from qffs.snn.neuron import IFNeuron
from qffs.snn.pooling import EventMaxPool, NaiveMaxPool
from qffs.snn.state import Stateful

#: Outputs of the deployable graph, and the extra ones ``diagnostics=True`` adds for reports.
OUTPUTS = ("readout",)
DIAGNOSTIC_OUTPUTS = ("counts", "membranes", "active", "pos_spikes", "neg_spikes", "synops", "events")


def _gated(value: torch.Tensor, added: torch.Tensor, in_window) -> torch.Tensor:
    """``value + added`` while t < T_in, else ``value``: decided at trace time for a bool, by a
    0/1 tensor in a streaming graph (where the step is an input)."""
    if isinstance(in_window, bool):
        return value + added if in_window else value
    return value + added * in_window


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
        self.timesteps = int(timesteps)
        self.input_window = snn.input_window
        self.output_neuron = snn.output_neuron
        self.diagnostics = diagnostics
        self.nodes = list(snn.graph.graph.nodes)
        # the runtime's order (named_modules), which the records and the metadata use too
        self.neuron_names = [name for name, _ in snn.named_neurons()]
        self.synapse_names = [name for name, _ in snn.named_synapses()]
        sites: dict[str, fx.Node] = {}
        for node in self.nodes:
            if node.op == "call_module":
                module = self.net.get_submodule(str(node.target))
                if isinstance(module, Stateful) and not isinstance(
                        module, (IFNeuron, GatedLayer, GatedAffine, EventMaxPool, NaiveMaxPool)):
                    raise UnsupportedGraphError(f"cannot unroll node '{node.name}': no export form for "
                                                f"{type(module).__name__}")
                if isinstance(module, (IFNeuron, GatedLayer)) and str(node.target) in sites:
                    raise UnsupportedGraphError(f"cannot export node '{node.name}': {node.target} is called from "
                                                "several places (its state and statistics would be shared)")
                sites[str(node.target)] = node
        self.site = {name: sites[name].name for name in self.neuron_names + self.synapse_names}   # module → fx node
        fanouts = fanouts or {}
        if diagnostics and set(self.synapse_names) - set(fanouts):
            raise ValueError("diagnostics need the fan-out of every weighted layer (fanouts=)")
        self._fanout_keys = {}
        for i, name in enumerate(self.synapse_names):
            if name in fanouts:
                self.register_buffer(f"fanout_{i}", fanouts[name].detach().round().to(torch.int64))
                self._fanout_keys[name] = f"fanout_{i}"

    def _call_module(self, node: fx.Node, module: nn.Module, args: tuple, kwargs: dict, in_window,
                     state: dict, tally: dict) -> torch.Tensor:
        """One module call; ``in_window``: True/False (fixed per step), or a 0/1 tensor (streaming)."""
        if isinstance(module, IFNeuron):
            (current,) = args
            if node.name not in state:
                u0 = module.initial_membrane().to(current.dtype)
                state[node.name] = (torch.zeros_like(current) + u0, torch.zeros_like(current))
            u, z = state[node.name]
            u, z, spikes = if_transition(u, z, current, module.threshold.to(current.dtype), module.z_max,
                                         module.negative_spikes)
            state[node.name] = (u, z)
            if self.diagnostics:   # running sums per element; one reduction at the end (fewer graph nodes)
                magnitude = spikes.abs()
                key = ("spikes", node.name)
                tally[key] = tally[key] + magnitude if key in tally else magnitude
                tally.setdefault("active", []).append(magnitude.flatten(1).amax(1) > 0)
            return spikes * module.threshold.to(current.dtype)
        if isinstance(module, GatedLayer):
            (x,) = args
            if self.diagnostics:   # steps at which each input element was nonzero
                nonzero = x.ne(0).to(x.dtype)
                key = ("inputs", str(node.target))
                tally[key] = tally[key] + nonzero if key in tally else nonzero
            out = module.layer(x)
            if module.bias is None:
                return out
            return _gated(out, module.bias.view((1, -1) + (1,) * (out.dim() - 2)), in_window)
        if isinstance(module, GatedAffine):
            (x,) = args
            shape = (1, -1) + (1,) * (x.dim() - 2)
            return _gated(x * module.scale.view(shape), module.shift.view(shape), in_window)
        if isinstance(module, EventMaxPool):
            (events,) = args
            cumulative = state[node.name][0] + events if node.name in state else events
            pooled = module.pool(cumulative)
            out = pooled - state[node.name][1] if node.name in state else pooled
            state[node.name] = (cumulative, pooled)
            return out
        if isinstance(module, NaiveMaxPool):
            return module.pool(args[0])
        return module(*args, **kwargs)

    def _step(self, x: torch.Tensor, in_window, state: dict, tally: dict) -> torch.Tensor:
        """One call of the graph (``in_window``: t < T_in, a bool or a 0/1 tensor); returns its output."""
        env: dict[fx.Node, object] = {}

        def load(arg):
            return fx.node.map_arg(arg, lambda n: env[n])

        for node in self.nodes:
            if node.op == "placeholder":   # input shutoff
                env[node] = (x if in_window else torch.zeros_like(x)) if isinstance(in_window, bool) else x * in_window
            elif node.op == "get_attr":
                env[node] = self._attr(str(node.target))
            elif node.op == "call_module":
                env[node] = self._call_module(node, self.net.get_submodule(str(node.target)), load(node.args),
                                              load(node.kwargs), in_window, state, tally)
            elif node.op == "call_function":
                env[node] = node.target(*load(node.args), **load(node.kwargs))
            elif node.op == "call_method":
                args = load(node.args)
                env[node] = getattr(args[0], str(node.target))(*args[1:], **load(node.kwargs))
            elif node.op == "output":
                return env[node.args[0]]
        raise UnsupportedGraphError("the spiking graph has no output")

    def _attr(self, target: str):
        value = self.net
        for part in target.split("."):
            value = getattr(value, part)
        return value

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        state: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        tally: dict = {}
        counts, membranes, outputs = [], [], []
        out_node = next((n for n in self.nodes if n.name == self.site.get(self.output_neuron)), None)
        for t in range(self.timesteps):
            out = self._step(x, t < self.input_window, state, tally)
            if out_node is not None:
                membrane, count = state[out_node.name]
                counts.append(count)
                membranes.append(membrane)
            else:
                outputs.append(out)
            if self.diagnostics:
                steps = tally.pop("active", [])
                tally.setdefault("active_by_step", []).append(
                    torch.stack(steps).any(0) if steps else torch.zeros(x.shape[0], dtype=torch.bool))
        if out_node is not None:
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

        finals = [state[self.site[name]][1] for name in self.neuron_names]
        pos, neg = [], []
        for name, count in zip(self.neuron_names, finals):
            spikes = tally[("spikes", self.site[name])]   # Σ|z| = pos + neg, Z = pos − neg
            pos.append(total((spikes + count) / 2))
            neg.append(total((spikes - count) / 2))
        synops, events = [], []
        for name in self.synapse_names:
            steps = tally[("inputs", name)].round().to(torch.int64)
            synops.append((steps * getattr(self, self._fanout_keys[name])).flatten(1).sum(1))
            events.append(steps.flatten(1).sum(1))
        # an analog output has no counts or membranes: two empty [T, B, 0] outputs keep the output list fixed
        history = (count_history, torch.stack(membranes)) if out_node is not None else \
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
        self.state_nodes = [n.name for n in self.nodes if n.op == "call_module" and isinstance(
            self.net.get_submodule(str(n.target)), (IFNeuron, EventMaxPool))]
        self.state_names = [f"{name}.{part}" for name in self.state_nodes for part in (
            ("membrane", "count") if isinstance(self._module(name), IFNeuron) else ("cumulative", "pooled"))]
        if self.output_neuron is None:
            self.state_names.append("output.integrated")

    def _module(self, node_name: str) -> nn.Module:
        node = next(n for n in self.nodes if n.name == node_name)
        return self.net.get_submodule(str(node.target))

    @torch.no_grad()
    def initial_state(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The state before step 0 for the batch ``x``: one silent step (no input, no bias) from
        lazily created state changes nothing (no current, membranes below θ), so it *is* the start."""
        state: dict = {}
        out = self._step(x, False, state, {})
        flat = [t for name in self.state_nodes for t in state[name]]
        return flat + ([torch.zeros_like(out)] if self.output_neuron is None else [])

    def forward(self, x: torch.Tensor, in_window: torch.Tensor, *flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        state = {name: (flat[2 * i], flat[2 * i + 1]) for i, name in enumerate(self.state_nodes)}
        out = self._step(x, in_window.to(x.dtype), state, {})
        new = [t for name in self.state_nodes for t in state[name]]
        if self.output_neuron is not None:
            count = state[self.site[self.output_neuron]][1]
            return (count * self.net.get_submodule(self.output_neuron).step_size.to(count.dtype), *new)
        integrated = flat[-1] + out
        return (integrated / self.input_window, *new, integrated)
