"""Weight quantization of a QANN's graph: every conv/linear weight quantized, on its folded grid.

    add_weight_quantizers(gm, WeightSpec(bits=4))   # in place; first/last layer at edge_bits
    weight_quantizers(gm)                           # [(layer path, WeightQuantizer)] in graph order
    set_temperature(gm, 21.0)                       # the sigmoid sums' T (an epoch hook)
    bake_weights(gm)                                # convert: weights become scale · level for good

The grid is the folded weight's (METHODS §2.8): folding BatchNorm after quantization would scale
every channel off its grid. BatchNorm is not folded while the weights train, though: a layer that
feeds one is quantized as ``q(w·c)/c`` (:class:`FoldScale`, c = γ/√(σ²+ε) from the running
statistics; Jacob et al. 2018, Krishnamoorthi 2018), so the BatchNorm still normalises each batch
— folded at the start, the ResNet-20 went to chance within 25 batches at lr 0.01 and fell 3 pp
short of the float-weight QANN at 0.001 — and in evaluation the pair computes ``q(w·c)·x`` plus
the folded bias. :func:`bake_weights` folds it for good. The quantizer is a parametrization of
``weight`` (:mod:`torch.nn.utils.parametrize`), so the state dict holds the float weight and the
quantizer's parameters, and a QANN rebuilt the same way loads it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.nn.utils import parametrize

from qffs.errors import QffsError
from qffs.ops import OPS, OpKind, OpTable, classify
from qffs.quant.fold import foldable, remove_node, set_module
from qffs.quant.weights import WEIGHT_QUANTIZERS, WeightQuantizer, check_weight_bits, make_weight_quantizer

#: Bits of a float32 number: an unquantized weight, a bias, a scale.
FLOAT_BITS = 32


@dataclass(frozen=True)
class WeightSpec:
    """How weights are quantized: width, quantizer (:data:`WEIGHT_QUANTIZERS`), one scale per output
    channel or per tensor, and the width of the first and last weighted layers (None: ``bits``)."""

    bits: int
    quantizer: str = "lsq"
    per_channel: bool = False
    edge_bits: int | None = 8

    def __post_init__(self) -> None:
        check_weight_bits("--weight-bits", self.bits)
        if self.edge_bits is not None:
            check_weight_bits("--edge-weight-bits", self.edge_bits)
        if self.quantizer not in WEIGHT_QUANTIZERS:
            raise QffsError(f"--weight-quantizer must be one of {', '.join(WEIGHT_QUANTIZERS)}, got {self.quantizer!r}")
        if not isinstance(self.per_channel, bool):
            raise QffsError(f"per_channel must be true or false, got {self.per_channel!r}")

    def record(self) -> dict[str, Any]:
        return asdict(self)


def weighted_layers(gm: fx.GraphModule, ops: OpTable = OPS) -> list[str]:
    """Paths of the conv/linear modules in graph order (a module called twice once)."""
    names: list[str] = []
    for node in gm.graph.nodes:
        if classify(node, gm, ops) is OpKind.WEIGHTED and node.op == "call_module" and str(node.target) not in names:
            names.append(str(node.target))
    return names


class FoldScale(nn.Module):
    """One side of a weight quantizer whose layer feeds a BatchNorm: ``w · c`` before it, ``w / c``
    after it (``inverse``), c = γ/√(σ²+ε) per output channel from the BatchNorm's running statistics.
    The BatchNorm is referenced, not owned: it stays in the graph and the state dict where it is."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, inverse: bool = False):
        super().__init__()
        self.__dict__["bn"] = bn   # not a submodule (a deep copy of the network copies it once, with the graph's)
        self.inverse = inverse

    def factor(self, like: torch.Tensor) -> torch.Tensor:
        """c, shaped to multiply ``like`` per output channel: exactly the BatchNorm's, never clamped
        (a clamped c would make the pair compute another network than its folded form)."""
        bn: Any = self.__dict__["bn"]
        c = torch.rsqrt(bn.running_var.to(like.dtype) + bn.eps)
        if bn.weight is not None:
            c = bn.weight.to(like.dtype) * c
        return c.reshape((-1,) + (1,) * (like.dim() - 1))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        c = self.factor(w)
        if not self.inverse:
            return w * c
        return torch.where(c == 0, torch.zeros_like(w), w / torch.where(c == 0, torch.ones_like(c), c))


