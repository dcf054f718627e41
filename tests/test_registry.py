"""The op registry through the public API: a user registers an op and it goes through quantize →
convert → invariant E; a module state that cannot convert (BatchNorm without running
statistics) is refused at the quantize stage, naming the node, before any data is read."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from qffs.errors import QffsError, UnsupportedGraphError
from qffs.ops import OPS, OpKind, OpRecord, OpTable, check_graph
from qffs.quant import LSQActivation, calibrate, check_quantizable, quantize
from qffs.snn import IFNeuron, convert
from qffs.snn.handlers import HANDLERS
from tests.snn_graphs import quantizer_levels
from tests.test_cli import _one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")


class Shuffled(nn.Module):
    """conv → ReLU → PixelShuffle(2) → conv → ReLU → linear head: [B, 1, 4, 4] → [B, 3]."""

    def __init__(self, shuffle: nn.Module | None = None):
        super().__init__()
        self.conv1, self.relu1 = nn.Conv2d(1, 8, 3, padding=1), nn.ReLU()
        self.shuffle = shuffle or nn.PixelShuffle(2)
        self.conv2, self.relu2 = nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.ReLU()
        self.fc = nn.Linear(3 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(self.relu2(self.conv2(self.shuffle(self.relu1(self.conv1(x))))).flatten(1))


def _invariant_e(model: nn.Module, ops: OpTable) -> None:
    """quantize → calibrate → convert with ``ops``; run until quiet in float64: the SNN equals the QANN exactly."""
    torch.manual_seed(0)
    x = torch.randn(4, 1, 4, 4)
    qann = quantize(model.eval(), ops=ops)
    calibrate(qann, [x])
    snn = convert(qann.double(), ops=ops)
    qann, x = qann.double(), x.double()
    result = snn.simulate(x, 100, until_quiet=True, record_counts=True)
    assert result.converged.all()
    assert torch.equal(result.output[-1], qann(x))                    # invariant E, exactly
    counts = {r.name: r.counts for r in result.neurons}
    for name, level in quantizer_levels(qann, x).items():              # every IF layer = the QANN's levels
        assert torch.equal(counts[name], level), name


def test_a_registered_op_goes_through_quantize_convert_and_invariant_e():
    ops = OPS.with_op(OpRecord(nn.PixelShuffle, OpKind.LINEAR))
    _invariant_e(Shuffled(), ops)
    assert nn.PixelShuffle in ops and nn.PixelShuffle not in OPS      # the default table is unchanged
    for call in (lambda: quantize(Shuffled()), lambda: check_quantizable(Shuffled())):   # the default table refuses it
        with pytest.raises(UnsupportedGraphError, match=r"cannot quantize node 'shuffle' \(torch.nn.PixelShuffle at "):
            call()
    qann = quantize(Shuffled(), ops=ops)
    with pytest.raises(UnsupportedGraphError, match=r"cannot convert node 'shuffle' .*no spiking equivalent"):
        convert(qann)                                                  # the table quantize used is needed again


class Flip(nn.Module):
    """A module of the user's own: reverses the width (traced through, torch.flip is not in the table)."""

    def forward(self, x):
        return torch.flip(x, (3,))


def test_a_registered_module_class_of_ones_own_stays_one_node():
    with pytest.raises(UnsupportedGraphError, match="torch.flip"):
        quantize(Shuffled(shuffle=nn.Sequential(nn.PixelShuffle(2), Flip())),
                 ops=OPS.with_op(OpRecord(nn.PixelShuffle, OpKind.LINEAR)))
    ops = OPS.with_op(OpRecord(nn.PixelShuffle, OpKind.LINEAR), OpRecord(Flip, OpKind.LINEAR))
    _invariant_e(Shuffled(shuffle=nn.Sequential(nn.PixelShuffle(2), Flip())), ops)


def test_a_derived_table_is_a_layer_over_its_parent():
    base = OpTable([OpRecord(nn.ReLU, OpKind.RELU)])
    derived = base.with_op(OpRecord(nn.ReLU, OpKind.LINEAR), OpRecord("flip", OpKind.LINEAR))
    base.register(OpRecord(nn.PixelShuffle, OpKind.LINEAR))                 # registered later, into the parent
    assert derived.get(nn.PixelShuffle) is not None and derived.get(nn.ReLU).kind is OpKind.LINEAR
    assert base.get(nn.ReLU).kind is OpKind.RELU and "flip" not in base
    assert [r.target for r in derived] == [nn.ReLU, nn.PixelShuffle, "flip"]
    assert OPS.get(LSQActivation).kind is OpKind.QUANTIZER                   # qffs.quant registered itself
    assert OPS.module_record(nn.ReLU6()).target is nn.ReLU6                  # the most derived class wins


@pytest.mark.parametrize(("record", "fragment"), [
    (lambda: OpRecord(nn.ReLU, "sigmoid"), "kind must be one of"),
    (lambda: OpRecord(nn.ReLU, OpKind.IO), "kind must be one of"),
    (lambda: OpRecord(int, OpKind.LINEAR), "must be an nn.Module class"),
    (lambda: OpRecord(3, OpKind.LINEAR), "must be an nn.Module class"),
    (lambda: OpRecord(torch.flip, OpKind.RELU, bounds="low"), "bounds must be one of"),
    (lambda: OPS.with_op((nn.ReLU, OpKind.LINEAR)), "holds OpRecord entries"),
])
def test_a_malformed_record_is_a_one_line_error(record, fragment):
    with pytest.raises(QffsError, match=fragment):
        record()


