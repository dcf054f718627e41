"""Measures and report files for a latency–accuracy evaluation (SPEC §6).

The typed report of an evaluation (:class:`EvaluationReport`, whose ``to_dict()`` is the JSON's
measured part), and pure functions over measured numbers: the latency to lossless, convergence
percentiles, the energy estimate, and the three output files (CSV curve, JSON with
configuration and versions, PNG plot), each written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
import platform
import shlex
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from qffs import settings
from qffs._version import __version__
from qffs.distributed import world_size
from qffs.errors import QffsError
from qffs.files import atomic_files, atomic_path

#: Horowitz (ISSCC 2014), 45 nm, 32-bit float: accumulate 0.9 pJ, multiply–accumulate 4.6 pJ.
ENERGY_AC_PJ = 0.9
ENERGY_MAC_PJ = 4.6
#: Per-operation energies (accumulate, multiply–accumulate) in pJ, from Horowitz (ISSCC 2014,
#: 45 nm): a MAC is the add plus the multiply (fp32 0.9 + 3.7, int32 0.1 + 3.1, int8 0.03 + 0.2).
ENERGY_PRESETS = {"fp32-45nm": (ENERGY_AC_PJ, ENERGY_MAC_PJ), "int32-45nm": (0.1, 3.2), "int8-45nm": (0.03, 0.23)}
#: ``--energy auto``: an SNN whose synapses are integers (its weights quantized, ``--weight-bits``)
#: accumulates in 32-bit integers (int32-45nm), any other in 32-bit floats (fp32-45nm).
AUTO_ENERGY = "auto"
#: SPEC §6: "lossless" = within 0.1 percentage point of the QANN accuracy.
LOSSLESS_TOLERANCE = 0.001


@dataclass(frozen=True)
class LayerActivity:
    """One IF layer over the evaluated samples: spikes per neuron and sample, and (with the QANN)
    the fraction of its neurons whose final count is off their QANN level."""

    name: str
    neurons: int                       # per sample
    pos_spikes_per_neuron: float
    neg_spikes_per_neuron: float
    spike_rate: float                  # spikes of either sign per neuron and time step
    mismatch_fraction: float | None    # None without the QANN


@dataclass(frozen=True)
class SynapseActivity:
    """One weighted layer: its ANN MACs, synaptic operations and input events per sample."""

    name: str
    macs: int
    synops_per_sample: float
    input_events_per_sample: float


@dataclass
class EvaluationReport:
    """What :func:`qffs.evaluate.evaluate_snn` measured (SPEC §6). Per-step lists have one entry
    per t = 1…T; the ``*_by_readout`` fields hold every readout, the plain ones the headline
    ``readout``'s; the ``qann_*`` fields are None without the QANN."""

    timesteps: list[int]
    readout: str
    snn_accuracy: list[float]
    tied: list[float]
    snn_accuracy_by_readout: dict[str, list[float]]
    tied_by_readout: dict[str, list[float]]
    samples: int
    qann_accuracy: float | None
    qann_prequantizer_accuracy: float | None
    qann_tied: float | None
    qann_agreement: list[float] | None        # per step: spike-count prediction == QANN prediction
    latency_to_lossless: int | None
    latency_to_lossless_by_readout: dict[str, int | None]
    convergence: dict[str, float]              # percentiles of the convergence step, and "unconverged"
    spikes_per_neuron_per_sample: float
    layers: list[LayerActivity]
    synapses: list[SynapseActivity]
    synops_per_sample: float
    ann_macs_per_sample: float
    energy: dict[str, float]                   # :func:`energy_estimate`
    input_window: int
    conversion: dict[str, Any]
    dtype: str
    world_size: int
    exit: dict[str, Any] | None = None         # what an exit policy answered (:mod:`qffs.exit_tradeoff`)
    tradeoff: dict[str, Any] | None = None     # every confidence exit of a grid (:mod:`qffs.exit_tradeoff`)
    convergence_histogram: list[int] | None = None   # samples quiet from step 0…T (the unconverged apart)
    per_class: dict[str, Any] | None = None    # per true class: samples, correct per step (headline), QANN correct
    probe: dict[str, Any] | None = None        # the first test images step by step (:mod:`qffs.probe`)

    def to_dict(self) -> dict[str, Any]:
        """The report as the JSON holds it: these keys, in this order (layers and synapses as dicts)."""
        return asdict(self)


