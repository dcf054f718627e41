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

from qffs.snn.allocator import keep_freed_memory
from qffs.snn.layers import GatedAffine, GatedLayer
from qffs.snn.memory import default_budget, samples_at_once
from qffs.snn.monitor import Monitor
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
    active_slices: torch.Tensor | None = None  # [B] long: steps at which any input was nonzero


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


@dataclass(frozen=True)
class _Probe:
    """What running one sample once showed: batch-freeness, and elements per sample."""

    batch_free: bool
    state: int          # neuron and pool state
    activations: int    # every layer's output (x2), one step
    outputs: int        # the network's output


#: The most time steps one simulation may run. QFFS answers in a handful of steps, and every
#: step's output is kept (count, membrane and current readouts): T × batch × outputs × 12 bytes,
#: 126 MB at this bound for 256 samples of 10 classes; a typo like ``-T 1000000000`` would ask for 24 GB.
MAX_TIMESTEPS = 4096


def check_timesteps(value: object, option: str = "timesteps",
                    why: str = "every step's output is kept: T x batch x outputs x 12 bytes") -> int:
    """``value`` as a number of time steps in 1…:data:`MAX_TIMESTEPS`, or a one-line QffsError."""
    from qffs.errors import QffsError

    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= value <= MAX_TIMESTEPS:
        raise QffsError(f"{option} must be an integer in 1..{MAX_TIMESTEPS}, got {value!r} ({why})")
    return int(value)


#: Runtimes: "step" (the whole graph once per step: the reference, and the default) and "layer"
#: (each layer over all T steps at once). They give identical spike counts; "layer" is the
#: sequence form (export, fine-tuning) and is slower on CPU, where "step" drops quiet samples
#: and runs fused kernels (benchmarks/speed.py).
MODES = ("step", "layer")


def concat_results(parts: list[SimulationResult]) -> SimulationResult:
    """One result for a batch simulated in chunks of samples (in order)."""
    def cat(values: list, dim: int = 0):
        return None if values[0] is None else torch.cat(values, dim)

    def records(kind: str, index: int, fields: tuple[str, ...]) -> list:
        return [cat([getattr(getattr(p, kind)[index], f) for p in parts]) for f in fields]

    first = parts[0]
    neurons = [NeuronRecord(r.name, r.neurons, *records("neurons", i, ("pos_spikes", "neg_spikes", "counts")))
               for i, r in enumerate(first.neurons)]
    synapses = [SynapseRecord(r.name, *records("synapses", i, ("synops", "events")), r.macs,
                              *records("synapses", i, ("active_slices",)))
                for i, r in enumerate(first.synapses)]
    return SimulationResult(cat([p.output for p in parts], 1), max(p.steps_run for p in parts), first.input_window,
                            cat([p.convergence_step for p in parts]), cat([p.converged for p in parts]),
                            neurons, synapses, {k: cat([p.readouts[k] for p in parts], 1) for k in first.readouts})


