"""The clock every time-dependent module shares: which step it is, and the input window."""

from __future__ import annotations

from torch import nn


class Stateful(nn.Module):
    """A module with state across time steps: reset explicitly, told the step before each call.

    ``input_window`` (T_in) is set by the converter; ``step`` (0-based t) by the network before
    every step. Subclasses clear their state in :meth:`reset`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.step = 0
        self.input_window = 1

    @property
    def in_window(self) -> bool:
        """True while t < T_in: inputs and biases flow only then (input and bias shutoff)."""
        return self.step < self.input_window

    def reset(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError
