"""Export (issue 13): onnxruntime computes what torch computes, NIR round-trips the parameters.

- QANN → ONNX: in float form (the default) onnxruntime's *default* session and ``onnx.reference``
  give exactly ``qann(x)`` (the same levels), in QCDQ form onnxruntime with its QDQ rewrites off
  does; on the shipped network over 1,000 test images and on random graphs with residual adds,
  concatenation and max pooling; the files pass ``onnx.checker``; the batch size is free.
- SNN → ONNX unrolled over T: the readout equals ``snn(x, timesteps=T)`` to float32 rounding with
  the same prediction at every step.
- ``qffs evaluate --backend onnxruntime`` reports the torch runtime's curve on the same images.
- SNN → NIR: ``nir.read`` gives back the same weights and thresholds.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from qffs.data import load_dataset, make_loader
from qffs.errors import QffsError, UnsupportedGraphError
from qffs.export.onnx import qann_to_onnx, read_metadata, snn_to_onnx
from qffs.export.runtime import OnnxSpikingNetwork, session
from qffs.io import save_checkpoint
from qffs.metrics import predict
from qffs.quant import calibrate, quantize, quantizers
from qffs.snn import convert
from tests.conftest import calibrated_shipped_qann
from tests.snn_graphs import Genome, build_qann

SPEC = "vgg_small(num_classes=10, in_channels=1)"


@pytest.fixture(scope="module")
def shipped():
    """(QANN, SNN, 1,000 test images) of the shipped network, calibrated on 256 training images."""
    qann = calibrated_shipped_qann(256)
    x, _ = next(iter(make_loader(load_dataset("fashion-mnist", "test", limit=1000), 1000)))
    return qann, convert(qann), x


def _run(path, x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(session(path).run(None, {"x": x.numpy()})[0])


def _ops(path) -> list[str]:
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) <= 21
    return [n.op_type for n in model.graph.node]


def test_the_qann_in_float_form_gives_its_levels_in_any_onnx_runtime(shipped, tmp_path):
    """What a deployment that knows nothing of qffs computes: onnxruntime's default session (its
    QDQ rewrites on) and the ONNX reference implementation, without any option."""
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator

    qann, _, x = shipped
    path = qann_to_onnx(qann, tmp_path / "qann.onnx", x)
    ops = _ops(path)
    assert "QuantizeLinear" not in ops and "DequantizeLinear" not in ops
    assert ops.count("Round") == ops.count("Div") == len(quantizers(qann))
    with torch.no_grad():
        ref = qann(x)
    plain = ort.InferenceSession(str(path))
    assert torch.equal(torch.from_numpy(plain.run(None, {"x": x.numpy()})[0]), ref)   # 1,000 images, every logit
    assert torch.equal(torch.from_numpy(plain.run(None, {"x": x[:7].numpy()})[0]), ref[:7])   # any batch size
    reference = ReferenceEvaluator(str(path)).run(None, {"x": x[:48].numpy()})[0]     # numpy: ~0.05 s an image
    assert torch.equal(torch.from_numpy(reference), ref[:48])
    assert read_metadata(path)["kind"] == "qann" and read_metadata(path)["qann_form"] == "float"


def test_the_qann_in_qcdq_form_gives_its_levels_with_the_qdq_rewrites_off(shipped, tmp_path):
    qann, _, x = shipped
    path = qann_to_onnx(qann, tmp_path / "qann.onnx", x, form="qcdq")
    ops = _ops(path)
    assert ops.count("QuantizeLinear") == ops.count("Clip") == ops.count("DequantizeLinear") == len(quantizers(qann))
    with torch.no_grad():
        ref = qann(x)
    assert torch.equal(_run(path, x), ref)                           # 1,000 images, every logit the same level
    assert torch.equal(_run(path, x[:7]), ref[:7])                   # any batch size
    assert read_metadata(path)["qann_form"] == "qcdq"


def test_the_snn_unrolled_over_t_gives_the_runtime_readout_on_1000_images(shipped, tmp_path):
    _, snn, x = shipped
    path = snn_to_onnx(snn, tmp_path / "snn.onnx", x, 8)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    got = _run(path, x)
    ref = snn(x, timesteps=8)
    assert got.shape == ref.shape == (8, 1000, 10)
    assert torch.allclose(got, ref, rtol=0, atol=1e-5)
    assert torch.equal(predict(got)[0], predict(ref)[0])   # the same prediction at every t
    meta = read_metadata(path)
    assert meta["timesteps"] == 8 and meta["input_window"] == 3 and meta["outputs"] == ["readout"]


def test_a_random_graph_with_residual_concat_and_pooling_exports_exactly(tmp_path):
    genome = Genome(in_channels=2, size=4, blocks=("residual", "concat", "maxpool", "affine"),
                    hidden=5, head_bn=True, bits=2, output_bits=3, seed=7)
    qann, x = build_qann(genome, dtype=torch.float32)
    x = torch.randn(33, *x.shape[1:]) * 1.5
    for form in ("float", "qcdq"):
        path = qann_to_onnx(qann, tmp_path / f"qann_{form}.onnx", x, form=form)
        with torch.no_grad():
            assert torch.equal(_run(path, x), qann(x)), form
    snn = convert(qann)
    path = snn_to_onnx(snn, tmp_path / "snn.onnx", x, 5, diagnostics=True)
    runner = OnnxSpikingNetwork(path)
    got = runner.simulate(x, 5, record=True, record_counts=True)
    ref = snn.simulate(x, 5, record=True, record_counts=True)
    for name in ref.readouts:
        assert torch.allclose(got.readouts[name], ref.readouts[name], rtol=0, atol=1e-5), name
        assert torch.equal(predict(got.readouts[name])[0], predict(ref.readouts[name])[0]), name
    assert torch.equal(got.convergence_step, ref.convergence_step) and torch.equal(got.converged, ref.converged)
    for a, b in zip(got.neurons, ref.neurons, strict=True):
        assert a.name == b.name and torch.equal(a.pos_spikes, b.pos_spikes) and torch.equal(a.neg_spikes, b.neg_spikes)
        assert torch.equal(a.counts, b.counts)
    for a, b in zip(got.synapses, ref.synapses, strict=True):
        assert a.macs == b.macs and torch.equal(a.synops, b.synops.double()) and torch.equal(a.events,
                                                                                             b.events.double())
    # fewer steps than exported: the first rows; more: refused
    assert torch.allclose(runner(x, 3), snn(x, timesteps=3), rtol=0, atol=1e-5)
    with pytest.raises(QffsError, match="unrolled over 5 steps"):
        runner(x, 6)


@pytest.fixture(scope="module")
def artifacts(shipped, tmp_path_factory):
    """The shipped QANN and SNN as artifact files (what qffs quantize and qffs convert write)."""
    from qffs.jobs.convert import convert_checkpoint

    qann, _, _ = shipped
    folder = tmp_path_factory.mktemp("export")
    save_checkpoint(folder / "qann.pt", qann.state_dict(), kind="qann", model=SPEC, dataset="fashion-mnist",
                    bits=2, output_bits=3)
    convert_checkpoint(folder / "qann.pt", folder / "snn.pt")
    return folder


def test_evaluate_with_onnxruntime_reports_the_torch_curve(cli, artifacts, tmp_path):
    runs = {}
    for backend in ("torch", "onnxruntime"):
        result = cli("evaluate", artifacts / "snn.pt", "-T", "4", "--limit", "151", "--batch-size", "64",
                     "--backend", backend, "--out-dir", tmp_path / backend)
        assert result.returncode == 0, result.stderr
        runs[backend] = json.loads((tmp_path / backend / "curve.json").read_text())
    a, b = runs["torch"], runs["onnxruntime"]
    assert b["backend"] == "onnxruntime" and b["samples"] == a["samples"] == 151
    assert "onnxruntime" in b["title"] and "onnxruntime" not in a["title"]   # the plot says which runtime made it
    for key in ("snn_accuracy_by_readout", "tied_by_readout", "qann_agreement", "convergence",
                "qann_accuracy", "latency_to_lossless_by_readout"):
        assert a[key] == b[key], key
    # per-layer spike statistics: float32 convolutions round differently in MLAS and oneDNN, so on
    # some CPUs a neuron in a million ends one level apart (docs/export.md); names and sizes are equal
    assert [(r["name"], r["neurons"]) for r in a["layers"]] == [(r["name"], r["neurons"]) for r in b["layers"]]
    for x, y in zip(a["layers"], b["layers"]):
        assert {k: v for k, v in x.items() if isinstance(v, float)} == pytest.approx(
            {k: v for k, v in y.items() if isinstance(v, float)}, rel=1e-4, abs=1e-5), x["name"]
    assert a["spikes_per_neuron_per_sample"] == pytest.approx(b["spikes_per_neuron_per_sample"], rel=1e-5)
    assert [s["synops_per_sample"] for s in a["synapses"]] == pytest.approx(
        [s["synops_per_sample"] for s in b["synapses"]], rel=1e-5)


def test_qffs_export_writes_and_checks_each_format(cli, artifacts, tmp_path):
    result = cli("export", artifacts / "snn.pt", "--out", tmp_path / "snn.onnx", "-T", "3")
    assert result.returncode == 0, result.stderr
    assert "0 of 120 values differ" in result.stdout and "predictions identical" in result.stdout
    check = json.loads((tmp_path / "snn.onnx.json").read_text())     # what qffs report shows beside the file
    assert check["check"]["differing_values"] == 0 and check["timesteps"] == 3 and check["environment"]["command"]
    result = cli("export", artifacts / "qann.pt", "--out", tmp_path / "qann.onnx")
    assert result.returncode == 0 and "QANN (quantizers as float)" in result.stdout, result.stderr
    assert "0 of 40 values differ" in result.stdout and "default session); onnx.reference: 0 differ" in result.stdout
    check = json.loads((tmp_path / "qann.onnx.json").read_text())
    assert check["check"]["reference"]["differing_values"] == 0 and check["check"]["session"] == "onnxruntime defaults"
    result = cli("export", artifacts / "qann.pt", "--out", tmp_path / "qcdq.onnx", "--qann-form", "qcdq")
    assert result.returncode == 0 and "QANN (quantizers as qcdq)" in result.stdout and "0 of 40" in result.stdout
    result = cli("export", artifacts / "snn.pt", "--out", tmp_path / "step.onnx", "--single-step", "-T", "3")
    assert result.returncode == 0, result.stderr
    assert "streamed over 3 steps" in result.stdout and "0 of 120 values differ" in result.stdout
    result = cli("export", artifacts / "snn.pt", "--to", "nir", "--out", tmp_path / "snn.nir")
    assert result.returncode == 0, result.stderr
    assert "weights and thresholds equal" in result.stdout


@pytest.mark.parametrize("args, message", [
    (("qann.pt", "--out", "{tmp}/q.onnx", "-T", "8"), "convert it first"),
    (("qann.pt", "--to", "nir", "--out", "{tmp}/q.nir"), "convert it first"),
    (("qann.pt", "--out", "{tmp}/q.onnx", "--single-step"), "convert it first"),
    (("snn.pt", "--to", "nir", "--out", "{tmp}/s.nir", "--single-step"), "is an ONNX form"),
    (("snn.pt", "--out", "{tmp}/s.pt"), "must end in .onnx"),
    (("snn.pt", "--to", "tflite", "--out", "{tmp}/s.onnx"), "--to must be one of"),
    (("snn.pt", "--out", "{tmp}/s.onnx", "-T", "0"), "--timesteps must be"),
    (("snn.pt", "--out", "{tmp}/s.onnx", "--input-shape", "1,x"), "--input-shape expects"),
    (("snn.pt", "--out", "{tmp}/s.onnx", "--qann-form", "float"), "--qann-form writes a QANN's quantizers"),
    (("qann.pt", "--out", "{tmp}/q.onnx", "--qann-form", "qdq"), "--qann-form must be one of float, qcdq"),
])
def test_export_mistakes_are_one_line_errors(cli, artifacts, tmp_path, args, message):
    args = [a.format(tmp=tmp_path) if "{tmp}" in a else (artifacts / a if a.endswith(".pt") and "/" not in a else a)
            for a in args]
    result = cli("export", *args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not list(tmp_path.iterdir())   # nothing written


def test_onnxruntime_backend_refuses_double(cli, artifacts, tmp_path):
    result = cli("evaluate", artifacts / "snn.pt", "--backend", "onnxruntime", "--double", "--out-dir", tmp_path / "r")
    assert result.returncode == 2 and "--double needs --backend torch" in result.stderr


def test_nir_round_trips_weights_thresholds_and_what_nir_cannot_state(shipped, tmp_path):
    nir = pytest.importorskip("nir")
    from qffs.export.nir import check_nir, to_nir

    _, snn, x = shipped
    path = to_nir(snn, tmp_path / "snn.nir", x)
    graph = nir.read(str(path))
    assert check_nir(snn, path)["equal"]
    for name, layer in snn.named_synapses():
        node = graph.nodes[name.replace(".", "_")]
        np.testing.assert_array_equal(node.weight, layer.layer.weight.detach().numpy())
    ifs = [n for n in graph.nodes.values() if isinstance(n, nir.IF)]
    assert len(ifs) == len(snn.named_neurons()) and all(np.all(n.r == 1) for n in ifs)
    info = graph.metadata["qffs"]
    assert int(info["input_window"]) == 3 and bool(info["precharge"]) and bool(info["negative_spikes"])
    notes = info["nodes"]
    pools = [k for k, v in notes.items() if v["op"] == "event_max_pool"]
    assert len(pools) == 2 and all(isinstance(graph.nodes[k], nir.SumPool2d) for k in pools)
    neuron = notes["output_quantizer"]
    assert int(neuron["z_max"]) == 7 and float(neuron["initial_membrane"]) == pytest.approx(
        float(snn.graph.output_quantizer.threshold) / 2)


def test_nir_refuses_what_it_cannot_state_by_name(tmp_path):
    pytest.importorskip("nir")
    from qffs.export.nir import to_nir

    genome = Genome(in_channels=2, size=4, blocks=("concat",), hidden=5, head_bn=False, bits=2, output_bits=3, seed=1)
    qann, x = build_qann(genome, dtype=torch.float32)
    with pytest.raises(UnsupportedGraphError, match="cannot export node .*cat.* to NIR"):
        to_nir(convert(qann), tmp_path / "x.nir", x)
    assert not (tmp_path / "x.nir").exists()


class _CeilPool(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.relu, self.fc = torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(torch.nn.functional.max_pool2d(self.relu(self.conv(x)), 2, ceil_mode=True).flatten(1))


def test_nir_refuses_a_functional_max_pool_with_ceil_mode(tmp_path):
    """NIR's pools have no ceil_mode: a window it would state wrongly is refused, not exported."""
    pytest.importorskip("nir")
    from qffs.export.nir import to_nir
    from qffs.quant import calibrate, quantize

    x = torch.randn(2, 1, 5, 5)
    qann = quantize(_CeilPool().eval(), bits=2, output_bits=3).eval()
    calibrate(qann, [x], method="lsq")
    with pytest.raises(UnsupportedGraphError, match="ceil_mode"):
        to_nir(convert(qann), tmp_path / "x.nir", x)


