"""Latency–accuracy evaluation of a spiking network over a dataset (SPEC §5–§6).

One simulation per batch to T gives the whole curve acc(1…T), for each of the three readouts
(spike counts, counts with membrane tie-break, integrated current). Alongside it: the QANN's
accuracy on the same samples and before its output quantizer (the current readout's
reference), tied predictions, each sample's convergence step, spikes per
neuron per sample (positive and negative) for every IF layer, the fraction of neurons whose
final count differs from the QANN level, synaptic operations against the ANN's MACs, and the
energy estimate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from qffs import distributed
from qffs.metrics import predict
from qffs.progress import track
from qffs.report import ENERGY_AC_PJ, ENERGY_MAC_PJ, energy_estimate, latency_to_lossless, percentiles
from qffs.snn.network import SpikingNetwork
from qffs.snn.readout import READOUTS, check_readout


def _quantizer_levels(qann: nn.Module, x: torch.Tensor, output_name: str | None
                      ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(QANN output, the input of the quantizer named ``output_name`` — the SNN's output neuron —
    or the output itself when there is none, every quantizer's levels)."""
    from qffs.quant import quantizers

    levels: dict[str, torch.Tensor] = {}
    inputs: dict[str, torch.Tensor] = {}

    def keep(module, args, _, name):
        levels[name] = module.level(args[0])
        if name == output_name:
            inputs["output"] = args[0]

    hooks = [q.register_forward_hook(lambda m, i, o, name=name: keep(m, i, o, name)) for name, q in quantizers(qann)]
    try:
        out = qann(x)
    finally:
        for h in hooks:
            h.remove()
    return out, inputs.get("output", out), levels


@dataclass
class _Totals:
    """One rank's sums over its samples, as one float64 vector to add across ranks (layers and
    synapses are updated in place; every rank has them in the same order, from the same network)."""

    correct: dict[str, torch.Tensor]
    tied: dict[str, torch.Tensor]
    agree: torch.Tensor
    scalars: list[float]
    convergence: list[int]
    timesteps: int
    layers: dict[str, dict[str, float]]
    synapses: dict[str, dict[str, float]]

    def all_reduce(self) -> "_Totals":
        histogram = torch.bincount(torch.tensor(self.convergence, dtype=torch.long), minlength=self.timesteps + 1)
        parts = [*self.correct.values(), *self.tied.values(), self.agree, torch.tensor(self.scalars, dtype=torch.float64),
                 histogram.double(),
                 torch.tensor([[r["pos"], r["neg"], r["mismatch"]] for r in self.layers.values()], dtype=torch.float64),
                 torch.tensor([[r["synops"], r["events"]] for r in self.synapses.values()], dtype=torch.float64)]
        sizes = [p.numel() for p in parts]
        summed = list(distributed.all_reduce_sum(torch.cat([p.flatten() for p in parts])).split(sizes))
        for table in (self.correct, self.tied):
            for name in table:
                table[name] = summed.pop(0)
        self.agree, self.scalars = summed.pop(0), summed.pop(0).tolist()
        counts = summed.pop(0).round().long()
        self.convergence = torch.repeat_interleave(torch.arange(counts.numel()), counts).tolist()
        for row, (pos, neg, mismatch) in zip(self.layers.values(), summed.pop(0).view(-1, 3).tolist()):
            row.update(pos=pos, neg=neg, mismatch=mismatch)
        for row, (synops, events) in zip(self.synapses.values(), summed.pop(0).view(-1, 2).tolist()):
            row.update(synops=synops, events=events)
        return self


