"""Stage 3: running the spiking network, one call of the rewritten graph per time step (SPEC §3–§5).

``snn(x, timesteps=T)`` returns the cumulative readout after each step, ``[T, *qann(x).shape]``,
in the QANN's units: output spike counts × output step size (bit-identical to the QANN's
``s · level`` once quiet), or for an analog output the integrated current / T_in.
``snn.simulate`` also returns per-layer spike counts, synaptic operations and each sample's
convergence step, and can stop a batch as soon as every sample is quiet.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numbers

import torch
from torch import fx, nn

from qffs.snn.layers import GatedAffine, GatedLayer
from qffs.snn.neuron import IFNeuron
from qffs.snn.pooling import EventMaxPool, NaiveMaxPool
from qffs.snn.readout import READOUTS, check_readout, output_readout
from qffs.snn.state import Stateful


@dataclass
class NeuronRecord:
    """One IF layer over a simulation: spikes per sample (summed over its neurons and steps)."""

    name: str
    neurons: int                      # neurons per sample
    pos_spikes: torch.Tensor          # [B] long
    neg_spikes: torch.Tensor          # [B] long
    counts: torch.Tensor | None = None  # [B, ...] final signed spike counts, when asked for


@dataclass
class SynapseRecord:
    """One weighted layer: synaptic operations (SOPs) and input events per sample, and its ANN MACs."""

    name: str
    synops: torch.Tensor              # [B] float: Σ_t Σ nonzero inputs × fan-out
    events: torch.Tensor              # [B] float: Σ_t nonzero inputs
    macs: int                         # ANN multiply–accumulates per sample


@dataclass
class SimulationResult:
    """What one simulation of a batch measured.

    ``convergence_step[b]`` is the smallest t (1-based) from which sample b's readout can no
    longer change: the last step at which any neuron spiked (at least 1; at least T_in for an
    analog output, whose current flows until then). ``converged[b]`` says whether quiet was
    observed (a step t ≥ T_in, 1-based, with no spike anywhere) within the run; where it is
    False, ``convergence_step`` is only a lower bound.
    """

    output: torch.Tensor              # [T, B, ...] cumulative readout after each step (the count readout)
    steps_run: int
    input_window: int
    convergence_step: torch.Tensor    # [B] long
    converged: torch.Tensor           # [B] bool
    neurons: list[NeuronRecord] = field(default_factory=list)
    synapses: list[SynapseRecord] = field(default_factory=list)
    readouts: dict[str, torch.Tensor] = field(default_factory=dict)  # every readout, [T, B, ...] (SPEC §5)


#: The most time steps one simulation may run. QFFS answers in a handful of steps, and every
#: step's output is kept (count, membrane and current readouts): T × batch × outputs × 12 bytes,
#: 126 MB at this bound for 256 samples of 10 classes; a typo like ``-T 1000000000`` would ask for 24 GB.
MAX_TIMESTEPS = 4096


def check_timesteps(value: object, option: str = "timesteps") -> int:
    """``value`` as a number of time steps in 1…:data:`MAX_TIMESTEPS`, or a one-line QffsError."""
    from qffs.errors import QffsError

    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= value <= MAX_TIMESTEPS:
        raise QffsError(f"{option} must be an integer in 1..{MAX_TIMESTEPS}, got {value!r} (every step's output is "
                        f"kept: T x batch x outputs x 12 bytes)")
    return int(value)


class SpikingNetwork(nn.Module):
    """A converted QANN: the rewritten fx graph plus the clock that drives it step by step."""

    def __init__(self, graph: fx.GraphModule, input_window: int, output_neuron: str | None, config: dict):
        super().__init__()
        self.graph = graph
        self.input_window = int(input_window)
        self.output_neuron = output_neuron
        self.config = dict(config)

    # -- structure ---------------------------------------------------------------------------
    def named_neurons(self) -> list[tuple[str, IFNeuron]]:
        return [(n, m) for n, m in self.graph.named_modules() if isinstance(m, IFNeuron)]

    def named_synapses(self) -> list[tuple[str, GatedLayer]]:
        return [(n, m) for n, m in self.graph.named_modules() if isinstance(m, GatedLayer)]

    def _stateful(self) -> list[Stateful]:
        return [m for m in self.graph.modules() if isinstance(m, Stateful)]

    def reset(self) -> None:
        """Clear every neuron's and pool's state (done at the start of each simulation)."""
        for m in self._stateful():
            m.reset()

    # -- running -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, timesteps: int, readout: str = "count") -> torch.Tensor:
        """Cumulative output after each of ``timesteps`` steps, ``[T, *qann(x).shape]``.

        ``readout`` (SPEC §5, :mod:`qffs.snn.readout`): "count" (spike counts × s, the QANN's
        units and exact once quiet), "tiebreak" (counts, ties broken by the membrane) or
        "current" (the integrated current per input-window step).
        """
        check_readout(readout)
        return self.simulate(x, timesteps, record=False).readouts[readout]

    @torch.no_grad()
    def simulate(self, x: torch.Tensor, timesteps: int, *, until_quiet: bool = False, record: bool = True,
                 record_counts: bool = False) -> SimulationResult:
        """Run ``timesteps`` steps on the batch ``x`` (reset first).

        ``until_quiet`` stops as soon as every sample is quiet; the remaining rows of
        ``output`` repeat the final readout, so the shape stays ``[timesteps, ...]``.
        ``record`` keeps spike and synaptic-operation statistics; ``record_counts`` also
        the final spike count of every neuron (memory: one tensor per IF layer).
        """
        timesteps = check_timesteps(timesteps)
        self.reset()
        stateful = self._stateful()
        neurons = self.named_neurons()
        for m in stateful:
            if isinstance(m, (IFNeuron, GatedLayer)):
                m.record = record
        out_neuron = self.graph.get_submodule(self.output_neuron) if self.output_neuron else None
        batch = x.shape[0]
        silent = torch.zeros_like(x)
        last_spike = torch.full((batch,), -1, dtype=torch.long, device=x.device)
        quiet = torch.zeros(batch, dtype=torch.bool, device=x.device)
        history: dict[str, torch.Tensor] = {}  # spiking output: Z and u after each step, [T, B, ...]
        analog: list[torch.Tensor] = []       # analog output: integrated current / T_in
        integrated = None
        for t in range(timesteps):
            for m in stateful:
                m.step = t
            out = self.graph(x if t < self.input_window else silent)
            if out_neuron is not None:
                for key, state in (("count", out_neuron.count), ("membrane", out_neuron.membrane)):
                    if key not in history:
                        history[key] = state.new_empty((timesteps, *state.shape))
                    history[key][t] = state
            else:
                integrated = out if integrated is None else integrated + out
                analog.append(integrated / self.input_window)
            active = torch.zeros(batch, dtype=torch.bool, device=x.device)
            for _, neuron in neurons:
                if neuron.active is not None:
                    active |= neuron.active
                    neuron.active = None
            last_spike[active] = t
            if t >= self.input_window - 1:
                quiet |= ~active
                if until_quiet and bool(quiet.all()):
                    break
        steps_run = t + 1
        readouts = self._readouts(out_neuron, history, analog, steps_run, timesteps)
        output = readouts["count"]
        floor = self.input_window if out_neuron is None else 1
        convergence = torch.clamp(last_spike + 1, min=floor)
        convergence = torch.where(quiet, convergence, torch.full_like(convergence, steps_run))
        result = SimulationResult(output, steps_run, self.input_window, convergence, quiet, readouts=readouts)
        if record:
            for name, n in neurons:
                per_sample = n.count[0].numel() if n.count is not None else 0
                result.neurons.append(NeuronRecord(name, per_sample, n.pos_spikes, n.neg_spikes,
                                                   n.count.clone() if record_counts else None))
            for name, layer in self.named_synapses():
                if layer.synops is not None:
                    result.synapses.append(SynapseRecord(name, layer.synops, layer.events,
                                                         int(layer._fanout.sum().item())))
        return result

    def _readouts(self, out_neuron: IFNeuron | None, history: dict[str, torch.Tensor], analog: list[torch.Tensor],
                   steps_run: int, timesteps: int) -> dict[str, torch.Tensor]:
        """Every readout as ``[timesteps, B, ...]``; rows after an early stop repeat the last one."""
        if out_neuron is None:
            current = torch.stack(analog + [analog[-1]] * (timesteps - steps_run))
            return {name: current for name in READOUTS}
        for rows in history.values():
            rows[steps_run:] = rows[steps_run - 1]
        count, membrane = history["count"], history["membrane"]
        return {name: output_readout(name, count, membrane, threshold=out_neuron.threshold,
                                     step_size=out_neuron.step_size, initial_membrane=out_neuron.initial_membrane(),
                                     input_window=self.input_window)
                for name in READOUTS}

    # -- description -------------------------------------------------------------------------
    def summary(self) -> list[dict]:
        """Per layer, in graph order: kind, θ, Z_max, s, fan-in (weighted layers)."""
        rows = []
        for node in self.graph.graph.nodes:
            if node.op != "call_module":
                continue
            m = self.graph.get_submodule(str(node.target))
            row: dict = {"name": str(node.target)}
            if isinstance(m, IFNeuron):
                row.update(kind="IF output" if m.is_output else "IF", threshold=float(m.threshold),
                           z_max=m.z_max, step_size=float(m.step_size))
            elif isinstance(m, GatedLayer):
                w = m.layer.weight
                row.update(kind=type(m.layer).__name__, fan_in=int(w[0].numel()), bias=m.bias is not None)
            elif isinstance(m, (EventMaxPool, NaiveMaxPool)):
                row.update(kind="event max pool" if isinstance(m, EventMaxPool) else "naive max pool")
            elif isinstance(m, GatedAffine):
                row.update(kind="affine (BatchNorm)")
            else:
                row.update(kind=type(m).__name__)
            rows.append(row)
        return rows

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.items())
