"""qffs: Quantization Framework for Fast Spiking Neural Networks.

The public API, stage by stage (each usable alone):

    from qffs import build_model, load_model          # models and checkpoints
    qann = quantize(model, bits=2, output_bits=3)      # stage 1: every ReLU → LSQ quantizer
    calibrate(qann, batches)                           #          initialise step sizes
    qann, meta = load_qann("qann.pt")                  #          reload a trained QANN
"""

from __future__ import annotations

__version__ = "0.1.0"

from qffs.errors import QffsError, UnsupportedGraphError
from qffs.io import load_checkpoint, load_model, save_checkpoint
from qffs.models import build_model
from qffs.quant import LSQActivation, calibrate, quantize, quantizers
from qffs.recipes import load_qann

__all__ = [
    "LSQActivation",
    "QffsError",
    "UnsupportedGraphError",
    "__version__",
    "build_model",
    "calibrate",
    "load_checkpoint",
    "load_model",
    "load_qann",
    "quantize",
    "quantizers",
    "save_checkpoint",
]
