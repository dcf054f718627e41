"""What a node is, by the table and, where the op alone does not decide, by its arguments and state."""

from __future__ import annotations

from typing import Any

from torch import fx

from qffs.ops.nodes import argument, is_number
from qffs.ops.records import OpKind, OpRecord
from qffs.ops.table import OPS, OpTable


def _relu_like(low: Any, high: Any) -> bool:
    """clamp/hardtanh bounds that make a ReLU: low = 0 and high absent or positive."""
    return is_number(low) and low == 0 and (high is None or (is_number(high) and high > 0))


def _relu_bounds(node: fx.Node, gm: fx.GraphModule, record: OpRecord) -> bool:
    """A ReLU-like op whose bounds (:attr:`OpRecord.bounds`) make this call a ReLU."""
    if record.bounds is None:
        return True
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        return _relu_like(getattr(module, "min_val", None), getattr(module, "max_val", None))
    if record.bounds == "hardtanh":
        return _relu_like(argument(node, 1, "min_val", -1.0), argument(node, 2, "max_val", 1.0))
    if record.bounds == "clamp_min":
        return _relu_like(argument(node, 1, "min"), None)
    return _relu_like(argument(node, 1, "min"), argument(node, 2, "max"))


def table_kind(node: fx.Node, gm: fx.GraphModule, ops: OpTable = OPS) -> OpKind:
    """The table's kind for this node's op, before its arguments are looked at."""
    if node.op in ("placeholder", "output", "get_attr"):
        return OpKind.IO
    record = ops.lookup(node, gm)
    return OpKind.UNSUPPORTED if record is None else record.kind


def classify(node: fx.Node, gm: fx.GraphModule, ops: OpTable = OPS) -> OpKind:
    """The kind of an fx node; ``OpKind.IO`` for placeholders, outputs, attributes.

    Arguments decide where the op alone does not: ``hardtanh(-1, 1)`` and ``clamp(min=0.5)`` are
    not ReLUs, and a dropout module counts as linear only in eval mode.
    """
    if node.op in ("placeholder", "output", "get_attr"):
        return OpKind.IO
    record = ops.lookup(node, gm)
    if record is None:
        return OpKind.UNSUPPORTED
    if record.kind is OpKind.RELU and not _relu_bounds(node, gm, record):
        return OpKind.UNSUPPORTED
    if record.dropout and node.op == "call_module" and gm.get_submodule(str(node.target)).training:
        return OpKind.UNSUPPORTED
    return record.kind


def is_relu_site(node: fx.Node, gm: fx.GraphModule, ops: OpTable = OPS) -> bool:
    """A ReLU-like call site that ``quantize`` replaces by a quantizer."""
    return classify(node, gm, ops) is OpKind.RELU


def is_inplace(node: fx.Node, gm: fx.GraphModule, ops: OpTable = OPS) -> bool:
    """Does this call mutate its first argument (``relu_``, ``inplace=True``, ``clamp_``)?"""
    if node.op == "call_module":
        return bool(getattr(gm.get_submodule(str(node.target)), "inplace", False))
    record = ops.lookup(node, gm)
    if record is not None and record.inplace:
        return True
    if node.op == "call_function":
        index = record.inplace_arg if record is not None else None
        return bool(node.kwargs.get("inplace", False)) or (
            index is not None and len(node.args) > index and bool(node.args[index]))
    return node.op == "call_method" and str(node.target).endswith("_")


def is_scaling(node: fx.Node, ops: OpTable = OPS) -> bool:
    """A product/quotient/negation: linear only if at most one operand is an activation."""
    record = ops.lookup(node) if node.op in ("call_function", "call_method") else None
    return record is not None and record.scaling


def is_sum(node: fx.Node, ops: OpTable = OPS) -> bool:
    """An addition/subtraction: any non-activation tensor operand is a bias."""
    record = ops.lookup(node) if node.op in ("call_function", "call_method") else None
    return record is not None and record.sum


__all__ = ["classify", "is_inplace", "is_relu_site", "is_scaling", "is_sum", "table_kind"]