def test_a_kind_is_a_string_too():
    record = OpRecord(nn.PixelShuffle, "linear")
    assert record.kind is OpKind.LINEAR and record.kind == "linear" and f"{record.kind}" == "linear"


# --- BatchNorm without running statistics ---------------------------------------------------------------
class Normed(nn.Module):
    def __init__(self, bn: nn.Module):
        super().__init__()
        self.conv, self.bn, self.relu, self.fc = nn.Conv2d(1, 4, 3, padding=1), bn, nn.ReLU(), nn.Linear(64, 3)

    def forward(self, x):
        return self.fc(self.relu(self.bn(self.conv(x))).flatten(1))


def _without_variance() -> nn.Module:
    bn = nn.BatchNorm2d(4)
    bn.running_var = None
    return bn


@pytest.mark.parametrize("bn", [lambda: nn.BatchNorm2d(4, track_running_stats=False), _without_variance])
def test_batchnorm_without_running_statistics_is_refused_at_quantize_naming_the_node(bn):
    model = Normed(bn())
    for call in (lambda: check_quantizable(model), lambda: quantize(model)):
        with pytest.raises(UnsupportedGraphError) as err:
            call()
        message = str(err.value)
        assert message.startswith("cannot quantize node 'bn' (torch.nn.BatchNorm2d at bn): BatchNorm without "
                                  "running statistics (track_running_stats=False)"), message
        assert "\n" not in message
    check_quantizable(Normed(nn.BatchNorm2d(4)))                     # with statistics: accepted, nothing returned
    with pytest.raises(UnsupportedGraphError, match=r"cannot convert node '_1' \(torch.nn.BatchNorm2d at 1\): "
                                                    "BatchNorm without running statistics"):
        convert(nn.Sequential(nn.Conv2d(1, 4, 3), bn(), LSQActivation(2)))   # a hand-made QANN: not an AssertionError


def test_the_record_check_is_what_refuses_it():
    ops = OPS.with_op(OpRecord(nn.BatchNorm2d, OpKind.BATCHNORM))     # the same op without its state check
    gm = torch.fx.symbolic_trace(Normed(nn.BatchNorm2d(4, track_running_stats=False)))
    check_graph(gm, "quantize", ops)
    with pytest.raises(UnsupportedGraphError, match="running statistics"):
        check_graph(gm, "quantize")


NORMED = '''
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4, track_running_stats=False)
        self.fc = nn.Linear(4 * 28 * 28, 10)

    def forward(self, x):
        return self.fc(self.norm(self.conv(x)).relu().flatten(1))
'''


def test_qffs_quantize_refuses_batchnorm_without_statistics_before_reading_data(cli, tmp_path):
    """The data root does not exist, so reading data first would fail differently."""
    model_file = tmp_path / "normed.py"
    model_file.write_text(NORMED)
    spec = importlib.util.spec_from_file_location("normed_net", model_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.save(module.Net().state_dict(), tmp_path / "net.pt")
    result = cli("quantize", tmp_path / "net.pt", "--model", f"{model_file}:Net", "--out", tmp_path / "q.pt",
                 "--dataset", "fashion-mnist", "--data-root", tmp_path / "no-data-here", "--epochs", "1")
    _one_line_error(result, "cannot quantize node 'norm' (torch.nn.BatchNorm2d at norm)", "track_running_stats=False")
    assert not (tmp_path / "q.pt").exists()


# --- convert's handlers and neuron map ------------------------------------------------------------------
class CountingIF(IFNeuron):
    kind = "IF (counted)"


def test_convert_takes_the_neuron_class_and_the_handlers():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 4, 4)
    qann = quantize(Normed(nn.BatchNorm2d(4)).eval())
    calibrate(qann, [x])
    snn = convert(qann, neuron_map={LSQActivation: CountingIF})
    assert all(type(m) is CountingIF for _, m in snn.named_neurons()) and snn.config["output"] == "spiking"
    with pytest.raises(UnsupportedGraphError, match=r"cannot convert node 'relu' .*no spiking neuron for the "
                                                    r"quantizer LSQActivation — pass neuron_map="):
        convert(qann, neuron_map={})
    weighted = {k: v for k, v in HANDLERS.items() if k is not OpKind.WEIGHTED}
    with pytest.raises(QffsError, match=r"no conversion handler for the op kind\(s\) weighted"):
        convert(qann, handlers=weighted)
    with pytest.raises(QffsError, match="handlers must be keyed by op kind"):
        convert(qann, handlers={**HANDLERS, "neuron": HANDLERS[OpKind.QUANTIZER]})
    plain = convert(qann, handlers={str(k): v for k, v in HANDLERS.items()})   # kinds by their names
    assert torch.equal(plain(x, 20), convert(qann)(x, 20))
