"""Per-layer measures of a spiking network's evaluation: spikes per IF layer, operations per weighted layer.

Float64 sums per named layer (:mod:`qffs.measures`), a row each, added in the order the first
batch's records name the layers; :func:`qffs.evaluate.evaluate_snn` reports them.
"""

from __future__ import annotations

import torch

from qffs.measures import Measure
from qffs.report import LayerActivity, SynapseActivity
from qffs.snn.records import NeuronRecord, SynapseRecord


class _PerLayer(Measure):
    """Sums per named layer, a row each, added as the first batch's records name the layers."""

    totals: torch.Tensor

    def __init__(self, columns: int):
        super().__init__()
        self.rows: dict[str, int] = {}
        self.sizes: list[int] = []                               # each layer's neurons or MACs, as first recorded
        self.add_state("totals", (0, columns))

    def row(self, name: str, size: int) -> torch.Tensor:
        """Layer ``name``'s row of ``totals`` (a view: add to it in place)."""
        if name not in self.rows:
            self.rows[name] = len(self.sizes)
            self.sizes.append(size)
            self.totals = torch.cat([self.totals, self.totals.new_zeros(1, self.totals.shape[1])])
        return self.totals[self.rows[name]]


class LayerSpikes(_PerLayer):
    """Every IF layer: positive and negative spikes, and (``compared`` with the QANN) neurons
    whose final count is off their QANN level."""

    def __init__(self, compared: bool):
        super().__init__(3)                                      # pos, neg, mismatch
        self.compared = compared

    def update(self, records: list[NeuronRecord], levels: dict[str, torch.Tensor]) -> None:
        for rec in records:
            row = self.row(rec.name, rec.neurons)
            row[0] += float(rec.pos_spikes.sum())
            row[1] += float(rec.neg_spikes.sum())
            if rec.name in levels and rec.counts is not None:
                row[2] += float((rec.counts != levels[rec.name]).sum())

    def compute(self, samples: int, timesteps: int) -> list[LayerActivity]:
        rows = []
        for name, neurons, (pos, neg, mismatch) in zip(self.rows, self.sizes, self.totals.tolist()):
            per = neurons * samples
            rows.append(LayerActivity(name, int(neurons), pos / per, neg / per, (pos + neg) / (per * timesteps),
                                      mismatch / per if self.compared else None))
        return rows


class SynapseOps(_PerLayer):
    """Every weighted layer: synaptic operations and input events, beside its MACs."""

    def __init__(self):
        super().__init__(2)                                      # synops, events

    def update(self, records: list[SynapseRecord]) -> None:
        for rec in records:
            row = self.row(rec.name, rec.macs)
            row[0] += float(rec.synops.sum())
            row[1] += float(rec.events.sum())

    def compute(self, samples: int) -> list[SynapseActivity]:
        return [SynapseActivity(name, int(macs), synops / samples, events / samples)
                for name, macs, (synops, events) in zip(self.rows, self.sizes, self.totals.tolist())]


__all__ = ["LayerSpikes", "SynapseOps"]
