"""Stage 2: the graph rewrite from a quantized ANN to a spiking network (SPEC §2).

    snn = convert(qann)                  # θ = T_in·s, Z_max = Q, pre-charge θ/2, T_in = Q_hidden
    out = snn(x, timesteps=8)            # [8, *qann(x).shape], cumulative, in the QANN's units

The rewrite works on a deep copy (the caller's QANN is untouched) and checks every node
before changing anything: what it cannot convert is refused by name, before any simulation.
What each node is comes from an op table (``ops=``, :data:`qffs.ops.OPS`); what it becomes,
from a handler per kind (``handlers=``, :data:`qffs.snn.handlers.HANDLERS`) and, for the
quantizers, a neuron class (``neuron_map=``, :data:`qffs.snn.handlers.NEURONS`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from torch import fx, nn

from qffs.errors import QffsError, UnsupportedGraphError
from qffs.ops import OPS, OpKind, OpTable, check_graph, classify, describe, tracer
from qffs.quant.fold import fold_batchnorm
from qffs.quant.weight_graph import bake_weights
from qffs.snn.handlers import HANDLERS, NEURONS, Handler, Rewrite
from qffs.snn.network import SpikingNetwork, check_timesteps
from qffs.snn.neuron import SpikingNeuron

MAX_POOL_MODES = ("event", "naive")


def as_graph_module(model: nn.Module, ops: OpTable = OPS) -> fx.GraphModule:
    """A deep-copied GraphModule of ``model`` (traced if needed, every module ``ops`` knows one node), in eval mode."""
    model = copy.deepcopy(model)
    if isinstance(model, fx.GraphModule):
        return model.eval()
    try:
        graph = tracer(ops).trace(model)
    except Exception as err:  # the tracer raises many types
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UnsupportedGraphError(f"cannot trace {type(model).__name__} with torch.fx: {first} — make the "
                                    "forward's control flow static") from err
    return fx.GraphModule(model, graph, type(model).__name__).eval()


def check_convertible(gm: fx.GraphModule, ops: OpTable = OPS) -> None:
    """Raise :class:`UnsupportedGraphError` at the first node with no SNN equivalent (:func:`qffs.ops.check_graph`)."""
    check_graph(gm, "convert", ops)


def _neuron_classes(gm: fx.GraphModule, name: str, ops: OpTable,
                    neuron_map: Mapping[type[nn.Module], type[SpikingNeuron]]) -> dict[str, type[SpikingNeuron]]:
    """Quantizer path → the neuron class that replaces it (the most derived class ``neuron_map`` names)."""
    neurons: dict[str, type[SpikingNeuron]] = {}
    for node in gm.graph.nodes:
        if classify(node, gm, ops) is not OpKind.QUANTIZER:
            continue
        cls = type(gm.get_submodule(str(node.target)))
        neuron = next((neuron_map[c] for c in cls.__mro__ if c in neuron_map), None)
        if neuron is None:
            raise UnsupportedGraphError(f"cannot convert node '{node.name}' ({describe(node, gm)}): no spiking neuron "
                                        f"for the quantizer {cls.__qualname__} — pass neuron_map={{{cls.__name__}: "
                                        "<a SpikingNeuron subclass>}")
        neurons[str(node.target)] = neuron
    if not neurons:
        raise UnsupportedGraphError(f"{name} has no activation quantizers: run qffs.quantize first")
    return neurons


def _input_window(input_window: int | None, quantizers: list[Any]) -> int:
    """T_in: as given (bounded like T), else the Q of the hidden quantizers (of all, without hidden ones)."""
    if input_window is not None:
        return check_timesteps(input_window, "input_window (--input-window)",
                               "the steps during which the image and the biases are fed in")
    hidden = [q.levels for q in quantizers if not q.is_output]
    return int(max(hidden or [q.levels for q in quantizers]))


def _handlers(handlers: Mapping[Any, Handler], gm: fx.GraphModule, ops: OpTable) -> dict[OpKind, Handler]:
    """``handlers`` keyed by :class:`OpKind`; every kind in the graph that changes in an SNN must have one."""
    try:
        table = {OpKind(kind): handler for kind, handler in handlers.items()}
    except ValueError as err:
        raise QffsError(f"handlers must be keyed by op kind: {err}") from None
    changing = {classify(n, gm, ops) for n in gm.graph.nodes} - {OpKind.LINEAR, OpKind.IO, OpKind.UNSUPPORTED}
    missing = sorted(kind.value for kind in changing - table.keys())
    if missing:
        raise QffsError(f"no conversion handler for the op kind(s) {', '.join(missing)}: pass them in handlers=")
    return table


def _call_counts(gm: fx.GraphModule) -> dict[str, int]:
    calls: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            calls[str(n.target)] = calls.get(str(n.target), 0) + 1
    return calls


def _network(gm: fx.GraphModule, rw: Rewrite, folded: int) -> SpikingNetwork:
    gm.delete_all_unused_submodules()
    gm.graph.lint()
    gm.recompile()
    out = rw.output_node
    spiking_output = isinstance(out, fx.Node) and out.op == "call_module" and isinstance(
        gm.get_submodule(str(out.target)), SpikingNeuron)
    config = {"input_window": rw.input_window, "precharge": rw.precharge, "negative_spikes": rw.negative_spikes,
              "max_pool": rw.max_pool, "folded_batchnorms": folded, "output": "spiking" if spiking_output else "analog"}
    return SpikingNetwork(gm, rw.input_window, str(out.target) if spiking_output else None, config)


def convert(qann: nn.Module, *, input_window: int | None = None, precharge: bool = True,
            negative_spikes: bool = True, max_pool: str = "event", ops: OpTable = OPS,
            handlers: Mapping[OpKind, Handler] = HANDLERS,
            neuron_map: Mapping[type[nn.Module], type[SpikingNeuron]] = NEURONS) -> SpikingNetwork:
    """Convert a quantized ANN into a :class:`SpikingNetwork` (SPEC §2).

    - every ``LSQActivation`` (step s, Q levels) → :class:`IFNeuron` with θ = T_in·s,
      Z_max = Q, pre-charge θ/2 (``precharge=False``: start at 0);
    - BatchNorm after a conv/linear is folded into it; any other BatchNorm → gated affine op;
    - quantized weights (``quantize(..., weights=)``) are fixed at ``scale · level``, the integer
      levels kept beside them (``weight_levels``, ``weight_scale``);
    - every bias and the network input flow only while t < T_in (input and bias shutoff);
    - max pooling → event max pooling (``max_pool="naive"``: per-step pooling, ablation);
    - linear/selection ops pass through; anything else raises :class:`UnsupportedGraphError`.

    ``input_window`` (T_in) defaults to the Q of the hidden quantizers (3 for 2 bits).
    ``negative_spikes=False`` and ``precharge=False`` exist for ablations only. ``ops`` says what
    each node is (the table ``quantize`` used), ``handlers`` what each kind becomes, and
    ``neuron_map`` which neuron class replaces each quantizer class (:mod:`qffs.snn.handlers`).

    BatchNorm is folded in the QANN's type: for an exact float64 simulation convert
    ``qann.double()``. A float32 conversion widened later keeps float32 rounding in the folded
    weights (about 1e-7), enough to put a neuron that lies that close to a rounding boundary one level off.
    """
    if max_pool not in MAX_POOL_MODES:
        raise QffsError(f"max_pool must be one of {MAX_POOL_MODES}, got {max_pool!r}")
    gm = as_graph_module(qann, ops)
    check_convertible(gm, ops)   # everything is checked before anything changes
    neurons = _neuron_classes(gm, type(qann).__name__, ops, neuron_map)
    window = _input_window(input_window, [gm.get_submodule(target) for target in neurons])
    bake_weights(gm)      # quantized weights become scale · level for good, their BatchNorms folded
    folded = fold_batchnorm(gm, ops)
    table = _handlers(handlers, gm, ops)   # after folding: a folded BatchNorm needs no handler
    rw = Rewrite(gm, window, precharge, negative_spikes, max_pool, neurons,
                 output_node=next(n for n in gm.graph.nodes if n.op == "output").args[0],
                 calls=_call_counts(gm), taken={name for name, _ in gm.named_modules()})
    for node in list(gm.graph.nodes):   # classified as it goes: a module called twice is replaced once
        handler = table.get(classify(node, gm, ops))
        if handler is not None:
            handler(node, rw)
    return _network(gm, rw, folded)
