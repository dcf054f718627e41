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


class UnrolledSNN(nn.Module):
    """``snn`` over ``timesteps`` steps: ``forward(x)`` returns the cumulative count readout
    ``[T, B, ...]`` (analog output: the integrated current / T_in), as ``snn(x, timesteps=T)``.

    With ``diagnostics`` it also returns, in :data:`DIAGNOSTIC_OUTPUTS` order: the output
    layer's counts and membranes after each step ``[T, B, ...]`` (spiking output only), whether
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
        self.neuron_names = [str(n.target) for n in self.nodes if n.op == "call_module"
                             and isinstance(self.net.get_submodule(str(n.target)), IFNeuron)]
        self.synapse_names = [str(n.target) for n in self.nodes if n.op == "call_module"
                              and isinstance(self.net.get_submodule(str(n.target)), GatedLayer)]
        for node in self.nodes:
            if node.op == "call_module":
                module = self.net.get_submodule(str(node.target))
                if isinstance(module, Stateful) and not isinstance(
                        module, (IFNeuron, GatedLayer, GatedAffine, EventMaxPool, NaiveMaxPool)):
                    raise UnsupportedGraphError(f"cannot unroll node '{node.name}': no export form for "
                                                f"{type(module).__name__}")
        fanouts = fanouts or {}
        if diagnostics and set(self.synapse_names) - set(fanouts):
            raise ValueError("diagnostics need the fan-out of every weighted layer (fanouts=)")
        self._fanout_keys = {}
        for i, name in enumerate(self.synapse_names):
            if name in fanouts:
                self.register_buffer(f"fanout_{i}", fanouts[name].detach().round().to(torch.int64))
                self._fanout_keys[name] = f"fanout_{i}"

    def _call_module(self, node: fx.Node, module: nn.Module, args: tuple, kwargs: dict, t: int,
                     state: dict, tally: dict) -> torch.Tensor:
        in_window = t < self.input_window
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
            if module.bias is not None and in_window:
                out = out + module.bias.view((1, -1) + (1,) * (out.dim() - 2))
            return out
        if isinstance(module, GatedAffine):
            (x,) = args
            shape = (1, -1) + (1,) * (x.dim() - 2)
            out = x * module.scale.view(shape)
            return out + module.shift.view(shape) if in_window else out
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

    def _step(self, x: torch.Tensor, t: int, state: dict, tally: dict) -> torch.Tensor:
        """One call of the graph at step ``t`` (0-based); returns the graph's output."""
        env: dict[fx.Node, object] = {}

        def load(arg):
            return fx.node.map_arg(arg, lambda n: env[n])

        for node in self.nodes:
            if node.op == "placeholder":
                env[node] = x if t < self.input_window else torch.zeros_like(x)   # input shutoff
            elif node.op == "get_attr":
                env[node] = self._attr(str(node.target))
            elif node.op == "call_module":
                env[node] = self._call_module(node, self.net.get_submodule(str(node.target)), load(node.args),
                                              load(node.kwargs), t, state, tally)
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
        out_node = next((n for n in self.nodes if n.op == "call_module" and str(n.target) == self.output_neuron), None)
        for t in range(self.timesteps):
            out = self._step(x, t, state, tally)
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

        node_names = {str(n.target): n.name for n in self.nodes if n.op == "call_module"}
        finals = [state[node_names[name]][1] for name in self.neuron_names]
        pos, neg = [], []
        for name, count in zip(self.neuron_names, finals):
            spikes = tally[("spikes", node_names[name])]   # Σ|z| = pos + neg, Z = pos − neg
            pos.append(total((spikes + count) / 2))
            neg.append(total((spikes - count) / 2))
        synops, events = [], []
        for name in self.synapse_names:
            steps = tally[("inputs", name)].round().to(torch.int64)
            synops.append((steps * getattr(self, self._fanout_keys[name])).flatten(1).sum(1))
            events.append(steps.flatten(1).sum(1))
        history = (count_history, torch.stack(membranes)) if out_node is not None else (readout, readout)
        return (readout, *history, torch.stack(tally["active_by_step"]), rows(pos), rows(neg), rows(synops),
                rows(events), *finals)
