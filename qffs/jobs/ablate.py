"""The paper's ablation on one QANN: each QFFS mechanism switched off in turn (SPEC §3–§4).

Every setting converts the same QANN and simulates the same test images; the table gives the
accuracy at fixed t, the latency to lossless (first t within 0.1 pp of that QANN) and the
fraction of neurons whose final spike count is off their QANN level. QANNs of other output
widths (say 2-bit, 3-bit, analog output) add one full-QFFS row each.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qffs.artifacts import ConversionConfig, QuantConfig, load_qann
from qffs.distributed import is_main_process
from qffs.evaluate import evaluate_snn
from qffs.files import atomic_files
from qffs.jobs.loaders import test_data_for
from qffs.jobs.options import DataOptions, check_trained_on
from qffs.jobs.outputs import writing_dir
from qffs.jobs.training import Log
from qffs.report import EvaluationReport, environment, latency_to_lossless, report_files, save_accuracy_plot
from qffs.snn.memory import parse_memory
from qffs.snn.network import check_timesteps
from qffs.train import resolve_device

#: The t at which the table reports accuracy (those ≤ T).
TABLE_STEPS = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass(frozen=True)
class Setting:
    """One row of the ablation: conversion options, and whether the run stops at T_in."""

    name: str
    what: str
    conversion: ConversionConfig = field(default_factory=ConversionConfig)
    stop_at_window: bool = False


SETTINGS: tuple[Setting, ...] = (
    Setting("QFFS", "negative spikes, pre-charge, event max pooling, run until quiet"),
    Setting("no negative spikes", "an overshoot cannot be taken back", ConversionConfig(negative_spikes=False)),
    Setting("stopped at T_in", "simulation not extended beyond the input window", stop_at_window=True),
    Setting("naive max pooling", "each step's spikes max-pooled on their own", ConversionConfig(max_pool="naive")),
    Setting("no pre-charge", "membranes start at 0: neurons floor instead of round", ConversionConfig(precharge=False)),
)


def _output_label(quant: QuantConfig, hidden_bits: int | None = None) -> str:
    """"3-bit output" or "analog output", prefixed by the hidden width where it is not ``hidden_bits``."""
    label = "analog output" if not quant.output_bits else f"{quant.output_bits}-bit output"
    return label if hidden_bits is None or quant.bits == hidden_bits else f"{quant.bits}-bit hidden / {label}"


def off_level_fraction(report: EvaluationReport) -> float | None:
    """Fraction of all neurons (all layers, all samples) whose final count differs from the QANN level."""
    layers = [(r.mismatch_fraction, r.neurons) for r in report.layers if r.mismatch_fraction is not None]
    neurons = sum(n for _, n in layers)
    return sum(f * n for f, n in layers) / neurons if neurons else None


def _row(setting: str, what: str, qann_name: str, report: EvaluationReport, timesteps: int) -> dict[str, Any]:
    curve = list(report.snn_accuracy)
    curve += [curve[-1]] * (timesteps - len(curve))          # stopped early: the answer is frozen
    return {"setting": setting, "what": what, "qann": qann_name, "qann_accuracy": report.qann_accuracy,
            "input_window": report.input_window, "steps_simulated": len(report.snn_accuracy),
            "snn_accuracy": curve,
            "latency_to_lossless": latency_to_lossless(curve, report.qann_accuracy),
            "off_level_fraction": off_level_fraction(report),
            "unconverged": report.convergence["unconverged"]}   # samples still spiking at the last step


def ablate(qann_path: str | Path, data: DataOptions, timesteps: int, *, others: tuple[str | Path, ...] = (),
           device: str = "auto", double: bool = False, memory: str | int | None = None, model: str | None = None,
           out_dir: str | Path | None = None, log: Log = print) -> dict[str, Any]:
    """Run every :data:`SETTINGS` row on ``qann_path`` (and full QFFS on each of ``others``).
    ``out_dir``: also write ``ablation.csv/.json/.png`` there (checked first, locked while the job
    runs; paths under ``"files"``)."""
    check_timesteps(timesteps, "--timesteps")
    budget = None if memory is None else parse_memory(memory)
    if out_dir is None:
        return _ablate(qann_path, data, timesteps, others, device, double, budget, model, log)
    with writing_dir(out_dir, writes=report_files("ablation"), inputs=(qann_path, *others)) as folder:
        result = _ablate(qann_path, data, timesteps, others, device, double, budget, model, log)
        if is_main_process():
            result["files"] = {k: str(v) for k, v in write_ablation(result, folder).items()}
        return result


def _ablate(qann_path: str | Path, data: DataOptions, timesteps: int, others: tuple[str | Path, ...], device: str,
            double: bool, budget: int | None, model: str | None, log: Log) -> dict[str, Any]:
    dev, dtype = resolve_device(device), torch.float64 if double else torch.float32
    qanns = []
    for p in (qann_path, *others):          # all load before any runs
        q, m = load_qann(p, model)
        qanns.append((Path(p), q.to(dtype), m))   # in the simulation's type: with --double, BN folds in float64
    path, qann, meta = qanns[0]
    data, prep, loader = test_data_for(path, meta, data)
    for other, _, other_meta in qanns[1:]:
        check_trained_on(other, other_meta, data.name)    # the same dataset, or a one-line error
    quant = QuantConfig.from_meta(meta, str(path))
    rows, skipped, samples = [], [], 0

    def run(setting: str, what: str, qann_name: str, snn: Any, network: torch.nn.Module, steps: int) -> None:
        nonlocal samples
        log(f"{setting}: T = {steps}")
        report = evaluate_snn(snn, loader, steps, qann=network, device=dev, dtype=dtype, memory=budget)
        samples = report.samples
        rows.append(_row(setting, what, qann_name, report, timesteps))

    for setting in SETTINGS:
        snn = setting.conversion.convert(qann)
        if setting.conversion.max_pool == "naive" and not any(r["kind"] == "naive max pool" for r in snn.summary()):
            skipped.append(f"{setting.name}: the network has no max pooling")
            continue
        steps = min(snn.input_window, timesteps) if setting.stop_at_window else timesteps
        run(setting.name, setting.what, f"{path.name} ({_output_label(quant)})", snn, qann, steps)
    for other, other_qann, other_meta in qanns[1:]:
        label = _output_label(QuantConfig.from_meta(other_meta, str(other)), quant.bits)
        run(f"QFFS, {label}", "the full method on a QANN of another precision layout", f"{other.name} ({label})",
            ConversionConfig().convert(other_qann), other_qann, timesteps)
    return {"title": f"ablation: {meta['model']} on {data.dataset}, {quant.bits}-bit hidden, "
                     f"{samples} test images, {'float64' if double else 'float32'}",
            "timesteps": list(range(1, timesteps + 1)), "rows": rows, "skipped": skipped,
            "config": {"qann": str(qann_path), "others": [str(o) for o in others], "timesteps": timesteps,
                       "test_limit": data.test_limit, "batch_size": data.batch_size, "double": double,
                       "device": device, "memory": budget, "preprocessing": prep.as_dict()}}


def table_steps(timesteps: int) -> list[int]:
    """The t columns of the table: :data:`TABLE_STEPS` up to T, and T itself."""
    return sorted({t for t in TABLE_STEPS if t <= timesteps} | {timesteps})


def ablation_csv(result: dict[str, Any]) -> str:
    """One line per setting: accuracy at the table's t, latency to lossless, fraction off level."""
    steps = table_steps(len(result["timesteps"]))
    lines = ["setting,qann,qann_accuracy," + ",".join(f"acc_t{t}" for t in steps)
             + ",latency_to_lossless,off_level_fraction,steps_simulated"]
    for r in result["rows"]:
        cells = [r["setting"], r["qann"], f"{r['qann_accuracy']:.6f}"]
        cells += [f"{r['snn_accuracy'][t - 1]:.6f}" for t in steps]
        cells += ["" if r["latency_to_lossless"] is None else str(r["latency_to_lossless"]),
                  "" if r["off_level_fraction"] is None else f"{r['off_level_fraction']:.6g}",
                  str(r["steps_simulated"])]
        lines.append(",".join(f'"{c}"' if "," in c else c for c in cells))
    return "\n".join(lines) + "\n"


