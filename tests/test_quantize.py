"""qffs.quantize (graph transform) and qffs.quant.calibrate (step initialisation)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import fx, nn

from qffs.errors import UnsupportedGraphError
from qffs.quant import LSQActivation, calibrate, quantize, quantizers
from qffs.quant.calibrate import FALLBACK_STEP, quantization_error


def _hidden(qann):
    return [(n, q) for n, q in quantizers(qann) if not q.is_output]


class AllReluForms(nn.Module):
    """F.relu, torch.relu, x.relu() and one inplace nn.ReLU called twice: 5 call sites."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        x = F.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        x = self.act(x + x)
        x = self.fc2(x).relu()
        return self.fc3(self.act(self.fc2(x) - x))   # no constants added: those are not convertible


# --- the transform ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def resnet_qann():
    return quantize(torchvision.models.resnet18(weights=None, num_classes=10))


def test_resnet18_every_relu_call_site_gets_its_own_quantizer(resnet_qann):
    names = [name for name, _ in quantizers(resnet_qann)]
    assert len(names) == 18  # stem + 2 per BasicBlock × 8 + output
    assert names[0] == "relu" and names[-1] == "output_quantizer"
    assert names[1:3] == ["layer1.0.relu", "layer1.0.relu_1"]
    hidden = _hidden(resnet_qann)
    assert len(hidden) == 17 and all(q.bits == 2 and q.levels == 3 for _, q in hidden)
    assert len({id(q.step) for _, q in quantizers(resnet_qann)}) == 18
    assert not any(isinstance(m, nn.ReLU) for m in resnet_qann.modules())
    calls = [n for n in resnet_qann.graph.nodes if n.op == "call_module"
             and isinstance(resnet_qann.get_submodule(n.target), LSQActivation)]
    assert len({n.target for n in calls}) == len(calls) == 18  # one call site each
    assert not any(n.op in ("call_function", "call_method") and "relu" in str(n.target)
                   for n in resnet_qann.graph.nodes)


def test_output_quantizer_is_last_with_3_bits(resnet_qann):
    name, out = quantizers(resnet_qann)[-1]
    assert out.is_output and out.bits == 3 and out.levels == 7
    output = next(n for n in resnet_qann.graph.nodes if n.op == "output")
    assert output.args[0].target == name


def test_all_relu_forms_become_five_distinct_quantizers():
    model = AllReluForms()
    qann = quantize(model, output_bits=None)
    named = quantizers(qann)
    assert [name for name, _ in named] == ["relu", "relu_1", "act", "relu_2", "act_1"]
    assert len({id(q.step) for _, q in named}) == 5
    assert len([k for k in qann.state_dict() if k.endswith(".step")]) == 5
    assert not any(q.is_output for _, q in named)
    assert not any(isinstance(m, nn.ReLU) for m in qann.modules())
    # with many fine levels the QANN reproduces the float model: the graph still means the same
    fine = quantize(model, bits=16, output_bits=None)
    for _, q in quantizers(fine):
        q.step.data.fill_(1e-4)
    x = torch.randn(16, 4)
    assert torch.allclose(fine(x), model(x), atol=1e-3)


