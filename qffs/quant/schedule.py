"""Progressive precision for QAT: a bit schedule such as 4,3,2, and BatchNorm re-estimation.

A QANN trained at 2 bits straight from a float network starts far from it (the calibrated
ResNet-20 is at 43 % on CIFAR-10). Lowering the hidden width in stages (APoT's 4→3→2) lets each
stage start near the previous one. At each change every
hidden quantizer's step is carried over as s·Q_old/Q_new (the clipping range s·Q stays), then
re-calibrated on training batches, and BatchNorm's running statistics are re-estimated with the
new quantizers in place (the job in ``qffs.jobs.quantize`` does these); the output quantizer keeps its
width and step. Epochs are split evenly across
the stages (earlier stages take the remainder), and only epochs of the last stage, at the final
width, may be kept.

    schedule = parse_bit_schedule("4,3,2", bits=2)   # (4, 3, 2)
    stage_bits(schedule, epochs=20, epoch=7)        # 3: the width epoch 8 (0-based 7) trains at
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from qffs.errors import QffsError
from qffs.quant.graph import quantizers
from qffs.quant.lsq import check_bits


def parse_bit_schedule(text: str | None, bits: int) -> tuple[int, ...] | None:
    """``"4,3,2"`` → ``(4, 3, 2)``: widths from 1 to 8, strictly decreasing, ending at ``bits``
    (``--bits``). None or a single width equal to ``bits``: no schedule."""
    if text is None or not str(text).strip():
        return None
    try:
        widths = tuple(int(part) for part in str(text).replace(" ", "").split(","))
    except ValueError:
        raise QffsError(f"--bit-schedule expects comma-separated bit widths such as 4,3,2, got {text!r}") from None
    for width in widths:
        check_bits("--bit-schedule", width)
    if widths[-1] != bits:
        raise QffsError(f"--bit-schedule {text} must end at the hidden width --bits {bits}")
    if any(a <= b for a, b in zip(widths, widths[1:])):
        raise QffsError(f"--bit-schedule {text} must decrease strictly, e.g. 4,3,2")
    return widths if len(widths) > 1 else None


def stage_epochs(epochs: int, stages: int) -> list[int]:
    """How many of ``epochs`` each stage trains: as even as can be, earlier stages one more."""
    if epochs < stages:
        raise QffsError(f"a bit schedule of {stages} stages needs at least {stages} epochs, got --epochs {epochs}")
    base, extra = divmod(epochs, stages)
    return [base + (1 if i < extra else 0) for i in range(stages)]


def stage_bits(schedule: tuple[int, ...], epochs: int, epoch: int) -> int:
    """The hidden width that 0-based ``epoch`` of an ``epochs``-long run trains at."""
    end = 0
    for width, count in zip(schedule, stage_epochs(epochs, len(schedule))):
        end += count
        if epoch < end:
            return width
    return schedule[-1]


def first_final_epoch(schedule: tuple[int, ...], epochs: int) -> int:
    """The 0-based first epoch at the final width: the first that may be kept."""
    return epochs - stage_epochs(epochs, len(schedule))[-1]


def hidden_bits(qann: nn.Module) -> int:
    """The width of the hidden quantizers (all share one)."""
    widths = {q.bits for _, q in quantizers(qann) if not q.is_output}
    if len(widths) != 1:
        raise QffsError(f"the QANN's hidden quantizers have {len(widths)} widths: {sorted(widths)}")
    return widths.pop()


@torch.no_grad()
def set_hidden_bits(qann: nn.Module, bits: int, *, keep_range: bool = True) -> None:
    """Give every hidden quantizer ``bits``; with ``keep_range`` its step becomes s·Q_old/Q_new, so
    the clipping range s·Q stays where training put it (without: the step stays, as when a state
    saved at this width is loaded next)."""
    check_bits("bits", bits)
    for _, quant in quantizers(qann):
        if quant.is_output:
            continue
        levels = 2**bits - 1
        if keep_range:
            quant.step.mul_(quant.levels / levels)
        quant.bits, quant.levels = bits, levels


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Recompute every BatchNorm's running mean and variance over ``batches`` (a cumulative average,
    the quantizers in place), leaving weights and modes as they were. Returns the images used."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in norms}
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    seen = 0
    try:
        model.eval()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None   # cumulative moving average: every batch weighs the same
            m.train()
        for x in batches:
            model(x.to(device))
            seen += len(x)
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
        for m, training in modes.items():
            m.training = training
    return seen
