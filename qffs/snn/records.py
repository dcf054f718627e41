"""What a simulation reports: per-layer records, settling, and the readouts (SPEC §5).

Below the engine: pure functions of what a run produced (:class:`~qffs.snn.engine.Run`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from qffs.snn.engine import Engine, Run, neuron_modules
from qffs.snn.exits import ConfidenceRule, quiet_seen_at
from qffs.snn.monitor import Monitor
from qffs.snn.neuron import SpikingNeuron
from qffs.snn.readout import READOUTS, output_readout


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
    rows_simulated: list[int] = field(default_factory=list)          # samples simulated at each step run
    exit_step: torch.Tensor | None = None   # [B] long: confidence exit step (0: none), with an exit rule

    def latency(self) -> torch.Tensor:
        """Each sample's latency: its exit step, else its convergence step if quiet, else the steps run."""
        quiet_at = torch.where(self.converged, self.convergence_step, torch.full_like(self.convergence_step,
                                                                                      self.steps_run))
        if self.exit_step is None:
            return quiet_at
        return torch.where(self.exit_step > 0, torch.minimum(self.exit_step, quiet_at), quiet_at)


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
    rows = [sum(p.rows_simulated[t] for p in parts if t < len(p.rows_simulated))
            for t in range(max(len(p.rows_simulated) for p in parts))]
    return SimulationResult(cat([p.output for p in parts], 1), max(p.steps_run for p in parts), first.input_window,
                            cat([p.convergence_step for p in parts]), cat([p.converged for p in parts]),
                            neurons, synapses, {k: cat([p.readouts[k] for p in parts], 1) for k in first.readouts},
                            rows, cat([p.exit_step for p in parts]))


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


def result_of(engine: Engine, run: Run, timesteps: int, until_quiet: bool) -> SimulationResult:
    """Quiet, convergence and readouts from a run's per-step activity."""
    output = engine.sites[engine.output].module if engine.output is not None else None
    steps_run, convergence, quiet = settle(run.active, engine.input_window, output is not None, until_quiet)
    readouts = readouts_of(output, run, steps_run, timesteps, engine.input_window)
    if run.exits is not None:   # a sample that left confident was dropped, not seen quiet: unconverged
        convergence, quiet = exited_unconverged(run, engine.input_window, convergence, quiet)
    return SimulationResult(readouts["count"], steps_run, engine.input_window, convergence, quiet, readouts=readouts,
                            rows_simulated=run.rows[:steps_run], exit_step=run.exits)


def exited_unconverged(run: Run, input_window: int, convergence: torch.Tensor, quiet: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(convergence step, quiet) with the samples that exited before quiet was seen marked
    unconverged, their convergence step the exit step (a lower bound)."""
    assert run.exits is not None
    steps = torch.arange(run.active.shape[0], device=run.active.device).unsqueeze(1)
    seen = (~run.active & (steps >= input_window - 1) & (steps < run.exits.unsqueeze(0))).any(0)
    early = (run.exits > 0) & ~seen
    return torch.where(early, run.exits, convergence), quiet & ~early


def readouts_of(output: SpikingNeuron | None, run: Run, steps_run: int, timesteps: int,
                input_window: int) -> dict[str, torch.Tensor]:
    """Every readout as ``[timesteps, B, ...]``; rows after an early stop repeat the last one."""
    if output is None:
        analog = run.analog[:steps_run]
        current = torch.stack(analog + [analog[-1]] * (timesteps - steps_run))
        return {name: current for name in READOUTS}
    for rows in run.history.values():
        rows[steps_run:] = rows[steps_run - 1]
    count, membrane = run.history["count"], run.history["membrane"]
    return {name: output_readout(name, count, membrane, threshold=output.threshold, step_size=output.step_size,
                                 initial_membrane=output.initial_membrane(), input_window=input_window)
            for name in READOUTS}


def exit_after_run(result: SimulationResult, rule: ConfidenceRule) -> None:
    """A run that could not drop samples (layer by layer, a fixed batch): the exits ``rule``
    would have taken, found afterwards, and every readout frozen from each sample's exit step."""
    steps = result.readouts[rule.readout].shape[0]
    confident = rule.steps(result.readouts[rule.readout])
    seen_quiet = quiet_seen_at(result.convergence_step, result.converged, result.input_window, steps)
    exits = torch.where((confident <= steps) & (confident <= seen_quiet), confident, torch.zeros_like(confident))
    frozen = torch.where(exits > 0, exits, torch.full_like(exits, steps)) - 1       # last step that counts, 0-based
    index = torch.minimum(torch.arange(steps, device=exits.device).unsqueeze(1), frozen.unsqueeze(0))  # [T, B]
    for name, values in result.readouts.items():
        result.readouts[name] = values.gather(0, index.reshape(*index.shape, *[1] * (values.dim() - 2))
                                              .expand_as(values))
    result.output = result.readouts["count"]
    early = (exits > 0) & (exits < seen_quiet)
    result.convergence_step = torch.where(early, exits, result.convergence_step)
    result.converged = result.converged & ~early
    result.exit_step = exits


def add_records(result: SimulationResult, engine: Engine, run: Run, monitor: Monitor, record_counts: bool) -> None:
    """Per-layer statistics from the ``monitor`` into ``result`` (and final counts, if asked), in
    the order of the graph's modules (``named_modules``), as reports and exporters list them."""
    none = torch.zeros(monitor.batch, dtype=torch.long, device=result.output.device)
    dtype = result.output.dtype
    modules = dict(engine.gm.named_modules())
    for name, _ in neuron_modules(engine.gm):
        counts = run.finals.get(name)
        per_sample = counts[0].numel() if counts is not None else 0
        result.neurons.append(NeuronRecord(name, per_sample, monitor.pos_spikes.get(name, none),
                                           monitor.neg_spikes.get(name, none),
                                           counts.to(dtype) if record_counts and counts is not None else None))
    for name in modules:
        if name in monitor.synops:
            result.synapses.append(SynapseRecord(name, monitor.synops[name], monitor.events[name],
                                                 int(modules[name].fanout_total()), monitor.active_slices[name]))


__all__ = ["NeuronRecord", "SimulationResult", "SynapseRecord", "add_records", "concat_results", "exit_after_run",
           "exited_unconverged", "readouts_of", "result_of", "settle"]
