"""Measurement apart from the dynamics: per-sample spikes, synaptic operations and active steps.

A :class:`Monitor` is attached to a network's modules for one simulation when statistics are
asked for (``simulate(record=True)``). The neurons report each step's spikes to it and the
weighted layers their input; with no monitor attached they compute nothing for reports.
Totals are per sample of the whole batch, also after quiet samples were dropped (:attr:`rows`).
"""

from __future__ import annotations

import torch
from torch import nn


class Monitor:
    """Per-sample totals of one simulation of ``batch`` samples, keyed by module.

    ``timesteps`` is T when each call holds all T steps (layer by layer, rows step-major),
    None per step. ``rows`` says which samples of the batch a per-step call's rows are (None: all).
    """

    def __init__(self, batch: int, timesteps: int | None = None):
        self.batch = batch
        self.timesteps = timesteps
        self.rows: torch.Tensor | None = None
        self.pos_spikes: dict[nn.Module, torch.Tensor] = {}     # IF layer → [B] long
        self.neg_spikes: dict[nn.Module, torch.Tensor] = {}
        self.synops: dict[nn.Module, torch.Tensor] = {}         # weighted layer → [B]: Σ nonzero inputs × fan-out
        self.events: dict[nn.Module, torch.Tensor] = {}         # [B]: Σ nonzero inputs
        self.active_slices: dict[nn.Module, torch.Tensor] = {}  # [B] long: steps with any nonzero input
        self._tally: dict[nn.Module, torch.Tensor] = {}         # [inputs per sample, 2]: fan-out, 1

    def _add(self, table: dict[nn.Module, torch.Tensor], module: nn.Module, per_row: torch.Tensor) -> None:
        """Add one call's value per row (per sample, layer by layer summed over steps) to ``module``'s totals."""
        if self.timesteps is not None:
            per_row = per_row.view(self.timesteps, -1, *per_row.shape[1:]).sum(0)
        total = table.get(module)
        if total is None:   # float totals in float64: exact sums of integer counts (a float32 sum over
            dtype = torch.float64 if per_row.is_floating_point() else per_row.dtype   # steps rounds past 2^24)
            total = table[module] = torch.zeros((self.batch, *per_row.shape[1:]), dtype=dtype, device=per_row.device)
        if self.rows is None:
            total += per_row
        else:
            total.index_add_(0, self.rows, per_row.to(total.dtype))

    def spikes(self, neuron: nn.Module, pos: torch.Tensor, neg: torch.Tensor | None) -> None:
        """An IF layer's positive and negative spikes per row at one call."""
        self._add(self.pos_spikes, neuron, pos.long())
        self._add(self.neg_spikes, neuron, neg.long() if neg is not None else torch.zeros_like(pos, dtype=torch.long))

    def inputs(self, layer: nn.Module, x: torch.Tensor, fanout: torch.Tensor) -> torch.Tensor:
        """A weighted layer's input ``x`` (``fanout``: synapses per input element): adds its SOPs,
        events and active steps; returns which rows of ``x`` hold any nonzero input."""
        tally = self._tally.get(layer)
        if tally is None or tally.dtype != x.dtype or tally.shape[0] != fanout.numel():
            tally = self._tally[layer] = torch.stack([fanout.flatten(), torch.ones_like(fanout).flatten()], 1).to(x.dtype)
        # one pass: [rows, inputs] events × [inputs, 2] (fan-out, 1) = per-row SOPs and event counts
        per_row = (x != 0).flatten(1).to(x.dtype) @ tally
        active = per_row[:, 1] > 0
        self._add(self.synops, layer, per_row[:, 0])
        self._add(self.events, layer, per_row[:, 1])
        self._add(self.active_slices, layer, active.long())
        return active


__all__ = ["Monitor"]