def latency_to_lossless(curve: Sequence[float], reference: float | None,
                        tolerance: float = LOSSLESS_TOLERANCE) -> int | None:
    """Smallest t (1-based) with ``curve[t-1] >= reference - tolerance``; None if never reached."""
    if reference is None:
        return None
    for t, acc in enumerate(curve, start=1):
        if acc >= reference - tolerance - 1e-12:
            return t
    return None


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 90, 99)) -> dict[str, float]:
    """Nearest-rank percentiles plus mean and max (empty input → empty dict)."""
    data = sorted(values)
    if not data:
        return {}
    out = {"mean": sum(data) / len(data), "max": float(data[-1])}
    for q in qs:
        rank = max(1, math.ceil(q / 100 * len(data)))
        out[f"p{int(q)}"] = float(data[rank - 1])
    return out


def energy_estimate(sops: float, macs: float, e_ac: float = ENERGY_AC_PJ,
                    e_mac: float = ENERGY_MAC_PJ) -> dict[str, float]:
    """Per-sample energy of the SNN (SOPs × E_AC) and the ANN (MACs × E_MAC), in pJ and their ratio."""
    snn, ann = sops * e_ac, macs * e_mac
    return {"snn_pj": snn, "ann_pj": ann, "ratio": snn / ann if ann else float("nan"),
            "e_ac_pj": e_ac, "e_mac_pj": e_mac}


def parse_energy(spec: str, integer_weights: bool = False) -> tuple[float, float]:
    """``--energy``: a preset of :data:`ENERGY_PRESETS`, :data:`AUTO_ENERGY` (the preset for a network
    with ``integer_weights`` or without) or "AC,MAC" in pJ → (E_AC, E_MAC)."""
    if spec == AUTO_ENERGY:
        spec = "int32-45nm" if integer_weights else "fp32-45nm"
    if spec in ENERGY_PRESETS:
        return ENERGY_PRESETS[spec]
    try:
        ac, mac = (float(v) for v in spec.split(","))
    except ValueError:
        ac = mac = -1.0
    if not (ac > 0 and mac > 0 and math.isfinite(ac + mac)):
        raise QffsError(f"--energy must be {AUTO_ENERGY}, one of {', '.join(ENERGY_PRESETS)} or two positive energies "
                        "in pJ "
                        f"'AC,MAC' (say 0.9,4.6), got {spec!r}")
    return ac, mac


def command_line() -> str:
    """The ``qffs`` command being run, else how this process was started, as a shell line."""
    return settings.command() or shlex.join(sys.argv)