def add_weight_quantizers(gm: fx.GraphModule, spec: WeightSpec, ops: OpTable = OPS) -> int:
    """Quantize every weighted layer's weight as ``spec`` says, in place; a layer feeding a BatchNorm
    on the folded grid (:class:`FoldScale`). Returns how many BatchNorms are folded so."""
    norms = {str(src.target): gm.get_submodule(str(bn.target)) for src, bn in foldable(gm, ops)}
    layers = weighted_layers(gm, ops)
    if not layers:
        raise QffsError("the network has no conv/linear layer whose weights could be quantized")
    edges = {layers[0], layers[-1]}
    for name in layers:
        layer = gm.get_submodule(name)
        weight = getattr(layer, "weight", None)
        if not isinstance(weight, nn.Parameter):
            continue
        bits = spec.edge_bits if name in edges and spec.edge_bits is not None else spec.bits
        bn = norms.get(name)
        steps: list[nn.Module] = [] if bn is None else [FoldScale(bn)]
        with torch.no_grad():
            grid = steps[0](weight) if steps else weight
        steps.append(make_weight_quantizer(spec.quantizer, grid, bits, spec.per_channel))
        steps += [] if bn is None else [FoldScale(bn, inverse=True)]
        for step in steps:
            parametrize.register_parametrization(layer, "weight", step)
    return len(norms)


def _steps(module: nn.Module) -> list[nn.Module]:
    """The parametrizations of ``module.weight``, in order (none: not parametrized)."""
    return list(module.parametrizations["weight"]) if parametrize.is_parametrized(module, "weight") else []


def _quantizer_of(module: nn.Module) -> WeightQuantizer | None:
    found = [p for p in _steps(module) if isinstance(p, WeightQuantizer)]
    return found[0] if found else None


def weight_quantizers(model: nn.Module) -> list[tuple[str, WeightQuantizer]]:
    """(layer path, quantizer) for every weight-quantized layer, in module order."""
    found = []
    for name, module in model.named_modules():
        quantizer = _quantizer_of(module)
        if quantizer is not None:
            found.append((name, quantizer))
    return found


def set_temperature(model: nn.Module, temperature: float) -> int:
    """Give every sigmoid-sum quantizer the temperature T; returns how many there are."""
    count = 0
    for _, quantizer in weight_quantizers(model):
        buffer = getattr(quantizer, "temperature", None)
        if isinstance(buffer, torch.Tensor):
            buffer.fill_(float(temperature))
            count += 1
    return count


def _plain_layer(layer: nn.Module, weight: torch.Tensor) -> nn.Module:
    """``layer`` as its own class without the parametrization, holding ``weight``.

    Not ``parametrize.remove_parametrizations``: a deep copy of a parametrized module shares its
    injected class with the original, and removing the property from that class would strip
    the original (the caller's QANN) of its weight too.
    """
    base = type(layer).__bases__[0] if parametrize.is_parametrized(layer) else type(layer)
    plain = base.__new__(base)
    plain.__dict__.update({k: v for k, v in layer.__dict__.items()
                           if k not in ("_parameters", "_buffers", "_modules")})
    plain._parameters = {k: v for k, v in layer._parameters.items()}
    plain._buffers = dict(layer._buffers)
    plain._modules = {k: v for k, v in layer._modules.items() if k != "parametrizations"}
    plain._parameters["weight"] = nn.Parameter(weight, requires_grad=False)
    return plain


def _folded_bias(layer: nn.Module, fold: FoldScale) -> torch.Tensor:
    """The bias of ``layer`` with its BatchNorm folded in: c·(b − μ) + β."""
    bn: Any = fold.bn
    c = fold.factor(bn.running_mean.reshape(-1, 1)).reshape(-1)
    bias = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
    shift = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
    return (bias - bn.running_mean) * c + shift


def _drop_batchnorm(gm: nn.Module, bn: nn.Module) -> None:
    """Take the folded ``bn`` out of the graph of ``gm`` (its input takes its place)."""
    if not isinstance(gm, fx.GraphModule):
        raise QffsError("baking weights trained beside a BatchNorm folds it: that needs the network's fx graph")
    path = next(name for name, m in gm.named_modules() if m is bn)
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and str(node.target) == path:
            remove_node(gm, node, node.args[0])
    gm.delete_all_unused_submodules()
    gm.recompile()


