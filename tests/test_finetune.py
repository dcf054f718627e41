"""SNN fine-tuning: the surrogate and MPR against hand values, spikes that stay exact, thresholds
that stay positive, and a fine-tuned artifact that reloads, evaluates and exports as it trained."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qffs.artifacts import load_own_tensors, load_snn
from qffs.data import load_dataset, make_loader
from qffs.errors import QffsError, UnsupportedGraphError
from qffs.export.nir import to_nir
from qffs.export.onnx import snn_step_to_onnx, snn_to_onnx
from qffs.export.runtime import session
from qffs.finetune import (
    FinetuneConfig,
    SpikingTrainee,
    hidden_neurons,
    plain_state,
    spiking_loss,
    threshold_table,
    trained_thresholds,
)
from qffs.io import save_checkpoint
from qffs.jobs.convert import convert_checkpoint
from qffs.jobs.finetune import finetune_snn
from qffs.jobs.options import DataOptions
from qffs.snn import convert
from qffs.snn.readout import READOUTS
from qffs.snn.surrogate import Surrogate, mpr
from qffs.train import TrainConfig
from tests.conftest import calibrated_shipped_qann
from tests.snn_graphs import Genome, build_qann, genomes

pytestmark = pytest.mark.usefixtures("one_thread")
SPEC = "vgg_small(num_classes=10, in_channels=1)"


def _grad(fn, u: float, theta: float) -> tuple[float, float]:
    u_, t_ = torch.tensor(u, dtype=torch.float64, requires_grad=True), torch.tensor(theta, dtype=torch.float64,
                                                                                    requires_grad=True)
    fn(u_, t_).backward()
    return float(u_.grad), float(t_.grad)


def test_the_surrogates_and_mpr_against_hand_values():
    theta = 0.5
    # sigmoid, α = 4: at the decision dσ(4v)/dv = 1, and v = u/(2θ) − ½ gives du: 1/(2θ) = 1, dθ: −u/(2θ²) = −1
    assert _grad(Surrogate().fire, theta, theta) == pytest.approx((1.0, -1.0))
    # the negative spike decides at 0: v = u/(2θ); its step falls as u rises
    assert _grad(Surrogate().unfire, 0.0, theta) == pytest.approx((-1.0, 0.0))
    # rectangular, a = 1: slope 1/a·1/(2θ) inside |v| < ½ (u in (0, 2θ)), 0 outside
    assert _grad(Surrogate("rectangular").fire, 0.8, theta)[0] == pytest.approx(1.0)
    assert _grad(Surrogate("rectangular").fire, 1.2, theta)[0] == 0.0
    assert _grad(Surrogate("rectangular", width=0.5).fire, 0.6, theta)[0] == pytest.approx(2.0)
    # MPR (Guo et al., Eq. 8) with k = 3: φ(0) = 0, φ(½) = ½, φ(1) = 1, φ'(½) = 1.657, φ'(0) = 0.300
    x = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64, requires_grad=True)
    assert mpr(x, 3.0).tolist() == pytest.approx([0.0, 0.5, 1.0])
    slope, = torch.autograd.grad(mpr(x, 3.0).sum(), x)
    assert slope.tolist() == pytest.approx([0.300, 1.657, 0.300], abs=1e-3)
    # the surrogate through MPR: the rectangle's slope times φ'(½) at the decision
    assert _grad(Surrogate("rectangular", mpr=3.0).fire, theta, theta)[0] == pytest.approx(1.657, abs=1e-3)


def test_the_surrogate_path_passes_gradcheck_and_its_forward_is_the_exact_step():
    u = torch.linspace(-1.5, 2.5, 81, dtype=torch.float64)
    theta = torch.tensor(0.7, dtype=torch.float64)
    for s in (Surrogate(), Surrogate("rectangular", mpr=3.0), Surrogate(width=2.0, mpr=1.0)):
        assert torch.equal(s.fire(u, theta), (u >= theta).double())
        assert torch.equal(s.unfire(u, theta), (u < 0).double())
        assert torch.equal(s.fire(theta.clone(), theta), torch.tensor(1.0, dtype=torch.float64))  # u = θ fires
        smooth = (u[:, None] + torch.rand(81, 3, dtype=torch.float64) * 0.01).requires_grad_(True)
        th = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
        if s.kind == "sigmoid":      # (the rectangle's kinks would trip finite differences)
            assert torch.autograd.gradcheck(lambda a, b, s=s: s.primitive(a / (2 * b) - 0.5), (smooth, th))
        got = torch.autograd.grad(s.fire(smooth, th).sum(), (smooth, th))
        want = torch.autograd.grad(s.primitive(smooth / (2 * th) - 0.5).sum(), (smooth, th))
        assert all(torch.allclose(g, w) for g, w in zip(got, want))


@settings(max_examples=10, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(genomes(), st.sampled_from([None, 1.0, 3.0, 7.0]), st.sampled_from(["sigmoid", "rectangular"]))
def test_surrogates_and_mpr_leave_every_spike_as_the_exact_neuron(g, k, kind):
    qann, x = build_qann(g)
    snn = convert(qann).double()
    x = x.double() * 2
    exact = snn.simulate(x, 8)
    trained = snn.simulate(x, 8, mode="functional", grad=True, surrogate=Surrogate(kind, mpr=k))
    for name in READOUTS:
        assert torch.allclose(trained.readouts[name].detach(), exact.readouts[name], rtol=0, atol=1e-9)
    for a, b in zip(trained.neurons, exact.neurons, strict=True):
        assert torch.equal(a.pos_spikes, b.pos_spikes) and torch.equal(a.neg_spikes, b.neg_spikes)


def test_thresholds_train_as_their_logarithm_and_stay_positive():
    qann, x = build_qann(Genome(in_channels=1, size=6, blocks=("conv", "maxpool"), hidden=8, head_bn=False, bits=2,
                                output_bits=3, seed=5))
    snn = convert(qann)
    before = threshold_table(snn)
    trainee = SpikingTrainee(snn, FinetuneConfig(3, "layer", "final"))
    trainee.train()
    params = [p for n, p in trainee.named_parameters() if n.endswith("threshold.original")]
    assert params and len(params) == len(before) - 1           # every hidden layer, not the output
    opt = torch.optim.SGD(params, lr=1e3)
    for _ in range(3):                                          # huge steps that would push θ below 0
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()
    assert all(v > 0 for v in threshold_table(snn).values())
    state = plain_state(trainee.state_dict(), snn.input_window)
    fresh = convert(qann)
    fresh.load_state_dict(state)                                # the trainee's state is the SNN's own
    assert threshold_table(fresh) == pytest.approx(threshold_table(snn))
    out = trainee(x)
    assert out.shape[-1] == 3 and spiking_loss(FinetuneConfig(3, loss="all-steps"))(out, torch.zeros(
        out.shape[0], dtype=torch.long)).requires_grad


@pytest.mark.parametrize("mode", ["step", "layer", "functional"])
def test_equal_per_step_thresholds_run_as_the_one_threshold(mode):
    qann, x = build_qann(Genome(in_channels=1, size=6, blocks=("conv", "maxpool"), hidden=8, head_bn=False, bits=2,
                                output_bits=3, seed=7))
    snn = convert(qann)
    exact = snn.simulate(x, 8, mode=mode)
    for m in hidden_neurons(snn):
        m.set_step_thresholds(m.threshold.repeat(3), snn.input_window)
    stepped = snn.simulate(x, 8, mode=mode)
    for name in READOUTS:
        assert torch.equal(stepped.readouts[name], exact.readouts[name])
    with pytest.raises(ValueError, match="positive"):
        hidden_neurons(snn)[0].set_step_thresholds(torch.tensor([0.5, -0.1]), snn.input_window)
    with pytest.raises(ValueError, match="may not fall"):        # a quiet sample would fire again
        hidden_neurons(snn)[0].set_step_thresholds(torch.tensor([0.5, 0.6, 0.7, 0.4]), 3)
    hidden_neurons(snn)[0].set_step_thresholds(torch.tensor([0.9, 0.4, 0.7, 0.8]), 3)   # falling in the window: fine


def test_per_step_thresholds_train_reload_and_export_unrolled_and_are_refused_where_a_step_is_unknown(tmp_path):
    qann, x = build_qann(Genome(in_channels=1, size=6, blocks=("conv", "maxpool"), hidden=8, head_bn=False, bits=2,
                                output_bits=3, seed=5))
    snn = convert(qann)
    trainee = SpikingTrainee(snn, FinetuneConfig(3, "step", "all-steps")).train()
    loss = spiking_loss(trainee.config)(trainee(x), torch.zeros(x.shape[0], dtype=torch.long))
    loss.backward()
    params = {n: p for n, p in trainee.named_parameters() if n.endswith("step_thresholds.original")}
    assert params and all(p.shape == (3,) and p.grad is not None for p in params.values())
    with torch.no_grad():
        for p in params.values():
            p += torch.tensor([0.3, -0.2, 0.1])                     # different thresholds, the third held up
    fresh = convert(qann)
    plain = plain_state(trainee.state_dict(), snn.input_window)
    load_own_tensors(fresh, plain, "trainee")
    assert trained_thresholds(plain) == threshold_table(fresh)
    ref = fresh.simulate(x, 6)
    for mode in ("layer", "functional"):                            # every form reads θ_t alike
        assert torch.allclose(fresh.simulate(x, 6, mode=mode).readouts["current"], ref.readouts["current"], atol=1e-6)
    path = snn_to_onnx(fresh, tmp_path / "nu.onnx", x, 6)
    got = torch.from_numpy(session(path).run(None, {"x": x.float().numpy()})[0])
    assert torch.allclose(got.double(), fresh(x, timesteps=6).double(), rtol=0, atol=1e-5)
    falling = SpikingTrainee(convert(qann), FinetuneConfig(6, "step"))
    with torch.no_grad():
        for n, p in falling.named_parameters():
            if n.endswith("step_thresholds.original"):
                p -= torch.linspace(0, 2, 6)                        # pushed down step after step
    for layer, theta in trained_thresholds(plain_state(falling.state_dict(), snn.input_window)).items():
        tail = torch.tensor(theta[snn.input_window - 1:]) if isinstance(theta, list) else None
        assert tail is None or bool((tail[1:] >= tail[:-1]).all()), layer   # held from T_in on
    with pytest.raises(UnsupportedGraphError, match="per-step thresholds"):
        snn_step_to_onnx(fresh, tmp_path / "step.onnx", x)
    with pytest.raises(UnsupportedGraphError, match="change from step to step"):
        to_nir(fresh, tmp_path / "nu.nir", x)


def test_finetune_options_are_refused_by_name():
    with pytest.raises(QffsError, match="--thresholds must be one of fixed, layer, step"):
        FinetuneConfig(4, "per-neuron")
    with pytest.raises(QffsError, match="--loss must be one of final, all-steps"):
        FinetuneConfig(4, loss="mse")
    with pytest.raises(QffsError, match="--mpr k must be positive"):
        Surrogate(mpr=-1.0)
    with pytest.raises(QffsError, match="unknown surrogate 'triangle'"):
        Surrogate("triangle")
    assert FinetuneConfig(4, "layer", surrogate=Surrogate(mpr=3)).method == "ATIF-u + MPR (k = 3)"


@pytest.fixture(scope="module")
def snn_artifact(tmp_path_factory):
    qann = calibrated_shipped_qann(256)
    folder = tmp_path_factory.mktemp("finetune")
    save_checkpoint(folder / "qann.pt", qann.state_dict(), kind="qann", model=SPEC, dataset="fashion-mnist",
                    bits=2, output_bits=3)
    convert_checkpoint(folder / "qann.pt", folder / "snn.pt")
    return folder


def _data() -> DataOptions:
    return DataOptions(dataset="fashion-mnist", limit=576, test_limit=128, batch_size=32, val_size=64)


def test_a_finetuned_snn_reloads_evaluates_and_exports_as_it_trained(snn_artifact, tmp_path):
    out = tmp_path / "ft.pt"
    result = finetune_snn(snn_artifact / "snn.pt", out, _data(), TrainConfig(epochs=2, lr=0.002),
                          FinetuneConfig(2, "layer", "all-steps", Surrogate(mpr=3.0)), device="cpu",
                          log=lambda *a: None)
    assert result["best_epoch"] >= 1 and result["finetuned_val_accuracy"] > result["converted_val_accuracy"]
    snn, _, meta = load_snn(out)
    assert meta["finetune"]["method"] == "ATIF-u + MPR (k = 3)"
    assert meta["metrics"]["best_epoch"] == result["best_epoch"]
    converted, _, _ = load_snn(snn_artifact / "snn.pt")
    assert threshold_table(snn) != threshold_table(converted)
    assert threshold_table(snn) == pytest.approx(meta["finetune"]["thresholds_after"])
    x, y = next(iter(make_loader(load_dataset("fashion-mnist", "test", limit=128), 128)))
    current = snn.simulate(x, 2, record=False).readouts["current"][-1]
    assert float((current.argmax(-1) == y).double().mean()) == pytest.approx(result["snn_accuracy"])
    path = snn_to_onnx(snn, tmp_path / "ft.onnx", x, 4)                 # the export equals the runtime at every t
    got = torch.from_numpy(session(path).run(None, {"x": x.numpy()})[0])
    assert torch.allclose(got, snn(x, timesteps=4), rtol=0, atol=1e-5)
    sidecar = json.loads(out.with_name(out.name + ".metrics.json").read_text())
    assert len(sidecar["history"]) == 2


def test_zero_epochs_give_back_the_converted_snn(snn_artifact, tmp_path):
    out = tmp_path / "ft0.pt"
    result = finetune_snn(snn_artifact / "snn.pt", out, _data(), TrainConfig(epochs=0),
                          FinetuneConfig(3), device="cpu", log=lambda *a: None)
    assert result["best_epoch"] == 0 and result["finetuned_val_accuracy"] == result["converted_val_accuracy"]
    snn, _, _ = load_snn(out)
    converted, _, _ = load_snn(snn_artifact / "snn.pt")
    x = torch.randn(16, 1, 28, 28)
    for name in READOUTS:
        assert torch.equal(snn.simulate(x, 8).readouts[name], converted.simulate(x, 8).readouts[name])
    assert not math.isnan(result["snn_accuracy"])


@pytest.mark.parametrize("surrogate", [Surrogate(), Surrogate("rectangular"), Surrogate(mpr=3.0),
                                       Surrogate("rectangular", width=0.7, mpr=5.0)])
def test_the_fused_spike_node_back_propagates_as_fire_and_unfire(surrogate):
    gen = torch.Generator().manual_seed(0)
    u = (torch.rand(200, generator=gen, dtype=torch.float64) * 3 - 1).requires_grad_(True)
    theta = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    count = torch.randint(0, 4, (200,), generator=gen).double()
    up, down = count < 3, count > 0
    fused = surrogate.spikes(u, theta, up, down)
    reference = surrogate.fire(u, theta) * up.double() - surrogate.unfire(u, theta) * down.double()
    assert torch.equal(fused, reference.detach())
    w = torch.rand(200, generator=gen, dtype=torch.float64)
    got = torch.autograd.grad((fused * w).sum(), (u, theta))
    want = torch.autograd.grad((reference * w).sum(), (u, theta))
    assert all(torch.allclose(g, h, rtol=1e-9, atol=1e-12) for g, h in zip(got, want))
