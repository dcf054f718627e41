"""NIR export: the converted SNN as a Neuromorphic Intermediate Representation graph.

NIR states the weights, the IF neurons (r = 1, v_threshold = θ) and the wiring; what it
cannot state is recorded in the graph's metadata under ``qffs`` (per node under
``qffs/nodes``), and ``docs/export.md`` says what a consumer must add to reproduce the QFFS
SNN: the input window (input and biases for t < T_in only), pre-charge u₀ = θ/2, reset by
subtraction with firing at u ≥ θ, the count bound Z_max, negative spikes, and event max
pooling — which NIR has no node for: it is written as ``SumPool2d`` with the same window,
marked ``op: event_max_pool`` in the metadata, and is *not* that op without it.

Each IF node is followed by a ``Scale`` node of θ: a QFFS neuron emits z·θ, NIR's emits z. A
weight-quantized layer's node holds the float weight (scale · level, exact) and its note the
integer levels, the width and the scale (``weight_levels``, ``weight_bits``, ``weight_scale``).
"""

from __future__ import annotations

import copy
import operator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from qffs.errors import QffsError, UnsupportedGraphError
from qffs.files import atomic_path
from qffs.ops import describe
from qffs.snn.layers import GatedLayer
from qffs.snn.network import SpikingNetwork, propagate_shapes
from qffs.snn.neuron import IFNeuron, SpikingNeuron
from qffs.snn.pooling import BoundPool, EventMaxPool, max_pool2d_window

_ALIASES_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d)
_ALIAS_METHODS = {"contiguous", "clone", "float", "double", "to", "type_as"}
_FLATTENS = {torch.flatten, "flatten"}
_ADDS = {operator.add, torch.add, "add"}


def _nir():
    try:   # nir is an optional dependency (qffs[nir])
        import nir
    except ImportError:
        raise QffsError("NIR export needs the nir package: pip install 'qffs[nir]'") from None
    return nir


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy().copy()


def _pair(v: Any) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _integer_weights(layer: nn.Module) -> dict[str, Any]:
    """A weight-quantized layer's synapses as its chip would store them: B-bit integer levels and
    the scale (per tensor or output channel) that makes them the float ``weight`` of the node."""
    levels = getattr(layer, "weight_levels", None)
    if not isinstance(levels, torch.Tensor):
        return {}
    return {"weight_bits": int(layer.weight_bits), "weight_levels": levels.cpu().numpy().astype(np.int8),
            "weight_scale": _array(layer.weight_scale).reshape(-1)}