def environment() -> dict[str, Any]:
    """The command line, versions and the number of processes (torchrun), recorded in every JSON report."""
    return {"command": command_line(), "qffs": __version__, "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(), "world_size": world_size()}


def _by_readout(report: dict[str, Any], key: str) -> dict[str, list[float]]:
    """``{readout: per-step values}``; a report from before the readouts has the count readout only."""
    return report.get(f"{key}_by_readout") or {"count": report[key]}


def curve_csv(report: dict[str, Any]) -> str:
    """The curve as CSV: one row per time step; the headline readout first, then every readout."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    accuracy, tied = _by_readout(report, "snn_accuracy"), _by_readout(report, "tied")
    writer.writerow(["t", "snn_accuracy", "tied", *(f"snn_accuracy_{r}" for r in accuracy),
                     *(f"tied_{r}" for r in tied),
                     "qann_accuracy", "qann_prequantizer_accuracy", "fp_accuracy", "conversion_loss",
                     *(("exit_samples_answered", "exit_samples_simulated") if report.get("exit") else ())])

    def num(value: float | None) -> str:
        return "" if value is None else f"{value:.6f}"

    qann = report.get("qann_accuracy")
    exited = (report.get("exit") or {}).get("test")
    for i, (t, acc) in enumerate(zip(report["timesteps"], report["snn_accuracy"])):
        extra = [] if not exited else [exited["latency_histogram"][i],
                                       exited["rows_simulated"][i] if i < len(exited["rows_simulated"]) else 0]
        writer.writerow([t, num(acc), num(report["tied"][i]), *(num(c[i]) for c in accuracy.values()),
                         *(num(c[i]) for c in tied.values()), num(qann), num(report.get("qann_prequantizer_accuracy")),
                         num(report.get("fp_accuracy")), "" if qann is None else num(qann - acc), *extra])
    return buf.getvalue()


def fp_label(report: dict[str, Any]) -> str:
    """Legend text of the FP reference line; names its sample count when it differs from the curve's."""
    fp_samples = report.get("fp_samples")
    other_set = f" ({fp_samples:,} test images)" if fp_samples and fp_samples != report.get("samples") else ""
    return f"FP {100 * report['fp_accuracy']:.2f}%{other_set}"


#: How each readout is drawn and named in plots.
READOUT_STYLE = {"count": ("#1f77b4", "o", "spike counts"), "tiebreak": ("#ff7f0e", "s", "counts, membrane tie-break"),
                 "current": ("#9467bd", "^", "integrated current")}


def plot_curve(report: dict[str, Any], path: str | Path) -> Path:
    """PNG of SNN accuracy vs time step, one curve per readout (the headline one bold), with the
    QANN, its pre-output-quantizer accuracy and the FP accuracy as reference lines."""
    import matplotlib  # start-up time: matplotlib is loaded only when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the backend is chosen

    ts, acc = report["timesteps"], [100 * a for a in report["snn_accuracy"]]
    curves = _by_readout(report, "snn_accuracy")
    headline = report.get("readout", "count")
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for name, curve in curves.items():
        color, marker, label = READOUT_STYLE.get(name, ("#1f77b4", "o", name))
        bold = name == headline
        ax.plot(ts, [100 * a for a in curve], marker=marker, ms=5 if bold else 4, lw=2.2 if bold else 1.2,
                alpha=1.0 if bold else 0.8, color=color,
                label=f"SNN: {label}" + (" (headline)" if bold and len(curves) > 1 else ""))
    if report.get("qann_accuracy") is not None:
        ax.axhline(100 * report["qann_accuracy"], ls="--", color="#d62728",
                   label=f"QANN {100 * report['qann_accuracy']:.2f}%")
    prequant = report.get("qann_prequantizer_accuracy")
    if prequant is not None and len(curves) > 1 and prequant != report.get("qann_accuracy"):
        ax.axhline(100 * prequant, ls="-.", color="#8c564b", lw=1,
                   label=f"QANN before output quantizer {100 * prequant:.2f}%")
    if report.get("fp_accuracy") is not None:
        ax.axhline(100 * report["fp_accuracy"], ls=":", color="#2ca02c", label=fp_label(report))
    lossless = report.get("latency_to_lossless")
    if lossless:
        ax.axvline(lossless, color="grey", lw=1, alpha=0.6)
        label = f"lossless at t={lossless}" + (f" ({headline})" if len(curves) > 1 else "")
        ax.annotate(label, (lossless, (min(acc) + max(acc)) / 2), textcoords="offset points",
                    xytext=(4, 4), fontsize=8, color="grey")
    ax.set_xticks(ts if len(ts) <= 20 else ts[:: max(1, len(ts) // 16)])
    return save_accuracy_plot(fig, ax, report.get("title", "latency–accuracy"), path)


def save_accuracy_plot(fig, ax, title: str, path: str | Path, legend_size: int = 8,
                       xlabel: str = "time step t") -> Path:
    """Label an accuracy axis (against time steps unless ``xlabel`` says otherwise), then write the
    figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt  # start-up time: loaded only when a plot is drawn

    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("\n".join(textwrap.wrap(title, 72)), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=legend_size)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


#: The trade-off plot of an evaluation with ``--exit``.
EXIT_PLOT = "exit.png"


def report_files(stem: str = "curve") -> tuple[str, str, str]:
    """The three files a report (or an ablation) writes into its ``--out-dir``."""
    return f"{stem}.csv", f"{stem}.json", f"{stem}.png"


def write_report(report: dict[str, Any], out_dir: str | Path, stem: str = "curve") -> dict[str, Path]:
    """Write ``{stem}.csv``, ``{stem}.json`` and ``{stem}.png`` into ``out_dir`` (and, for a report
    with an exit, :data:`EXIT_PLOT`), all or none."""
    out = Path(out_dir)
    paths = dict(zip(("csv", "json", "png"), (out / name for name in report_files(stem))))
    if report.get("exit"):
        paths["exit_png"] = out / EXIT_PLOT
    with atomic_files(list(paths.values())) as files:   # they appear together
        files[0].write_text(curve_csv(report))
        files[1].write_text(json.dumps({**report, "environment": environment()}, indent=2))
        plot_curve(report, files[2])
        if report.get("exit"):
            from qffs.exit_plot import plot_exit  # matplotlib's start-up cost, only for a plot with an exit

            plot_exit(report, files[3])
    return paths
