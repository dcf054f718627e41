"""The plot of an evaluation with ``--exit``: accuracy against mean latency, and the test latencies.

Left, the trade-off: the Pareto front of the confidence exits (threshold P, deadline D), accuracy
against mean latency (validation rows, where the exit was chosen, and the test rows at the same
temperature, for reading),
the fixed-T curve (every sample at t), the QANN and the chosen exit's test outcome. Right, how
many test samples answered at each step under the chosen exit.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any


def plot_exit(report: dict[str, Any], path: str | Path) -> Path:
    """Write the exit plot of ``report`` (an evaluation report with an ``"exit"`` section) as PNG."""
    import matplotlib  # start-up time: matplotlib is loaded only when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the backend is chosen

    exit_, test = report["exit"], report["exit"]["test"]
    fig, (ax, hist) = plt.subplots(1, 2, figsize=(10, 4.2), dpi=120, gridspec_kw={"width_ratios": [3, 2]})
    ax.plot(report["timesteps"], [100 * a for a in report["snn_accuracy"]], "o-", ms=3, color="#ff7f0e",
            label=f"fixed T = t (every sample), {report['readout']}")
    validation = exit_.get("validation") or {}
    for (name, trade), color in zip((validation.get("tradeoff") or {}).items(), ("grey", "#8c564b", "#9467bd")):
        rows = trade["pareto"]
        ax.plot([r["mean_latency"] for r in rows], [100 * r["accuracy"] for r in rows], ".-", color=color,
                lw=1, label=f"confidence exits, validation, {name} (τ = {trade['temperature']:.3g})")
    if exit_.get("test_tradeoff"):
        rows = exit_["test_tradeoff"]["pareto"]
        ax.plot([r["mean_latency"] for r in rows], [100 * r["accuracy"] for r in rows], ".-", color="#1f77b4",
                lw=1, label="confidence exits, test (for reading)")
    if report.get("qann_accuracy") is not None:
        ax.axhline(100 * report["qann_accuracy"], ls="--", color="#d62728",
                   label=f"QANN {100 * report['qann_accuracy']:.2f}%")
    ax.plot([test["mean_latency"]], [100 * test["accuracy"]], "*", ms=14, color="#d62728",
            label=f"{exit_['policy']}: {100 * test['accuracy']:.2f}% at {test['mean_latency']:.2f} steps")
    ax.set_xlabel("mean latency (steps)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("\n".join(textwrap.wrap(report.get("title", "early exit"), 60)), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    steps = list(range(1, len(test["latency_histogram"]) + 1))
    hist.bar(steps, test["latency_histogram"], color="#1f77b4")
    hist.set_xlabel("latency (step at which the sample answered)")
    hist.set_ylabel("test samples")
    hist.set_title(f"p50 {test['p50_latency']:g}, p99 {test['p99_latency']:g}; simulated "
                   f"{test['sample_steps']:,} of {test['sample_steps_fixed']:,} sample-steps", fontsize=9)
    hist.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return Path(path)


__all__ = ["plot_exit"]
