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

__version__ = "0.1.0"

from qffs.errors import QffsError, UnsupportedGraphError
from qffs.io import load_checkpoint, load_model, save_checkpoint
from qffs.models import build_model
from qffs.quant import LSQActivation, calibrate, quantize, quantizers
from qffs.evaluate import evaluate_snn
from qffs.recipes import load_qann, load_snn
from qffs.snn import SimulationResult, SpikingNetwork, convert

__all__ = [
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
