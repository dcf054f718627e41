"""The three readouts of SPEC §5: hand-built output states, the integrated input, and convergence
to the QANN's pre-quantizer output on random graphs (float64)."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qffs.errors import QffsError
from qffs.metrics import predict
from qffs.snn import convert
from qffs.snn.network import MODES
from qffs.snn.readout import READOUTS, output_readout
from tests.snn_graphs import Genome, build_qann, genomes

pytestmark = pytest.mark.usefixtures("one_thread")

THETA, STEP, T_IN = torch.tensor(0.6), torch.tensor(0.2), 3


def _readout(name, counts, membrane, dtype=torch.float64):
    return output_readout(name, torch.tensor(counts, dtype=dtype), torch.tensor(membrane, dtype=dtype),
                          threshold=THETA, step_size=STEP, initial_membrane=THETA / 2, input_window=T_IN)


def test_a_tie_in_the_counts_is_broken_by_the_membrane():
    counts, membrane = [[2.0, 5.0, 5.0, 1.0]], [[0.5, 0.1, 0.4, 0.59]]
    assert predict(_readout("count", counts, membrane)) == (torch.tensor([1]), torch.tensor([True]))
    pred, tied = predict(_readout("tiebreak", counts, membrane))
    assert pred.item() == 2 and not tied.item()                 # equal counts: the fuller membrane wins
    assert torch.allclose(_readout("count", counts, membrane), torch.tensor(counts, dtype=torch.float64) * 0.2)


def test_the_count_always_decides_before_the_membrane():
    """Even a saturated neuron's huge membrane cannot lift it past a higher count (float32 too)."""
    for dtype in (torch.float32, torch.float64):
        counts, membrane = [[6.0, 7.0, 7.0]], [[1e30, -1e30, -5.0]]
        assert predict(_readout("tiebreak", counts, membrane, dtype))[0].item() == 2
        for level, gap in ((10, 1e-4), (1000, 1.0), (1e5, 0.1)):   # saturated outputs: u grows without bound
            pred, tied = predict(_readout("tiebreak", [[7.0, 7.0]], [[level * 0.6, (level + gap) * 0.6]], dtype))
            assert pred.item() == 1 and not tied.item()
        assert predict(_readout("tiebreak", [[7.0, 7.0, 3.0]], [[0.2, 0.2, 9.0]], dtype))[1].item()  # equal: a tie
        gen = torch.Generator().manual_seed(0)
        c = torch.randint(0, 8, (2000, 10), generator=gen).to(dtype)
        u = (torch.rand(2000, 10, generator=gen, dtype=torch.float64) * 40 - 20).to(dtype) * THETA.to(dtype)
        score = c.double() * 1e6 + u.double()   # lexicographic (count, membrane) in exact arithmetic
        expected = score.argmax(1)
        got = predict(output_readout("tiebreak", c, u, threshold=THETA, step_size=STEP,
                                     initial_membrane=THETA / 2, input_window=T_IN))[0]
        assert torch.equal(got, expected)


def test_current_is_the_integrated_input():
    # 3 spikes of θ emitted, membrane at 0.25 after starting at θ/2: integrated 3·0.6 + 0.25 − 0.3 = 1.75
    assert _readout("current", [[3.0]], [[0.25]]).item() == pytest.approx(1.75 / T_IN)


@settings(max_examples=60, deadline=None, database=None)
@given(genomes())
def test_current_readout_equals_the_current_the_output_layer_received(g):
    qann, x = build_qann(g)
    snn = convert(qann)
    neuron = snn.graph.get_submodule(snn.output_neuron)
    received: list[torch.Tensor] = []
    transition = neuron.transition

    def record(current, state, clock):   # the functional form runs every sample every step
        received.append(current)
        return transition(current, state, clock)

    neuron.transition = record           # an instance attribute: the engine's generated code calls it
    try:
        snn.simulate(x, 40, mode="functional", record=False)
    finally:
        del neuron.transition
    integrated = torch.cumsum(torch.stack(received), 0) / snn.input_window
    for mode in MODES:
        result = snn.simulate(x, 40, mode=mode)
        torch.testing.assert_close(result.readouts["current"], integrated, rtol=1e-9, atol=1e-9)


