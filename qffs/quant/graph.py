"""Stage 1 graph transform: a pretrained float model → a QANN (SPEC §1).

:func:`quantize` traces a copy of the model with ``torch.fx`` and runs small passes, each
with one job (the idea of brevitas' ``graph/standardize.py``):

1. :func:`refuse_unconvertible` — the graph check of :mod:`qffs.ops`, the same one
   ``convert`` runs: a node with no SNN equivalent (sigmoid, GELU, abs, a product of two
   activations, a constant added every step, …) is refused here, naming the fx node and the
   op, before any data is read or any training runs.
2. :func:`functionalize_inplace_relus` — ``x.relu_()`` / ``F.relu(x, inplace=True)`` /
   ``nn.ReLU(inplace=True)`` mutate their input; later readers of that input are pointed at
   the ReLU's output so the graph means the same once the quantizer (not in-place) replaces it.
3. :func:`replace_relus` — every ReLU *call site* (``nn.ReLU``, ``F.relu``, ``torch.relu``,
   ``torch.relu_``, ``x.relu()``, ``x.relu_()``, ``clamp(min=0)``) becomes a call of its own
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

What each node is (ReLU site, in-place, linear, refused) is decided by an op table
(:class:`qffs.ops.OpTable`, ``ops=``, by default :data:`qffs.ops.OPS`); this module only rewrites.
:func:`check_quantizable` runs the same checks without rewriting, for a job to call before it reads data.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from qffs.errors import QffsError, UnsupportedGraphError
from qffs.ops import OPS, OpTable, check_graph, describe, is_inplace, is_relu_site, owner_path
from qffs.quant.lsq import LSQActivation, check_bits
from qffs.quant.tracing import trace
from qffs.quant.weight_graph import WeightSpec, add_weight_quantizers

__all__ = [
    "NOTES",
    "OUTPUT_QUANTIZER",
    "check_quantizable",
    "quantize",
    "quantizers",
    "refuse_unconvertible",
    "functionalize_inplace_relus",
    "replace_relus",
    "add_output_quantizer",
]

#: Name of the module that quantizes the logits.
OUTPUT_QUANTIZER = "output_quantizer"


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
_SOFTMAX_FUNCTIONS = {F.softmax, torch.softmax, F.log_softmax, torch.log_softmax}
_SOFTMAX_METHODS = {"softmax", "log_softmax"}

#: Where :func:`quantize` leaves what it changed beyond the ReLUs, for the job to say (``gm.meta``).
NOTES = "qffs_notes"


def _class_softmax(node: fx.Node, gm: fx.GraphModule) -> bool:
    """A (log-)softmax over dimension 1 or −1 (the classes of [batch, classes] logits)."""
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        return isinstance(module, (nn.Softmax, nn.LogSoftmax)) and module.dim in (None, 1, -1)
    if (node.op == "call_function" and node.target in _SOFTMAX_FUNCTIONS) or \
            (node.op == "call_method" and node.target in _SOFTMAX_METHODS):
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        return dim in (None, 1, -1)
    return False


def drop_final_softmax(gm: fx.GraphModule) -> str | None:
    """Return the logits instead of a final (log-)softmax over the classes: it is monotonic per
    sample, so every prediction is unchanged, and it has no spiking equivalent. Returns a note
    naming what was dropped (None: nothing)."""
    output = next(node for node in gm.graph.nodes if node.op == "output")
    last = output.args[0]
    if not isinstance(last, fx.Node) or not _class_softmax(last, gm) or len(last.users) != 1:
        return None
    what = describe(last, gm)
    output.replace_input_with(last, last.args[0])
    gm.graph.erase_node(last)
    return (f"the final {what} was dropped: it does not change any prediction (argmax), and QAT's cross-entropy "
            "is applied to the logits")


def refuse_unconvertible(gm: fx.GraphModule, ops: OpTable = OPS) -> None:
    """Raise :class:`UnsupportedGraphError` at the first node that cannot become part of an SNN."""
    check_graph(gm, "quantize", ops)


def functionalize_inplace_relus(gm: fx.GraphModule, ops: OpTable = OPS) -> None:
    """Point readers of an in-place ReLU's input that run after it at the ReLU's output."""
    order = {node: i for i, node in enumerate(gm.graph.nodes)}
    for node in list(gm.graph.nodes):
        if not is_relu_site(node, gm, ops) or not is_inplace(node, gm, ops) or not node.args:
            continue
        source = node.args[0]
        if not isinstance(source, fx.Node):
            continue
        for user in list(source.users):
            if user is not node and order[user] > order[node]:
                user.replace_input_with(source, node)


def replace_relus(gm: fx.GraphModule, bits: int, ops: OpTable = OPS) -> list[str]:
    """Give every ReLU call site its own ``LSQActivation(bits)``; returns their names."""
    taken = _existing_names(gm)
    claimed: set[str] = set()  # module paths whose first call site already kept the path
    like = _float_like(gm)
    names = []
    sites = [node for node in gm.graph.nodes if is_relu_site(node, gm, ops)]
    for node in sites:  # classified up front: replacing a shared module changes its type
        if node.op == "call_module" and node.target not in claimed:
            name = str(node.target)  # the first call keeps the module's own path
        else:
            if node.op == "call_module":
                owner, _, leaf = str(node.target).rpartition(".")
            else:
                owner, leaf = owner_path(node), "relu"
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


def _checked_graph(model: nn.Module, concrete_args: dict[str, Any] | None, ops: OpTable) -> fx.GraphModule:
    """The float graph :func:`quantize` rewrites: a traced deep copy in eval mode, a final class softmax
    dropped (noted in ``gm.meta[NOTES]``), every node checked against ``ops``."""
    if not isinstance(model, nn.Module):
        raise QffsError(f"quantize expects an nn.Module, got {type(model).__name__}")
    gm = trace(copy.deepcopy(model).eval(), concrete_args, ops)
    gm.meta[NOTES] = [note for note in (drop_final_softmax(gm),) if note]
    refuse_unconvertible(gm, ops)
    return gm


def check_quantizable(model: nn.Module, *, concrete_args: dict[str, Any] | None = None, ops: OpTable = OPS) -> None:
    """Refuse what :func:`quantize` (and so ``convert``) would refuse, without quantizing anything.

    Traces a copy of the float model and runs :func:`qffs.ops.check_graph` at the quantize stage:
    an op with no spiking equivalent, an argument that makes an op non-linear, or a module state
    that cannot convert (BatchNorm without running statistics) raises :class:`UnsupportedGraphError`
    naming the node and the op. No data is read and the model does not run: a job calls this
    before it loads any data.
    """
    _checked_graph(model, concrete_args, ops)


def quantize(
    model: nn.Module,
    bits: int = 2,
    output_bits: int | None = 3,
    *,
    concrete_args: dict[str, Any] | None = None,
    ops: OpTable = OPS,
    weights: WeightSpec | None = None,
) -> fx.GraphModule:
    """Turn a float model into a QANN: every ReLU call site → ``LSQActivation(bits)``.

    The caller's model is not modified (a deep copy is traced, in eval mode). With
    ``output_bits`` set, the logits pass through ``LSQActivation(output_bits,
    is_output=True)``; ``None`` keeps them float. Weights, biases and the input stay float.
    Steps start at 1.0: run :func:`qffs.quant.calibrate` next. Returns the recompiled
    ``GraphModule`` in the model's train/eval mode. ``ops`` is the op table that says what
    each node is (:data:`qffs.ops.OPS`; pass the same one to ``convert``). ``weights`` also
    quantizes every conv/linear weight (on the grid of the weight with its BatchNorm folded in,
    :mod:`qffs.quant.weight_graph`).

    A final softmax or log-softmax over the classes is dropped (predictions are unchanged); what was
    dropped is listed in ``gm.meta["qffs_notes"]`` for the caller to say.

    Raises :class:`UnsupportedGraphError` for an untraceable model, a non-ReLU nonlinearity
    (the message names the fx node and the op) or, with an output quantizer, a model that
    does not return a single tensor.
    """
    if not isinstance(model, nn.Module):
        raise QffsError(f"quantize expects an nn.Module, got {type(model).__name__}")
    bits = check_bits("bits", bits, max_bits=None)
    if output_bits is not None:
        output_bits = check_bits("output_bits", output_bits, max_bits=None)
    gm = _checked_graph(model, concrete_args, ops)
    functionalize_inplace_relus(gm, ops)
    replace_relus(gm, bits, ops)
    if output_bits is not None:
        add_output_quantizer(gm, output_bits, type(model).__name__)
    if weights is not None:
        folded = add_weight_quantizers(gm, weights, ops)
        if folded:
            gm.meta.setdefault(NOTES, []).append(f"{folded} BatchNorm layer(s) train beside their conv/linear, "
                                                 "whose weights are quantized as folded into them (folded at "
                                                 "conversion)")
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
