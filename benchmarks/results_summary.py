"""Tables and the comparison figure for docs/results.md, from the reports a results script kept.

    .venv/bin/python benchmarks/results_summary.py docs/results/fmnist     # after fmnist_results.sh
    .venv/bin/python benchmarks/results_summary.py docs/results/cifar10    # after cifar_results.sh

Prints markdown tables (QAT per layout, the latency–accuracy curves side by side, the SPEC §6
measures, the three readouts with the tie rate per t, per-layer spikes) and writes
``curves.png`` (every SNN curve of the directory in one plot) beside the reports. Reads only
what the CLI wrote; computes nothing new.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qffs.report import save_accuracy_plot  # noqa: E402

LAYOUTS = {"q2_3": "2-bit hidden / 3-bit output", "q2_analog": "2-bit hidden / analog output",
           "q3_3": "3-bit hidden / 3-bit output"}
CURVES = {"snn_2_3_float32": "2/3, float32", "snn_2_3_float64": "2/3, float64",
          "snn_2_analog_float32": "2/analog, float32", "snn_3_3_float32": "3/3, float32",
          "ablation_nonegativespikes": "2/3 without negative spikes",
          "ablation_noprecharge": "2/3 without pre-charge", "ablation_maxpool_naive": "2/3 with naive max pooling"}


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}"


def qat_table(d: Path) -> list[str]:
    """One row per layout: the kept epoch chosen on validation, its test accuracy measured once."""
    rows = ["| layout | FP (test) | calibrated (val) | kept epoch / epochs | val at kept | test at kept | test − FP "
            "(pp) "
            "| QAT s/epoch | command |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for key, name in LAYOUTS.items():
        f = d / f"{key}_qat.json"
        if not f.is_file():
            continue
        m = json.loads(f.read_text())
        met = m["metrics"]
        if "qann_val_accuracy" not in met:   # written before the validation split: chosen on the test set
            continue
        per_epoch = sum(h["epoch_seconds"] for h in m["history"]) / max(len(m["history"]), 1)
        timing = d / f"quantize_{key[1:]}.time.json"
        cmd = json.loads(timing.read_text())["command"].split("/bin/")[-1] if timing.is_file() else ""
        rows.append(f"| {name} | {pct(met['fp_accuracy'])} | {pct(met['calibrated_val_accuracy'])} | "
                    f"{met['best_epoch']} / {len(m['history'])} | {pct(met['qann_val_accuracy'])} | "
                    f"{pct(met['qann_accuracy'])} | {100 * (met['qann_accuracy'] - met['fp_accuracy']):+.2f} | "
                    f"{per_epoch:.0f} | `{cmd}` |")
    return rows


def load_curves(d: Path) -> dict[str, dict]:
    return {k: json.loads((d / f"{k}.json").read_text()) for k in CURVES if (d / f"{k}.json").is_file()}


def curve_table(curves: dict[str, dict], keys: list[str]) -> list[str]:
    keys = [k for k in keys if k in curves]
    if not keys:
        return []
    rows = ["| t | " + " | ".join(CURVES[k] for k in keys) + " |", "| --- |" + " --- |" * len(keys)]
    longest = max(len(curves[k]["snn_accuracy"]) for k in keys)
    for t in range(longest):
        cells = [pct(curves[k]["snn_accuracy"][t]) if t < len(curves[k]["snn_accuracy"]) else "" for k in keys]
        rows.append(f"| {t + 1} | " + " | ".join(cells) + " |")
    rows.append("| QANN | " + " | ".join(pct(curves[k]["qann_accuracy"]) for k in keys) + " |")
    return rows


def measures_table(curves: dict[str, dict], keys: list[str]) -> list[str]:
    keys = [k for k in keys if k in curves]
    rows = ["| network | QANN | SNN at T | = QANN prediction at T | lossless at t | convergence mean / p50 / p99 / "
            "max | "
            "not quiet by T | neurons ≠ QANN level | spikes/neuron | SOPs / ANN MACs | energy SNN/ANN |",
            "| --- |" + " --- |" * 10]
    for k in keys:
        r = curves[k]
        c = r["convergence"]
        conv = f"{c['mean']:.2f} / {c['p50']:.0f} / {c['p99']:.0f} / {c['max']:.0f}" if c.get("mean") else "—"
        layers = r["layers"]
        mismatch = sum(x["mismatch_fraction"] * x["neurons"] for x in layers) / sum(x["neurons"] for x in layers)
        rows.append(
            f"| {CURVES[k]} | {pct(r['qann_accuracy'])} | {pct(r['snn_accuracy'][-1])} | "
            f"{pct(r['qann_agreement'][-1])} | "
            f"{r['latency_to_lossless'] or 'not reached'} | {conv} | {c['unconverged']} | {100 * mismatch:.3f} % | "
            f"{r['spikes_per_neuron_per_sample']:.3f} | {r['synops_per_sample'] / 1e6:.2f} M / "
            f"{r['ann_macs_per_sample'] / 1e6:.2f} M | "
            f"{r['energy']['ratio']:.3f} |")
    return rows


def layer_table(report: dict) -> list[str]:
    rows = ["| IF layer | neurons | + spikes/neuron | − spikes/neuron | spike rate | ≠ QANN level |",
            "| --- | --- | --- | --- | --- | --- |"]
    for layer in report["layers"]:
        rows.append(f"| {layer['name']} | {layer['neurons']:,} | {layer['pos_spikes_per_neuron']:.3f} | "
                    f"{layer['neg_spikes_per_neuron']:.4f} | "
                    f"{layer['spike_rate']:.4f} | {100 * layer['mismatch_fraction']:.3f} % |")
    return rows


def plot(curves: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 4.4), dpi=120)
    styles = {"snn_2_3_float32": dict(color="#1f77b4", lw=2.5), "snn_2_analog_float32": dict(color="#9467bd"),
              "snn_3_3_float32": dict(color="#8c564b"), "ablation_nonegativespikes": dict(color="#d62728", ls="--"),
              "ablation_noprecharge": dict(color="#ff7f0e", ls="--"), "ablation_maxpool_naive": dict(color="#7f7f7f",
                                                                                                     ls="--")}
    for key, style in styles.items():
        if key in curves:
            r = curves[key]
            ax.plot(r["timesteps"], [100 * a for a in r["snn_accuracy"]], marker="o", ms=3, label=CURVES[key], **style)
    if "snn_2_3_float32" in curves:
        ax.axhline(100 * curves["snn_2_3_float32"]["qann_accuracy"], color="#1f77b4", ls=":", lw=1, label="2/3 QANN")
    first = next(iter(curves.values()))
    model = first["model"].split("(")[0]
    save_accuracy_plot(fig, ax, f"{model} on {first['dataset']} ({first['samples']:,} test images): SNN accuracy per "
                       "time step", path, legend_size=7)


def readout_table(report: dict) -> list[str]:
    """The three readouts of one simulation (SPEC §5) and the fraction of tied count predictions, per t."""
    acc, ties = report["snn_accuracy_by_readout"], report["tied_by_readout"]["count"]
    rows = ["| t | spike counts | images tied at the output | counts, membrane tie-break | integrated current |",
            "| --- | --- | --- | --- | --- |"]
    for t in range(len(acc["count"])):
        rows.append(f"| {t + 1} | {pct(acc['count'][t])} | {pct(ties[t])} % | {pct(acc['tiebreak'][t])} | "
                    f"{pct(acc['current'][t])} |")
    rows.append(f"| reference | QANN {pct(report['qann_accuracy'])} | QANN {pct(report['qann_tied'])} % | | "
                f"before the output quantizer {pct(report['qann_prequantizer_accuracy'])} |")
    lossless = report["latency_to_lossless_by_readout"]
    rows.append("| lossless (≥ QANN − 0.1 pp) at | " + " | | ".join(
        f"t = {lossless[k]}" if lossless[k] else "not reached" for k in ("count", "tiebreak")) + " | "
        + (f"t = {lossless['current']}" if lossless["current"] else "not reached") + " |")
    return rows


def main() -> None:
    d = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "results" / "fmnist"
    curves = load_curves(d)
    print("\n".join(qat_table(d)), end="\n\n")
    print("\n".join(curve_table(curves, list(CURVES))), end="\n\n")
    print("\n".join(measures_table(curves, list(CURVES))), end="\n\n")
    for key in ("snn_2_3_float32", "readouts_2_3_1epoch"):
        file = d / f"{key}.json"
        report = curves.get(key) or (json.loads(file.read_text()) if file.is_file() else None)
        if report and "snn_accuracy_by_readout" in report:
            print(f"Readouts of {key}:\n" + "\n".join(readout_table(report)), end="\n\n")
            break
    if "snn_2_3_float64" in curves:
        print("\n".join(layer_table(curves["snn_2_3_float64"])), end="\n\n")
    if curves:
        plot(curves, d / "curves.png")
        print(f"wrote {d / 'curves.png'}")


if __name__ == "__main__":
    main()
