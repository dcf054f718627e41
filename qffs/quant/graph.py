"""Stage 1 graph transform: a pretrained float model → a QANN (SPEC §1).

:func:`quantize` traces a copy of the model with ``torch.fx`` and runs small passes, each
with one job (the idea of brevitas' ``graph/standardize.py``):

1. :func:`refuse_nonlinearities` — a nonlinearity other than ReLU (sigmoid, tanh, GELU,
   SiLU, softmax, exp, …, as module, function or method) cannot become an IF neuron: refuse
   it, naming the fx node and the op.
2. :func:`functionalize_inplace_relus` — ``x.relu_()`` / ``F.relu(x, inplace=True)`` /
   ``nn.ReLU(inplace=True)`` mutate their input; later readers of that input are pointed at
   the ReLU's output so the graph means the same once the quantizer (not in-place) replaces it.
3. :func:`replace_relus` — every ReLU *call site* (``nn.ReLU``, ``F.relu``, ``torch.relu``,
   ``torch.relu_``, ``x.relu()``, ``x.relu_()``) becomes a call of its own
   :class:`LSQActivation`: a module called from several sites (torchvision's BasicBlock
   calls ``self.relu`` twice) is duplicated so that every site learns its own step.
   ``nn.ReLU6``, ``F.relu6`` and ``hardtanh(0, m)`` (m > 0) are quantized too: the quantizer
   already clamps at Q·s, which takes the place of the cap m (s is calibrated, so the cap
   is effectively relearned).
4. :func:`add_output_quantizer` — the logits pass through ``LSQActivation(output_bits,
   is_output=True)`` unless ``output_bits`` is None ("analog output").

Quantizer names are deterministic (the QANN is rebuilt from (model spec, bits) and its state
dict loaded): a module call site keeps the module's path (``layer1.0.relu``), a further call
of the same module gets ``<owner>.<name>_1``, ``_2`` …, and a functional/method ReLU becomes
``<owner>.relu`` (``_1`` … when taken), where ``<owner>`` is the module whose ``forward``
made the call. The output quantizer is ``output_quantizer``.

The op tables below are a local deny-list; the converter's taxonomy lives in ``qffs/ops.py``
and the two are to be unified there.
"""

from __future__ import annotations

import copy
import operator
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from qffs.errors import UnsupportedGraphError
from qffs.quant.lsq import LSQActivation

__all__ = [
    "OUTPUT_QUANTIZER",
    "quantize",
    "quantizers",
    "refuse_nonlinearities",
    "trace",
    "functionalize_inplace_relus",
    "replace_relus",
    "add_output_quantizer",
]

#: Name of the module that quantizes the logits.
OUTPUT_QUANTIZER = "output_quantizer"


def _named_objects(namespace: Any, prefix: str, names: str) -> dict[Any, str]:
    """{object: 'prefix.name'} for the names that exist in this torch version."""
    found = {}
    for name in names.split():
        obj = getattr(namespace, name, None)
        if obj is not None:
            found.setdefault(obj, f"{prefix}.{name}")
    return found


# --- ReLU and its capped variants: these become quantizers -----------------------------------
_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_, F.relu_}
_RELU_CAPPED_FUNCTIONS = {F.relu6, F.hardtanh, F.hardtanh_}  # relu6 = hardtanh(0, 6)
_RELU_METHODS = {"relu", "relu_"}
_INPLACE_FUNCTIONS = {torch.relu_, F.relu_, F.hardtanh_}

