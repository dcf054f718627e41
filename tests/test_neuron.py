"""The IF neuron (SPEC §3) and event max pooling (SPEC §4) on hand-worked sequences."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qffs.snn.monitor import Monitor
from qffs.snn.neuron import IFNeuron
from qffs.snn.pooling import EventMaxPool, NaiveMaxPool
from qffs.snn.spiking import Clock

CLOCK = Clock(input_window=3, timesteps=1)


def feed(module, steps, form="step"):
    """Run ``module`` over the inputs ``steps`` from its initial state; returns (outputs, final state)."""
    state, outputs = None, []
    for t, x in enumerate(steps):
        y, state, _ = getattr(module, form)(x, state, CLOCK.at(t))
        outputs.append(y)
    return outputs, state


def run(inputs, *, theta=1.0, z_max=3, **kwargs):
    """Feed a scalar current sequence; return (spike sequence in units of θ, final count, membrane)."""
    n = IFNeuron(torch.tensor(theta, dtype=torch.float64), torch.tensor(theta / 3, dtype=torch.float64), z_max,
                 **kwargs)
    results = []
    for form in ("step", "transition"):     # the kernel form and the functional one agree
        outputs, (membrane, count) = feed(n, [torch.tensor([[i]], dtype=torch.float64) for i in inputs], form)
        results.append(([float(y) / theta for y in outputs], float(count), float(membrane)))
    assert results[0] == results[1]
    return results[0]


def test_precharge_rounds_to_nearest_and_no_precharge_floors():
    # Σ I = 0.6 θ: round → 1 spike, floor → 0
    assert run([0.6, 0, 0])[0] == [1, 0, 0]
    assert run([0.6, 0, 0], precharge=False)[0] == [0, 0, 0]
    # Σ I = 1.4 θ over three steps: round → 1, and Σ I = 1.6 θ: round → 2
    assert run([0.5, 0.5, 0.4, 0])[1] == 1
    assert run([0.6, 0.5, 0.5, 0, 0])[1] == 2
    assert run([0.6, 0.5, 0.5, 0, 0], precharge=False)[1] == 1


def test_z_max_clamps_and_one_spike_per_step():
    spikes, count, membrane = run([10.0, 0, 0, 0, 0], z_max=3)
    assert spikes == [1, 1, 1, 0, 0]          # one spike per step, never more than Z_max
    assert count == 3 and membrane == 10.5 - 3  # the excess stays in the membrane


def test_negative_spike_undoes_an_overshoot():
    spikes, count, membrane = run([1.0, -0.9, 0])
    assert spikes == [1, -1, 0] and count == 0 and membrane == 0.6  # round(0.1) = 0
    spikes, count, _ = run([1.0, -0.9, 0], negative_spikes=False)
    assert spikes == [1, 0, 0] and count == 1                        # the paper's occasional noise


def test_residual_of_exactly_zero_does_not_oscillate():
    # u = 0.5 + 0.5 = θ → spike, residual exactly 0; the paper's u ≤ 0 would then fire −1, +1, …
    spikes, count, membrane = run([0.5, 0, 0, 0, 0])
    assert spikes == [1, 0, 0, 0, 0] and count == 1 and membrane == 0.0


def test_no_negative_spike_without_positive_ones():
    spikes, count, membrane = run([-2.0, 0, 1.0])
    assert spikes == [0, 0, 0] and count == 0 and membrane == -0.5


def test_counts_bounded_and_spikes_unit_on_random_currents():
    torch.manual_seed(0)
    n = IFNeuron(torch.tensor(0.7), torch.tensor(0.7 / 3), 3)
    monitor = Monitor(4)
    state = None
    for t in range(50):
        y, state, events = n.step(torch.randn(4, 32), state, Clock(input_window=3, t=t, measure=True))
        monitor.observe("n", events)
        z = y / 0.7
        assert set(z.unique().tolist()) <= {-1.0, 0.0, 1.0}
        count = state[1]
        assert (count >= 0).all() and (count <= 3).all()
    assert monitor.pos_spikes["n"].sum() - monitor.neg_spikes["n"].sum() == count.sum()


def test_initial_state_is_precharged_and_state_is_the_callers():
    n = IFNeuron(torch.tensor(1.0), torch.tensor(1 / 3), 3)
    _, first = feed(n, [torch.ones(2, 3) * 5])
    _, fresh = feed(n, [torch.zeros(2, 3)])          # a new run from rest: nothing kept in the module
    membrane, count = fresh
    assert torch.equal(membrane, torch.full((2, 3), 0.5)) and count.sum() == 0
    assert first[1].sum() == 6


def test_event_max_pool_events_sum_to_maxpool_of_final_counts():
    torch.manual_seed(0)
    pool = EventMaxPool(lambda c: F.max_pool2d(c, 2))
    steps = [torch.randint(-1, 2, (2, 3, 4, 4)).double() for _ in range(12)]
    for form in ("step", "transition"):
        total = sum(feed(pool, steps, form)[0])
        assert torch.equal(total, F.max_pool2d(sum(steps), 2))


def test_event_max_pool_events_can_exceed_one_spike_and_be_negative():
    pool = EventMaxPool(lambda c: F.max_pool2d(c, 2))
    frame = lambda a, b: torch.tensor([[[[a, b], [0.0, 0.0]]]])  # noqa: E731
    outputs, _ = feed(pool, [frame(3.0, 0.0), frame(-2.0, 0.0), frame(0.0, 1.0)])
    assert outputs[0].item() == 3.0    # several spikes' worth at once
    assert outputs[1].item() == -2.0   # the maximum fell: a negative event
    assert outputs[2].item() == 0.0    # max(1, 1) unchanged


def test_naive_max_pool_overcounts():
    steps = [torch.tensor([[[[1.0, 0.0]]]]), torch.tensor([[[[0.0, 1.0]]]])]
    naive = NaiveMaxPool(lambda c: F.max_pool2d(c, (1, 2)))
    event = EventMaxPool(lambda c: F.max_pool2d(c, (1, 2)))
    assert sum(feed(naive, steps)[0]).item() == 2.0   # max of the counts is 1
    assert sum(feed(event, steps)[0]).item() == 1.0
