"""``qffs evaluate --exit``: an exit policy completed on the validation split, measured on the test set once.

``auto`` and ``confidence:P`` fit the softmax temperature on the validation split (one
simulation without exit, whose every confidence exit :class:`~qffs.exit_tradeoff.ExitTradeoff`
measures); ``auto`` then takes, over the three readouts, the threshold and deadline of least mean latency
whose validation accuracy is within the tolerance of the QANN's on the same images (none: the
exact ``quiet`` policy). The
test set is simulated twice, in the same process: at the fixed T (the usual report, and the
trade-off at the fitted temperature, for reading) and with the exit (what it answers, and what
it cost), so the time saved is measured, not estimated.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from qffs.distributed import main_only
from qffs.errors import QffsError
from qffs.exit_tradeoff import ExitTradeoff, choose_threshold, pareto
from qffs.snn.exits import ExitPolicy
from qffs.snn.readout import READOUTS

#: ``--exit-tolerance``'s default: the exit may cost at most 0.1 pp of validation accuracy.
EXIT_TOLERANCE = 0.001

Simulate = Callable[..., dict[str, Any]]   # (loader, exit=, tradeoffs=) → an evaluate_snn report dict


def check_tolerance(tolerance: float) -> float:
    """``--exit-tolerance``: a fraction of accuracy in [0, 1)."""
    if not 0.0 <= tolerance < 1.0:
        raise QffsError(f"--exit-tolerance must be a fraction in [0, 1) (0.001 = 0.1 pp), got {tolerance!r}")
    return tolerance


def complete_on_validation(policy: ExitPolicy, simulate: Simulate, validation: Any, timesteps: int, readout: str,
                           tolerance: float) -> tuple[ExitPolicy, dict[str, Any]]:
    """``policy`` with its temperature (and for ``auto`` its threshold and readout, among all three)
    chosen on ``validation``; and what the choice saw there."""
    main_only(print)(f"choosing the exit on the validation split ({len(validation.dataset):,} images) ...", flush=True)
    own = policy.readout or readout                 # the readout a given confidence:P is taken of
    readouts = READOUTS if policy.kind == "auto" else (own,)
    report = simulate(validation, tradeoffs=tuple(ExitTradeoff(timesteps, r) for r in readouts))
    reference = report["qann_accuracy"]
    seen: dict[str, Any] = {"samples": report["samples"], "qann_accuracy": reference, "tolerance": tolerance,
                            "tradeoff": {r: {**t, "pareto": pareto(t["rows"])} for r, t in report["tradeoff"].items()}}
    if policy.kind == "confidence":
        chosen = ExitPolicy("confidence", policy.threshold, report["tradeoff"][own]["temperature"],
                            policy.readout, policy.deadline)
    else:
        if reference is None:
            raise QffsError("--exit auto compares with the QANN: this SNN artifact carries none")
        choices = {r: choose_threshold(t, reference, tolerance) for r, t in report["tradeoff"].items()}
        good = {r: c for r, c in choices.items() if c.row is not None}
        if not good:
            chosen = ExitPolicy("quiet")
        else:
            best = min(good, key=lambda r: (good[r].row["mean_latency"], -good[r].row["accuracy"]))  # type: ignore
            deadline = good[best].deadline
            chosen = ExitPolicy("confidence", good[best].threshold, report["tradeoff"][best]["temperature"],
                                None if best == readout else best, None if deadline == timesteps else deadline)
            seen["chosen"] = {"readout": best, **(good[best].row or {})}
    seen["policy"] = chosen.label()
    return chosen, seen


def evaluate_with_exit(policy: ExitPolicy, simulate: Simulate, test: Any, validation: Callable[[], Any],
                       timesteps: int, readout: str, tolerance: float) -> dict[str, Any]:
    """The fixed-T report of ``test`` with an ``"exit"`` section: the policy as chosen (on
    ``validation()`` where it needs it), its test outcome and both runs' seconds."""
    requested, seen = policy, None
    if policy.needs_validation:
        policy, seen = complete_on_validation(policy, simulate, validation(), timesteps, readout, tolerance)
    tradeoffs = () if policy.temperature is None else (
        ExitTradeoff(timesteps, policy.readout or readout, temperatures=(policy.temperature,)),)
    started = time.perf_counter()
    report = simulate(test, tradeoffs=tradeoffs)
    fixed = time.perf_counter() - started
    started = time.perf_counter()
    outcome = simulate(test, exit=policy)["exit"]
    exited = time.perf_counter() - started
    test_tradeoff = (report.pop("tradeoff") or {}).get(policy.readout or readout)
    report["exit"] = {
        "requested": requested.label(), "policy": policy.label(), "readout": policy.readout or readout,
        "threshold": policy.threshold, "temperature": policy.temperature, "deadline": policy.deadline or timesteps,
        "chosen_on": "validation" if seen is not None else "given", "validation": seen, "test": outcome,
        "seconds_fixed": round(fixed, 2), "seconds_exit": round(exited, 2),
        "test_tradeoff": None if test_tradeoff is None else {
            "note": "test-set rows at the chosen temperature, for reading only: the threshold was not chosen on them",
            "rows": test_tradeoff["rows"], "pareto": pareto(test_tradeoff["rows"])},
    }
    return report


__all__ = ["EXIT_TOLERANCE", "check_tolerance", "complete_on_validation", "evaluate_with_exit"]