@pytest.mark.parametrize("output_bits", [3, None])
def test_the_single_step_graph_streams_the_same_readout(output_bits, tmp_path):
    from qffs.export.onnx import snn_step_to_onnx
    from qffs.export.unrolled import SingleStepSNN

    genome = Genome(in_channels=2, size=4, blocks=("residual", "maxpool"), hidden=5, head_bn=False, bits=2,
                    output_bits=output_bits, seed=3)
    qann, x = build_qann(genome, dtype=torch.float32)
    x = torch.randn(9, *x.shape[1:]) * 1.5
    snn = convert(qann)
    path = snn_step_to_onnx(snn, tmp_path / "step.onnx", x)
    meta = read_metadata(path)
    run = session(path)
    assert [i.name for i in run.get_inputs()][:2] == ["x", "in_window"]
    state = [t.numpy() for t in SingleStepSNN(snn).initial_state(x)]
    assert [s["name"] for s in meta["state"]] == [i.name for i in run.get_inputs()][2:]
    rows = []
    for t in range(7):
        window = np.array(1.0 if t < meta["input_window"] else 0.0, dtype=np.float32)
        readout, *state = run.run(None, {"x": x.numpy(), "in_window": window,
                                         **{s["name"]: v for s, v in zip(meta["state"], state)}})
        rows.append(torch.from_numpy(readout))
    got, ref = torch.stack(rows), snn(x, timesteps=7)
    assert torch.allclose(got, ref, rtol=0, atol=1e-5) and torch.equal(predict(got)[0], predict(ref)[0])


