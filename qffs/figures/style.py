"""One look for every figure of a report: matplotlib set up headless, sizes, colours, atomic PNGs."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from qffs.files import atomic_path

#: Positive and negative spikes, the SNN and the ANN (QANN) everywhere.
POS, NEG, SNN, ANN = "#1f77b4", "#d62728", "#1f77b4", "#7f7f7f"
WIDTH = 7.2


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib  # start-up time: matplotlib is loaded only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the backend is chosen

    return plt


def layer_figure(layers: int, panels: int = 1) -> tuple[Any, Any]:
    """A figure of ``panels`` side-by-side horizontal-bar panels, one bar row per layer (height grows with them)."""
    plt = pyplot()
    height = min(2.0 + 0.24 * layers, 14.0)
    return plt.subplots(1, panels, figsize=(WIDTH if panels == 1 else 9.6, height), dpi=110, sharey=True,
                        squeeze=False)


def title(ax: Any, text: str) -> None:
    ax.set_title("\n".join(textwrap.wrap(text, 80)), fontsize=9)


def save(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` as PNG atomically and close it."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    pyplot().close(fig)
    return Path(path)


__all__ = ["ANN", "NEG", "POS", "SNN", "WIDTH", "layer_figure", "pyplot", "save", "title"]