def test_inplace_relu_whose_input_is_read_afterwards_is_functionalized():
    class Mutating(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            y = self.fc(x)
            y.relu_()  # result unused: later readers of y see the rectified tensor
            return y * 2

    model = Mutating()
    qann = quantize(model, bits=16, output_bits=None)
    (_, q), = quantizers(qann)
    q.step.data.fill_(1e-4)
    x = torch.randn(32, 3)
    assert (model(x) >= 0).all()
    assert torch.allclose(qann(x), model(x), atol=1e-3)


def test_functional_relu_inside_a_submodule_is_named_after_its_owner():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1)

        def forward(self, x):
            return F.relu(self.conv(x)) + F.relu(x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Block()
            self.head = nn.Linear(2, 2)

        def forward(self, x):
            return self.head(self.block(x).mean((2, 3)))

    names = [name for name, _ in quantizers(quantize(Net()))]
    assert names == ["block.relu", "block.relu_1", "output_quantizer"]


def test_output_quantizer_absent_for_analog_output():
    qann = quantize(torchvision.models.resnet18(weights=None, num_classes=10), output_bits=None)
    assert len(quantizers(qann)) == 17
    assert not any(q.is_output for _, q in quantizers(qann))


def test_quantize_is_deterministic():
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    keys = [list(quantize(model).state_dict()) for _ in range(2)]
    assert keys[0] == keys[1]
    # and a separately built copy of the same architecture gives the same names
    assert list(quantize(torchvision.models.resnet18(weights=None, num_classes=10)).state_dict()) == keys[0]


@pytest.mark.parametrize("training", [True, False])
def test_callers_model_untouched_and_mode_kept(training):
    model = AllReluForms().train(training)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules_before = [type(m) for m in model.modules()]
    qann = quantize(model)
    calibrate(qann, [torch.randn(8, 4)])
    assert qann.training is training and model.training is training
    assert [type(m) for m in model.modules()] == modules_before
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert isinstance(qann, fx.GraphModule) and not isinstance(model, fx.GraphModule)


def test_relu6_and_hardtanh_0_m_become_quantizers():
    class Capped(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)
            self.r6 = nn.ReLU6()
            self.ht = nn.Hardtanh(0.0, 4.0)

        def forward(self, x):
            return F.hardtanh(F.relu6(self.ht(self.r6(self.fc(x)))), 0.0, 2.0)

    names = [name for name, _ in quantizers(quantize(Capped(), output_bits=None))]
    assert names == ["r6", "ht", "relu", "relu_1"]


def test_quantizers_follow_model_dtype():
    qann = quantize(AllReluForms().double())
    assert all(q.step.dtype == torch.float64 for _, q in quantizers(qann))
    assert qann(torch.randn(2, 4, dtype=torch.float64)).dtype == torch.float64


def test_concrete_args_make_a_branching_model_traceable():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x, flip: bool = False):
            return self.fc(-x if flip else x).relu()

    qann = quantize(Branchy(), output_bits=None, concrete_args={"flip": True})
    assert len(quantizers(qann)) == 1


# --- refusals ------------------------------------------------------------------------------------
class _Head(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.features = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), act)

    def forward(self, x):
        return self.fc(self.features(x))


