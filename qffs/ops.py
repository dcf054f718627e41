"""The one op table: what every fx node of a network means for QFFS.

Both stages read it: :func:`qffs.quantize` refuses, before any data is read or any training
runs, exactly the networks that :func:`qffs.convert` would refuse later, by the same
:func:`check_graph`. Every node falls into one kind (:func:`classify`):

- ``quantizer`` — an :class:`~qffs.quant.lsq.LSQActivation`: becomes an IF neuron;
- ``relu`` — a ReLU-like call site (``ReLU``, ``ReLU6``, ``hardtanh(0, m)``, ``clamp(min=0)``,
  ``x.relu()`` …): ``quantize`` gives it a quantizer; ``convert`` refuses it (no step size);
- ``weighted`` — ``nn.Conv1d/2d`` or ``nn.Linear``: stays, its bias gated to the input window;
- ``batchnorm`` — folded into the layer before it, or kept as a gated per-channel affine op;
- ``maxpool`` — max pooling, adaptive too: becomes event max pooling;
- ``linear`` — linear or selection ops that act on each time step's tensor unchanged
  (average pooling, flatten/view, sums, scaling by a constant, concatenation, slicing,
  interpolation, ``zeros_like`` …);
- ``unsupported`` — anything else (sigmoid, abs, layer norm, …): refused by name.

After the table, :data:`ARGUMENT_RULES` look at arguments: a product of two activations, a
constant added or concatenated, non-zero padding, a rounding division or integer cast, dropout
in training mode, pooling indices and BatchNorm without running statistics are refused too.

Shape arithmetic (``x.size(0) // 2``, ``x.shape[1] * 4``) is not an activation and may use
any of Python's integer operators.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from functools import cache
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from qffs.errors import UnsupportedGraphError

KINDS = ("quantizer", "relu", "weighted", "batchnorm", "maxpool", "linear", "unsupported")
STAGES = ("quantize", "convert")

# --- the table -----------------------------------------------------------------------------------
#: Module classes by kind, matched with isinstance in this order (ReLU6 is a Hardtanh).
MODULE_KINDS: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.Conv1d, "weighted"), (nn.Conv2d, "weighted"), (nn.Linear, "weighted"),
    (nn.BatchNorm1d, "batchnorm"), (nn.BatchNorm2d, "batchnorm"),
    (nn.MaxPool1d, "maxpool"), (nn.MaxPool2d, "maxpool"), (nn.AdaptiveMaxPool1d, "maxpool"),
    (nn.AdaptiveMaxPool2d, "maxpool"),
    (nn.ReLU, "relu"), (nn.ReLU6, "relu"), (nn.Hardtanh, "relu"),
    (nn.AvgPool1d, "linear"), (nn.AvgPool2d, "linear"), (nn.AdaptiveAvgPool1d, "linear"),
    (nn.AdaptiveAvgPool2d, "linear"), (nn.Flatten, "linear"), (nn.Unflatten, "linear"), (nn.Identity, "linear"),
    (nn.Dropout, "linear"), (nn.Dropout1d, "linear"), (nn.Dropout2d, "linear"), (nn.ZeroPad2d, "linear"),
    (nn.ConstantPad2d, "linear"), (nn.Upsample, "linear"),
)
#: Functions by kind (``call_function`` targets; ``F.gelu`` & co. are C builtins, matched by identity).
FUNCTION_KINDS: dict[Callable[..., Any], str] = {
    **dict.fromkeys((F.max_pool1d, F.max_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d), "maxpool"),
    **dict.fromkeys((F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.hardtanh, F.hardtanh_, torch.clamp,
                     torch.clamp_, torch.clip, torch.clamp_min), "relu"),
    **dict.fromkeys((
        operator.add, operator.sub, torch.add, torch.sub, operator.mul, operator.truediv, torch.mul, torch.div,
        operator.neg, torch.neg, torch.cat, torch.concat, torch.stack, torch.flatten, torch.reshape, torch.permute,
        torch.transpose, torch.squeeze, torch.unsqueeze, torch.chunk, torch.split, torch.narrow, torch.mean,
        torch.sum, operator.getitem, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
        F.dropout, F.dropout1d, F.dropout2d, F.pad, F.interpolate, torch.zeros_like, getattr,
    ), "linear"),
}
#: Tensor methods by kind (``call_method`` targets).
METHOD_KINDS: dict[str, str] = {
    **dict.fromkeys(("relu", "relu_", "clamp", "clamp_", "clip", "clip_", "clamp_min", "clamp_min_"), "relu"),
    **dict.fromkeys((
        "view", "reshape", "flatten", "permute", "transpose", "squeeze", "unsqueeze", "contiguous", "chunk",
        "split", "narrow", "mean", "sum", "add", "sub", "mul", "div", "neg", "size", "dim", "expand", "repeat",
        "unflatten", "view_as", "reshape_as", "expand_as", "clone", "float", "double", "to", "type_as",
    ), "linear"),
}

#: Products, quotients and negations: linear only while at most one operand is an activation.
SCALING_FUNCTIONS = {operator.mul, operator.truediv, torch.mul, torch.div, operator.neg, torch.neg}
SCALING_METHODS = {"mul", "div", "neg"}
#: Sums: every operand must be an activation (a constant would be injected at every step).
SUM_FUNCTIONS = {operator.add, operator.sub, torch.add, torch.sub}
SUM_METHODS = {"add", "sub"}
#: Integer arithmetic on shapes (``x.size(0) // 2``): allowed on shape values only.
SHAPE_FUNCTIONS = {operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv, operator.mod,
                   operator.neg, operator.getitem, getattr}
SHAPE_METHODS = {"size", "dim"}
_SHAPE_ATTRIBUTES = {"shape", "ndim", "dtype", "device"}

_INPLACE_FUNCTIONS = {torch.relu_, F.relu_, F.hardtanh_, torch.clamp_}
_CAPPED_FUNCTIONS = {F.hardtanh, F.hardtanh_}
_CLAMP_FUNCTIONS = {torch.clamp, torch.clamp_, torch.clip, torch.clamp_min}
_CLAMP_METHODS = {"clamp", "clamp_", "clip", "clip_", "clamp_min", "clamp_min_"}
_DROPOUT_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d)
_DROPOUT_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d}
_RETURN_INDICES_ARG = {F.max_pool1d: 6, F.max_pool2d: 6, F.adaptive_max_pool1d: 2, F.adaptive_max_pool2d: 2}


# --- naming ---------------------------------------------------------------------------------------
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
        qual = f"torch.nn.{cls.__name__}" if getattr(nn, cls.__name__, None) is cls else f"{cls.__module__}.{cls.__qualname__}"
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


# --- classification ---------------------------------------------------------------------------------
def _arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _relu_like(low: Any, high: Any) -> bool:
    """clamp/hardtanh bounds that make a ReLU: low = 0 and high absent or positive."""
    return _number(low) and low == 0 and (high is None or (_number(high) and high > 0))


def _relu_site(node: fx.Node, gm: fx.GraphModule) -> bool:
    """A call the table lists as ReLU-like, with arguments that make it one."""
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        return not isinstance(module, nn.Hardtanh) or isinstance(module, nn.ReLU6) or \
            _relu_like(module.min_val, module.max_val)
    if node.target in _CAPPED_FUNCTIONS:
        return _relu_like(_arg(node, 1, "min_val", -1.0), _arg(node, 2, "max_val", 1.0))
    if node.target in _CLAMP_FUNCTIONS or node.target in _CLAMP_METHODS:
        if node.target in (torch.clamp_min, "clamp_min", "clamp_min_"):
            return _relu_like(_arg(node, 1, "min"), None)
        return _relu_like(_arg(node, 1, "min"), _arg(node, 2, "max"))
    return True


def table_kind(node: fx.Node, gm: fx.GraphModule) -> str:
    """The table's kind for this node's op, before its arguments are looked at."""
    if node.op in ("placeholder", "output", "get_attr"):
        return "io"
    if node.op == "call_module":
        from qffs.quant.lsq import LSQActivation  # lazy: qffs.quant imports this module

        module = gm.get_submodule(str(node.target))
        if isinstance(module, LSQActivation):
            return "quantizer"
        return next((kind for cls, kind in MODULE_KINDS if isinstance(module, cls)), "unsupported")
    if node.op == "call_function":
        return FUNCTION_KINDS.get(node.target, "unsupported")  # type: ignore[arg-type]
    if node.op == "call_method":
        return METHOD_KINDS.get(str(node.target), "unsupported")
    return "unsupported"


def classify(node: fx.Node, gm: fx.GraphModule) -> str:
    """The kind of an fx node (see the module docstring); ``io`` for placeholders, outputs, attributes.

    Arguments decide where the op alone does not: ``hardtanh(-1, 1)`` and ``clamp(min=0.5)`` are
    not ReLUs, and dropout counts as linear only in eval mode.
    """
    kind = table_kind(node, gm)
    if kind == "relu" and not _relu_site(node, gm):
        return "unsupported"
    if kind == "linear" and node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), _DROPOUT_MODULES) \
            and gm.get_submodule(str(node.target)).training:
        return "unsupported"
    return kind


def is_relu_site(node: fx.Node, gm: fx.GraphModule) -> bool:
    """A ReLU-like call site that ``quantize`` replaces by a quantizer."""
    return classify(node, gm) == "relu"


def is_inplace(node: fx.Node, gm: fx.GraphModule) -> bool:
    """Does this call mutate its first argument (``relu_``, ``inplace=True``, ``clamp_``)?"""
    if node.op == "call_module":
        return bool(getattr(gm.get_submodule(str(node.target)), "inplace", False))
    if node.op == "call_function":
        return node.target in _INPLACE_FUNCTIONS or bool(node.kwargs.get("inplace", False)) or (
            node.target in (F.relu, F.relu6) and len(node.args) > 1 and bool(node.args[1])
        ) or (node.target is F.hardtanh and len(node.args) > 3 and bool(node.args[3]))
    return node.op == "call_method" and str(node.target).endswith("_")


def is_scaling(node: fx.Node) -> bool:
    """A product/quotient/negation: linear only if at most one operand is an activation."""
    return (node.op == "call_function" and node.target in SCALING_FUNCTIONS) or (
        node.op == "call_method" and node.target in SCALING_METHODS)


def is_sum(node: fx.Node) -> bool:
    """An addition/subtraction: any non-activation tensor operand is a bias."""
    return (node.op == "call_function" and node.target in SUM_FUNCTIONS) or (
        node.op == "call_method" and node.target in SUM_METHODS)


def node_inputs(node: fx.Node) -> list[Any]:
    """All positional and keyword arguments, flattened one level (lists/tuples of nodes)."""
    out: list[Any] = []
    for a in list(node.args) + list(node.kwargs.values()):
        out.extend(a if isinstance(a, (list, tuple)) else [a])
    return out


# --- the check both stages run ---------------------------------------------------------------------
_NO_EQUIVALENT = ("has no spiking equivalent: only ReLU-like activations (ReLU, ReLU6, hardtanh(0, m), "
                  "clamp(min=0)) become spiking neurons, and only linear or selection ops pass between them — "
                  "replace it by ReLU and fine-tune the float model before quantizing")


def _is_shape_node(node: fx.Node, acts: list[fx.Node], shapes: set[fx.Node]) -> bool:
    """Integer shape arithmetic: ``x.size()``, ``x.shape``, and operators on those only."""
    if node.op == "call_method" and node.target in SHAPE_METHODS:
        return True
    if node.op == "call_function" and node.target is getattr:
        return len(node.args) > 1 and node.args[1] in _SHAPE_ATTRIBUTES
    return node.op == "call_function" and node.target in SHAPE_FUNCTIONS and bool(acts) and all(a in shapes for a in acts)


@dataclass(frozen=True)
class _Site:
    """What the argument rules see of one node: its tensor operands split by what they carry."""

    node: fx.Node
    gm: fx.GraphModule
    kind: str
    acts: list[fx.Node]          # activation operands (vary with time)
    constants: list[Any]         # tensor-valued operands that do not (parameters, buffers, numbers in sums)


def _dropout_in_training(site: _Site) -> str | None:
    node = site.node
    if node.op == "call_function" and node.target in _DROPOUT_FUNCTIONS and _arg(node, 2, "training", True):
        return "dropout with training=True drops at random at inference too (F.dropout's default) — pass training=self.training"
    return None


def _product_of_activations(site: _Site) -> str | None:
    if not is_scaling(site.node):
        return None
    node = site.node
    divisor = node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
    if len(site.acts) > 1 or (node.target in (operator.truediv, torch.div, "div") and divisor in site.acts):
        return "a product or quotient of two activations is not linear and has no spiking equivalent"
    if node.kwargs.get("rounding_mode") is not None:
        return "a division that rounds (rounding_mode) is not linear"
    return None


def _constant_added(site: _Site) -> str | None:
    if is_sum(site.node) and site.acts and site.constants:
        return ("adds a constant (a bias not owned by a layer), which would be injected at every time step — make "
                "it the bias of the preceding conv/linear layer")
    return None


def _constant_mixed_in(site: _Site) -> str | None:
    if site.kind == "linear" and site.acts and site.constants and not is_scaling(site.node) and not is_sum(site.node):
        return ("mixes a constant tensor into the activations (e.g. concatenates a buffer), which would be injected "
                "at every time step")
    return None


def _nonzero_padding(site: _Site) -> str | None:
    node = site.node
    if node.op == "call_function" and node.target is F.pad:
        mode, value = _arg(node, 2, "mode", "constant"), _arg(node, 3, "value", 0)
    elif node.op == "call_module" and isinstance(site.gm.get_submodule(str(node.target)), nn.modules.padding._ConstantPadNd):
        mode, value = "constant", site.gm.get_submodule(str(node.target)).value
    else:
        return None
    if mode != "constant" or value not in (0, 0.0, None):
        return "only zero padding is linear; other padding injects a constant every step"
    return None


def _integer_cast(site: _Site) -> str | None:
    node = site.node
    if node.op == "call_method" and node.target in ("to", "type"):
        dtypes = [a for a in node_inputs(node) if isinstance(a, torch.dtype)]
        if any(not d.is_floating_point for d in dtypes):
            return "a cast to a non-floating dtype rounds the activations, which is not linear"
    return None


def _pool_indices(site: _Site) -> str | None:
    node = site.node
    if site.kind != "maxpool":
        return None
    if node.op == "call_function":
        wanted = _arg(node, _RETURN_INDICES_ARG.get(node.target, 6), "return_indices", False) is True
    else:
        wanted = bool(getattr(site.gm.get_submodule(str(node.target)), "return_indices", False))
    return "max pooling with return_indices has no spiking equivalent" if wanted else None


def _batch_statistics(site: _Site) -> str | None:
    node = site.node
    if site.kind == "batchnorm" and node.op == "call_module" and \
            getattr(site.gm.get_submodule(str(node.target)), "running_mean", None) is None:
        return ("BatchNorm without running statistics (track_running_stats=False) normalises every batch by its own "
                "mean and variance, which no fixed threshold can do — train the float model with "
                "track_running_stats=True")
    return None


#: Rules on a node's arguments, after its op passed the table; each names what it refuses.
ARGUMENT_RULES: tuple[Callable[[_Site], str | None], ...] = (
    _dropout_in_training, _product_of_activations, _constant_added, _constant_mixed_in, _nonzero_padding,
    _integer_cast, _pool_indices, _batch_statistics,
)


def _operands(node: fx.Node) -> list[Any]:
    """The tensor operands of a node (a sum's ``alpha`` or a size is no operand)."""
    if is_sum(node):
        return list(node.args) + [node.kwargs["other"]] if "other" in node.kwargs else list(node.args)
    return [a for a in node_inputs(node) if isinstance(a, fx.Node)]


def check_graph(gm: fx.GraphModule, stage: str) -> None:
    """Raise :class:`UnsupportedGraphError` at the first node with no SNN equivalent.

    ``stage="quantize"`` checks a float model (ReLU-like sites are where quantizers go);
    ``stage="convert"`` a QANN (a ReLU without quantizer, or a quantizer called from several
    places, is refused). Every other rule is the same in both, so a network ``quantize``
    accepts is one ``convert`` accepts.
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    verb = "quantize" if stage == "quantize" else "convert"

    def refuse(node: fx.Node, why: str) -> UnsupportedGraphError:
        return UnsupportedGraphError(f"cannot {verb} node '{node.name}' ({describe(node, gm)}): {why}")

    # inputs fixed by concrete_args stay as unused placeholders
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder" and n.users]
    if len(placeholders) != 1:
        raise UnsupportedGraphError(f"the network must take exactly one input tensor, it takes {len(placeholders)}")
    derived: set[fx.Node] = set(placeholders)   # values that vary with time: activations and their shapes
    shapes: set[fx.Node] = set()                # the shape values among them
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
        if _is_shape_node(node, acts, shapes):
            shapes.add(node)
            continue
        kind = classify(node, gm)
        if kind == "unsupported":
            raise refuse(node, _NO_EQUIVALENT)
        if kind == "relu" and stage == "convert":
            raise refuse(node, "a ReLU without quantizer — run qffs.quantize on the float model first "
                               "(it turns every ReLU into a step-size quantizer)")
        if kind == "quantizer" and stage == "convert":
            sites[str(node.target)] = sites.get(str(node.target), 0) + 1
            if sites[str(node.target)] > 1:
                raise refuse(node, "this quantizer is called from several places; each call site needs its "
                                   "own neuron (qffs.quantize gives each its own)")
        if not acts:
            continue   # computed from constants alone: not an activation
        # a module's only operand is its input; a size added to an activation is a constant too
        varying = derived - shapes if is_sum(node) else derived
        constants = [] if node.op == "call_module" else [
            a for a in _operands(node) if not (isinstance(a, fx.Node) and a in varying)
            and (isinstance(a, fx.Node) or _number(a))]
        site = _Site(node, gm, kind, [a for a in acts if a not in shapes], constants)
        for rule in ARGUMENT_RULES:
            why = rule(site)
            if why:
                raise refuse(node, why)


__all__ = ["FUNCTION_KINDS", "KINDS", "METHOD_KINDS", "MODULE_KINDS", "STAGES", "check_graph", "classify",
           "describe", "is_inplace", "is_relu_site", "is_scaling", "is_sum", "node_inputs", "owner_path",
           "table_kind"]
