"""Stage 2: the graph rewrite from a quantized ANN to a spiking network (SPEC §2).

    snn = convert(qann)                  # θ = T_in·s, Z_max = Q, pre-charge θ/2, T_in = Q_hidden
    out = snn(x, timesteps=8)            # [8, *qann(x).shape], cumulative, in the QANN's units

The rewrite works on a deep copy (the caller's QANN is untouched) and checks every node
before changing anything: what it cannot convert is refused by name, before any simulation.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from qffs.errors import QffsError, UnsupportedGraphError
from qffs.ops import check_graph, classify
from qffs.quant.lsq import LSQActivation
from qffs.snn.layers import GatedAffine, GatedLayer
from qffs.snn.network import SpikingNetwork
from qffs.snn.neuron import IFNeuron
from qffs.snn.pooling import BoundPool, EventMaxPool, NaiveMaxPool

MAX_POOL_MODES = ("event", "naive")


class _QuantizerLeafTracer(fx.Tracer):
    """Keeps quantizers as single call_module nodes when tracing a hand-built QANN."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, LSQActivation) or super().is_leaf_module(m, qualname)


def as_graph_module(model: nn.Module) -> fx.GraphModule:
    """A deep-copied GraphModule of ``model`` (traced if needed), in eval mode."""
    model = copy.deepcopy(model)
    if isinstance(model, fx.GraphModule):
        return model.eval()
    try:
        graph = _QuantizerLeafTracer().trace(model)
    except Exception as err:  # the tracer raises many types
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UnsupportedGraphError(f"cannot trace {type(model).__name__} with torch.fx: {first} — make the "
                                    "forward's control flow static") from err
    return fx.GraphModule(model, graph, type(model).__name__).eval()


def check_convertible(gm: fx.GraphModule) -> None:
    """Raise :class:`UnsupportedGraphError` at the first node with no SNN equivalent (``qffs.ops``)."""
    check_graph(gm, "convert")


def _set_module(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    parent, _, leaf = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, leaf, module)


def fold_batchnorm(gm: fx.GraphModule) -> int:
    """Fold each BatchNorm fed only by a conv/linear into that layer; returns how many were folded."""
    folded = 0
    for node in list(gm.graph.nodes):
        if classify(node, gm) != "batchnorm":
            continue
        src = node.args[0]
        if not (isinstance(src, fx.Node) and classify(src, gm) == "weighted" and len(src.users) == 1):
            continue
        layer, bn = gm.get_submodule(str(src.target)), gm.get_submodule(str(node.target))
        if isinstance(layer, nn.Linear) and isinstance(bn, nn.BatchNorm1d):
            fused = fuse_linear_bn_eval(layer, bn)
        elif isinstance(layer, (nn.Conv1d, nn.Conv2d)) and not isinstance(layer, nn.Linear):
            fused = fuse_conv_bn_eval(layer, bn)
        else:
            continue
        _set_module(gm, str(src.target), fused)
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        folded += 1
    gm.graph.eliminate_dead_code()
    return folded


def _fresh_name(base: str, taken: set[str]) -> str:
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def _pool_callable(node: fx.Node, gm: fx.GraphModule):
    if node.op == "call_module":
        return gm.get_submodule(str(node.target)), repr(gm.get_submodule(str(node.target)))
    args, kwargs, fn = tuple(node.args[1:]), dict(node.kwargs), node.target
    return BoundPool(fn, args, kwargs), f"{getattr(fn, '__name__', fn)}{args}"


def convert(qann: nn.Module, *, input_window: int | None = None, precharge: bool = True,
            negative_spikes: bool = True, max_pool: str = "event") -> SpikingNetwork:
    """Convert a quantized ANN into a :class:`SpikingNetwork` (SPEC §2).

    - every ``LSQActivation`` (step s, Q levels) → :class:`IFNeuron` with θ = T_in·s,
      Z_max = Q, pre-charge θ/2 (``precharge=False``: start at 0);
    - BatchNorm after a conv/linear is folded into it; any other BatchNorm → gated affine op;
    - every bias and the network input flow only while t < T_in (input and bias shutoff);
    - max pooling → event max pooling (``max_pool="naive"``: per-step pooling, ablation);
    - linear/selection ops pass through; anything else raises :class:`UnsupportedGraphError`.

    ``input_window`` (T_in) defaults to the Q of the hidden quantizers (3 for 2 bits).
    ``negative_spikes=False`` and ``precharge=False`` exist for ablations only.

    BatchNorm is folded in the QANN's type: for an exact float64 simulation convert
    ``qann.double()``. A float32 conversion widened later keeps float32 rounding in the folded
    weights (about 1e-7), enough to put a neuron that lies that close to a rounding boundary one level off.
    """
    if max_pool not in MAX_POOL_MODES:
        raise QffsError(f"max_pool must be one of {MAX_POOL_MODES}, got {max_pool!r}")
    gm = as_graph_module(qann)
    check_convertible(gm)
    quant_nodes = [n for n in gm.graph.nodes if classify(n, gm) == "quantizer"]
    if not quant_nodes:
        raise UnsupportedGraphError(f"{type(qann).__name__} has no activation quantizers: run qffs.quantize first")
    quants = {str(n.target): gm.get_submodule(str(n.target)) for n in quant_nodes}
    hidden = [q.levels for q in quants.values() if not q.is_output]
    if input_window is not None:   # a number of steps like T, bounded alike
        from qffs.snn.network import check_timesteps

        window = check_timesteps(input_window, "input_window (--input-window)",
                                 "the steps during which the image and the biases are fed in")
    else:
        window = max(hidden or [q.levels for q in quants.values()])
    folded = fold_batchnorm(gm)
    output_node = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    taken = {name for name, _ in gm.named_modules()}
    calls: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            calls[str(n.target)] = calls.get(str(n.target), 0) + 1
    for node in list(gm.graph.nodes):
        kind = classify(node, gm)
        if kind == "quantizer":
            q = quants[str(node.target)]
            s = q.step_size().detach()
            _set_module(gm, str(node.target), IFNeuron(window * s, s, q.levels, precharge=precharge,
                                                       negative_spikes=negative_spikes,
                                                       is_output=q.is_output or node is output_node))
        elif kind == "weighted":
            _set_module(gm, str(node.target), GatedLayer(gm.get_submodule(str(node.target))))
        elif kind == "batchnorm":
            _set_module(gm, str(node.target), GatedAffine(gm.get_submodule(str(node.target))))
        elif kind == "maxpool":  # stateful: one pool per call site
            pool, text = _pool_callable(node, gm)
            module = (EventMaxPool if max_pool == "event" else NaiveMaxPool)(pool, text)
            if node.op == "call_module" and calls[str(node.target)] == 1:
                _set_module(gm, str(node.target), module)
                continue
            name = _fresh_name(str(node.target) if node.op == "call_module" else node.name, taken)
            gm.add_submodule(name, module)
            with gm.graph.inserting_before(node):
                site = gm.graph.call_module(name, args=(node.args[0],))
            node.replace_all_uses_with(site)
            gm.graph.erase_node(node)
    gm.delete_all_unused_submodules()
    gm.graph.lint()
    gm.recompile()
    spiking_output = isinstance(output_node, fx.Node) and output_node.op == "call_module" and isinstance(
        gm.get_submodule(str(output_node.target)), IFNeuron)
    config = {"input_window": window, "precharge": precharge, "negative_spikes": negative_spikes,
              "max_pool": max_pool, "folded_batchnorms": folded, "output": "spiking" if spiking_output else "analog"}
    return SpikingNetwork(gm, window, str(output_node.target) if spiking_output else None, config)
