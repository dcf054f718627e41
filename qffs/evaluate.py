"""Latency–accuracy evaluation of a spiking network over a dataset (SPEC §5–§6).

One simulation per batch to T gives the whole curve acc(1…T), for each of the three readouts
(spike counts, counts with membrane tie-break, integrated current). Alongside it: the QANN's
accuracy on the same samples and before its output quantizer (the current readout's reference),
tied predictions, each sample's convergence step, spikes per neuron per sample (positive and
negative) per IF layer, the fraction of neurons off their QANN level, synaptic operations against
the ANN's MACs, the energy. Each is a measure (:mod:`qffs.measures`): float64 sums over batches,
added over the ranks of a torchrun job in one all-reduce; the result is an :class:`EvaluationReport`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from qffs import distributed
from qffs.errors import QffsError
from qffs.exit_tradeoff import ExitOutcome, ExitTradeoff
from qffs.layer_measures import LayerSpikes, SynapseOps
from qffs.measures import Measure, reduce_measures
from qffs.metrics import predict
from qffs.probe import quantizer_levels
from qffs.progress import track
from qffs.report import (
    ENERGY_AC_PJ,
    ENERGY_MAC_PJ,
    EvaluationReport,
    energy_estimate,
    latency_to_lossless,
    percentiles,
)
from qffs.snn.exits import NO_EXIT, ExitPolicy
from qffs.snn.network import SimulationResult, SpikingNetwork
from qffs.snn.readout import READOUTS, check_readout


class ReadoutCurves(Measure):
    """Every readout at every step: correct and tied predictions (SPEC §1's tie rule)."""

    correct: torch.Tensor
    tied: torch.Tensor

    def __init__(self, timesteps: int, readouts: Sequence[str] = READOUTS):
        super().__init__()
        self.readouts = tuple(readouts)
        self.add_state("correct", (len(self.readouts), timesteps))
        self.add_state("tied", (len(self.readouts), timesteps))

    def update(self, outputs: dict[str, torch.Tensor], y: torch.Tensor) -> None:
        for i, name in enumerate(self.readouts):
            pred, tie = predict(outputs[name])                    # [T, B]
            self.correct[i] += (pred == y).sum(1).double().cpu()
            self.tied[i] += tie.sum(1).double().cpu()

    def compute(self, samples: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
        """({readout: accuracy per step}, {readout: tied fraction per step})."""
        return ({name: (c / samples).tolist() for name, c in zip(self.readouts, self.correct)},
                {name: (c / samples).tolist() for name, c in zip(self.readouts, self.tied)})


class QannComparison(Measure):
    """The QANN on the same samples: correct and tied, correct before its output quantizer, and at
    every step the spike-count prediction's agreement with its prediction."""

    agree: torch.Tensor
    correct: torch.Tensor
    tied: torch.Tensor
    prequantizer_correct: torch.Tensor

    def __init__(self, timesteps: int):
        super().__init__()
        self.add_state("agree", timesteps)
        for name in ("correct", "tied", "prequantizer_correct"):
            self.add_state(name)

    def update(self, count_pred: torch.Tensor, out: torch.Tensor, before: torch.Tensor, y: torch.Tensor) -> None:
        qpred, qtie = predict(out)
        self.correct += float((qpred == y).sum())
        self.prequantizer_correct += float((predict(before)[0] == y).sum())
        self.agree += (count_pred == qpred).sum(1).double().cpu()
        self.tied += float(qtie.sum())

    def compute(self, samples: int) -> dict[str, float | list[float]]:
        return {"qann_accuracy": float(self.correct) / samples,
                "qann_prequantizer_accuracy": float(self.prequantizer_correct) / samples,
                "qann_tied": float(self.tied) / samples, "qann_agreement": (self.agree / samples).tolist()}


class Settling(Measure):
    """Samples, and when their answer settled: how many converged at each step 0…T, how many did not."""

    samples: torch.Tensor
    unconverged: torch.Tensor
    converged_at: torch.Tensor

    def __init__(self, timesteps: int):
        super().__init__()
        for name in ("samples", "unconverged"):
            self.add_state(name)
        self.add_state("converged_at", timesteps + 1)

    def update(self, result: SimulationResult, y: torch.Tensor) -> None:
        done = result.converged
        self.samples += y.numel()
        steps = result.convergence_step[done].long().cpu()
        self.converged_at += torch.bincount(steps, minlength=self.converged_at.numel()).double()
        self.unconverged += int((~done).sum())

    def compute(self) -> tuple[int, dict[str, float], list[int]]:
        """(samples, convergence percentiles with the number of unconverged samples, how many
        samples converged at each step 0…T)."""
        counts = self.converged_at.round().long()
        steps = torch.repeat_interleave(torch.arange(counts.numel()), counts).tolist()
        return int(self.samples), {**percentiles(steps), "unconverged": int(self.unconverged)}, counts.tolist()


class PerClass(Measure):
    """Per true class: its samples, and the headline readout's correct answers at every step (and
    the QANN's); the number of classes is the output's, as the first batch gives it."""

    samples: torch.Tensor
    correct: torch.Tensor
    qann_correct: torch.Tensor

    def __init__(self, timesteps: int, readout: str):
        super().__init__()
        self.timesteps, self.readout = timesteps, readout
        for name, shape in (("samples", (0,)), ("correct", (timesteps, 0)), ("qann_correct", (0,))):
            self.add_state(name, shape)

    def update(self, outputs: dict[str, torch.Tensor], y: torch.Tensor, qann_out: torch.Tensor | None) -> None:
        classes = outputs[self.readout].shape[-1]
        if self.samples.numel() != classes:
            self.samples, self.qann_correct = torch.zeros(classes, dtype=torch.float64), torch.zeros(
                classes, dtype=torch.float64)
            self.correct = torch.zeros(self.timesteps, classes, dtype=torch.float64)
        y_cpu = y.cpu()
        self.samples += torch.bincount(y_cpu, minlength=classes).double()
        right = (predict(outputs[self.readout])[0] == y).cpu()                    # [T, B]
        for t in range(self.timesteps):
            self.correct[t] += torch.bincount(y_cpu[right[t]], minlength=classes).double()
        if qann_out is not None:
            self.qann_correct += torch.bincount(y_cpu[(predict(qann_out)[0] == y).cpu()], minlength=classes).double()

    def compute(self, compared: bool) -> dict[str, Any]:
        return {"samples": self.samples.long().tolist(), "correct": self.correct.long().tolist(),
                "qann_correct": self.qann_correct.long().tolist() if compared else None}


@dataclass
class SnnMeasures:
    """Everything :func:`evaluate_snn` sums over batches (``qann``: None without the QANN)."""

    curves: ReadoutCurves
    qann: QannComparison | None
    settling: Settling
    layers: LayerSpikes
    synapses: SynapseOps
    per_class: PerClass
    exit: ExitOutcome | None = None
    tradeoffs: tuple[ExitTradeoff, ...] = ()

    @classmethod
    def start(cls, timesteps: int, compared: bool, readout: str, exit_readout: str | None = None,
              tradeoffs: tuple[ExitTradeoff, ...] = ()) -> SnnMeasures:
        qann = QannComparison(timesteps) if compared else None
        exit_ = ExitOutcome(timesteps, exit_readout) if exit_readout else None
        return cls(ReadoutCurves(timesteps), qann, Settling(timesteps), LayerSpikes(compared), SynapseOps(),
                   PerClass(timesteps, readout), exit_, tradeoffs)

    def update(self, result: SimulationResult, y: torch.Tensor,
               qann: tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]] | None) -> None:
        """One batch's simulation; ``qann``: what :func:`~qffs.probe.quantizer_levels` gave for it."""
        self.curves.update(result.readouts, y)
        self.settling.update(result, y)
        levels: dict[str, torch.Tensor] = {}
        out = None
        if qann is not None and self.qann is not None:
            out, before, levels = qann
            self.qann.update(predict(result.readouts["count"])[0], out, before, y)
        self.per_class.update(result.readouts, y, out)
        self.layers.update(result.neurons, levels)
        self.synapses.update(result.synapses)
        for measure in (self.exit, *self.tradeoffs):
            if measure is not None:
                measure.update(result, y)

    def reduce(self) -> None:
        """torchrun: every rank simulated its shard; sum the counts (exact, in float64)."""
        measures = (self.curves, self.qann, self.settling, self.layers, self.synapses, self.per_class, self.exit,
                    *self.tradeoffs)
        reduce_measures(*(m for m in measures if m is not None))


