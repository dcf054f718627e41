"""Stage 1: quantization — every ReLU becomes an LSQ activation quantizer (SPEC §1).

    check_quantizable(model)                        # what quantize would refuse, before any data
    qann = quantize(model, bits=2, output_bits=3)   # graph transform, steps start at 1.0
    calibrate(qann, batches)                        # initialise the steps from data
    quantizers(qann)                                # [(name, LSQActivation)] in graph order
"""

from __future__ import annotations

from qffs.quant.calibrate import calibrate
from qffs.quant.graph import check_quantizable, quantize, quantizers
from qffs.quant.lsq import LSQActivation, lsq_quantize

__all__ = ["LSQActivation", "calibrate", "check_quantizable", "lsq_quantize", "quantize", "quantizers"]