# --- Nonlinearities a spiking IF neuron cannot express: refused -------------------------------
_UNSUPPORTED_MODULES: tuple[type[nn.Module], ...] = tuple(
    cls
    for cls in (
        getattr(nn, name, None)
        for name in (
            "Sigmoid Tanh GELU SiLU Mish Hardswish Hardsigmoid ELU CELU SELU GLU LeakyReLU PReLU "
            "RReLU Softplus Softsign Softshrink Hardshrink Tanhshrink Threshold LogSigmoid Softmax "
            "Softmax2d LogSoftmax Softmin AdaptiveLogSoftmaxWithLoss MultiheadAttention"
        ).split()
    )
    if cls is not None
)
_UNSUPPORTED_FUNCTIONS: dict[Any, str] = {
    **_named_objects(
        F,
        "torch.nn.functional",
        "sigmoid tanh gelu silu mish hardswish hardsigmoid elu elu_ celu celu_ selu selu_ glu "
        "leaky_relu leaky_relu_ prelu rrelu rrelu_ softplus softsign softshrink hardshrink "
        "tanhshrink threshold threshold_ _threshold logsigmoid softmax softmin log_softmax "
        "gumbel_softmax scaled_dot_product_attention",
    ),
    **_named_objects(
        torch,
        "torch",
        "sigmoid sigmoid_ tanh tanh_ softmax log_softmax exp exp_ exp2 expm1 log log_ log2 log10 "
        "log1p sqrt sqrt_ rsqrt rsqrt_ pow square erf erfc sin cos reciprocal selu celu prelu "
        "rrelu threshold hardshrink logit",
    ),
    **_named_objects(operator, "operator", "pow"),
    # F.gelu, F.softplus, F.logsigmoid … are C builtins that fx records as torch._C._nn.*
    **_named_objects(
        torch._C._nn,
        "torch.nn.functional",
        "gelu softplus log_sigmoid silu hardswish hardsigmoid elu leaky_relu mish softshrink",
    ),
}
_UNSUPPORTED_METHODS = set(
    (
        "sigmoid sigmoid_ tanh tanh_ softmax log_softmax exp exp_ log log_ log2 log10 log1p sqrt "
        "sqrt_ rsqrt rsqrt_ pow pow_ square erf reciprocal sin cos logit"
    ).split()
)

_UNSUPPORTED_HINT = (
    "only ReLU (and ReLU6 / hardtanh(0, m)) activations can become spiking neurons: "
    "replace it by ReLU and fine-tune the float model before quantizing"
)


# --- helpers -----------------------------------------------------------------------------------
def _module_op_name(module: nn.Module) -> str:
    cls = type(module)
    if getattr(nn, cls.__name__, None) is cls:
        return f"torch.nn.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def _function_name(fn: Any) -> str:
    name = getattr(fn, "__name__", None)
    if name is None:
        return str(fn)
    for prefix, namespace in (("torch.nn.functional", F), ("torch", torch)):
        if getattr(namespace, name, None) is fn:
            return f"{prefix}.{name}"
    module = getattr(fn, "__module__", None)
    return f"{module}.{name}" if module else name


def _owner_path(node: fx.Node) -> str:
    """Path of the module whose forward made this call ('' for the top level)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path, _ = list(stack.values())[-1]
    return str(path)


def _describe(node: fx.Node, gm: fx.GraphModule) -> str:
    """'torch.nn.GELU at features.3' / 'torch.nn.functional.gelu in layer1.0' / 'Tensor.exp()'."""
    if node.op == "call_module":
        return f"{_module_op_name(gm.get_submodule(node.target))} at {node.target}"
    if node.op == "call_function":
        name = _UNSUPPORTED_FUNCTIONS.get(node.target) or _function_name(node.target)
    else:
        name = f"Tensor.{node.target}()"
    owner = _owner_path(node)
    return f"{name} in {owner}" if owner else name


def _arg(node: fx.Node, index: int, name: str, default: Any) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _cap_is_relu_like(low: Any, high: Any) -> bool:
    return isinstance(low, (int, float)) and isinstance(high, (int, float)) and low == 0 and high > 0


def _relu_kind(node: fx.Node, gm: fx.GraphModule) -> str | None:
    """'relu' if the node is a ReLU-like call site that becomes a quantizer, 'bad' if it is a
    clipped linear unit that is not ReLU-like (hardtanh with min ≠ 0), None otherwise."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        if isinstance(module, (nn.ReLU, nn.ReLU6)):
            return "relu"
        if isinstance(module, nn.Hardtanh):  # ReLU6 is a Hardtanh subclass, handled above
            return "relu" if _cap_is_relu_like(module.min_val, module.max_val) else "bad"
        return None
    if node.op == "call_function":
        if node.target in _RELU_FUNCTIONS or node.target is F.relu6:
            return "relu"
        if node.target in (F.hardtanh, F.hardtanh_):
            low, high = _arg(node, 1, "min_val", -1.0), _arg(node, 2, "max_val", 1.0)
            return "relu" if _cap_is_relu_like(low, high) else "bad"
        return None
    if node.op == "call_method" and node.target in _RELU_METHODS:
        return "relu"
    return None


