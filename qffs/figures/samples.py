"""Per-sample figures: when samples settle, accuracy per class, and a few samples' spikes and outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qffs.figures.style import ANN, NEG, POS, SNN, WIDTH, pyplot, save, title


def class_names(report: dict[str, Any], classes: int) -> list[str]:
    names = report.get("class_names") or []
    return [str(n) for n in names] if len(names) == classes else [str(c) for c in range(classes)]


def plot_convergence(report: dict[str, Any], path: str | Path) -> Path:
    """How many test samples went quiet (their answer final) at each step, and how many not by T."""
    counts = report["convergence_histogram"]
    unconverged = int(report["convergence"].get("unconverged", 0))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(WIDTH, 3.8), dpi=110)
    steps = [t for t in range(len(counts)) if t > 0 or counts[0]]
    ax.bar(steps, [counts[t] for t in steps], color=SNN, label="answer final from step t")
    T = len(counts) - 1
    if unconverged:
        ax.bar([T + 1.5], [unconverged], color=NEG, label=f"not quiet by T={T}")
    ticks = steps if len(steps) <= 20 else steps[:: max(1, len(steps) // 16)]
    ax.set_xticks([*ticks, *([T + 1.5] if unconverged else [])], [*map(str, ticks), *(["> T"] if unconverged else [])])
    ax.set_xlabel("convergence step (last step with a spike anywhere)")
    ax.set_ylabel("test images")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    conv = report["convergence"]
    stats = "" if conv.get("mean") is None else f"; mean {conv['mean']:.2f}, p90 {conv['p90']:.0f}"
    title(ax, f"per-sample convergence, {report['samples']:,} test images{stats}")
    return save(fig, path)


def per_class_step(report: dict[str, Any]) -> int:
    """The step whose per-class accuracy is shown: the latency to lossless, else T."""
    return report.get("latency_to_lossless") or report["timesteps"][-1]


def plot_per_class(report: dict[str, Any], path: str | Path) -> Path:
    """Per true class: the SNN's accuracy at the latency to lossless (else at T) beside the QANN's."""
    per = report["per_class"]
    t = per_class_step(report)
    samples = per["samples"]
    names = class_names(report, len(samples))
    snn = [100 * c / max(n, 1) for c, n in zip(per["correct"][t - 1], samples)]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(WIDTH, 0.45 * len(names)), 4.2), dpi=110)
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], snn, width=0.4, color=SNN, label=f"SNN at t={t} ({report.get('readout', 'count')})")
    if per.get("qann_correct") is not None:
        ax.bar([x + 0.2 for x in xs], [100 * c / max(n, 1) for c, n in zip(per["qann_correct"], samples)],
               width=0.4, color=ANN, label="QANN")
    ax.set_xticks(list(xs), names, rotation=45 if max(map(len, names)) > 4 else 0, ha="right", fontsize=7)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    lossless = "the latency to lossless" if report.get("latency_to_lossless") else "T (never lossless)"
    counts = f"{min(samples):,}" if min(samples) == max(samples) else f"{min(samples):,}–{max(samples):,}"
    title(ax, f"accuracy per class at t={t}, {lossless}; {counts} test images per class")
    return save(fig, path)


def _raster(ax: Any, example: dict[str, Any], timesteps: int) -> None:
    """One sample's raster: per layer (top: first) the neurons that spiked most, one row each."""
    row, ticks, labels = 0, [], []
    for name, layer in example["raster"].items():
        first = row
        for spikes in layer["spikes"]:
            for t, z in enumerate(spikes, start=1):
                if z:
                    ax.plot([t], [row], marker="|", ms=5, mew=1.3, color=POS if z > 0 else NEG, ls="none")
            row += 1
        if row == first:                      # a silent layer still has its row
            row += 1
        ticks.append((first + row - 1) / 2)
        labels.append(f"{name} ({layer['active_neurons']}/{layer['neurons_total']:,})")
        ax.axhline(row - 0.5, color="#dddddd", lw=0.5)
    ax.set_yticks(ticks, labels, fontsize=5)
    ax.set_ylim(row - 0.5, -0.5)
    ax.set_xlim(0.5, timesteps + 0.5)
    ax.set_xlabel("time step t")


def plot_examples(report: dict[str, Any], path: str | Path) -> Path:
    """For each probed image: a spike raster (blue +1, red −1; per layer the neurons that spiked
    most, with active/all neurons in the label) and the output layer's membrane after each step."""
    probe = report["probe"]
    examples, T = probe["examples"], probe["timesteps"]
    plt = pyplot()
    layers = max((len(e["raster"]) for e in examples), default=1)
    fig, axes = plt.subplots(len(examples), 2, figsize=(9.6, max(3.0, 0.09 * layers * probe["raster_neurons"]) *
                                                        len(examples)), dpi=110, squeeze=False,
                             gridspec_kw={"width_ratios": [1.3, 1]})
    for (left, right), example in zip(axes, examples):
        _raster(left, example, T)
        trace = example["output_trace"]
        names = class_names(report, len(trace))
        ts = list(range(1, len(trace[0]) + 1)) if trace else []
        for c, values in enumerate(trace):
            true = c == example["label"]
            right.plot(ts, values, lw=2.2 if true else 0.9, color="black" if true else None,
                       alpha=1 if true else 0.6, label=f"{names[c]} (true)" if true else None)
        if example.get("output_threshold") is not None:
            right.axhline(example["output_threshold"], ls="--", color="grey", lw=0.8, label="threshold θ")
        right.set_xlabel("time step t")
        right.xaxis.get_major_locator().set_params(integer=True)
        right.set_ylabel(f"output {example['output_kind']}")
        right.grid(alpha=0.3)
        right.legend(fontsize=7)
        title(left, f"test image {examples.index(example)}: spike raster (true class {names[example['label']]})")
        title(right, f"output neurons' {example['output_kind']} after each step")
    return save(fig, path)


__all__ = ["class_names", "per_class_step", "plot_convergence", "plot_examples", "plot_per_class"]
