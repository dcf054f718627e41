"""The clock every time-dependent module shares: which step it is, and the input window."""

from __future__ import annotations

import torch
from torch import nn


class Stateful(nn.Module):
    """A module with state across time steps: reset explicitly, told the step before each call.

    ``input_window`` (T_in) is set by the converter; ``step`` (0-based t) by the network before
    every step. Layer by layer, ``timesteps`` is T and each call gets all T steps at once,
    time folded into the batch ([T·B, ...], step-major); it is None in the per-step mode.
    Subclasses clear their state in :meth:`reset`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.step = 0
        self.input_window = 1
        self.timesteps: int | None = None
        self.rows: torch.Tensor | None = None   # per step: which samples of the batch the rows are (None: all)

    def keep(self, mask: torch.Tensor) -> None:
        """Per step: keep only the rows where ``mask`` holds (the other samples went quiet, their
        state is final). Statistics stay per sample of the whole batch, indexed by :attr:`rows`."""

    def tally(self, total: torch.Tensor | None, rows_value: torch.Tensor) -> torch.Tensor:
        """``total`` (per sample of the whole batch) plus ``rows_value`` (per row of this call)."""
        if total is None:
            return rows_value.clone()
        if self.rows is None:
            return total + rows_value
        return total.index_add_(0, self.rows, rows_value)
    def window_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """Layer by layer: the view [T, B, ...] of ``tensor`` [T·B, ...] cut to the steps t < T_in."""
        T = self.timesteps
        return tensor.view(T, tensor.shape[0] // T, *tensor.shape[1:])[: self.input_window]

    @property
    def in_window(self) -> bool:
        """True while t < T_in: inputs and biases flow only then (input and bias shutoff)."""
        return self.step < self.input_window

    def reset(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError
