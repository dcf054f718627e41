"""The check both stages run (:func:`check_graph`): the table, then rules on each node's arguments.

After the table, :data:`ARGUMENT_RULES` look at arguments: dropout in training mode, a product
of two activations, a constant added or concatenated, pooling indices, and the matched record's
own check of its state (non-zero padding, an integer cast, BatchNorm without running statistics).

Shape arithmetic (``x.size(0) // 2``, ``x.shape[1] * 4``) is not an activation and may use any
operator the table marks ``shape``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx

from qffs.errors import UnsupportedGraphError
from qffs.ops.classify import classify, is_scaling, is_sum
from qffs.ops.nodes import argument, describe, is_number, node_inputs
from qffs.ops.records import OpKind, OpRecord
from qffs.ops.table import OPS, OpTable

STAGES = ("quantize", "convert")

_NO_EQUIVALENT = ("has no spiking equivalent: only ReLU-like activations (ReLU, ReLU6, hardtanh(0, m), "
                  "clamp(min=0)) become spiking neurons, and only linear or selection ops pass between them — "
                  "replace it by ReLU and fine-tune the float model before quantizing")
_SHAPE_ATTRIBUTES = {"shape", "ndim", "dtype", "device"}


def _is_shape_node(node: fx.Node, acts: list[fx.Node], shapes: set[fx.Node], ops: OpTable) -> bool:
    """Integer shape arithmetic: ``x.size()``, ``x.shape``, and the table's shape operators on those only."""
    if node.op == "call_function" and node.target is getattr:
        return len(node.args) > 1 and node.args[1] in _SHAPE_ATTRIBUTES
    if node.op not in ("call_function", "call_method"):
        return False
    record = ops.lookup(node)
    if record is None:
        return False
    if node.op == "call_method" and record.shape_source:
        return True
    return node.op == "call_function" and record.shape and bool(acts) and all(a in shapes for a in acts)


@dataclass(frozen=True)
class _Site:
    """What the argument rules see of one node: its tensor operands split by what they carry."""

    node: fx.Node
    gm: fx.GraphModule
    kind: OpKind
    record: OpRecord | None
    ops: OpTable
    acts: list[fx.Node]          # activation operands (vary with time)
    constants: list[Any]         # tensor-valued operands that do not (parameters, buffers, numbers in sums)


def _dropout_in_training(site: _Site) -> str | None:
    node, record = site.node, site.record
    if node.op == "call_function" and record is not None and record.dropout and argument(node, 2, "training", True):
        return ("dropout with training=True drops at random at inference too (F.dropout's default) — pass "
                "training=self.training")
    return None


def _product_of_activations(site: _Site) -> str | None:
    if not is_scaling(site.node, site.ops):
        return None
    node = site.node
    divisor = node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
    if len(site.acts) > 1 or (node.target in (operator.truediv, torch.div, "div") and divisor in site.acts):
        return "a product or quotient of two activations is not linear and has no spiking equivalent"
    if node.kwargs.get("rounding_mode") is not None:
        return "a division that rounds (rounding_mode) is not linear"
    return None


def _constant_added(site: _Site) -> str | None:
    if is_sum(site.node, site.ops) and site.acts and site.constants:
        return ("adds a constant (a bias not owned by a layer), which would be injected at every time step — make "
                "it the bias of the preceding conv/linear layer")
    return None


def _constant_mixed_in(site: _Site) -> str | None:
    if site.kind is OpKind.LINEAR and site.acts and site.constants and not is_scaling(site.node, site.ops) \
            and not is_sum(site.node, site.ops):
        return ("mixes a constant tensor into the activations (e.g. concatenates a buffer), which would be injected "
                "at every time step")
    return None


def _pool_indices(site: _Site) -> str | None:
    node, record = site.node, site.record
    if site.kind is not OpKind.MAXPOOL:
        return None
    if node.op == "call_function":
        index = record.indices_arg if record is not None and record.indices_arg is not None else len(node.args)
        wanted = argument(node, index, "return_indices", False) is True
    else:
        wanted = bool(getattr(site.gm.get_submodule(str(node.target)), "return_indices", False))
    return "max pooling with return_indices has no spiking equivalent" if wanted else None


