"""The QAT recipe table and its figure, from the metrics files of ``qffs quantize`` runs.

    .venv/bin/python benchmarks/qat_recipes.py runs/qat/*/qann.pt.metrics.json --plot docs/results/qat_recipes.png

Prints one markdown row per run (recipe, epochs, the kept epoch, validation and test accuracy,
wall time, the command, read from the run's folder ``command.txt`` when present) and plots
validation accuracy against epoch for every run: where a curve still rises at its last
epoch, a longer schedule would gain. Reads only what qffs wrote.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qffs.artifacts import describe_recipe  # noqa: E402


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}"


def row(path: Path) -> str:
    m = json.loads(path.read_text())
    met, hist = m["metrics"], m["history"]
    train_s = sum(h["epoch_seconds"] for h in hist)
    command = path.parent / "command.txt"
    cmd = command.read_text().strip() if command.is_file() else ""
    recipe = describe_recipe({**m, "kind": "qann"}) or ""
    test = met.get("qann_accuracy")   # None: a run still going (its partial metrics)
    gap = "—" if test is None else f"{100 * (test - met['fp_accuracy']):+.2f}"
    return (f"| {recipe.split('; epoch chosen')[0]} | {met['best_epoch']} / {len(hist)} | "
            f"{pct(met['calibrated_val_accuracy'])} | {pct(met['qann_val_accuracy'])} | {pct(met['qann_accuracy'])} | "
            f"{gap} | {train_s / 60:.0f} min | `{cmd}` |")


def plot(paths: list[Path], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from qffs.report import save_accuracy_plot

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for path in paths:
        m = json.loads(path.read_text())
        hist = m["history"]
        ax.plot([0] + [h["epoch"] for h in hist], [100 * m["metrics"]["calibrated_val_accuracy"]]
                + [100 * h["val_accuracy"] for h in hist], marker="o", ms=3, label=path.parent.name)
    fp = json.loads(paths[0].read_text())["metrics"].get("fp_val_accuracy")
    if fp is not None:
        ax.axhline(100 * fp, ls=":", color="#2ca02c", label=f"FP {100 * fp:.2f}% (validation)")
    save_accuracy_plot(fig, ax, "QAT: validation accuracy per epoch (epoch 0: calibrated)", out, xlabel="QAT epoch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics", nargs="+", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    print("| recipe | kept epoch / epochs | calibrated (val) | val at kept | test at kept | test − FP (pp) | "
          "training time | command |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for path in args.metrics:
        print(row(path))
    if args.plot:
        plot(args.metrics, args.plot)


if __name__ == "__main__":
    main()
