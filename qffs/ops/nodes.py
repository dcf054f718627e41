"""Reading fx nodes: their arguments, the module that made a call, a human name for their op."""

from __future__ import annotations

import operator
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn


def argument(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    """A call's argument, given by position ``index`` or by keyword ``name`` (``default`` when absent)."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def is_number(value: Any) -> bool:
    """An int or float (not a bool): a literal operand."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def node_inputs(node: fx.Node) -> list[Any]:
    """All positional and keyword arguments, flattened one level (lists/tuples of nodes)."""
    out: list[Any] = []
    for a in list(node.args) + list(node.kwargs.values()):
        out.extend(a if isinstance(a, (list, tuple)) else [a])
    return out


@cache
def _public_names() -> dict[int, str]:
    """id(object) → its public dotted name in torch.nn.functional, torch or operator (first wins)."""
    names: dict[int, str] = {}
    for prefix, space in (("torch.nn.functional", F), ("torch", torch), ("operator", operator)):
        for name, obj in vars(space).items():
            if not name.startswith("_") and callable(obj):
                names.setdefault(id(obj), f"{prefix}.{name}")
    return names


def owner_path(node: fx.Node) -> str:
    """Path of the module whose forward made this call ('' for the top level)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path, _ = list(stack.values())[-1]
    return str(path)


def describe(node: fx.Node, gm: fx.GraphModule) -> str:
    """A human name for a node's op: 'torch.nn.GELU at features.3', 'torch.sigmoid in layer1.0', 'Tensor.abs()'."""
    if node.op == "call_module":
        cls = type(gm.get_submodule(str(node.target)))
        qual = f"torch.nn.{cls.__name__}" if getattr(nn, cls.__name__,
                                                     None) is cls else f"{cls.__module__}.{cls.__qualname__}"
        return f"{qual} at {node.target}"
    if node.op == "call_function":
        target = node.target
        name = _public_names().get(id(target)) or \
            f"{getattr(target, '__module__', '') or ''}.{getattr(target, '__name__', str(target))}".lstrip(".")
    elif node.op == "call_method":
        name = f"Tensor.{node.target}()"
    else:
        return f"{node.op} {node.target}"
    owner = owner_path(node)
    return f"{name} in {owner}" if owner else name


__all__ = ["argument", "describe", "is_number", "node_inputs", "owner_path"]