def _shapes(snn: SpikingNetwork, example: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Per fx node name, one sample's output shape (one step on one sample)."""
    return {name: tuple(shape[1:]) for name, shape in propagate_shapes(snn.graph, example[:1]).items()}


def _if_node(nir, m: IFNeuron, shape: tuple[int, ...]):
    """The IF neuron as NIR's IF (r = 1, v_threshold = θ)."""
    return nir.IF(r=np.ones(shape, np.float32), v_threshold=np.full(shape, float(m.threshold), np.float32))


#: Each neuron kind's NIR node (a new kind without an entry is refused by name).
NIR_FORMS = {IFNeuron: _if_node}


def _pool_window(module_or_args) -> dict[str, Any]:
    if isinstance(module_or_args, nn.Module):
        m = module_or_args
        return {"kernel_size": _pair(m.kernel_size), "stride": _pair(m.stride or m.kernel_size),
                "padding": _pair(m.padding)}
    return module_or_args


class _Builder:
    """Walks the SNN's fx graph once, emitting NIR nodes and edges; aliases map to their source."""

    def __init__(self, snn: SpikingNetwork, shapes: dict[str, tuple[int, ...]]):
        self.nir = _nir()
        self.snn, self.gm, self.shapes = snn, snn.graph, shapes
        self.nodes: dict[str, Any] = {}
        self.edges: list[tuple[str, str]] = []
        self.notes: dict[str, dict[str, Any]] = {}
        self.source: dict[str, list[str]] = {}     # fx node name → the NIR nodes whose outputs it sums

    def refuse(self, node: fx.Node, why: str) -> UnsupportedGraphError:
        return UnsupportedGraphError(f"cannot export node '{node.name}' ({describe(node, self.gm)}) to NIR: {why}")

    def emit(self, name: str, nir_node: Any, inputs: list[fx.Node], note: dict[str, Any] | None = None) -> None:
        name = name.replace(".", "_")
        self.nodes[name] = nir_node
        for arg in inputs:
            self.edges += [(src, name) for src in self.source[arg.name]]
        if note:
            self.notes[name] = note
        return name

    def window(self, node: fx.Node, pool) -> dict[str, Any]:
        """An event max pool's window: adaptive ones from the input size, the others as the runtime reads them."""
        if isinstance(pool, (nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d)):
            return self.adaptive(node, pool.output_size)
        if isinstance(pool, BoundPool) and pool.fn is F.adaptive_max_pool2d:
            return self.adaptive(node, pool.args[0] if pool.args else pool.kwargs["output_size"])
        window = max_pool2d_window(pool)
        if window is None or window.dilation != (1, 1):
            raise self.refuse(node, "NIR pooling is 2-D, without dilation or ceil_mode")
        return {"kernel_size": window.kernel, "stride": window.stride, "padding": window.padding}

    def adaptive(self, node: fx.Node, size) -> dict[str, Any]:
        (h, w) = self.shapes[node.args[0].name][-2:]
        oh, ow = _pair(size)
        if h % oh or w % ow:
            raise self.refuse(node, f"adaptive pooling of {h}x{w} to {oh}x{ow} has no fixed window")
        return {"kernel_size": (h // oh, w // ow), "stride": (h // oh, w // ow), "padding": (0, 0)}

    def module(self, node: fx.Node, m: nn.Module) -> None:
        nir, (x,) = self.nir, node.args[:1]
        if isinstance(m, _ALIASES_MODULES):
            self.source[node.name] = self.source[x.name]
        elif isinstance(m, GatedLayer):
            layer, bias = m.layer, m.bias
            b = _array(bias) if bias is not None else None
            if isinstance(layer, nn.Linear):
                out = nir.Affine(weight=_array(layer.weight),
                                 bias=b) if b is not None else nir.Linear(weight=_array(layer.weight))
            elif isinstance(layer, (nn.Conv1d,
                                    nn.Conv2d)) and layer.padding_mode == "zeros" and not isinstance(layer.padding,
                                                                                                     str):
                cls = nir.Conv2d if isinstance(layer, nn.Conv2d) else nir.Conv1d
                spatial = self.shapes[x.name][1:]
                out = cls(input_shape=spatial if isinstance(layer, nn.Conv2d) else spatial[0],
                          weight=_array(layer.weight),
                          stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
                          bias=b if b is not None else np.zeros(layer.out_channels, dtype=np.float32))
            else:
                raise self.refuse(node, "only zero-padded Conv1d/Conv2d and Linear layers have NIR nodes")
            name = self.emit(str(node.target), out, [x], {"op": "weighted", "bias_window": self.snn.input_window,
                                                          **_integer_weights(layer)})
            self.source[node.name] = [name]
        elif isinstance(m, SpikingNeuron):
            form = NIR_FORMS.get(type(m))
            if form is None:
                raise self.refuse(node, f"NIR has no node for the neuron kind {m.kind!r}")
            if m.step_thresholds is not None:
                raise self.refuse(node, "its thresholds change from step to step (a fine-tuned ATIF-nu network): "
                                        "NIR's IF has one v_threshold")
            shape = self.shapes[node.name]
            theta = float(m.threshold)
            name = self.emit(str(node.target), form(nir, m, shape), [x], {"op": "if", **m.notes()})
            scale = self.emit(str(node.target) + ".out", nir.Scale(scale=np.full(shape, theta, np.float32)), [],
                              {"op": "spike_value", "value": "z * threshold"})
            self.edges.append((name, scale))
            self.source[node.name] = [scale]
        elif isinstance(m, EventMaxPool):
            window = self.window(node, m.pool)
            name = self.emit(str(node.target), nir.SumPool2d(kernel_size=np.array(window["kernel_size"]),
                                                              stride=np.array(window["stride"]),
                                                              padding=np.array(window["padding"])), [x],
                             {"op": "event_max_pool", "semantics": "e_t = maxpool(C_t) - maxpool(C_(t-1)), C the "
                              "cumulative input; NOT a sum pool", **{k: list(v) for k, v in window.items()}})
            self.source[node.name] = [name]
        elif isinstance(m, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            window = self.window(node, m) if isinstance(m, nn.AdaptiveAvgPool2d) else _pool_window(m)
            name = self.emit(str(node.target), nir.AvgPool2d(kernel_size=np.array(window["kernel_size"]),
                                                              stride=np.array(window["stride"]),
                                                              padding=np.array(window["padding"])), [x])
            self.source[node.name] = [name]
        elif isinstance(m, nn.Flatten):
            self.flatten(node, x, m.start_dim, m.end_dim)
        else:
            raise self.refuse(node, "NIR has no equivalent node")

    def flatten(self, node: fx.Node, x: fx.Node, start: int, end: int) -> None:
        if start != 1:
            raise self.refuse(node, "only flattening from dim 1 (after the batch) maps to NIR's Flatten")
        shape = self.shapes[x.name]
        name = self.emit(node.name, self.nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0,
                                                     end_dim=end if end < 0 else end - 1), [x])
        self.source[node.name] = [name]

    def call(self, node: fx.Node) -> None:
        acts = [a for a in node.args if isinstance(a, fx.Node)]
        target = node.target
        if node.op == "call_method" and target in _ALIAS_METHODS:
            self.source[node.name] = self.source[acts[0].name]
        elif target in _FLATTENS:
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            self.flatten(node, acts[0], start, end)
        elif node.op == "call_method" and target in ("view", "reshape") and self.shapes[node.name] == (
                int(np.prod(self.shapes[acts[0].name])),):
            self.flatten(node, acts[0], 1, -1)
        elif target in _ADDS and len(acts) == 2 and len(node.args) == 2 and not node.kwargs:
            self.source[node.name] = self.source[acts[0].name] + self.source[acts[1].name]   # NIR sums fan-in
        elif target in (F.avg_pool2d, F.adaptive_avg_pool2d):
            raise self.refuse(node, "write average pooling as an nn.AvgPool2d module to export it to NIR")
        else:
            raise self.refuse(node, "NIR has no equivalent node")

    def build(self, example_shape: tuple[int, ...]):
        nir = self.nir
        seen: set[str] = set()
        for node in self.gm.graph.nodes:
            if node.op == "call_module" and not isinstance(self.gm.get_submodule(str(node.target)), _ALIASES_MODULES):
                if str(node.target) in seen:   # a NIR node is one layer: a second call would merge into it
                    raise self.refuse(node, f"{node.target} is called from several places")
                seen.add(str(node.target))
            if node.op == "placeholder":
                self.emit("input", nir.Input(input_type={"input": np.array(example_shape)}), [])
                self.source[node.name] = ["input"]
            elif node.op == "call_module":
                self.module(node, self.gm.get_submodule(str(node.target)))
            elif node.op in ("call_function", "call_method"):
                self.call(node)
            elif node.op == "output":
                out = node.args[0]
                self.emit("output", nir.Output(output_type={"output": np.array(self.shapes[out.name])}), [out])
        return self.nodes, self.edges


def to_nir(snn: SpikingNetwork, path: str | Path, example: torch.Tensor, *,
           metadata: dict[str, Any] | None = None) -> Path:
    """Write ``snn`` as a NIR file (HDF5); ``example`` gives the input shape. Refuses by name what
    NIR cannot express (concatenation, unfolded BatchNorm, …)."""
    if not isinstance(snn, SpikingNetwork):
        raise QffsError("NIR describes spiking networks: convert the network first (qffs.convert)")
    nir = _nir()
    snn = copy.deepcopy(snn).float().eval()
    example = example[:1].float()
    builder = _Builder(snn, _shapes(snn, example))
    nodes, edges = builder.build(tuple(example.shape[1:]))
    info = {"format": "qffs SNN", "input_window": snn.input_window,
            "input": "presented for t < input_window, zero after", **{k: v for k, v in snn.config.items()
                                                                     if isinstance(v, (bool, int, float, str))},
            "readout": "output counts x step_size (cumulative)", "nodes": builder.notes,
            **{k: v for k, v in (metadata or {}).items() if v is not None}}
    graph = nir.NIRGraph(nodes=nodes, edges=edges, metadata={"qffs": info})
    path = Path(path)
    with atomic_path(path) as tmp:
        nir.write(str(tmp), graph)
    return path


def check_nir(snn: SpikingNetwork, path: str | Path) -> dict[str, Any]:
    """Read ``path`` back with ``nir.read`` and compare every weight (and integer levels × scale, where
    written), bias and threshold with ``snn``."""
    nir = _nir()
    graph = nir.read(str(path))
    equal = True
    for name, layer in snn.named_synapses():
        node = graph.nodes.get(name.replace(".", "_"))
        equal &= node is not None and np.array_equal(node.weight, _array(layer.layer.weight))
        note = graph.metadata.get("qffs", {}).get("nodes", {}).get(name.replace(".", "_"), {})
        if node is not None and "weight_levels" in note:   # the integers and the scale give the same weight
            levels, scale = note["weight_levels"], note["weight_scale"]
            scale = scale.reshape((-1,) + (1,) * (levels.ndim - 1)) if scale.size > 1 else scale.reshape(())
            equal &= bool(np.array_equal(node.weight, levels.astype(np.float32) * scale.astype(np.float32)))
        if node is not None and layer.bias is not None:
            equal &= bool(np.array_equal(node.bias, _array(layer.bias)))
    for name, neuron in snn.named_neurons():
        node = graph.nodes.get(name.replace(".", "_"))
        equal &= node is not None and bool(np.all(node.v_threshold == np.float32(float(neuron.threshold))))
    return {"nodes": len(graph.nodes), "edges": len(graph.edges), "equal": bool(equal)}


__all__ = ["check_nir", "to_nir"]