def plot_ablation(result: dict[str, Any], path: str | Path) -> Path:
    """Every setting's accuracy curve in one PNG, with each QANN's accuracy as a dashed line."""
    # matplotlib loads only when a plot is drawn (start-up time of every other command)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 4.6), dpi=120)
    ts = result["timesteps"]
    for r in result["rows"]:
        bold = r["setting"] == "QFFS"
        ax.plot(ts, [100 * a for a in r["snn_accuracy"]], marker="o", ms=3, lw=2.2 if bold else 1.2, label=r["setting"])
    for (qann, acc), style in zip({r["qann"]: r["qann_accuracy"] for r in result["rows"]}.items(), ("--", ":", "-.")):
        ax.axhline(100 * acc, ls=style, lw=1, color="grey", label=f"QANN {qann}: {100 * acc:.2f}%")
    if len(ts) > 20:
        ax.set_xscale("log", base=2)
    return save_accuracy_plot(fig, ax, result["title"], path, legend_size=7)


def write_ablation(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """``ablation.csv``, ``ablation.json`` and ``ablation.png`` in ``out_dir``, all three or none."""
    out = Path(out_dir)
    paths = dict(zip(("csv", "json", "png"), (out / name for name in report_files("ablation"))))
    with atomic_files(list(paths.values())) as (csv, json_file, png):
        csv.write_text(ablation_csv(result))
        json_file.write_text(json.dumps({**result, "environment": environment()}, indent=2))
        plot_ablation(result, png)
    return paths


__all__ = ["SETTINGS", "Setting", "ablate", "ablation_csv", "off_level_fraction", "plot_ablation", "write_ablation"]
