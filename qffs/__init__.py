"""qffs: Quantization Framework for Fast Spiking Neural Networks.

The public API, stage by stage (each usable alone):

    from qffs import build_model, load_model          # models and checkpoints
    qann = quantize(model, bits=2, output_bits=3)      # stage 1: every ReLU → LSQ quantizer
    calibrate(qann, batches)                           #          initialise step sizes
    qann, meta = load_qann("qann.pt")                  #          reload a trained QANN
    snn = convert(qann)                                # stage 2: IF neurons, θ = T_in·s
    out = snn(x, timesteps=8)                          # stage 3: [8, *qann(x).shape], cumulative
    report = evaluate_snn(snn, loader, 16, qann=qann)  #          the latency–accuracy curve
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from qffs._version import __version__

#: Public name → the module that defines it. Imported on first use (PEP 562), so that
#: ``import qffs.snn`` (the runtime) does not pull in training code, torchvision or rich.
_PUBLIC = {
    "QffsError": "qffs.errors", "UnsupportedGraphError": "qffs.errors",
    "load_checkpoint": "qffs.io", "load_model": "qffs.io", "save_checkpoint": "qffs.io",
    "build_model": "qffs.models",
    "LSQActivation": "qffs.quant", "calibrate": "qffs.quant", "quantize": "qffs.quant", "quantizers": "qffs.quant",
    "EvaluationReport": "qffs.report", "evaluate_snn": "qffs.evaluate",
    "load_qann": "qffs.artifacts", "load_snn": "qffs.artifacts",
    "SimulationResult": "qffs.snn", "SpikingNetwork": "qffs.snn", "convert": "qffs.snn",
}


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'qffs' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])


if TYPE_CHECKING:
    from qffs.artifacts import load_qann, load_snn
    from qffs.errors import QffsError, UnsupportedGraphError
    from qffs.evaluate import evaluate_snn
    from qffs.io import load_checkpoint, load_model, save_checkpoint
    from qffs.models import build_model
    from qffs.quant import LSQActivation, calibrate, quantize, quantizers
    from qffs.report import EvaluationReport
    from qffs.snn import SimulationResult, SpikingNetwork, convert  # type: ignore[no-redef]

__all__ = [
    "EvaluationReport",
    "LSQActivation",
    "QffsError",
    "SimulationResult",
    "SpikingNetwork",
    "UnsupportedGraphError",
    "__version__",
    "build_model",
    "calibrate",
    "convert",
    "evaluate_snn",
    "load_checkpoint",
    "load_model",
    "load_qann",
    "load_snn",
    "quantize",
    "quantizers",
    "save_checkpoint",
]
