"""Measures (qffs.measures): float64 sums with one reduction, and the typed evaluation report."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from qffs.evaluate import evaluate_snn
from qffs.measures import Classification, Measure, TrainingSums, reduce_measures
from qffs.metrics import predict
from qffs.quant import calibrate, quantize
from qffs.report import EvaluationReport, LayerActivity, SynapseActivity
from qffs.snn import convert

pytestmark = pytest.mark.usefixtures("one_thread")

#: The keys of ``evaluate_snn``'s report, in the order every curve.json has them.
REPORT_KEYS = ["timesteps", "readout", "snn_accuracy", "tied", "snn_accuracy_by_readout", "tied_by_readout", "samples",
               "qann_accuracy", "qann_prequantizer_accuracy", "qann_tied", "qann_agreement", "latency_to_lossless",
               "latency_to_lossless_by_readout", "convergence", "spikes_per_neuron_per_sample", "layers", "synapses",
               "synops_per_sample", "ann_macs_per_sample", "energy", "input_window", "conversion", "dtype",
               "world_size", "exit", "tradeoff", "convergence_histogram", "per_class", "probe"]


class Counter(Measure):
    def __init__(self):
        super().__init__()
        self.add_state("total")
        self.add_state("per_class", 3)


def test_a_measures_states_are_float64_sums_and_alone_nothing_reduces_them():
    m = Counter()
    assert m.state_names == ["total", "per_class"]
    assert all(s.dtype == torch.float64 for s in m.states())
    m.total += 2
    m.per_class += torch.tensor([1.0, 0.0, 5.0], dtype=torch.float64)
    reduce_measures(m, Counter())                          # no torchrun: the identity
    assert float(m.total) == 2.0 and m.per_class.tolist() == [1.0, 0.0, 5.0]


def test_classification_and_training_sums_give_per_sample_means():
    out = torch.tensor([[1.0, 3.0, 3.0], [2.0, 1.0, 0.0], [0.0, 0.0, 5.0], [0.0, 4.0, 0.0]])
    y = torch.tensor([1, 0, 1, 1])
    c = Classification()
    c.update(out[:2], y[:2])
    c.update(out[2:], y[2:])
    loss = float(nn.functional.cross_entropy(out, y, reduction="sum"))
    assert c.compute() == {"accuracy": 0.75, "loss": pytest.approx(loss / 4, rel=1e-6), "tied": 0.25, "samples": 4}
    t = TrainingSums()
    t.update(0.5, out[:2], y[:2])
    t.update(1.5, out[2:], y[2:])
    assert t.compute() == {"train_loss": 1.0, "train_accuracy": 0.75}


def _network():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.randn(45, 8, dtype=torch.float64)
    qann = quantize(model, bits=2, output_bits=3).double().eval()
    calibrate(qann, [x])
    y = qann(x).argmax(-1)
    y[::4] = (y[::4] + 1) % 4                              # some wrong labels: accuracy below 1
    return qann, TensorDataset(x, y)


def test_evaluate_snn_returns_a_typed_report_whose_dict_has_the_json_keys_in_order():
    qann, data = _network()
    snn = convert(qann)
    report = evaluate_snn(snn, DataLoader(data, batch_size=16), 6, qann=qann, dtype=torch.float64)
    assert isinstance(report, EvaluationReport)
    assert all(isinstance(r, LayerActivity) for r in report.layers) and report.layers
    assert all(isinstance(r, SynapseActivity) for r in report.synapses) and report.synapses
    d = report.to_dict()
    assert list(d) == REPORT_KEYS
    assert list(d["layers"][0]) == ["name", "neurons", "pos_spikes_per_neuron", "neg_spikes_per_neuron", "spike_rate",
                                    "mismatch_fraction"]
    assert list(d["synapses"][0]) == ["name", "macs", "synops_per_sample", "input_events_per_sample"]
    # the histogram and the per-class counts add up to the curve they were measured beside
    assert sum(report.convergence_histogram) + report.convergence["unconverged"] == report.samples
    per = report.per_class
    assert sum(per["samples"]) == report.samples and len(per["correct"]) == 6
    assert [sum(row) / report.samples for row in per["correct"]] == pytest.approx(report.snn_accuracy)
    assert sum(per["qann_correct"]) / report.samples == pytest.approx(report.qann_accuracy)
    json.dumps(d)                                          # plain data only
    assert d["snn_accuracy"] == d["snn_accuracy_by_readout"]["count"] and d["samples"] == 45
    x, y = data.tensors
    result = snn.double().simulate(x, 6, until_quiet=True)
    assert d["snn_accuracy"] == [float((predict(o)[0] == y).sum()) / 45 for o in result.readouts["count"]]
    assert d["qann_accuracy"] == float((predict(qann(x))[0] == y).sum()) / 45
    assert d["convergence"]["unconverged"] == int((~result.converged).sum())
    # sums over batches: any batching gives the same report
    whole = evaluate_snn(snn, DataLoader(data, batch_size=45), 6, qann=qann, dtype=torch.float64).to_dict()
    assert whole == d


def test_without_the_qann_its_fields_are_none():
    qann, data = _network()
    d = evaluate_snn(convert(qann), DataLoader(data, batch_size=16), 4, dtype=torch.float64).to_dict()
    assert list(d) == REPORT_KEYS
    assert [d[k] for k in ("qann_accuracy", "qann_prequantizer_accuracy", "qann_tied", "qann_agreement",
                           "latency_to_lossless")] == [None] * 5
    assert all(r["mismatch_fraction"] is None for r in d["layers"])
