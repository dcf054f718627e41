"""Terminal rendering of summaries and reports (rich tables)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from qffs import settings
from qffs.cli.app import printable
from qffs.report import fp_label

console = Console(highlight=False)
if not console.is_terminal and not settings.columns_given():
    # A pipe or a log file has no width; rich would assume 80 and cut layer names short.
    console.width = 120


def from_file(text: str) -> Text:
    """Text that came from an artifact (a recorded model spec in a title): control characters shown
    escaped, and no rich markup interpreted, so a file cannot write to the terminal."""
    return Text(printable(str(text)))


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def layer_table(rows: list[dict[str, Any]]) -> Table:
    """Per-layer summary of a converted network (θ, Z_max, fan-in, neurons)."""
    table = Table(title="SNN layers", title_justify="left")
    for col in ("layer", "kind", "θ", "Z_max", "step s", "fan-in", "neurons/sample"):
        text = col in ("layer", "kind")   # names are never cut: users grep them
        table.add_column(col, justify="left" if text else "right", no_wrap=text)
    for r in rows:
        def fmt(k: str, f: str = "{:.4g}", r: dict[str, Any] = r) -> str:
            return "" if r.get(k) is None else f.format(r[k])
        table.add_row(r["name"], r["kind"], fmt("threshold"), fmt("z_max", "{}"), fmt("step_size"),
                      fmt("fan_in", "{}"), fmt("neurons", "{:,}"))
    return table


def curve_table(report: dict[str, Any]) -> Table:
    """t, SNN accuracy of every readout (headline marked *), the headline's gap to the QANN, and the
    tied predictions of every readout."""
    table = Table()
    curves = report.get("snn_accuracy_by_readout") or {"count": report["snn_accuracy"]}
    ties = report.get("tied_by_readout") or {"count": report["tied"]}
    headline = report.get("readout", "count")
    table.add_column("t", justify="right")
    for name in curves:
        table.add_column(f"{name}{'*' if name == headline and len(curves) > 1 else ''} %", justify="right")
    table.add_column("QANN − SNN (pp)", justify="right")
    for name in ties:
        table.add_column(f"tied {name} %" if len(ties) > 1 else "tied %", justify="right")
    qann = report.get("qann_accuracy")
    for i, t in enumerate(report["timesteps"]):
        gap = "" if qann is None else f"{100 * (qann - report['snn_accuracy'][i]):+.2f}"
        table.add_row(str(t), *(_pct(c[i]) for c in curves.values()), gap, *(_pct(c[i]) for c in ties.values()))
    return table


def summary_lines(report: dict[str, Any]) -> list[str]:
    conv = report.get("convergence", {})
    e = report.get("energy", {})
    lossless = report.get("latency_to_lossless")
    agreement = report.get("qann_agreement")
    by_readout = report.get("latency_to_lossless_by_readout") or {}
    prequant = report.get("qann_prequantizer_accuracy")

    def at(t: int | None) -> str:
        return "not reached" if t is None else f"t = {t}"

    lines = [
        f"samples {report['samples']:,}   {fp_label(report) if report.get('fp_accuracy') is not None else 'FP —'}   "
        f"QANN {_pct(report.get('qann_accuracy'))}%"
        + ("" if prequant is None else f" (before its output quantizer {_pct(prequant)}%)")
        + f"   SNN@T={report['timesteps'][-1]} {_pct(report['snn_accuracy'][-1])}% ({report.get('readout', 'count')} "
          f"readout)",
        f"latency to lossless (≥ QANN − 0.1 pp): {at(lossless)}"
        + ("" if len(by_readout) < 2 else " — " + ", ".join(f"{k} {at(v)}" for k, v in by_readout.items())),
    ]
    if agreement:
        lines.append(f"spike-count predictions equal to the QANN's at T: {100 * agreement[-1]:.2f}%")
    if conv.get("mean") is not None:
        lines.append(f"convergence step: mean {conv['mean']:.2f}, p50 {conv['p50']:.0f}, p90 {conv['p90']:.0f}, "
                     f"p99 {conv['p99']:.0f}, max {conv['max']:.0f}; not quiet by T: {conv['unconverged']}")
    lines.append(f"spikes per neuron per sample: {report['spikes_per_neuron_per_sample']:.3f}   "
                 f"SOPs/sample {report['synops_per_sample']:.3g} vs ANN MACs {report['ann_macs_per_sample']:.3g}   "
                 f"energy SNN {e.get('snn_pj', 0) / 1e6:.3g} µJ vs ANN {e.get('ann_pj', 0) / 1e6:.3g} µJ"
                 + ("" if "e_ac_pj" not in e else f" ({e['e_ac_pj']:g} pJ per accumulate, {e['e_mac_pj']:g} pJ per "
                                                  "MAC: --energy)"))
    size = report.get("weight_size")
    if report.get("weight_bits") and size:
        lines.append(f"weights: {report['weight_bits']}-bit integers, {size['kilobytes']:,.1f} KB with biases and "
                     f"scales ({size['compression']:.1f}x smaller than float32)")
    probe = report.get("probe")
    if probe:
        lines.append(f"figures: every test image ({report['samples']:,}); step by step (off level, raster, output "
                     f"membranes): the first {probe['samples']:,}, {len(probe['examples'])} of them shown")
    return lines + exit_lines(report.get("exit"))


def exit_lines(exit_: dict[str, Any] | None) -> list[str]:
    """What an evaluation with ``--exit`` chose and what it answered on the test set."""
    if not exit_:
        return []
    test, val = exit_["test"], exit_.get("validation")
    lines = []
    if val:
        row = val.get("chosen")
        lines.append(f"exit chosen on validation ({val['samples']:,} images, QANN {_pct(val['qann_accuracy'])}%): "
                     f"{exit_['policy']}" + ("" if not row else f", validation {_pct(row['accuracy'])}% at mean "
                                                               f"{row['mean_latency']:.2f} steps"))
    lines.append(f"exit {exit_['policy']} on the test set: {_pct(test['accuracy'])}% at mean latency "
                 f"{test['mean_latency']:.2f} steps (p50 {test['p50_latency']:g}, p99 {test['p99_latency']:g}); "
                 f"{exit_['seconds_exit']:.1f} s against {exit_['seconds_fixed']:.1f} s at the fixed T")
    return lines


def print_report(report: dict[str, Any]) -> None:
    console.print(from_file(report.get("title", "latency–accuracy")), style="bold")
    console.print(curve_table(report))
    for line in summary_lines(report):
        console.print(from_file(line))


def ablation_table(result: dict[str, Any]) -> Table:
    """One row per ablation setting: accuracy at the table's t, latency to lossless, neurons off level."""
    # loaded when the command runs, so that `qffs --help` and the other commands start fast
    from qffs.jobs.ablate import table_steps

    steps = table_steps(len(result["timesteps"]))
    table = Table(title=from_file(result["title"]), title_justify="left")
    table.add_column("setting", no_wrap=True)
    table.add_column("QANN %", justify="right")
    for t in steps:
        table.add_column(f"t={t}", justify="right")
    table.add_column("lossless at", justify="right")
    table.add_column("off level", justify="right")
    for r in result["rows"]:
        off = r["off_level_fraction"]
        table.add_row(r["setting"], _pct(r["qann_accuracy"]), *(_pct(r["snn_accuracy"][t - 1]) for t in steps),
                      "—" if r["latency_to_lossless"] is None else str(r["latency_to_lossless"]),
                      "—" if off is None else f"{100 * off:.3f}%")
    return table
