"""Invariant E (SPEC §3) on random graphs: run until quiet, the SNN equals the QANN exactly.

At least 500 generated graphs per run (400 with a spiking output, 100 analog), through the
real quantize → calibrate → convert path, in float64, each through the engine's three forms:
the layer-by-layer one is checked against invariant E, and it, the per-step reference (with
the fused kernels) and the functional form (no mutation, differentiable) must agree on every
spike count, statistic and convergence step (and on the membrane-based readouts to rounding).
The ablations (no negative spikes, no pre-charge, naive max pooling) are shown to break it on
the same generator.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from qffs.snn import convert
from tests.snn_graphs import build_qann, genomes, quantizer_levels

pytestmark = pytest.mark.usefixtures("one_thread")


SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
T_MAX = 200


def simulate_both(snn, x, timesteps: int = T_MAX):
    """The layer-by-layer result, after checking that the per-step reference and the functional
    form give the same one."""
    layer = snn.simulate(x, timesteps, until_quiet=True, record_counts=True, mode="layer")
    for mode in ("step", "functional"):
        other = snn.simulate(x, timesteps, until_quiet=True, record_counts=True, mode=mode)
        assert_same(layer, other, snn.output_neuron is not None)
    return layer


def assert_same(layer, step, spiking_output: bool) -> None:
    """Two runs agree on every count, statistic and convergence step (readouts from membranes: to rounding)."""
    assert layer.steps_run == step.steps_run
    if spiking_output:
        assert torch.equal(layer.output, step.output)      # spike counts: identical (analog: the currents)
    for name in step.readouts:   # membrane-based readouts: the currents may differ in the last bit (a matrix
        torch.testing.assert_close(layer.readouts[name], step.readouts[name], rtol=1e-12, atol=1e-12)  # product
        # of T·B rows need not round as B rows do)
    assert torch.equal(layer.convergence_step, step.convergence_step)
    assert torch.equal(layer.converged, step.converged)
    assert [r.name for r in layer.neurons] == [r.name for r in step.neurons]
    for a, b in zip(layer.neurons, step.neurons, strict=True):
        assert a.name == b.name and torch.equal(a.counts, b.counts), a.name
        assert torch.equal(a.pos_spikes, b.pos_spikes) and torch.equal(a.neg_spikes, b.neg_spikes), a.name
    assert [r.name for r in layer.synapses] == [r.name for r in step.synapses]
    for a, b in zip(layer.synapses, step.synapses, strict=True):
        assert torch.equal(a.synops, b.synops) and torch.equal(a.events, b.events), a.name
        assert torch.equal(a.active_slices, b.active_slices) and a.macs == b.macs, a.name


def _exact(g, **convert_kwargs) -> bool:
    """True when the converged SNN reproduces every QANN level and the QANN output."""
    qann, x = build_qann(g)
    snn = convert(qann, **convert_kwargs)
    result = snn.simulate(x, T_MAX, until_quiet=True, record_counts=True)
    if not bool(result.converged.all()):
        return False
    levels = quantizer_levels(qann, x)
    counts = {r.name: r.counts for r in result.neurons}
    same_levels = all(torch.equal(counts[name], level) for name, level in levels.items())
    return same_levels and torch.equal(result.output[-1], qann(x))


@settings(max_examples=400, **SETTINGS)
@given(genomes())
def test_invariant_e_spiking_output(g):
    qann, x = build_qann(g)
    snn = convert(qann)
    result = simulate_both(snn, x)
    assert result.converged.all(), f"not quiet after {T_MAX} steps"
    expected = qann(x)
    assert torch.equal(result.output[-1], expected)           # exactly, float64
    counts = {r.name: r.counts for r in result.neurons}
    for name, level in quantizer_levels(qann, x).items():      # every IF layer = QANN integer levels
        assert torch.equal(counts[name], level), name
    # the curve is final from each sample's convergence step on
    for b, step in enumerate(result.convergence_step.tolist()):
        assert torch.equal(result.output[step - 1, b], expected[b])


@settings(max_examples=100, **SETTINGS)
@given(genomes(output_bits=st.none()))
def test_invariant_e_analog_output(g):
    qann, x = build_qann(g)
    result = simulate_both(convert(qann), x)
    assert result.converged.all()
    # analog readout = Σ_t (W·z_t θ + b·[t<T_in]) / T_in: the same sum in another order, so equal
    # to float64 rounding, not bit for bit
    torch.testing.assert_close(result.output[-1], qann(x), rtol=1e-9, atol=1e-9)
    counts = {r.name: r.counts for r in result.neurons}
    for name, level in quantizer_levels(qann, x).items():
        assert torch.equal(counts[name], level), name


def test_without_negative_spikes_invariant_e_fails():
    """The paper's 'occasional noise': an overshoot that cannot be undone."""
    g = find(genomes(), lambda g: not _exact(g, negative_spikes=False), settings=settings(max_examples=300, **SETTINGS))
    assert not _exact(g, negative_spikes=False) and _exact(g)


def test_without_precharge_invariant_e_fails():
    g = find(genomes(), lambda g: not _exact(g, precharge=False), settings=settings(max_examples=300, **SETTINGS))
    assert not _exact(g, precharge=False) and _exact(g)


def test_naive_max_pooling_breaks_invariant_e():
    with_pool = genomes().filter(lambda g: any(b in g.blocks for b in ("maxpool", "fmaxpool", "maxpool_s1")))
    g = find(with_pool, lambda g: not _exact(g, max_pool="naive"), settings=settings(max_examples=300, **SETTINGS))
    assert not _exact(g, max_pool="naive") and _exact(g)
