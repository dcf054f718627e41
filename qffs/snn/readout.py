"""The three readouts of one simulation (SPEC §5), as pure functions of the output layer's state.

After step t each output neuron holds a signed spike count Z and a membrane u:

- ``count``: Z·s, the QANN's units (bit-identical to the QANN output once quiet);
- ``tiebreak``: the count decides; among the classes sharing the highest count the larger
  membrane wins. As a tensor: Z·s + s·(¼ + ½·r/C), r the rank of u among the C classes (the
  number of classes with a smaller membrane), whose argmax is exactly that prediction: the
  added term lies in [s/4, 3s/4), so it never reaches a neighbouring count, and equal
  membranes get equal ranks (still a tie, to the lowest index);
- ``current``: (Z·θ + u − u₀)/T_in, the current the neuron has integrated, per input-window
  step: once quiet it is the QANN output quantizer's *input* (the analog readout at every step).

With an analog output layer (no output neuron) all three are its integrated current / T_in.
"""

from __future__ import annotations

import torch

from qffs.errors import QffsError

READOUTS = ("count", "tiebreak", "current")
#: The headline readout of reports (every readout is measured anyway).
DEFAULT_READOUT = "count"


def check_readout(readout: str) -> str:
    """Refuse an unknown readout name (one place for the list)."""
    if readout not in READOUTS:
        raise QffsError(f"unknown readout {readout!r}: choose one of {', '.join(READOUTS)}")
    return readout


def membrane_rank(membrane: torch.Tensor) -> torch.Tensor:
    """Per element, how many classes (last dim) have a strictly smaller membrane; exact, O(C log C)."""
    ordered = membrane.sort(dim=-1).values.contiguous()
    return torch.searchsorted(ordered, membrane.contiguous(), side="left").to(membrane.dtype)


def output_readout(readout: str, counts: torch.Tensor, membrane: torch.Tensor, *, threshold: torch.Tensor,
                   step_size: torch.Tensor, initial_membrane: torch.Tensor, input_window: int) -> torch.Tensor:
    """``readout`` of a spiking output layer from its counts and membranes (any shape, e.g. [T, B, C])."""
    check_readout(readout)
    theta, s = threshold.to(counts.dtype), step_size.to(counts.dtype)
    if readout == "count":
        return counts * s
    if readout == "tiebreak":
        return counts * s + s * (0.25 + 0.5 * membrane_rank(membrane) / membrane.shape[-1])
    return (counts * theta + membrane - initial_membrane.to(counts.dtype)) / input_window


__all__ = ["DEFAULT_READOUT", "READOUTS", "check_readout", "output_readout"]
