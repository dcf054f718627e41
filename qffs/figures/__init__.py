"""The figures of a report, drawn from its JSON (``curve.json``) beside ``curve.png``.

One record per figure (:data:`FIGURES`): its file, what it shows, the function that draws it and
the report keys it needs; :func:`draw_figures` draws every figure whose data the report holds, so
an older report gets the figures it can.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qffs.figures.layers import plot_energy, plot_layer_spikes, plot_off_level
from qffs.figures.samples import plot_convergence, plot_examples, plot_per_class


@dataclass(frozen=True)
class Figure:
    """One figure of a report: its file name, caption, drawing function and the keys it needs."""

    file: str
    caption: str
    draw: Callable[[dict[str, Any], Path], Path]
    needs: tuple[str, ...]

    def available(self, report: dict[str, Any]) -> bool:
        """Whether ``report`` holds what this figure is drawn from."""
        if not all(report.get(key) for key in self.needs):
            return False
        probe = report.get("probe") or {}
        return not (self.file == "off_level.png" and not probe.get("off_level")) and not (
            self.file == "examples.png" and not probe.get("examples"))


FIGURES = (
    Figure("layers.png", "Spikes per neuron (positive and negative) and spike rate per IF layer", plot_layer_spikes,
           ("layers",)),
    Figure("off_level.png", "Neurons off their QANN level per layer, step by step", plot_off_level, ("probe",)),
    Figure("convergence.png", "When each test image's answer became final", plot_convergence,
           ("convergence_histogram",)),
    Figure("examples.png", "Spike raster and output neurons of the first test images", plot_examples, ("probe",)),
    Figure("per_class.png", "Accuracy per class at the latency to lossless", plot_per_class, ("per_class",)),
    Figure("energy.png", "Energy per weighted layer, SNN against ANN", plot_energy, ("synapses", "energy")),
)

#: Every figure file a report may write.
FIGURE_FILES = tuple(f.file for f in FIGURES)


def draw_figures(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Draw every figure of :data:`FIGURES` that ``report`` has the data for into ``out_dir``
    (each written atomically); returns {file: path}."""
    out = Path(out_dir)
    return {f.file: f.draw(report, out / f.file) for f in FIGURES if f.available(report)}


__all__ = ["FIGURES", "FIGURE_FILES", "Figure", "draw_figures"]
