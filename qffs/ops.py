"""The op taxonomy the converter works from: which graph nodes mean what in an SNN.

Every fx node of a quantized ANN falls into one of these kinds (:func:`classify`):

- ``quantizer`` — an :class:`~qffs.quant.lsq.LSQActivation`: becomes an IF neuron;
- ``weighted`` — ``nn.Conv1d/2d`` or ``nn.Linear``: stays, its bias gated to the input window;
- ``batchnorm`` — folded into the layer before it, or kept as a gated per-channel affine op;
- ``maxpool`` — becomes event max pooling;
- ``linear`` — linear or selection ops that act on each time step's tensor unchanged
  (average pooling, flatten/view, add of two activations, concatenation, slicing, …);
- ``relu`` — a ReLU that was not quantized: refused ("run qffs.quantize first");
- ``unsupported`` — anything else: refused by name before any simulation.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from qffs.quant.lsq import LSQActivation

WEIGHTED_MODULES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Linear)
BATCHNORM_MODULES: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d)
MAXPOOL_MODULES: tuple[type[nn.Module], ...] = (nn.MaxPool1d, nn.MaxPool2d)
RELU_MODULES: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6, nn.Hardtanh)
LINEAR_MODULES: tuple[type[nn.Module], ...] = (
    nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Unflatten,
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.ZeroPad2d, nn.ConstantPad2d,
)

MAXPOOL_FUNCTIONS = {F.max_pool1d, F.max_pool2d}
RELU_FUNCTIONS = {F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.hardtanh, F.hardtanh_}
RELU_METHODS = {"relu", "relu_", "clamp", "clamp_min", "clamp_"}

#: Functions linear in the activations as long as at most one argument is activation-derived.
SCALING_FUNCTIONS = {operator.mul, operator.truediv, torch.mul, torch.div, operator.neg, torch.neg}
#: Functions linear in all activation arguments (sums) or pure selections.
LINEAR_FUNCTIONS = {
    operator.add, operator.sub, torch.add, torch.sub, torch.cat, torch.concat, torch.stack, torch.flatten,
    torch.reshape, torch.permute, torch.transpose, torch.squeeze, torch.unsqueeze, torch.chunk, torch.split,
    torch.narrow, torch.mean, torch.sum, operator.getitem, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d, F.dropout, F.dropout1d, F.dropout2d, F.pad, getattr,
}
LINEAR_METHODS = {
    "view", "reshape", "flatten", "permute", "transpose", "squeeze", "unsqueeze", "contiguous", "chunk",
    "split", "narrow", "mean", "sum", "add", "sub", "mul", "div", "neg", "size", "dim", "expand", "repeat",
    "unflatten", "view_as", "reshape_as", "clone", "float", "double", "to", "type_as", "__getitem__",
}


def describe(node: fx.Node, gm: fx.GraphModule) -> str:
    """A human name for a node's op: 'torch.nn.GELU at features.3', 'torch.sigmoid', 'Tensor.exp()'."""
    if node.op == "call_module":
        cls = type(gm.get_submodule(str(node.target)))
        qual = f"torch.nn.{cls.__name__}" if getattr(nn, cls.__name__, None) is cls else f"{cls.__module__}.{cls.__qualname__}"
        return f"{qual} at {node.target}"
    if node.op == "call_function":
        name = getattr(node.target, "__name__", str(node.target))
        for prefix, space in (("torch.nn.functional", F), ("torch", torch), ("operator", operator)):
            if getattr(space, name, None) is node.target:
                return f"{prefix}.{name}"
        return f"{getattr(node.target, '__module__', '')}.{name}".lstrip(".")
    if node.op == "call_method":
        return f"Tensor.{node.target}()"
    return f"{node.op} {node.target}"


def classify(node: fx.Node, gm: fx.GraphModule) -> str:
    """The kind of an fx node (see the module docstring); ``io`` for placeholders, outputs, attributes."""
    if node.op in ("placeholder", "output", "get_attr"):
        return "io"
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        for kind, types in (("quantizer", (LSQActivation,)), ("weighted", WEIGHTED_MODULES),
                            ("batchnorm", BATCHNORM_MODULES), ("maxpool", MAXPOOL_MODULES),
                            ("relu", RELU_MODULES), ("linear", LINEAR_MODULES)):
            if isinstance(module, types):
                if kind == "linear" and isinstance(module, (nn.Dropout, nn.Dropout1d, nn.Dropout2d)) and module.training:
                    return "unsupported"
                return kind
        return "unsupported"
    if node.op == "call_function":
        if node.target in MAXPOOL_FUNCTIONS:
            return "maxpool"
        if node.target in RELU_FUNCTIONS:
            return "relu"
        if node.target in LINEAR_FUNCTIONS or node.target in SCALING_FUNCTIONS:
            return "linear"
        return "unsupported"
    if node.op == "call_method":
        if node.target in RELU_METHODS:
            return "relu"
        return "linear" if node.target in LINEAR_METHODS else "unsupported"
    return "unsupported"


def is_scaling(node: fx.Node) -> bool:
    """A product/quotient/negation: linear only if at most one operand is an activation."""
    return (node.op == "call_function" and node.target in SCALING_FUNCTIONS) or (
        node.op == "call_method" and node.target in ("mul", "div"))


def is_sum(node: fx.Node) -> bool:
    """An addition/subtraction: any non-activation tensor operand is a bias."""
    return (node.op == "call_function" and node.target in (operator.add, operator.sub, torch.add, torch.sub)) or (
        node.op == "call_method" and node.target in ("add", "sub"))


def node_inputs(node: fx.Node) -> list[Any]:
    """All positional and keyword arguments, flattened one level (lists/tuples of nodes)."""
    out: list[Any] = []
    for a in list(node.args) + list(node.kwargs.values()):
        out.extend(a if isinstance(a, (list, tuple)) else [a])
    return out
