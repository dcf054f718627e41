"""Per-layer figures: spikes per neuron and spike rate, neurons off their QANN level against t, energy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qffs.figures.style import ANN, NEG, POS, SNN, layer_figure, pyplot, save, title


def _names(rows: list[dict[str, Any]]) -> list[str]:
    return [r["name"] for r in rows]


def plot_layer_spikes(report: dict[str, Any], path: str | Path) -> Path:
    """Per IF layer, in depth order: positive and negative spikes per neuron and sample (left), and
    the spike rate, spikes of either sign per neuron and time step (right)."""
    rows = report["layers"]
    fig, axes = layer_figure(len(rows), 2)
    left, right = axes[0]
    ys = range(len(rows))
    pos = [r["pos_spikes_per_neuron"] for r in rows]
    neg = [r["neg_spikes_per_neuron"] for r in rows]
    left.barh([y - 0.2 for y in ys], pos, height=0.4, color=POS, label="positive")
    left.barh([y + 0.2 for y in ys], neg, height=0.4, color=NEG, label="negative")
    left.set_yticks(list(ys), _names(rows), fontsize=7)
    left.invert_yaxis()
    left.set_xlabel("spikes per neuron and sample")
    left.legend(fontsize=8, loc="lower right")
    right.barh(list(ys), [r["spike_rate"] for r in rows], color=SNN)
    right.set_xlabel("spike rate (spikes per neuron per step)")
    for ax in (left, right):
        ax.grid(axis="x", alpha=0.3)
    title(left, f"spikes per neuron, {report['samples']:,} test images, T={report['timesteps'][-1]}")
    title(right, "spike rate (either sign)")
    return save(fig, path)


def plot_off_level(report: dict[str, Any], path: str | Path) -> Path:
    """Per IF layer (colour: depth), the fraction of its neurons whose spike count is not yet its
    QANN level after step t, over the probed images."""
    probe = report["probe"]
    off = probe["off_level"]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 4.4), dpi=110)
    colours = plt.get_cmap("viridis")
    ts = list(range(1, probe["timesteps"] + 1))
    for i, (name, fractions) in enumerate(off.items()):
        ax.plot(ts, [100 * f for f in fractions], color=colours(i / max(len(off) - 1, 1)), lw=1.2,
                marker="o", ms=2.5, label=name if len(off) <= 12 or i in (0, len(off) - 1) else None)
    ax.set_xlabel("time step t")
    ax.set_ylabel("neurons off their QANN level (%)")
    ax.set_xticks(ts if len(ts) <= 20 else ts[:: max(1, len(ts) // 16)])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2, title="layer (dark: first)", title_fontsize=7)
    title(ax, f"neurons whose count differs from the QANN's level, per layer; first {probe['samples']:,} "
              "test images")
    return save(fig, path)


def plot_energy(report: dict[str, Any], path: str | Path) -> Path:
    """Per weighted layer: the SNN's energy (SOPs × E_AC) beside the ANN's (MACs × E_MAC), per
    sample, with the constants in the title."""
    rows, energy = report["synapses"], report["energy"]
    e_ac, e_mac = energy["e_ac_pj"], energy["e_mac_pj"]
    fig, axes = layer_figure(len(rows))
    ax = axes[0][0]
    ys = range(len(rows))
    ax.barh([y - 0.2 for y in ys], [r["synops_per_sample"] * e_ac / 1e3 for r in rows], height=0.4, color=SNN,
            label=f"SNN: SOPs × {e_ac:g} pJ")
    ax.barh([y + 0.2 for y in ys], [r["macs"] * e_mac / 1e3 for r in rows], height=0.4, color=ANN,
            label=f"ANN: MACs × {e_mac:g} pJ")
    ax.set_yticks(list(ys), _names(rows), fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("energy per sample (nJ, log scale)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    title(ax, f"energy per sample: SNN {energy['snn_pj'] / 1e6:.3g} µJ, ANN {energy['ann_pj'] / 1e6:.3g} µJ "
              f"(ratio {energy['ratio']:.3g}); {report['samples']:,} test images")
    return save(fig, path)


__all__ = ["plot_energy", "plot_layer_spikes", "plot_off_level"]
