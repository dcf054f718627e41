"""The deployed weight size of a QANN or SNN artifact as JSON (qffs.quant.weight_graph.weight_size of its QANN).

Usage: .venv/bin/python benchmarks/weight_size.py runs/weights/cifar10/w4_lsq/qann.pt > w4_lsq_size.json
"""

from __future__ import annotations

import json
import sys

from qffs.artifacts import load_qann
from qffs.quant.weight_graph import weight_size

if __name__ == "__main__":
    qann, _ = load_qann(sys.argv[1])
    print(json.dumps({"artifact": sys.argv[1], **weight_size(qann)}))