class _Functional(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.fn = fn

    def forward(self, x):
        return self.fc(self.fn(self.fc(x)))


@pytest.mark.parametrize(
    "model, node, op",
    [
        (_Head(nn.Sigmoid()), "features_3", "torch.nn.Sigmoid at features.3"),
        (_Head(nn.GELU()), "features_3", "torch.nn.GELU at features.3"),
        (_Head(nn.Softmax(dim=1)), "features_3", "torch.nn.Softmax at features.3"),
        (_Functional(F.gelu), "gelu", "torch.nn.functional.gelu"),
        (_Functional(torch.tanh), "tanh", "torch.tanh"),
        (_Functional(lambda x: F.softmax(x, dim=1)), "softmax", "torch.nn.functional.softmax"),
        (_Functional(lambda x: x.sigmoid()), "sigmoid", "Tensor.sigmoid()"),
        (_Functional(torch.exp), "exp", "torch.exp"),
        (_Functional(F.silu), "silu", "torch.nn.functional.silu"),
        (_Functional(lambda x: F.leaky_relu(x, 0.1)), "leaky_relu", "torch.nn.functional.leaky_relu"),
        (_Functional(lambda x: F.hardtanh(x, -1.0, 1.0)), "hardtanh", "torch.nn.functional.hardtanh"),
    ],
)
def test_unsupported_nonlinearity_is_refused_naming_node_and_op(model, node, op):
    with pytest.raises(UnsupportedGraphError) as err:
        quantize(model)
    message = str(err.value)
    assert f"node '{node}'" in message and f"({op}" in message, message
    assert "replace it by ReLU and fine-tune" in message
    assert "\n" not in message


def test_untraceable_model_is_refused_with_a_hint():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            if x.sum() > 0:
                return self.fc(x)
            return -x

    with pytest.raises(UnsupportedGraphError) as err:
        quantize(DataDependent())
    message = str(err.value)
    assert "DataDependent" in message and "control flow" in message and "concrete_args" in message
    assert "\n" not in message


def test_tuple_output_is_refused_with_or_without_an_output_quantizer():
    """Neither a QANN nor an SNN can return two tensors: refused before any training either way."""
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            y = self.fc(x).relu()
            return y, y

    for output_bits in (3, None):
        with pytest.raises(UnsupportedGraphError, match="must return a single tensor .*not a tuple"):
            quantize(TwoHeads(), output_bits=output_bits)


def test_bad_bits_are_rejected():
    with pytest.raises(ValueError):
        quantize(AllReluForms(), bits=0)
    with pytest.raises(ValueError):
        quantize(AllReluForms(), output_bits=1.5)


# --- forward values and calibration --------------------------------------------------------------
def test_qann_output_is_multiples_of_the_output_step_in_range(resnet_qann):
    batches = [torch.randn(4, 3, 32, 32) for _ in range(2)]
    steps = calibrate(resnet_qann, batches)
    _, out_q = quantizers(resnet_qann)[-1]
    s = out_q.step_size().item()
    with torch.no_grad():
        logits = resnet_qann(batches[0])
    levels = logits / s
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    assert logits.min() >= 0 and logits.max() <= 7 * s + 1e-6
    assert steps["output_quantizer"] == pytest.approx(s)
    # hidden activations are quantized too: each quantizer's output has at most Q + 1 values
    seen = {}
    hooks = [q.register_forward_hook(lambda m, a, o, n=n: seen.__setitem__(n, o)) for n, q in _hidden(resnet_qann)]
    with torch.no_grad():
        resnet_qann(batches[0])
    for h in hooks:
        h.remove()
    assert all(o.unique().numel() <= 4 for o in seen.values())


@pytest.mark.parametrize("method", ["lsq", "mse"])
def test_calibrate_gives_positive_steps_in_graph_order_and_restores_modes(method):
    model = AllReluForms()
    qann = quantize(model).train()
    qann.fc1.eval()
    steps = calibrate(qann, [(torch.randn(16, 4), torch.zeros(16)) for _ in range(3)], method=method)
    assert list(steps) == [name for name, _ in quantizers(qann)]
    assert all(s > 0 for s in steps.values())
    assert all(s != 1.0 for s in steps.values())  # every step was actually fitted
    assert qann.training and not qann.fc1.training and qann.fc2.training


def test_mse_calibration_has_lower_error_than_lsq_rule_on_gaussian_input():
    qann = quantize(nn.Sequential(nn.ReLU()), output_bits=None)
    (_, q), = quantizers(qann)
    batches = [torch.randn(256, 64) for _ in range(4)]
    x = torch.cat(batches)
    errors = {}
    for method in ("lsq", "mse"):
        calibrate(qann, batches, method=method)
        errors[method] = quantization_error(x, q.step_size().detach(), q.levels).item()
    assert errors["mse"] < 0.9 * errors["lsq"], errors
    # and the MSE step is the best of a dense sweep, up to the sweep's resolution
    sweep = torch.linspace(0.05, 2.0, 400)
    assert errors["mse"] <= quantization_error(x, sweep, q.levels).min().item() * 1.001


def test_calibrate_all_zero_input_falls_back_to_a_positive_step():
    qann = quantize(nn.Sequential(nn.ReLU()), output_bits=None)
    for method in ("lsq", "mse"):
        steps = calibrate(qann, [torch.zeros(4, 8)], method=method)
        assert steps == {"0": pytest.approx(FALLBACK_STEP)}
    # all-negative input: outputs are 0 whatever s is; the step still comes out positive
    assert calibrate(qann, [-torch.rand(4, 8) - 0.1], method="mse")["0"] > 0


def test_sequential_calibration_sees_quantized_upstream():
    qann = quantize(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU()), output_bits=None)
    batches = [torch.randn(64, 8)]
    steps = calibrate(qann, batches, method="lsq")
    # the second quantizer's step is LSQ's rule on the input produced with the FIRST one calibrated
    with torch.no_grad():
        upstream = qann.get_submodule("2")(qann.get_submodule("1")(qann.get_submodule("0")(batches[0])))
    expected = 2 * upstream.abs().mean().item() / 3**0.5
    assert steps["3"] == pytest.approx(expected, rel=1e-5)


def test_calibrate_rejects_unknown_method_and_no_batches():
    qann = quantize(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match="unknown calibration method"):
        calibrate(qann, [torch.randn(2, 2)], method="max")
    with pytest.raises(ValueError, match="at least one batch"):
        calibrate(qann, [])


def test_concrete_args_keep_an_inplace_relu_whose_result_is_unused():
    """Baking in a fixed argument removes only its guards, not other unused-looking nodes."""
    class Flagged(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.relu, self.fc = nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.Linear(4, 2)

        def forward(self, x, flag: bool = True):
            out = self.conv(x)
            self.relu(out)              # in place: later readers of out see the rectified tensor
            if flag:
                out = out * 2.0
            return self.fc(out.mean((2, 3)))

    qann = quantize(Flagged(), output_bits=None, concrete_args={"flag": True})
    assert [name for name, _ in quantizers(qann)] == ["relu"]
    assert [n.name for n in qann.graph.nodes if n.op == "placeholder"] == ["x"]
