"""The ops qffs knows out of the box (the records of :data:`qffs.ops.OPS`), and their state checks.

The activation quantizer is not listed here: :mod:`qffs.quant.lsq` registers it when it is
imported (qffs.ops sits below qffs.quant and imports nothing of it).
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from qffs.ops.nodes import argument, node_inputs
from qffs.ops.records import OpKind, OpRecord


# --- checks of an op's state -----------------------------------------------------------------------
def running_statistics(bn: nn.Module) -> str | None:
    """BatchNorm must normalise with fixed running statistics, not each batch's own."""
    if getattr(bn, "running_mean", None) is None or getattr(bn, "running_var", None) is None:
        return ("BatchNorm without running statistics (track_running_stats=False) normalises every batch by its own "
                "mean and variance, which no fixed threshold can do — train the float model with "
                "track_running_stats=True")
    return None


_NONZERO_PADDING = "only zero padding is linear; other padding injects a constant every step"


def zero_padding_module(pad: nn.Module) -> str | None:
    """A constant-padding module must pad with zeros."""
    return None if getattr(pad, "value", 0) in (0, 0.0, None) else _NONZERO_PADDING


def zero_padding(node: fx.Node) -> str | None:
    """``F.pad`` must pad with zeros (mode "constant", value 0)."""
    mode, value = argument(node, 2, "mode", "constant"), argument(node, 3, "value", 0)
    return None if mode == "constant" and value in (0, 0.0, None) else _NONZERO_PADDING


def floating_cast(node: fx.Node) -> str | None:
    """``x.to(dtype)`` must keep a floating dtype (an integer cast rounds)."""
    dtypes = [a for a in node_inputs(node) if isinstance(a, torch.dtype)]
    if any(not d.is_floating_point for d in dtypes):
        return "a cast to a non-floating dtype rounds the activations, which is not linear"
    return None


# --- the records -----------------------------------------------------------------------------------
def _all(kind: OpKind, *targets: Any, **flags: Any) -> list[OpRecord]:
    return [OpRecord(target, kind, **flags) for target in targets]


W, B, M, R, L, U = (OpKind.WEIGHTED, OpKind.BATCHNORM, OpKind.MAXPOOL, OpKind.RELU, OpKind.LINEAR,
                    OpKind.UNSUPPORTED)

MODULES: list[OpRecord] = [
    *_all(W, nn.Conv1d, nn.Conv2d, nn.Linear),
    *_all(B, nn.BatchNorm1d, nn.BatchNorm2d, check=running_statistics),
    *_all(M, nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d),
    *_all(R, nn.ReLU, nn.ReLU6),
    OpRecord(nn.Hardtanh, R, bounds="hardtanh"),       # ReLU6 is a Hardtanh: the most derived record wins
    *_all(L, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Unflatten,
          nn.Identity, nn.Upsample),
    *_all(L, nn.Dropout, nn.Dropout1d, nn.Dropout2d, dropout=True),
    *_all(L, nn.ZeroPad2d, nn.ConstantPad2d, check=zero_padding_module),
]

FUNCTIONS: list[OpRecord] = [
    *_all(M, F.max_pool1d, F.max_pool2d, indices_arg=6),
    *_all(M, F.adaptive_max_pool1d, F.adaptive_max_pool2d, indices_arg=2),
    *_all(R, F.relu, F.relu6, inplace_arg=1),
    *_all(R, F.relu_, torch.relu_, inplace=True),
    OpRecord(torch.relu, R),
    OpRecord(F.hardtanh, R, bounds="hardtanh", inplace_arg=3),
    OpRecord(F.hardtanh_, R, bounds="hardtanh", inplace=True),
    *_all(R, torch.clamp, torch.clip, bounds="clamp"),
    OpRecord(torch.clamp_, R, bounds="clamp", inplace=True),
    OpRecord(torch.clamp_min, R, bounds="clamp_min"),
    *_all(L, operator.add, operator.sub, sum=True, shape=True),
    *_all(L, torch.add, torch.sub, sum=True),
    *_all(L, operator.mul, operator.truediv, operator.neg, scaling=True, shape=True),
    *_all(L, torch.mul, torch.div, torch.neg, scaling=True),
    OpRecord(operator.getitem, L, shape=True),
    *_all(U, operator.floordiv, operator.mod, shape=True),     # on shape values only (x.size(0) // 2)
    *_all(L, torch.cat, torch.concat, torch.stack, torch.flatten, torch.reshape, torch.permute, torch.transpose,
          torch.squeeze, torch.unsqueeze, torch.chunk, torch.split, torch.narrow, torch.mean, torch.sum,
          F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.interpolate,
          torch.zeros_like, getattr),
    *_all(L, F.dropout, F.dropout1d, F.dropout2d, dropout=True),
    OpRecord(F.pad, L, check=zero_padding),
]

METHODS: list[OpRecord] = [
    *_all(R, "relu", "relu_"),
    *_all(R, "clamp", "clamp_", "clip", "clip_", bounds="clamp"),
    *_all(R, "clamp_min", "clamp_min_", bounds="clamp_min"),
    *_all(L, "view", "reshape", "flatten", "permute", "transpose", "squeeze", "unsqueeze", "contiguous", "chunk",
          "split", "narrow", "mean", "sum", "expand", "repeat", "unflatten", "view_as", "reshape_as", "expand_as",
          "clone", "float", "double", "type_as"),
    *_all(L, "add", "sub", sum=True),
    *_all(L, "mul", "div", "neg", scaling=True),
    *_all(L, "size", "dim", shape_source=True),
    OpRecord("to", L, check=floating_cast),
]

RECORDS: tuple[OpRecord, ...] = (*MODULES, *FUNCTIONS, *METHODS)

__all__ = ["FUNCTIONS", "METHODS", "MODULES", "RECORDS", "floating_cast", "running_statistics", "zero_padding",
           "zero_padding_module"]
