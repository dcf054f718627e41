"""Latency–accuracy evaluation of a spiking network over a dataset (SPEC §5–§6).

One simulation per batch to T gives the whole curve acc(1…T). Alongside it: the QANN's
accuracy on the same samples, tied predictions, each sample's convergence step, spikes per
neuron per sample (positive and negative) for every IF layer, the fraction of neurons whose
final count differs from the QANN level, synaptic operations against the ANN's MACs, and the
energy estimate.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from qffs.metrics import predict
from qffs.progress import track
from qffs.report import ENERGY_AC_PJ, ENERGY_MAC_PJ, energy_estimate, latency_to_lossless, percentiles
from qffs.snn.network import SpikingNetwork


def _quantizer_levels(qann: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    from qffs.quant import quantizers

    levels: dict[str, torch.Tensor] = {}
    hooks = [q.register_forward_hook(lambda m, i, o, name=name: levels.__setitem__(name, m.level(i[0])))
             for name, q in quantizers(qann)]
    try:
        out = qann(x)
    finally:
        for h in hooks:
            h.remove()
    return out, levels


@torch.no_grad()
def evaluate_snn(snn: SpikingNetwork, loader, timesteps: int, *, qann: nn.Module | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 e_ac: float = ENERGY_AC_PJ, e_mac: float = ENERGY_MAC_PJ) -> dict[str, Any]:
    """Simulate every batch for ``timesteps`` steps and aggregate the SPEC §6 measures.

    With ``qann`` (the network the SNN was converted from) the QANN accuracy is measured on
    the same samples and each IF layer's final counts are compared with the QANN levels.
    """
    device = torch.device(device)
    snn = snn.to(device=device, dtype=dtype).eval()
    if qann is not None:
        qann = qann.to(device=device, dtype=dtype).eval()
    correct = torch.zeros(timesteps, dtype=torch.float64)
    tied = torch.zeros(timesteps, dtype=torch.float64)
    agree = torch.zeros(timesteps, dtype=torch.float64)   # SNN prediction == QANN prediction
    qann_correct = qann_tied = 0.0
    samples = 0
    convergence: list[int] = []
    unconverged = 0
    layers: dict[str, dict[str, float]] = {}
    synapses: dict[str, dict[str, float]] = {}
    for x, y in track(loader, f"simulating T={timesteps}"):
        x, y = x.to(device=device, dtype=dtype), y.to(device)
        result = snn.simulate(x, timesteps, record=True, record_counts=qann is not None)
        pred, tie = predict(result.output)                       # [T, B]
        correct += (pred == y).sum(1).double().cpu()
        tied += tie.sum(1).double().cpu()
        samples += y.numel()
        done = result.converged
        convergence += result.convergence_step[done].tolist()
        unconverged += int((~done).sum())
        levels: dict[str, torch.Tensor] = {}
        if qann is not None:
            out, levels = _quantizer_levels(qann, x)
            qpred, qtie = predict(out)
            qann_correct += float((qpred == y).sum())
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
    n = max(samples, 1)
    curve = (correct / n).tolist()
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
        "snn_accuracy": curve,
        "tied": (tied / n).tolist(),
        "samples": samples,
        "qann_accuracy": qann_acc,
        "qann_tied": qann_tied / n if qann is not None else None,
        "qann_agreement": (agree / n).tolist() if qann is not None else None,
        "latency_to_lossless": latency_to_lossless(curve, qann_acc),
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
    }