def test_a_graph_with_a_fixed_batch_size_is_a_one_line_error(tmp_path):
    class FixedBatch(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = torch.nn.Conv2d(1, 2, 3), torch.nn.Linear(32, 3)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).view(4, -1))   # the batch size written in

    qann = quantize(FixedBatch(), bits=2, output_bits=3)
    calibrate(qann, [torch.randn(4, 1, 6, 6)])
    with pytest.raises(QffsError, match=r"ONNX export failed: .*x\.flatten\(1\)"):
        qann_to_onnx(qann.eval(), tmp_path / "q.onnx", torch.randn(4, 1, 6, 6))
    assert not list(tmp_path.iterdir())


def test_an_analog_output_reports_through_onnxruntime(tmp_path):
    genome = Genome(in_channels=1, size=4, blocks=("maxpool",), hidden=5, head_bn=False, bits=2, output_bits=None,
                    seed=5)
    qann, x = build_qann(genome, dtype=torch.float32)
    x = torch.randn(12, *x.shape[1:]) * 1.5
    snn = convert(qann)
    got = OnnxSpikingNetwork(snn_to_onnx(snn, tmp_path / "a.onnx", x, 4, diagnostics=True)).simulate(x, 4)
    ref = snn.simulate(x, 4, record=True)
    for name in ref.readouts:
        assert torch.allclose(got.readouts[name], ref.readouts[name], rtol=0, atol=1e-5), name
    assert torch.equal(got.convergence_step, ref.convergence_step)
    assert [(a.name, a.pos_spikes.tolist()) for a in got.neurons] == [(b.name,
                                                                       b.pos_spikes.tolist()) for b in ref.neurons]
