"""Integer weights in an exported ONNX graph: a weight-quantized layer's synapses as B-bit levels.

A baked layer (:func:`qffs.quant.weight_graph.bake_weights`) holds ``weight = scale · level``
exactly in float32, with the levels (``weight_levels``, int8) and the scale (``weight_scale``)
beside it. The exporter writes the float weight; :func:`write_integer_weights` then replaces each
such initializer by its int8 levels and a ``DequantizeLinear`` (zero point 0, per tensor or per
output channel on axis 0) that yields the same float32 values, so the file stores the integers a
chip would, the scale is readable by QDQ toolchains, and every output stays bit-identical.
Initializers are matched by value, not by name (the exporter renames and may reorder them).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn


def baked_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers of ``model`` that hold integer levels and a scale, by module path."""
    return {name: m for name, m in model.named_modules()
            if isinstance(getattr(m, "weight_levels", None), torch.Tensor) and isinstance(m.weight, torch.Tensor)}


def _key(array: np.ndarray) -> tuple[tuple[int, ...], bytes]:
    return tuple(array.shape), np.ascontiguousarray(array, dtype=np.float32).tobytes()


def write_integer_weights(proto: Any, model: nn.Module) -> list[dict[str, Any]]:
    """Replace, in the ONNX ``proto`` (in place), every float initializer equal to a baked layer's
    weight by int8 levels and a DequantizeLinear; returns one record per layer written so
    (its path, the initializer, bits, scales)."""
    from onnx import helper, numpy_helper  # the exporter's library: loaded with it

    wanted = {}
    for name, layer in baked_layers(model).items():
        weight = layer.weight.detach().float().cpu().numpy()
        wanted[_key(weight)] = (name, layer)
    graph, written, nodes = proto.graph, [], []
    for init in list(graph.initializer):
        if init.data_type != 1:   # FLOAT
            continue
        found = wanted.pop(_key(numpy_helper.to_array(init)), None)
        if found is None:
            continue
        name, layer = found
        levels = layer.weight_levels.detach().cpu().numpy().astype(np.int8)
        scale = layer.weight_scale.detach().float().cpu().numpy().reshape(-1)
        per_channel = scale.size > 1
        scale = scale if per_channel else scale.reshape(())
        stem = init.name
        graph.initializer.remove(init)
        graph.initializer.extend([numpy_helper.from_array(levels, f"{stem}.levels"),
                                  numpy_helper.from_array(scale.astype(np.float32), f"{stem}.scale"),
                                  numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{stem}.zero_point")])
        nodes.append(helper.make_node("DequantizeLinear", [f"{stem}.levels", f"{stem}.scale", f"{stem}.zero_point"],
                                      [stem], name=f"{stem}.dequantize", **({"axis": 0} if per_channel else {})))
        written.append({"layer": name, "initializer": stem, "bits": int(getattr(layer, "weight_bits", 8)),
                        "scales": int(scale.size)})
    for node in reversed(nodes):   # before every use: the graph stays topologically sorted
        graph.node.insert(0, node)
    return written


__all__ = ["baked_layers", "write_integer_weights"]
