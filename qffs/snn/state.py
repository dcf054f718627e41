"""The clock every time-dependent module shares: which step it is, and the input window."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from qffs.snn.monitor import Monitor


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
        self.monitor: Monitor | None = None     # statistics, when a simulation asks for them

    def keep(self, mask: torch.Tensor) -> None:
        """Per step: keep only the rows where ``mask`` holds (the other samples went quiet, their
        state is final); :attr:`rows` then says which samples of the batch the rows are."""

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