def _is_inplace(node: fx.Node, gm: fx.GraphModule) -> bool:
    if node.op == "call_module":
        return bool(getattr(gm.get_submodule(node.target), "inplace", False))
    if node.op == "call_function":
        return node.target in _INPLACE_FUNCTIONS or bool(node.kwargs.get("inplace", False)) or (
            node.target in (F.relu, F.relu6) and len(node.args) > 1 and bool(node.args[1])
        ) or (node.target is F.hardtanh and len(node.args) > 3 and bool(node.args[3]))
    return node.op == "call_method" and str(node.target).endswith("_")


def _unsupported(node: fx.Node, gm: fx.GraphModule) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), _UNSUPPORTED_MODULES)
    if node.op == "call_function":
        return node.target in _UNSUPPORTED_FUNCTIONS
    if node.op == "call_method":
        return node.target in _UNSUPPORTED_METHODS
    return False


def _existing_names(gm: nn.Module) -> set[str]:
    names = {name for name, _ in gm.named_modules()}
    names |= {name for name, _ in gm.named_parameters(remove_duplicate=False)}
    names |= {name for name, _ in gm.named_buffers(remove_duplicate=False)}
    return names


def _fresh_name(base: str, taken: set[str]) -> str:
    """``base`` if free, else ``base_1``, ``base_2``, … (deterministic)."""
    if base not in taken:
        return base
    i = 1
    while f"{base}_{i}" in taken:
        i += 1
    return f"{base}_{i}"


