"""Prediction and accuracy, with SPEC §1's tie rule: argmax, ties to the lowest class index."""

from __future__ import annotations

import torch


def predict(output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (predicted class, tied) for logits ``[..., C]``.

    ``torch.argmax`` returns the first maximal index, i.e. ties go to the lowest class index;
    ``tied`` marks rows whose maximum is shared by several classes (frequent with 3-bit logits).
    """
    pred = output.argmax(dim=-1)
    top = output.max(dim=-1, keepdim=True).values
    tied = (output == top).sum(dim=-1) > 1
    return pred, tied
