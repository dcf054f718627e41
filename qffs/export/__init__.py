"""Export: a QANN or SNN out of Python — ONNX for onnxruntime and deployment, NIR for neuromorphic
toolchains. ``to_onnx`` and ``to_nir`` are the entry points; they import their libraries on use."""

from __future__ import annotations

from typing import Any


def to_onnx(*args: Any, **kwargs: Any):
    """:func:`qffs.export.onnx.to_onnx`."""
    from qffs.export.onnx import to_onnx as export  # loaded on first use: the exporters are heavy

    return export(*args, **kwargs)


def to_nir(*args: Any, **kwargs: Any):
    """:func:`qffs.export.nir.to_nir`."""
    from qffs.export.nir import to_nir as export  # loaded on first use, as above

    return export(*args, **kwargs)


__all__ = ["to_nir", "to_onnx"]
