"""QFFS stage 2 as a job: a QANN checkpoint becomes an SNN artifact (SPEC §2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from qffs.artifacts import ConversionConfig, load_qann, sample_input_shape
from qffs.io import save_checkpoint
from qffs.jobs.outputs import writing

#: Metadata of the QANN that an SNN artifact does not inherit (its own are written anew).
_OWN_FIELDS = ("format", "kind", "created", "qffs_version", "torch_version")


def layer_summary(snn: Any, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Per layer: θ, Z_max, step size, fan-in, and neurons per sample (found by one step on a zero
    input of the recorded shape, when one is recorded)."""
    summary = snn.summary()
    shape = sample_input_shape(meta)
    if shape is not None:
        result = snn.simulate(torch.zeros(2, *shape), 1)   # 2: a model may squeeze() its batch dimension away
        neurons = {r.name: r.neurons for r in result.neurons}
        for row in summary:
            if row["name"] in neurons:
                row["neurons"] = neurons[row["name"]]
    return summary


def convert_checkpoint(qann_path: str | Path, out: str | Path, conversion: ConversionConfig | None = None, *,
                       model: str | None = None) -> tuple[Path, list[dict[str, Any]]]:
    """QANN checkpoint → SNN artifact converted as ``conversion`` says; returns (path, per-layer summary)."""
    conversion = conversion or ConversionConfig()
    with writing(out, qann_path) as out:   # a second convert writing the same --out is refused
        qann, meta = load_qann(qann_path, model)
        snn = conversion.convert(qann)
        summary = layer_summary(snn, meta)
        keep = {k: v for k, v in meta.items() if k not in _OWN_FIELDS}
        save_checkpoint(out, qann.state_dict(), kind="snn", **{**keep, "model": meta["model"]},
                        conversion=dict(snn.config), source_qann=str(qann_path), layers=summary)
        return out, summary
