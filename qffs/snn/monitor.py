"""Measurement apart from the dynamics: per-sample spikes, synaptic operations and active steps.

A :class:`Monitor` observes the :class:`~qffs.snn.spiking.Events` the engine's calls return when
statistics are asked for (``simulate(record=True)``); no module ever calls it. Totals are per
sample of the whole batch, also after quiet samples were dropped (``rows``).
"""

from __future__ import annotations

import torch

from qffs.snn.spiking import Events


class Monitor:
    """Per-sample totals of one simulation of ``batch`` samples, keyed by module name."""

    def __init__(self, batch: int):
        self.batch = batch
        self.pos_spikes: dict[str, torch.Tensor] = {}     # IF layer → [B] long
        self.neg_spikes: dict[str, torch.Tensor] = {}
        self.synops: dict[str, torch.Tensor] = {}         # weighted layer → [B]: Σ nonzero inputs × fan-out
        self.events: dict[str, torch.Tensor] = {}         # [B]: Σ nonzero inputs
        self.active_slices: dict[str, torch.Tensor] = {}  # [B] long: steps with any nonzero input

    def _add(self, table: dict[str, torch.Tensor], name: str, per_row: torch.Tensor, rows: torch.Tensor | None) -> None:
        """Add one call's value per row ([rows], or [T, B] layer by layer: summed over steps) to ``name``'s totals."""
        if per_row.dim() == 2:
            per_row = per_row.sum(0)
        total = table.get(name)
        if total is None:   # float totals in float64: exact sums of integer counts (a float32 sum over
            dtype = torch.float64 if per_row.is_floating_point() else per_row.dtype   # steps rounds past 2^24)
            total = table[name] = torch.zeros((self.batch, *per_row.shape[1:]), dtype=dtype, device=per_row.device)
        if rows is None:
            total += per_row
        else:
            total.index_add_(0, rows, per_row.to(total.dtype))

    def observe(self, name: str, events: Events, rows: torch.Tensor | None = None) -> None:
        """One call's events of the module ``name``; ``rows``: which samples of the batch its rows are (None: all)."""
        if events.pos is not None:
            self._add(self.pos_spikes, name, events.pos.long(), rows)
            neg = events.neg if events.neg is not None else torch.zeros_like(events.pos)
            self._add(self.neg_spikes, name, neg.long(), rows)
        if events.synops is not None:
            self._add(self.synops, name, events.synops, rows)
            self._add(self.events, name, events.inputs, rows)
            self._add(self.active_slices, name, events.active.long(), rows)


__all__ = ["Monitor"]