@torch.no_grad()
def evaluate_snn(snn: SpikingNetwork, loader, timesteps: int, *, qann: nn.Module | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, readout: str = "count",
                 memory: int | None = None, e_ac: float = ENERGY_AC_PJ, e_mac: float = ENERGY_MAC_PJ,
                 exit: ExitPolicy | None = None, tradeoffs: tuple[ExitTradeoff, ...] = ()) -> EvaluationReport:
    """Simulate every batch for ``timesteps`` steps and aggregate the SPEC §6 measures.

    Every readout is measured (``snn_accuracy_by_readout``, ``tied_by_readout``,
    ``latency_to_lossless_by_readout``); ``readout`` picks the headline one (``snn_accuracy``,
    ``tied``, ``latency_to_lossless``). With ``qann`` (the network the SNN was converted from)
    the QANN accuracy and its accuracy before the output quantizer are measured on the same
    samples, and each IF layer's final counts are compared with the QANN levels; prediction
    agreement with the QANN is that of the spike counts. ``memory``: the simulation's budget in
    bytes (:meth:`SpikingNetwork.simulate`). ``exit`` (:mod:`qffs.snn.exits`): what it answers, exits
    leaving the batch (``.exit``); ``tradeoffs``: every exit of their grids (``.tradeoff``). For exact
    float64, convert from a float64 QANN (``load_snn(path, dtype=torch.float64)``): BatchNorm is
    folded in the conversion's type. ``.to_dict()`` of the report is the JSON's measured part.
    """
    check_readout(readout)
    if distributed.active() and len(loader.dataset) < distributed.world_size():
        raise QffsError(f"{len(loader.dataset)} test samples cannot be shared by {distributed.world_size()} processes: "
                        "run fewer processes or more samples")
    device = torch.device(device)
    if isinstance(snn, nn.Module):   # (an onnxruntime-backed network, qffs.export.runtime, places itself)
        snn = snn.to(device=device, dtype=dtype).eval()
    if qann is not None:
        qann = qann.to(device=device, dtype=dtype).eval()
    if exit is not None:
        exit.check_timesteps(timesteps)
    rule = None if exit is None else exit.rule(readout)
    exit_args: dict[str, Any] = {} if rule is None else {"exit_rule": rule}   # (onnxruntime's network has no exits)
    measures = SnnMeasures.start(timesteps, qann is not None, readout, None if exit in (None, NO_EXIT) else
                                 exit.readout or readout, tradeoffs)   # type: ignore[union-attr]
    for x, y in track(loader, f"simulating T={timesteps}" + ("" if exit is None else f", exit {exit.label()}")):
        x, y = x.to(device=device, dtype=dtype), y.to(device)
        # a batch whose samples have all gone quiet is final: its remaining steps repeat the last one
        result = snn.simulate(x, timesteps, until_quiet=True, record=True, record_counts=qann is not None,
                              memory=memory, **exit_args)
        measures.update(result, y, None if qann is None else quantizer_levels(qann, x, snn.output_neuron))
    measures.reduce()
    return _report(measures, snn, timesteps, readout, dtype, e_ac, e_mac)