@settings(max_examples=150, deadline=None, database=None)
@given(genomes())
def test_once_quiet_current_is_the_qann_output_quantizer_input(g):
    qann, x = build_qann(g)
    before: list[torch.Tensor] = []
    hook = qann.output_quantizer.register_forward_hook(lambda m, args, out: before.append(args[0]))
    try:
        with torch.no_grad():
            expected = qann(x)
    finally:
        hook.remove()
    result = convert(qann).simulate(x, 200, until_quiet=True)
    assert result.converged.all()
    assert torch.equal(result.readouts["count"][-1], expected)          # invariant E, unchanged
    current = result.readouts["current"][-1]
    torch.testing.assert_close(current, before[0], rtol=1e-9, atol=1e-9)
    margin = before[0].topk(2, dim=1).values if before[0].shape[1] > 1 else None
    clear = margin is None or bool(((margin[:, 0] - margin[:, 1]) > 1e-9).all())
    if clear:   # no near-tie in the QANN's pre-quantizer output: identical predictions
        assert torch.equal(predict(current)[0], predict(before[0])[0])


@settings(max_examples=30, deadline=None, database=None)
@given(genomes(output_bits=st.none()))
def test_with_an_analog_output_the_three_readouts_coincide(g):
    qann, x = build_qann(g)
    result = convert(qann).simulate(x, 60, until_quiet=True)
    assert all(torch.equal(result.readouts[name], result.output) for name in READOUTS)


def test_public_call_takes_a_readout_and_refuses_an_unknown_one():
    qann, x = build_qann(Genome(in_channels=2, size=5, blocks=("conv_bn", "maxpool"), hidden=5, head_bn=True,
                                bits=2, output_bits=3, seed=1))
    snn = convert(qann)
    r = snn.simulate(x, 12)
    for name in READOUTS:
        assert torch.equal(snn(x, timesteps=12, readout=name), r.readouts[name])
    assert torch.equal(snn(x, timesteps=12), r.output)                  # the contract: count readout
    with pytest.raises(QffsError, match="unknown readout 'spikes': choose one of count, tiebreak, current"):
        snn(x, timesteps=4, readout="spikes")


def test_the_reference_is_the_input_of_whichever_quantizer_is_the_snn_output():
    """A QANN without an output quantizer whose last op is a ReLU quantizer: that one is the spiking output."""
    from torch import nn

    from qffs.probe import quantizer_levels
    from qffs.quant import calibrate, quantize

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 6), nn.ReLU()).eval()
    qann = quantize(model, output_bits=None).double().eval()
    x = torch.randn(32, 8, dtype=torch.float64)
    calibrate(qann, [x])
    snn = convert(qann)
    assert snn.config["output"] == "spiking"
    out, before, _ = quantizer_levels(qann, x, snn.output_neuron)
    assert not torch.equal(before, out)
    result = snn.simulate(x, 100, until_quiet=True)
    torch.testing.assert_close(result.readouts["current"][-1], before, rtol=1e-9, atol=1e-9)


def test_evaluate_reports_every_readout(cli, tmp_path):
    """quantize → convert → evaluate --readout tiebreak: headline, per-readout curves, CSV columns."""
    from tests.test_cli import SHIPPED

    q, s, out = tmp_path / "q.pt", tmp_path / "s.pt", tmp_path / "ev"
    assert cli("quantize", SHIPPED, "--out", q, "--epochs", "0", "--limit", "128", "--test-limit", "64").returncode == 0
    assert cli("convert", q, "--out", s).returncode == 0
    r = cli("evaluate", s, "-T", "10", "--limit", "64", "--readout", "tiebreak", "--out-dir", out)
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "curve.json").read_text())
    assert report["readout"] == "tiebreak"
    assert set(report["snn_accuracy_by_readout"]) == set(READOUTS) == set(report["tied_by_readout"])
    assert report["snn_accuracy"] == report["snn_accuracy_by_readout"]["tiebreak"]
    assert report["tied"] == report["tied_by_readout"]["tiebreak"]
    assert 0 <= report["qann_prequantizer_accuracy"] <= 1
    assert set(report["latency_to_lossless_by_readout"]) == set(READOUTS)
    header = (out / "curve.csv").read_text().splitlines()[0].split(",")
    assert {"snn_accuracy_count", "snn_accuracy_tiebreak", "snn_accuracy_current", "tied_count",
            "qann_prequantizer_accuracy"} <= set(header)
    assert "tiebreak* %" in r.stdout and "tied current %" in r.stdout and "before its output quantizer" in r.stdout
    bad = cli("evaluate", s, "--readout", "spikes", "--out-dir", tmp_path / "bad")
    assert bad.returncode == 2 and "unknown readout 'spikes'" in bad.stderr
    assert not (tmp_path / "bad").exists()
