"""Low-bit weights out of Python (issue 28): ONNX stores int8 levels and their scale, NIR notes them,
and both give exactly the network's outputs and weights."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from qffs.export.nir import check_nir, to_nir
from qffs.export.onnx import qann_to_onnx, read_metadata, snn_to_onnx
from qffs.export.runtime import session
from qffs.quant import calibrate, quantize
from qffs.quant.weight_graph import WeightSpec
from qffs.snn import convert

pytestmark = pytest.mark.usefixtures("one_thread")


def _qann(bits: int, per_channel: bool) -> torch.fx.GraphModule:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 8, 3), nn.ReLU(),
                        nn.Flatten(), nn.Linear(8 * 6 * 6, 5), nn.ReLU(), nn.Linear(5, 3))
    net[1].running_mean.uniform_(-0.2, 0.2)
    net[1].running_var.uniform_(0.5, 2.0)
    qann = quantize(net.eval(), bits=2, output_bits=3, weights=WeightSpec(bits, per_channel=per_channel,
                                                                         edge_bits=None))
    calibrate(qann, [torch.randn(16, 1, 8, 8)])
    return qann.eval()


def _levels(proto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8}


@pytest.mark.parametrize("bits,per_channel", [(2, False), (4, True)])
def test_onnx_writes_integer_levels_that_give_the_networks_outputs(tmp_path, bits, per_channel):
    qann = _qann(bits, per_channel)
    x = torch.randn(4, 1, 8, 8)
    for kind, path, net in (("qann", tmp_path / "q.onnx", qann), ("snn", tmp_path / "s.onnx", convert(qann))):
        if kind == "qann":
            qann_to_onnx(net, path, x)
            expected = net(x).detach().numpy()
        else:
            snn_to_onnx(net, path, x, timesteps=6)
            expected = net(x, timesteps=6).detach().numpy()
        proto = onnx.load(str(path))
        levels = [v for k, v in _levels(proto).items() if k.endswith(".levels")]
        assert len(levels) == 4, kind                                 # every conv/linear weight as integers
        p = 2 ** (bits - 1) - 1
        assert all(np.abs(v).max() <= p and len(np.unique(v)) <= 2 ** bits for v in levels)
        shapes = {v.shape for v in levels}   # no float copy of a weight is left
        floats = [tuple(i.dims) for i in proto.graph.initializer if i.data_type == onnx.TensorProto.FLOAT]
        assert not shapes & set(floats)
        assert "DequantizeLinear" in {n.op_type for n in proto.graph.node}
        assert [r["bits"] for r in read_metadata(path)["integer_weights"]] == [bits] * 4
        for rewrites in (False, True):   # onnxruntime's default session too: no optimiser re-quantizes them
            got = session(path, qdq_rewrites=rewrites).run(None, {"x": x.numpy()})[0]
            assert np.array_equal(got, expected), (kind, rewrites)


def test_nir_notes_the_integer_levels_and_scale_of_each_layer(tmp_path):
    nir = pytest.importorskip("nir")
    snn = convert(_qann(3, True))
    to_nir(snn, tmp_path / "s.nir", torch.randn(1, 1, 8, 8))
    assert check_nir(snn, tmp_path / "s.nir")["equal"]
    notes = nir.read(str(tmp_path / "s.nir")).metadata["qffs"]["nodes"]
    quantized = {name: note for name, note in notes.items() if "weight_levels" in note}
    assert len(quantized) == 4
    for note in quantized.values():
        assert note["weight_bits"] == 3 and note["weight_levels"].dtype == np.int8
        assert np.abs(note["weight_levels"]).max() <= 3 and note["weight_scale"].size == note["weight_levels"].shape[0]
