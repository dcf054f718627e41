"""Random small float networks for property tests of invariant E (SPEC §3).

A *genome* (drawn by hypothesis) lists blocks — conv(+BN), max/avg pooling (module and
functional), residual blocks (one ReLU module called twice), concatenation, an unfolded
BatchNorm (affine), flatten + linear(+BN) head, optional hidden layer — plus bit widths and a
seed. :func:`build_qann` turns it into a calibrated QANN through the real ``qffs.quantize``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

from qffs.quant import calibrate, quantize, quantizers

BLOCKS = ("conv", "conv_bn", "maxpool", "fmaxpool", "maxpool_s1", "avgpool", "residual", "concat", "affine")


@dataclass(frozen=True)
class Genome:
    in_channels: int
    size: int
    blocks: tuple[str, ...]
    hidden: int | None
    head_bn: bool
    bits: int
    output_bits: int | None
    seed: int


@st.composite
def genomes(draw, output_bits=st.sampled_from([2, 3])):
    out_bits = draw(output_bits)
    return Genome(
        in_channels=draw(st.integers(1, 3)),
        size=draw(st.integers(2, 6)),
        blocks=tuple(draw(st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=4))),
        # an analog output needs at least one hidden quantizer to be a QANN at all
        hidden=5 if out_bits is None else draw(st.sampled_from([None, 5])),
        head_bn=draw(st.booleans()),
        bits=draw(st.integers(1, 3)),
        output_bits=out_bits,
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def _bn(c: int, d2: bool = True) -> nn.Module:
    bn = nn.BatchNorm2d(c) if d2 else nn.BatchNorm1d(c)
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.uniform_(-1.5, 1.5)
    bn.bias.data.uniform_(-0.5, 0.5)
    return bn


class ConvBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, bn: bool):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.bn = _bn(c_out) if bn else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class Residual(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 1)
        self.bn = _bn(c)
        self.relu = nn.ReLU(inplace=True)  # called twice: each call site gets its own quantizer

    def forward(self, x):
        return self.relu(self.bn(self.conv2(self.relu(self.conv1(x)))) + x)


class Concat(nn.Module):
    def __init__(self, c: int, half: int):
        super().__init__()
        self.a, self.b = nn.Conv2d(c, half, 3, padding=1), nn.Conv2d(c, half, 1)

    def forward(self, x):
        return torch.cat([F.relu(self.a(x)), torch.relu(self.b(x))], dim=1)


class Affine(nn.Module):
    """A BatchNorm fed by an activation, not a conv: stays as a gated affine op."""

    def __init__(self, c: int):
        super().__init__()
        self.bn = _bn(c)

    def forward(self, x):
        return F.relu(self.bn(x))


class FunctionalMaxPool(nn.Module):
    def forward(self, x):
        return F.max_pool2d(x, 2)


class RandomNet(nn.Module):
    def __init__(self, g: Genome):
        super().__init__()
        c, size, layers = g.in_channels, g.size, []
        for kind in g.blocks:
            if kind in ("maxpool", "fmaxpool", "avgpool") and size < 2:
                continue
            if kind == "conv" or kind == "conv_bn":
                layers.append(ConvBlock(c, 3, kind == "conv_bn"))
                c = 3
            elif kind == "maxpool":
                layers.append(nn.MaxPool2d(2))
                size //= 2
            elif kind == "fmaxpool":
                layers.append(FunctionalMaxPool())
                size //= 2
            elif kind == "maxpool_s1":
                layers.append(nn.MaxPool2d(3, stride=1, padding=1))
            elif kind == "avgpool":
                layers.append(nn.AvgPool2d(2))
                size //= 2
            elif kind == "residual":
                layers.append(Residual(c))
            elif kind == "concat":
                layers.append(Concat(c, 2))
                c = 4
            elif kind == "affine":
                layers.append(Affine(c))
        self.features = nn.Sequential(*layers)
        flat = c * size * size
        head: list[nn.Module] = [nn.Flatten()]
        if g.hidden:
            head += [nn.Linear(flat, g.hidden), nn.ReLU()]
            flat = g.hidden
        head.append(nn.Linear(flat, 4))
        if g.head_bn:
            head.append(_bn(4, d2=False))
        self.head = nn.Sequential(*head)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.bias.data.uniform_(-0.5, 0.5)

    def forward(self, x):
        return self.head(self.features(x))


def build_qann(g: Genome, dtype=torch.float64, weights=None) -> tuple[torch.fx.GraphModule, torch.Tensor]:
    """(calibrated QANN in eval mode, a batch of 2 inputs), both in ``dtype``; ``weights``: a
    :class:`~qffs.quant.weight_graph.WeightSpec` to quantize the weights too."""
    torch.manual_seed(g.seed)
    model = RandomNet(g).eval()
    x = torch.randn(2, g.in_channels, g.size, g.size) * 1.5
    qann = quantize(model, bits=g.bits, output_bits=g.output_bits, weights=weights).eval()
    calibrate(qann, [x], method="lsq")
    gen = torch.Generator().manual_seed(g.seed)
    with torch.no_grad():
        for _, q in quantizers(qann):  # jitter steps away from the calibrated values
            q.step.mul_(0.6 + torch.rand((), generator=gen).item())
    return qann.to(dtype), x.to(dtype)


def quantizer_levels(qann: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The QANN integer activation level of every quantizer, by module name."""
    levels: dict[str, torch.Tensor] = {}
    hooks = [q.register_forward_hook(lambda m, inp, out, name=name: levels.__setitem__(name, m.level(inp[0])))
             for name, q in quantizers(qann)]
    try:
        with torch.no_grad():
            qann(x)
    finally:
        for h in hooks:
            h.remove()
    return levels