def _float_like(model: nn.Module) -> dict[str, Any]:
    """device/dtype of the model's first floating tensor, for the new quantizers."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return {"device": tensor.device, "dtype": tensor.dtype}
    return {}


# --- passes ------------------------------------------------------------------------------------
def trace(model: nn.Module, concrete_args: dict[str, Any] | None = None) -> fx.GraphModule:
    """``torch.fx.symbolic_trace`` with a one-line, actionable error."""
    try:
        return fx.symbolic_trace(model, concrete_args=concrete_args)
    except Exception as err:  # the tracer raises TraceError, TypeError, RuntimeError, …
        lines = str(err).strip().splitlines()
        reason = lines[0] if lines else type(err).__name__
        raise UnsupportedGraphError(
            f"cannot trace {type(model).__name__} with torch.fx: {reason} — make the forward's "
            "control flow static (no Python if/for/len on tensor values) or pass "
            "concrete_args= to fix the inputs it branches on"
        ) from err


def refuse_nonlinearities(gm: fx.GraphModule) -> None:
    """Raise :class:`UnsupportedGraphError` at the first node that cannot be quantized."""
    for node in gm.graph.nodes:
        if _unsupported(node, gm) or _relu_kind(node, gm) == "bad":
            raise UnsupportedGraphError(
                f"cannot quantize node '{node.name}' ({_describe(node, gm)}): {_UNSUPPORTED_HINT}"
            )


def functionalize_inplace_relus(gm: fx.GraphModule) -> None:
    """Point readers of an in-place ReLU's input that run after it at the ReLU's output."""
    order = {node: i for i, node in enumerate(gm.graph.nodes)}
    for node in list(gm.graph.nodes):
        if _relu_kind(node, gm) != "relu" or not _is_inplace(node, gm) or not node.args:
            continue
        source = node.args[0]
        if not isinstance(source, fx.Node):
            continue
        for user in list(source.users):
            if user is not node and order[user] > order[node]:
                user.replace_input_with(source, node)


def replace_relus(gm: fx.GraphModule, bits: int) -> list[str]:
    """Give every ReLU call site its own ``LSQActivation(bits)``; returns their names."""
    taken = _existing_names(gm)
    claimed: set[str] = set()  # module paths whose first call site already kept the path
    like = _float_like(gm)
    names = []
    sites = [node for node in gm.graph.nodes if _relu_kind(node, gm) == "relu"]
    for node in sites:  # classified up front: replacing a shared module changes its type
        if node.op == "call_module" and node.target not in claimed:
            name = str(node.target)  # the first call keeps the module's own path
        else:
            if node.op == "call_module":
                owner, _, leaf = str(node.target).rpartition(".")
            else:
                owner, leaf = _owner_path(node), "relu"
            name = _fresh_name(f"{owner}.{leaf}" if owner else leaf, taken | claimed)
        claimed.add(name)
        gm.add_submodule(name, LSQActivation(bits).to(**like))
        names.append(name)
        if node.op == "call_module":
            node.target = name
            node.args, node.kwargs = node.args[:1], {}
        else:
            with gm.graph.inserting_after(node):
                quant = gm.graph.call_module(name, args=(node.args[0],))
            quant.meta = dict(node.meta)
            node.replace_all_uses_with(quant)
            gm.graph.erase_node(node)
    return names


def add_output_quantizer(gm: fx.GraphModule, bits: int, model_name: str = "model") -> str:
    """Route the (single) graph output through ``LSQActivation(bits, is_output=True)``."""
    output = next(node for node in gm.graph.nodes if node.op == "output")
    logits = output.args[0]
    if not isinstance(logits, fx.Node):
        kind = type(logits).__name__
        raise UnsupportedGraphError(
            f"cannot add an output quantizer: {model_name} returns a {kind}, not a single logits "
            "tensor — return only the logits, or pass output_bits=None for an analog output"
        )
    name = _fresh_name(OUTPUT_QUANTIZER, _existing_names(gm))
    gm.add_submodule(name, LSQActivation(bits, is_output=True).to(**_float_like(gm)))
    with gm.graph.inserting_before(output):
        quant = gm.graph.call_module(name, args=(logits,))
    output.replace_input_with(logits, quant)
    return name


def _check_bits(name: str, bits: Any) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits < 1:
        raise ValueError(f"{name} must be a positive integer, got {bits!r}")
    return bits


def quantize(
    model: nn.Module,
    bits: int = 2,
    output_bits: int | None = 3,
    *,
    concrete_args: dict[str, Any] | None = None,
) -> fx.GraphModule:
    """Turn a float model into a QANN: every ReLU call site → ``LSQActivation(bits)``.

    The caller's model is not modified (a deep copy is traced, in eval mode). With
    ``output_bits`` set, the logits pass through ``LSQActivation(output_bits,
    is_output=True)``; ``None`` keeps them float. Weights, biases and the input stay float.
    Steps start at 1.0: run :func:`qffs.quant.calibrate` next. Returns the recompiled
    ``GraphModule`` in the model's train/eval mode.

    Raises :class:`UnsupportedGraphError` for an untraceable model, a non-ReLU nonlinearity
    (the message names the fx node and the op) or, with an output quantizer, a model that
    does not return a single tensor.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"quantize expects an nn.Module, got {type(model).__name__}")
    bits = _check_bits("bits", bits)
    if output_bits is not None:
        output_bits = _check_bits("output_bits", output_bits)
    work = copy.deepcopy(model).eval()
    gm = trace(work, concrete_args)
    passes: list[Callable[[fx.GraphModule], Any]] = [
        refuse_nonlinearities,
        functionalize_inplace_relus,
        lambda g: replace_relus(g, bits),
    ]
    if output_bits is not None:
        passes.append(lambda g: add_output_quantizer(g, output_bits, type(model).__name__))
    for apply in passes:
        apply(gm)
    gm.delete_all_unused_submodules()
    gm.graph.lint()
    gm.recompile()
    return gm.train(model.training)


def quantizers(model: nn.Module) -> list[tuple[str, LSQActivation]]:
    """The model's quantizers as (name, module), in graph (execution) order.

    For a ``GraphModule`` the order is that of the call sites (the output quantizer, when
    present, is last); for any other module it is registration order.
    """
    found: dict[str, LSQActivation] = {}
    if isinstance(model, fx.GraphModule):
        for node in model.graph.nodes:
            if node.op == "call_module" and node.target not in found:
                module = model.get_submodule(node.target)
                if isinstance(module, LSQActivation):
                    found[str(node.target)] = module
    for name, module in model.named_modules():
        if isinstance(module, LSQActivation) and name not in found:
            found[name] = module
    return list(found.items())
