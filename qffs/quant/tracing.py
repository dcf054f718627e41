"""Tracing a float model for :func:`~qffs.quant.graph.quantize`: ``torch.fx`` with the op table's
leaves, a one-line error, and inputs fixed by ``concrete_args`` baked in."""

from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn

from qffs.errors import UnsupportedGraphError
from qffs.ops import OPS, OpTable, tracer


def trace(model: nn.Module, concrete_args: dict[str, Any] | None = None, ops: OpTable = OPS) -> fx.GraphModule:
    """``torch.fx.symbolic_trace`` with a one-line, actionable error; every module ``ops`` knows
    stays one node (as fx keeps torch.nn's own modules).

    Inputs fixed by ``concrete_args`` are baked in: their placeholders and fx's guards on
    them are removed, so the QANN (and its SNN) take the one remaining input.
    """
    try:
        t = tracer(ops)   # what fx.symbolic_trace does, with the table's leaves
        graph = t.trace(model, concrete_args)
        gm = fx.GraphModule(t.root, graph, type(model).__name__)
    except Exception as err:  # the tracer raises TraceError, TypeError, RuntimeError, …
        # here, not at the top: qffs.models is the model zoo, which the runtime (qffs.snn → qffs.quant) does not need
        from qffs.models import user_code_location

        lines = str(err).strip().splitlines()
        reason = lines[0] if lines else type(err).__name__
        where = user_code_location(err)
        raise UnsupportedGraphError(
            f"cannot trace {type(model).__name__} with torch.fx{' at ' + where if where else ''}: {reason} — make the "
            f"forward's "
            "control flow static (no Python if/for/len on tensor values) or pass "
            "concrete_args= to fix the inputs it branches on"
        ) from err
    if concrete_args:
        _bake_in_concrete_args(gm)
    return gm


def _bake_in_concrete_args(gm: fx.GraphModule) -> None:
    """Drop fx's guards on specialised inputs and what only they used, then those inputs.

    Only nodes computed from the fixed inputs alone go (a general dead-code pass would also
    drop an in-place ReLU whose result is unused, and with it a quantizer).
    """
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    fixed = set(inputs[1:])
    from_fixed = set(fixed)
    for node in gm.graph.nodes:
        deps = [a for a in node.all_input_nodes if a.op != "get_attr"]
        if node.op != "placeholder" and deps and all(a in from_fixed for a in deps):
            from_fixed.add(node)
    for node in reversed(list(gm.graph.nodes)):
        if node in from_fixed and (not node.users or node.target is torch._assert):
            gm.graph.erase_node(node)
    gm.recompile()


__all__ = ["trace"]
