"""The engine's protocol: a neuron kind added by subclassing alone, and gradients through the functional form."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings

from qffs.errors import QffsError
from qffs.snn import convert
from qffs.snn.neuron import IFNeuron, SpikingNeuron
from qffs.snn.readout import READOUTS
from qffs.snn.spiking import Clock, Events
from qffs.snn.surrogate import Surrogate
from tests.snn_graphs import Genome, build_qann, genomes
from tests.test_invariant import assert_same

pytestmark = pytest.mark.usefixtures("one_thread")


class ClippedIF(SpikingNeuron):
    """A toy kind: IF without negative spikes and without pre-charge (it floors), written once."""

    kind = "clipped IF"

    def transition(self, x: torch.Tensor, state, clock: Clock):
        membrane, count = self.init_state(x) if state is None else state
        theta = self.threshold.to(x.dtype)
        u = membrane + x
        spikes = ((u >= theta) & (count < self.z_max)).to(x.dtype)
        out = spikes * theta
        return out, (u - out, count + spikes), Events(spikes=spikes)


def with_neuron(snn, kind):
    """``snn`` with every IF layer replaced by a ``kind`` of the same threshold, step size and Z_max."""
    for name, n in snn.named_neurons():
        parent, _, leaf = name.rpartition(".")
        setattr(snn.graph.get_submodule(parent) if parent else snn.graph, leaf,
                kind(n.threshold, n.step_size, n.z_max, is_output=n.is_output))
    snn.graph.recompile()
    return snn


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(genomes())
def test_a_neuron_added_by_subclassing_runs_in_all_three_forms_and_summarises(g):
    qann, x = build_qann(g)
    toy = with_neuron(convert(qann), ClippedIF)
    reference = convert(qann, negative_spikes=False, precharge=False)   # the same dynamics, as an ablation
    runs = {mode: toy.simulate(x, 60, until_quiet=True, record_counts=True, mode=mode)
            for mode in ("step", "layer", "functional")}
    for mode in ("layer", "functional"):
        assert_same(runs[mode], runs["step"], toy.output_neuron is not None)
    expected = reference.simulate(x, 60, until_quiet=True, record_counts=True)
    assert_same(runs["step"], expected, toy.output_neuron is not None)
    neurons = [row for row in toy.summary() if "threshold" in row]
    assert neurons and all(row["kind"] in ("clipped IF", "clipped IF output") for row in neurons)
    assert sorted(row["z_max"] for row in neurons) == sorted(n.z_max for _, n in reference.named_neurons())


def test_a_surrogate_gradient_flows_through_the_functional_form_and_leaves_the_spikes_exact():
    qann, x = build_qann(Genome(in_channels=1, size=4, blocks=("conv", "avgpool"), hidden=4, head_bn=False, bits=2,
                                output_bits=2, seed=3))
    snn = convert(qann).double()
    x = (x[:4].double() * 3).requires_grad_(True)
    exact = snn.simulate(x.detach(), 6, mode="functional")
    for surrogate in (Surrogate(), Surrogate("rectangular", mpr=3.0)):
        result = snn.simulate(x, 6, mode="functional", grad=True, record=False, surrogate=surrogate)
        for name in READOUTS:
            assert torch.equal(result.readouts[name].detach(), exact.readouts[name])   # spikes bit-identical
        grad, = torch.autograd.grad(result.readouts["current"].sum(), x)
        assert bool(torch.isfinite(grad).all()) and float(grad.abs().sum()) > 0


def test_the_exact_functional_form_equals_the_kernels_and_in_place_forms_refuse_gradients():
    qann, x = build_qann(Genome(in_channels=1, size=4, blocks=("conv", "maxpool"), hidden=None, head_bn=False,
                                bits=2, output_bits=2, seed=1))
    snn = convert(qann)
    exact = snn.simulate(x, 12, mode="functional", grad=True)
    assert torch.equal(exact.output, snn.simulate(x, 12).output)
    with pytest.raises(QffsError, match="mode='functional'"):
        snn.simulate(x, 4, grad=True)
    assert isinstance(snn.graph.get_submodule(snn.output_neuron), IFNeuron)



class _WithConstant(torch.nn.Module):
    """A hand-built QANN whose forward reads a tensor constant (a get_attr node in the graph)."""

    def __init__(self):
        super().__init__()
        from qffs.quant.lsq import LSQActivation

        torch.manual_seed(0)
        self.register_buffer("scale", torch.full((1, 1, 1, 1), 1.5))
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.act = LSQActivation(2, step=0.2)
        self.head = torch.nn.Linear(4 * 16, 5)
        self.out = LSQActivation(3, step=0.1, is_output=True)

    def forward(self, x):
        return self.out(self.head(self.act(self.conv(x * self.scale)).flatten(1)))


def test_a_network_moved_to_another_type_after_a_run_runs_in_that_type():
    qann = _WithConstant().eval()
    snn = convert(qann.double())
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    before = snn.simulate(x, 8).output
    assert before.dtype == torch.float64
    snn.float()                   # the engine's generated forms must follow the graph's constants
    after = snn.simulate(x.float(), 8).output
    assert after.dtype == torch.float32 and torch.equal(after.double().argmax(-1), before.argmax(-1))