def _state(site: _Site) -> str | None:
    """The record's own check of the op's state (BatchNorm's statistics, a padding value, a cast's dtype)."""
    return site.record.refusal(site.node, site.gm) if site.record is not None else None


#: Rules on a node's arguments, after its op passed the table; each names what it refuses.
ARGUMENT_RULES: tuple[Callable[[_Site], str | None], ...] = (
    _dropout_in_training, _product_of_activations, _constant_added, _constant_mixed_in, _pool_indices, _state,
)


def _operands(node: fx.Node, ops: OpTable) -> list[Any]:
    """The tensor operands of a node (a sum's ``alpha`` or a size is no operand)."""
    if is_sum(node, ops):
        return list(node.args) + [node.kwargs["other"]] if "other" in node.kwargs else list(node.args)
    return [a for a in node_inputs(node) if isinstance(a, fx.Node)]


def _refusal_by_table(node: fx.Node, kind: OpKind, stage: str, sites: dict[str, int]) -> str | None:
    """Why the node's kind alone refuses it at this stage (a quantizer's call sites are counted in ``sites``)."""
    if kind is OpKind.UNSUPPORTED:
        return _NO_EQUIVALENT
    if kind is OpKind.RELU and stage == "convert":
        return ("a ReLU without quantizer — run qffs.quantize on the float model first "
                "(it turns every ReLU into a step-size quantizer)")
    if kind is OpKind.QUANTIZER and stage == "convert":
        sites[str(node.target)] = sites.get(str(node.target), 0) + 1
        if sites[str(node.target)] > 1:
            return ("this quantizer is called from several places; each call site needs its "
                    "own neuron (qffs.quantize gives each its own)")
    return None


def _single_input(gm: fx.GraphModule) -> list[fx.Node]:
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder" and n.users]  # inputs fixed by
    if len(placeholders) != 1:                                                      # concrete_args go unused
        raise UnsupportedGraphError(f"the network must take exactly one input tensor, it takes {len(placeholders)}")
    return placeholders


def check_graph(gm: fx.GraphModule, stage: str, ops: OpTable = OPS) -> None:
    """Raise :class:`UnsupportedGraphError` at the first node with no SNN equivalent in ``ops``.

    ``stage="quantize"`` checks a float model (ReLU-like sites are where quantizers go);
    ``stage="convert"`` a QANN (a ReLU without quantizer, or a quantizer called from several
    places, is refused). Every other rule is the same in both, so a network ``quantize``
    accepts is one ``convert`` accepts. Nothing runs: this reads the graph and module state only.
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")

    def refuse(node: fx.Node, why: str) -> UnsupportedGraphError:
        return UnsupportedGraphError(f"cannot {stage} node '{node.name}' ({describe(node, gm)}): {why}")

    derived: set[fx.Node] = set(_single_input(gm))   # values that vary with time: activations and their shapes
    shapes: set[fx.Node] = set()                    # the shape values among them
    sites: dict[str, int] = {}
    for node in gm.graph.nodes:
        acts = [a for a in node_inputs(node) if isinstance(a, fx.Node) and a in derived]
        if acts:
            derived.add(node)
        if node.op == "output":
            if not isinstance(node.args[0], fx.Node):
                raise UnsupportedGraphError("the network must return a single tensor (the logits), not a "
                                            f"{type(node.args[0]).__name__}")
            continue
        if _is_shape_node(node, acts, shapes, ops):
            shapes.add(node)
            continue
        kind = classify(node, gm, ops)
        why = _refusal_by_table(node, kind, stage, sites)
        if why:
            raise refuse(node, why)
        if not acts:
            continue   # computed from constants alone: not an activation
        # a module's only operand is its input; a size added to an activation is a constant too
        varying = derived - shapes if is_sum(node, ops) else derived
        constants = [] if node.op == "call_module" else [
            a for a in _operands(node, ops) if not (isinstance(a, fx.Node) and a in varying)
            and (isinstance(a, fx.Node) or is_number(a))]
        site = _Site(node, gm, kind, ops.lookup(node, gm), ops, [a for a in acts if a not in shapes], constants)
        for rule in ARGUMENT_RULES:
            why = rule(site)
            if why:
                raise refuse(node, why)


__all__ = ["ARGUMENT_RULES", "STAGES", "check_graph"]