def _report(measures: SnnMeasures, snn: SpikingNetwork, timesteps: int, readout: str, dtype: torch.dtype,
            e_ac: float, e_mac: float) -> EvaluationReport:
    """The report of the summed ``measures``."""
    samples, convergence, converged_at = measures.settling.compute()
    n = max(samples, 1)
    curves, ties = measures.curves.compute(n)
    qann = measures.qann.compute(n) if measures.qann is not None else dict.fromkeys(
        ("qann_accuracy", "qann_prequantizer_accuracy", "qann_tied", "qann_agreement"))
    reference: float | None = qann["qann_accuracy"]   # type: ignore[assignment]   # a float, or None without a QANN
    layers = measures.layers.compute(n, timesteps)
    synops = sum(row[0] for row in measures.synapses.totals.tolist()) / n
    macs = float(sum(measures.synapses.sizes))
    total_neurons = sum(r.neurons for r in layers)
    total_spikes = sum((r.pos_spikes_per_neuron + r.neg_spikes_per_neuron) * r.neurons for r in layers)
    return EvaluationReport(
        timesteps=list(range(1, timesteps + 1)), readout=readout, snn_accuracy=curves[readout], tied=ties[readout],
        snn_accuracy_by_readout=curves, tied_by_readout=ties, samples=samples, **qann,
        latency_to_lossless=latency_to_lossless(curves[readout], reference),
        latency_to_lossless_by_readout={name: latency_to_lossless(c, reference) for name, c in curves.items()},
        convergence=convergence, spikes_per_neuron_per_sample=total_spikes / max(total_neurons, 1),
        layers=layers, synapses=measures.synapses.compute(n), synops_per_sample=synops, ann_macs_per_sample=macs,
        energy=energy_estimate(synops, macs, e_ac, e_mac), input_window=snn.input_window,
        conversion=dict(snn.config), dtype=str(dtype).replace("torch.", ""), world_size=distributed.world_size(),
        exit=None if measures.exit is None else measures.exit.compute(),
        tradeoff={m.readout: m.compute() for m in measures.tradeoffs} or None,
        convergence_histogram=converged_at, per_class=measures.per_class.compute(measures.qann is not None))


__all__ = ["EvaluationReport", "LayerSpikes", "PerClass", "QannComparison", "ReadoutCurves", "Settling", "SnnMeasures",
           "SynapseOps", "evaluate_snn"]