def settle(active: torch.Tensor, input_window: int, spiking_output: bool, until_quiet: bool
           ) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(steps run, convergence step [B], quiet observed [B]) from per-step activity ``active`` [t, B]
    (did any neuron of the sample spike at that step); see :class:`SimulationResult`.

    With ``until_quiet`` the run counts as ending at the first step by which every sample has
    been quiet (a step t ≥ T_in, 1-based, without a spike).
    """
    steps = torch.arange(active.shape[0], device=active.device)
    quiet_by = (~active & (steps >= input_window - 1).unsqueeze(1)).cummax(0).values   # quiet seen by t
    steps_run = active.shape[0]
    if until_quiet:
        done = quiet_by.all(1).nonzero()
        if done.numel():
            steps_run = int(done[0]) + 1
    active, quiet = active[:steps_run], quiet_by[steps_run - 1]
    last_spike = torch.where(active, steps.unsqueeze(1)[:steps_run], -1).max(0).values
    floor = 1 if spiking_output else input_window      # an analog output's current flows until T_in
    convergence = torch.clamp(last_spike + 1, min=floor)
    convergence = torch.where(quiet, convergence, torch.full_like(convergence, steps_run))
    return steps_run, convergence, quiet


class SpikingNetwork(nn.Module):
    """A converted QANN: the rewritten fx graph plus the clock that drives it step by step."""

    def __init__(self, graph: fx.GraphModule, input_window: int, output_neuron: str | None, config: dict):
        super().__init__()
        self.graph = graph
        self.input_window = int(input_window)
        self.output_neuron = output_neuron
        self.config = dict(config)
        self._probes: dict[tuple[int, ...], _Probe] = {}   # per sample shape: see _probe()

    # -- structure ---------------------------------------------------------------------------
    def named_neurons(self) -> list[tuple[str, IFNeuron]]:
        return [(n, m) for n, m in self.graph.named_modules() if isinstance(m, IFNeuron)]

    def named_synapses(self) -> list[tuple[str, GatedLayer]]:
        return [(n, m) for n, m in self.graph.named_modules() if isinstance(m, GatedLayer)]

    def _stateful(self) -> list[Stateful]:
        return [m for m in self.graph.modules() if isinstance(m, Stateful)]

    def batch_free(self, x: torch.Tensor) -> bool:
        """Whether the graph runs on any batch size: only then may the runtime drop quiet samples,
        fold time into the batch or split a batch into chunks. A graph that writes a batch size
        into a reshape (say ``x.view(32, -1)``) does not; it is probed once, with one sample."""
        return self._probe(x).batch_free

    def bytes_per_sample(self, x: torch.Tensor, timesteps: int, mode: str = "step") -> int:
        """Estimated peak memory of simulating one sample of ``x``: neuron and pool state, the
        output's history, and every layer's activations (× T layer by layer: all steps at once)."""
        probe = self._probe(x)
        activations = probe.activations * (timesteps if mode == "layer" else 1)
        return x.element_size() * (probe.state + activations + 2 * timesteps * probe.outputs)

    def _probe(self, x: torch.Tensor) -> "_Probe":
        """Run one sample once (step 0) to learn batch-freeness and per-sample sizes; cached per sample shape."""
        key = tuple(x.shape[1:])
        if key not in self._probes:
            self.reset()
            seen: list[int] = []          # the batch size each stateful module is given
            sizes = {"state": 0, "activations": 0}
            hooks = []

            def measure(module, args, out):
                if isinstance(out, torch.Tensor):
                    sizes["activations"] += 2 * out.numel()        # 2x: functional ops and temporaries
                if isinstance(module, IFNeuron):                   # membrane, count, settled counts
                    sizes["state"] += 3 * args[0].numel()
                elif isinstance(module, EventMaxPool):             # cumulative input, pooled
                    sizes["state"] += args[0].numel() + out.numel()

            for m in self._stateful():
                m.step, m.timesteps, m.rows = 0, None, None
                hooks.append(m.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[0])))
            for m in self.graph.modules():
                if not list(m.children()):
                    hooks.append(m.register_forward_hook(measure))
            try:
                out = self.graph(x[:1])
                free = out.shape[0] == 1 and all(b == 1 for b in seen)
                outputs = out.numel()
            except Exception:
                free, outputs = False, 0
            finally:
                for hook in hooks:
                    hook.remove()
                self.reset()
            self._probes[key] = _Probe(free, sizes["state"], sizes["activations"], outputs)
        return self._probes[key]

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
                 record_counts: bool = False, mode: str = "step", memory: int | None = None) -> SimulationResult:
        """Run ``timesteps`` steps on the batch ``x`` (reset first).

        ``until_quiet`` stops as soon as every sample is quiet; the remaining rows of
        ``output`` repeat the final readout, so the shape stays ``[timesteps, ...]``.
        ``record`` keeps spike and synaptic-operation statistics; ``record_counts`` also
        the final spike count of every neuron (memory: one tensor per IF layer).

        ``mode``: "step" (default) calls the whole graph once per step (the reference);
        "layer" runs each layer over all T steps at once — stateless ops on time folded into
        the batch, a scan per neuron layer, only the (step, sample) rows with input through
        each weighted layer. Spike counts, statistics and convergence are identical; the
        membrane-based readouts agree to rounding (a product over T·B rows may round
        differently from one over B rows). A graph with a fixed batch size (:meth:`batch_free`)
        always runs per step, every sample every step.

        ``memory`` (bytes; default half the memory free on ``x``'s device) bounds the estimated
        peak (:meth:`bytes_per_sample`): a larger batch is simulated in chunks of samples, with
        the same results.
        """
        timesteps = check_timesteps(timesteps)
        if mode not in MODES:
            from qffs.errors import QffsError

            raise QffsError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if x.device.type == "cpu":
            keep_freed_memory()       # every step allocates the same large tensors: reuse them (allocator.py)
        free = self.batch_free(x)
        if not free:   # a fixed batch size: every sample every step, per step (and never in chunks)
            mode = "step"
        else:
            budget = default_budget(x.device) if memory is None else memory
            chunk = samples_at_once(x.shape[0], self.bytes_per_sample(x, timesteps, mode), budget)
            if chunk < x.shape[0]:
                return concat_results([self._simulate(part, timesteps, until_quiet, record, record_counts, mode, free)
                                       for part in x.split(chunk)])
        return self._simulate(x, timesteps, until_quiet, record, record_counts, mode, free)

    def _simulate(self, x: torch.Tensor, timesteps: int, until_quiet: bool, record: bool, record_counts: bool,
                  mode: str, free: bool) -> SimulationResult:
        """One simulation of the whole batch ``x`` in ``mode``."""
        self.reset()
        stateful = self._stateful()
        monitor = Monitor(x.shape[0], timesteps if mode == "layer" else None) if record else None
        for m in stateful:
            m.timesteps = timesteps if mode == "layer" else None
            m.rows, m.monitor = None, monitor
        try:
            if mode == "layer":
                active, history, analog = self._run_layers(x, timesteps)
            else:
                active, history, analog = self._run_steps(x, timesteps, until_quiet, drop_quiet=free, monitor=monitor)
        finally:
            for m in stateful:
                m.timesteps, m.monitor = None, None
        result = self._result(active, history, analog, timesteps, until_quiet)
        if monitor is not None:
            self._records(result, monitor, record_counts)
        return result

    def _run_steps(self, x: torch.Tensor, timesteps: int, until_quiet: bool, drop_quiet: bool = True,
                   monitor: Monitor | None = None):
        """The reference: the whole graph once per step. Returns (active [t, B], output history, analog rows).

        A sample that has gone quiet (a step t ≥ T_in − 1 without a spike anywhere) can never
        spike again and its readout is final, so it is dropped from the batch (``drop_quiet``):
        later steps cost only the samples still active, and once none is, the remaining rows
        repeat the last.
        """
        stateful = self._stateful()
        neurons = [n for _, n in self.named_neurons()]
        out_neuron = self._output_module()
        batch = x.shape[0]
        alive = torch.arange(batch, device=x.device)   # the samples still simulated (all, until some go quiet)
        inputs, silent = x, torch.zeros_like(x)
        history: dict[str, torch.Tensor] = {}  # spiking output: Z and u after each step, [T, B, ...]
        analog: list[torch.Tensor] = []       # analog output: integrated current / T_in
        actives: list[torch.Tensor] = []
        quiet = torch.zeros(batch, dtype=torch.bool, device=x.device)
        integrated = None
        for t in range(timesteps):
            if alive.numel() == 0:             # every sample is final
                if until_quiet:
                    break
                for rows in history.values():
                    rows[t] = rows[t - 1]
                if analog:
                    analog.append(analog[-1])
                actives.append(torch.zeros(batch, dtype=torch.bool, device=x.device))
                continue
            for m in stateful:
                m.step = t
            out = self.graph(inputs if t < self.input_window else silent[: alive.numel()])
            if out_neuron is not None:
                for key, state in (("count", out_neuron.count), ("membrane", out_neuron.membrane)):
                    if key not in history:   # counts too in the membrane's floating type, as readouts need
                        history[key] = out_neuron.membrane.new_empty((timesteps, batch, *state.shape[1:]))
                    if alive.numel() < batch:
                        history[key][t] = history[key][t - 1]
                    history[key][t, alive] = state.to(history[key].dtype)
            else:
                if integrated is None:
                    integrated = out.new_zeros((batch, *out.shape[1:]))
                integrated = integrated.index_add(0, alive, out)
                analog.append(integrated / self.input_window)
            active = self._take_activity(neurons, (alive.numel(),), x.device)
            actives.append(torch.zeros(batch, dtype=torch.bool, device=x.device).index_copy_(0, alive, active))
            if t >= self.input_window - 1:
                quiet[alive] |= ~active
                if until_quiet and bool(quiet.all()):
                    break
                if drop_quiet and not bool(active.all()):     # drop the samples that went quiet
                    for m in stateful:
                        m.keep(active)
                    alive = alive[active]
                    inputs = x[alive]
                    for m in stateful:
                        m.rows = alive
                    if monitor is not None:
                        monitor.rows = alive
        return torch.stack(actives), history, analog

    def _output_module(self) -> IFNeuron | None:
        """The output layer's IF neuron (None: analog output)."""
        return self.graph.get_submodule(self.output_neuron) if self.output_neuron else None

    @staticmethod
    def _take_activity(neurons: list[IFNeuron], shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """Whether any neuron spiked, per sample (per step and sample, layer by layer); clears what the neurons kept."""
        active = torch.zeros(shape, dtype=torch.bool, device=device)
        for neuron in neurons:
            if neuron.active is not None:
                active |= neuron.active
                neuron.active = None
        return active

    def _run_layers(self, x: torch.Tensor, timesteps: int):
        """Layer by layer: the graph once, on all T steps (time folded into the batch, step-major)."""
        T, batch = timesteps, x.shape[0]
        window = min(self.input_window, T)
        sequence = x.new_zeros((T, *x.shape))
        sequence[:window] = x                                 # input shutoff: zero from T_in on
        out = self.graph(sequence.flatten(0, 1))
        active = self._take_activity([n for _, n in self.named_neurons()], (T, batch), x.device)
        history: dict[str, torch.Tensor] = {}
        analog: list[torch.Tensor] = []
        out_neuron = self._output_module()
        if out_neuron is not None:
            history["count"], history["membrane"] = out_neuron.history
            out_neuron.history = None
        else:
            integrated = torch.cumsum(out.view(T, batch, *out.shape[1:]), 0)
            analog = list((integrated / self.input_window).unbind(0))
        return active, history, analog

    def _result(self, active: torch.Tensor, history: dict[str, torch.Tensor], analog: list[torch.Tensor],
                timesteps: int, until_quiet: bool) -> SimulationResult:
        """Quiet, convergence and readouts from a run's per-step activity ``active`` [t, B]."""
        out_neuron = self._output_module()
        steps_run, convergence, quiet = settle(active, self.input_window, out_neuron is not None, until_quiet)
        readouts = self._readouts(out_neuron, history, analog[:steps_run], steps_run, timesteps)
        return SimulationResult(readouts["count"], steps_run, self.input_window, convergence, quiet, readouts=readouts)

    def _records(self, result: SimulationResult, monitor: Monitor, record_counts: bool) -> None:
        """Per-layer statistics from the ``monitor`` into ``result`` (and final counts, if asked)."""
        none = torch.zeros(monitor.batch, dtype=torch.long, device=result.output.device)
        for name, n in self.named_neurons():
            counts = n.final_counts()
            per_sample = counts[0].numel() if counts is not None else 0
            result.neurons.append(NeuronRecord(name, per_sample, monitor.pos_spikes.get(n, none),
                                               monitor.neg_spikes.get(n, none),
                                               counts.clone() if record_counts else None))
        for name, layer in self.named_synapses():
            if layer in monitor.synops:
                result.synapses.append(SynapseRecord(name, monitor.synops[layer], monitor.events[layer],
                                                     int(layer.fanout_total()), monitor.active_slices[layer]))

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
