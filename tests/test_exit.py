"""Per-sample early exit: quiet is the QANN exactly, a confidence exit freezes the answer, one run
gives every threshold's outcome, and exited samples are no longer simulated."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from qffs.errors import QffsError
from qffs.evaluate import evaluate_snn
from qffs.exit_tradeoff import TEMPERATURES, THRESHOLDS, ExitTradeoff, choose_threshold, pareto
from qffs.metrics import predict
from qffs.snn import convert
from qffs.snn.exits import (
    ConfidenceRule,
    ExitPolicy,
    answer_steps,
    confidence_steps,
    exit_latency,
    exit_predictions,
    parse_exit,
    quiet_seen_at,
    with_deadline,
)
from qffs.snn.readout import READOUTS
from tests.snn_graphs import Genome, build_qann, genomes

pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = settings(max_examples=15, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def _batch(x: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((n, *x.shape[1:]), generator=gen, dtype=x.dtype) * 1.5


@SETTINGS
@given(genomes())
def test_quiet_answers_exactly_as_the_qann(g):
    qann, x = build_qann(g)
    x = _batch(x, 16, g.seed)
    result = convert(qann).simulate(x, 60, until_quiet=True)
    assert bool(result.converged.all())
    answers = exit_predictions(result.readouts["count"], result.latency())
    assert torch.equal(answers, predict(qann(x))[0])
    assert bool((result.latency() == result.convergence_step).all())


@SETTINGS
@given(genomes(), st.sampled_from(READOUTS), st.sampled_from([0.02, 0.2, 1.0]), st.sampled_from([0.5, 0.8, 0.95]),
       st.sampled_from([None, 1, 3, 7]))
def test_a_confidence_exit_freezes_the_answer_and_equals_the_exit_found_after_a_full_run(g, readout, tau, p, deadline):
    qann, x = build_qann(g)
    snn, x, T = convert(qann), _batch(x, 24, g.seed), 20
    rule = ConfidenceRule(p, tau, readout, deadline)
    dropped = snn.simulate(x, T, until_quiet=True, exit_rule=rule)
    found = snn.simulate(x, T, until_quiet=True, exit_rule=rule, mode="layer")   # nothing can leave: found after
    full = snn.simulate(x, T, until_quiet=True)
    assert torch.equal(dropped.exit_step, found.exit_step) and torch.equal(dropped.latency(), found.latency())
    for name in READOUTS:
        assert torch.allclose(dropped.readouts[name], found.readouts[name], rtol=0, atol=1e-9)
    for b in dropped.exit_step.nonzero().flatten().tolist():      # never an answer after the exit step
        e = int(dropped.exit_step[b])
        for values in dropped.readouts.values():
            assert bool((values[e - 1:, b] == values[e - 1, b]).all())
    assert int(dropped.latency().max()) <= (deadline or T)          # nobody answers after the deadline
    settled = (full.convergence_step, full.converged, T, full.input_window)
    confident = with_deadline(confidence_steps(full.readouts[readout], p, tau), deadline)
    assert torch.equal(exit_latency(confident, *settled), dropped.latency())
    answers = exit_predictions(full.readouts[readout], answer_steps(confident, *settled))
    assert torch.equal(answers, predict(dropped.readouts[readout][-1])[0])


def test_exited_samples_are_no_longer_simulated():
    qann, x = build_qann(Genome(in_channels=1, size=6, blocks=("conv", "maxpool"), hidden=8, head_bn=False,
                                bits=2, output_bits=3, seed=5))
    snn, x, T = convert(qann), _batch(x, 64, 5), 12
    rows_in: list[int] = []
    engine = snn.engine
    form = engine.form

    def counted(name: str):                       # the rows each step's call of the graph receives
        step = form(name)
        return lambda inputs, *rest: (rows_in.append(inputs.shape[0]), step(inputs, *rest))[1]

    engine.form = counted
    full = snn.simulate(x, T, until_quiet=True)
    rows_in.clear()
    exited = snn.simulate(x, T, until_quiet=True, exit_rule=ConfidenceRule(0.4, 0.05))
    exits = exited.exit_step
    assert int((exits > 0).sum()) > 10                               # the rule does exit samples here
    seen = quiet_seen_at(full.convergence_step, full.converged, full.input_window, T)
    steps = torch.arange(exited.steps_run).unsqueeze(1)
    expected = ((steps < seen) & ((exits == 0) | (steps < exits))).sum(1).tolist()
    assert exited.rows_simulated == expected == rows_in              # the counter is what the layers saw
    assert sum(exited.rows_simulated) < sum(full.rows_simulated)
    rows_in.clear()
    due = snn.simulate(x, T, until_quiet=True, exit_rule=ConfidenceRule(0.999, 0.05, deadline=3))
    assert due.rows_simulated == rows_in and len(due.rows_simulated) == 3   # nothing is simulated after the deadline
    assert int(due.latency().max()) == 3 and bool((due.exit_step <= 3).all())


def _loader(n: int, g: Genome, x: torch.Tensor, batch: int) -> DataLoader:
    data = _batch(x, n, g.seed + 1)
    labels = torch.randint(0, 4, (n,), generator=torch.Generator().manual_seed(g.seed))
    return DataLoader(TensorDataset(data, labels), batch_size=batch)


def test_one_run_gives_the_outcome_of_separate_runs_at_each_threshold_and_deadline():
    g = Genome(in_channels=1, size=6, blocks=("conv", "maxpool"), hidden=8, head_bn=False, bits=2, output_bits=3,
               seed=2)
    qann, x = build_qann(g)
    snn, loader, T, tau = convert(qann), _loader(96, g, x, 32), 12, 0.1
    thresholds = (0.5, 0.9)
    one = evaluate_snn(snn, loader, T, qann=qann, dtype=torch.float64,
                       tradeoffs=(ExitTradeoff(T, "count", temperatures=(tau,), thresholds=thresholds),))
    rows = {(r["threshold"], r["deadline"]): r for r in one.tradeoff["count"]["rows"]}
    assert len(rows) == len(thresholds) * T
    for p in thresholds:
        for deadline in (2, 4, T):
            alone = evaluate_snn(snn, loader, T, qann=qann, dtype=torch.float64,
                                 exit=ExitPolicy("confidence", p, tau, deadline=deadline)).exit
            row = rows[p, deadline]
            assert row["accuracy"] == alone["accuracy"] and row["mean_latency"] == pytest.approx(alone["mean_latency"])
            assert (row["p50_latency"], row["p99_latency"]) == (alone["p50_latency"], alone["p99_latency"])
            assert row["p99_latency"] <= deadline
    assert rows[0.5, T]["mean_latency"] <= rows[0.9, T]["mean_latency"]   # a higher threshold never answers sooner
    assert rows[0.9, 4]["mean_latency"] <= rows[0.9, T]["mean_latency"]   # nor a later deadline
    with pytest.raises(QffsError, match="deadline 13 is past --timesteps 12"):
        evaluate_snn(snn, loader, T, exit=ExitPolicy("confidence", 0.9, tau, deadline=13))
    quiet = evaluate_snn(snn, loader, T, qann=qann, dtype=torch.float64, exit=ExitPolicy("quiet")).exit
    assert quiet["accuracy"] == one.qann_accuracy and quiet["mean_latency"] == pytest.approx(one.convergence["mean"])


def test_the_temperature_of_least_nll_is_fitted_and_the_choice_keeps_the_tolerance():
    g = Genome(in_channels=1, size=6, blocks=("conv",), hidden=8, head_bn=False, bits=2, output_bits=3, seed=4)
    qann, x = build_qann(g)
    loader = _loader(64, g, x, 64)
    report = evaluate_snn(convert(qann), loader, 10, qann=qann, dtype=torch.float64,
                          tradeoffs=(ExitTradeoff(10, "current"),))
    trade = report.tradeoff["current"]
    _, y = next(iter(loader))
    current = convert(qann).simulate(next(iter(loader))[0], 10, until_quiet=True).readouts["current"]

    def nll(tau: float) -> float:
        return float(-torch.log_softmax(current / tau, -1).gather(-1, y.view(1, -1, 1).expand(10, -1, 1)).mean())

    assert nll(trade["temperature"]) == pytest.approx(trade["nll_per_step"])
    assert all(nll(trade["temperature"]) <= nll(t) + 1e-12 for t in (0.01, 0.1, 1.0, 10.0))
    choice = choose_threshold(trade, reference=0.5, tolerance=0.05)
    good = [r for r in trade["rows"] if r["accuracy"] >= 0.45]
    if good:
        assert choice.row["mean_latency"] == min(r["mean_latency"] for r in good)
    else:
        assert choice.threshold is None
    front = pareto(trade["rows"])
    assert all(a["mean_latency"] <= b["mean_latency"] and a["accuracy"] < b["accuracy"]
               for a, b in zip(front, front[1:]))


@pytest.mark.parametrize(("text", "fragment"), [
    ("soon", "unknown exit policy 'soon'"),
    ("confidence:1.5", "0 < P ≤ 1"),
    ("confidence:x", "P and TAU numbers"),
    ("confidence:0.9@-1", "temperature must be positive"),
    ("quiet:3", "only confidence takes a value"),
    ("confidence:0.9@1,deadline=0", "deadline must be a step ≥ 1"),
    ("confidence:0.9@1,deadline=soon", "expected confidence:P"),
    ("confidence:0.9@1,current,count", "expected confidence:P"),
    ("confidence:0.9,deadline=3,deadline=4", "expected confidence:P"),
])
def test_bad_exit_policies_are_refused_by_name(text, fragment):
    with pytest.raises(QffsError, match=fragment.replace("(", r"\(")):
        parse_exit(text)


def test_exit_policies_parse_and_need_their_temperature():
    assert parse_exit("confidence:0.9@2") == ExitPolicy("confidence", 0.9, 2.0)
    assert parse_exit("confidence:0.9, deadline=5 ,count") == ExitPolicy("confidence", 0.9, None, "count", 5)
    for p in THRESHOLDS:                              # an auto choice is given again exactly as reported
        for tau, deadline in zip(TEMPERATURES[::8], (None, 1, 4, 16, None, 9)):
            chosen = ExitPolicy("confidence", p, tau, "current", deadline)
            assert parse_exit(chosen.label()) == chosen
    with pytest.raises(QffsError, match="unknown readout 'spikes'"):
        parse_exit("confidence:0.9@1,spikes")
    assert parse_exit("auto").needs_validation and parse_exit("confidence:0.9").needs_validation
    assert not parse_exit("confidence:0.9@2").needs_validation and parse_exit("quiet").rule() is None
    with pytest.raises(QffsError, match="needs its temperature"):
        parse_exit("confidence:0.9").rule()