@torch.no_grad()
def evaluate_snn(snn: SpikingNetwork, loader, timesteps: int, *, qann: nn.Module | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, readout: str = "count",
                 memory: int | None = None, e_ac: float = ENERGY_AC_PJ,
                 e_mac: float = ENERGY_MAC_PJ) -> dict[str, Any]:
    """Simulate every batch for ``timesteps`` steps and aggregate the SPEC §6 measures.

    Every readout is measured (``snn_accuracy_by_readout``, ``tied_by_readout``,
    ``latency_to_lossless_by_readout``); ``readout`` picks the headline one (``snn_accuracy``,
    ``tied``, ``latency_to_lossless``). With ``qann`` (the network the SNN was converted from)
    the QANN accuracy and its accuracy before the output quantizer are measured on the same
    samples, and each IF layer's final counts are compared with the QANN levels; prediction
    agreement with the QANN is that of the spike counts. ``memory``: the simulation's budget
    in bytes (:meth:`SpikingNetwork.simulate`). For an exact float64 run, ``snn`` should be
    converted from a float64 QANN (``load_snn(path, dtype=torch.float64)``): BatchNorm is folded
    in the conversion's type.
    """
    check_readout(readout)
    if distributed.active() and len(loader.dataset) < distributed.world_size():
        from qffs.errors import QffsError

        raise QffsError(f"{len(loader.dataset)} test samples cannot be shared by {distributed.world_size()} processes: "
                        "run fewer processes or more samples")
    device = torch.device(device)
    if isinstance(snn, nn.Module):   # (an onnxruntime-backed network, qffs.export.runtime, places itself)
        snn = snn.to(device=device, dtype=dtype).eval()
    if qann is not None:
        qann = qann.to(device=device, dtype=dtype).eval()
    correct = {name: torch.zeros(timesteps, dtype=torch.float64) for name in READOUTS}
    tied = {name: torch.zeros(timesteps, dtype=torch.float64) for name in READOUTS}
    agree = torch.zeros(timesteps, dtype=torch.float64)   # spike-count prediction == QANN prediction
    qann_correct = qann_tied = prequant_correct = 0.0
    samples = 0
    convergence: list[int] = []
    unconverged = 0
    layers: dict[str, dict[str, float]] = {}
    synapses: dict[str, dict[str, float]] = {}
    for x, y in track(loader, f"simulating T={timesteps}"):
        x, y = x.to(device=device, dtype=dtype), y.to(device)
        # a batch whose samples have all gone quiet is final: its remaining steps repeat the last one
        result = snn.simulate(x, timesteps, until_quiet=True, record=True, record_counts=qann is not None,
                              memory=memory)
        for name, out in result.readouts.items():
            pred, tie = predict(out)                              # [T, B]
            correct[name] += (pred == y).sum(1).double().cpu()
            tied[name] += tie.sum(1).double().cpu()
        pred, _ = predict(result.readouts["count"])
        samples += y.numel()
        done = result.converged
        convergence += result.convergence_step[done].tolist()
        unconverged += int((~done).sum())
        levels: dict[str, torch.Tensor] = {}
        if qann is not None:
            out, before, levels = _quantizer_levels(qann, x, snn.output_neuron)
            qpred, qtie = predict(out)
            qann_correct += float((qpred == y).sum())
            prequant_correct += float((predict(before)[0] == y).sum())
            agree += (pred == qpred).sum(1).double().cpu()
            qann_tied += float(qtie.sum())
        for rec in result.neurons:
            row = layers.setdefault(rec.name, {"neurons": rec.neurons, "pos": 0.0, "neg": 0.0, "mismatch": 0.0})
            row["pos"] += float(rec.pos_spikes.sum())
            row["neg"] += float(rec.neg_spikes.sum())
            if rec.name in levels and rec.counts is not None:
                row["mismatch"] += float((rec.counts != levels[rec.name]).sum())
        for rec in result.synapses:
            row = synapses.setdefault(rec.name, {"macs": rec.macs, "synops": 0.0, "events": 0.0})
            row["synops"] += float(rec.synops.sum())
            row["events"] += float(rec.events.sum())
    if distributed.active():   # every rank simulated its shard: sum the counts (exact, in float64)
        totals = _Totals(correct, tied, agree, [qann_correct, qann_tied, prequant_correct, samples, unconverged],
                         convergence, timesteps, layers, synapses).all_reduce()
        correct, tied, agree, scalars, convergence = totals.correct, totals.tied, totals.agree, totals.scalars, \
            totals.convergence
        qann_correct, qann_tied, prequant_correct, samples, unconverged = scalars
        samples, unconverged = int(samples), int(unconverged)
    n = max(samples, 1)
    curves = {name: (c / n).tolist() for name, c in correct.items()}
    ties = {name: (c / n).tolist() for name, c in tied.items()}
    qann_acc = qann_correct / n if qann is not None else None
    layer_rows = []
    for name, row in layers.items():
        per = row["neurons"] * n
        layer_rows.append({
            "name": name, "neurons": int(row["neurons"]),
            "pos_spikes_per_neuron": row["pos"] / per, "neg_spikes_per_neuron": row["neg"] / per,
            "spike_rate": (row["pos"] + row["neg"]) / (per * timesteps),
            "mismatch_fraction": row["mismatch"] / per if qann is not None else None,
        })
    synops = sum(r["synops"] for r in synapses.values()) / n
    macs = float(sum(r["macs"] for r in synapses.values()))
    total_neurons = sum(r["neurons"] for r in layer_rows)
    total_spikes = sum((r["pos_spikes_per_neuron"] + r["neg_spikes_per_neuron"]) * r["neurons"] for r in layer_rows)
    return {
        "timesteps": list(range(1, timesteps + 1)),
        "readout": readout,
        "snn_accuracy": curves[readout],
        "tied": ties[readout],
        "snn_accuracy_by_readout": curves,
        "tied_by_readout": ties,
        "samples": samples,
        "qann_accuracy": qann_acc,
        "qann_prequantizer_accuracy": prequant_correct / n if qann is not None else None,
        "qann_tied": qann_tied / n if qann is not None else None,
        "qann_agreement": (agree / n).tolist() if qann is not None else None,
        "latency_to_lossless": latency_to_lossless(curves[readout], qann_acc),
        "latency_to_lossless_by_readout": {name: latency_to_lossless(c, qann_acc) for name, c in curves.items()},
        "convergence": {**percentiles(convergence), "unconverged": unconverged},
        "spikes_per_neuron_per_sample": total_spikes / max(total_neurons, 1),
        "layers": layer_rows,
        "synapses": [{"name": k, "macs": int(v["macs"]), "synops_per_sample": v["synops"] / n,
                      "input_events_per_sample": v["events"] / n} for k, v in synapses.items()],
        "synops_per_sample": synops,
        "ann_macs_per_sample": macs,
        "energy": energy_estimate(synops, macs, e_ac, e_mac),
        "input_window": snn.input_window,
        "conversion": dict(snn.config),
        "dtype": str(dtype).replace("torch.", ""),
        "world_size": distributed.world_size(),
    }