def bake_weights(model: nn.Module) -> int:
    """Replace each quantizer by its hard result for good: ``weight = scale · level``, with the
    integer levels (``weight_levels``, int8) and the scale (``weight_scale``) kept as buffers and the
    width as ``weight_bits``; a BatchNorm it was trained beside is folded into the bias and leaves
    the graph. Returns how many layers were baked."""
    baked = 0
    for name, quantizer in weight_quantizers(model):
        layer = model.get_submodule(name)
        steps = layer.parametrizations["weight"]
        folds = [p for p in steps if isinstance(p, FoldScale)]
        with torch.no_grad():
            grid = folds[0](steps.original) if folds else steps.original
            levels, scale, hard = quantizer.levels(grid), quantizer.scale().clone(), quantizer.hard(grid)
            bias = _folded_bias(layer, folds[0]) if folds else None
            if folds:   # a channel whose γ is 0 outputs β alone: weights 0 (level 0, even at 1 bit)
                dead = (folds[0].factor(grid) == 0).expand_as(grid)
                levels, hard = levels.masked_fill(dead, 0), hard.masked_fill(dead, 0)
        plain = _plain_layer(layer, hard)
        if bias is not None:
            plain._parameters["bias"] = nn.Parameter(bias, requires_grad=False)
        plain.register_buffer("weight_levels", levels.to(torch.int8))
        plain.register_buffer("weight_scale", scale)
        plain.weight_bits = quantizer.bits
        set_module(model, name, plain)
        if folds:
            _drop_batchnorm(model, folds[0].bn)
        baked += 1
    return baked


def drop_stale_levels(model: nn.Module) -> list[str]:
    """Forget the integer levels of every layer whose weight is no longer ``weight_scale ·
    weight_levels`` (an SNN fine-tuned after conversion: its weights left the grid and are float
    again); returns those layers' paths."""
    dropped = []
    for name, module in model.named_modules():
        levels, scale = getattr(module, "weight_levels", None), getattr(module, "weight_scale", None)
        if not isinstance(levels, torch.Tensor) or not isinstance(scale, torch.Tensor):
            continue
        weight = module.weight
        if not torch.equal(weight, levels.to(weight.dtype) * scale.to(weight.dtype)):
            del module.weight_levels, module.weight_scale
            module.__dict__.pop("weight_bits", None)
            dropped.append(name)
    return dropped


def integer_weights(model: nn.Module) -> bool:
    """Whether every conv/linear layer of ``model`` holds baked integer levels (a weight-quantized SNN)."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    return bool(layers) and all(isinstance(getattr(m, "weight_levels", None), torch.Tensor) for m in layers)


def weight_size(model: nn.Module, float_weights: bool = False) -> dict[str, Any]:
    """Storage of the weighted layers as deployed, in bits: quantized weights at their width (plus
    one float32 scale per tensor or channel), float weights and every bias (with the one a
    BatchNorm trained beside the weights becomes) at 32 bits; and the compression against
    all-float32. ``float_weights``: every weight at 32 bits (an SNN fine-tuned off its grid)."""
    total = dense = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if not isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)) or not isinstance(weight, torch.Tensor):
            continue
        quantizer = _quantizer_of(module)
        bits = quantizer.bits if quantizer is not None else getattr(module, "weight_bits", None)
        bits = None if float_weights else bits
        scales = getattr(module, "weight_scale", None) if quantizer is None else quantizer.scale()
        biases = module.bias.numel() if module.bias is not None else 0
        if not biases and any(isinstance(p, FoldScale) for p in _steps(module)):
            biases = weight.shape[0]   # the bias its BatchNorm becomes once folded
        dense += FLOAT_BITS * (weight.numel() + biases)
        total += FLOAT_BITS * biases + (FLOAT_BITS * weight.numel() if bits is None else
                                        bits * weight.numel() + FLOAT_BITS * int(scales.numel()))
    return {"bits": total, "kilobytes": total / 8 / 1000, "float32_kilobytes": dense / 8 / 1000,
            "compression": dense / total if total else 1.0}
