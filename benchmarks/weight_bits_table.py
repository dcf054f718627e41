"""The low-bit-weight table of docs/results.md from the files benchmarks/weight_bits.sh keeps.

Usage: .venv/bin/python benchmarks/weight_bits_table.py docs/results/fmnist/weights
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RUNS = ["float"] + [f"w{b}_{q}" for b in (8, 4, 2, 1) for q in ("lsq", "sigmoid")]


def row(docs: Path, name: str) -> str:
    """One markdown row: weights, QANN (validation, test), SNN at t = 8, lossless latency, size."""
    qat = json.loads((docs / f"{name}_qat.json").read_text())["metrics"]
    snn = json.loads((docs / f"{name}_snn.json").read_text())
    sized = docs / f"{name}_size.json"   # the deployed size (benchmarks/weight_size.py), else the QAT run's
    size = json.loads(sized.read_text()) if sized.exists() else qat.get("weight_size")
    weights = "float32" if name == "float" else f"{name[1:].split('_')[0]}-bit {name.split('_')[1]}"
    kb = f"{size['kilobytes']:.1f} ({size['compression']:.1f}×)" if size else "—"
    return (f"| {weights} | {100 * qat['qann_val_accuracy']:.2f} | {100 * qat['qann_accuracy']:.2f} | "
            f"{100 * snn['snn_accuracy'][7]:.2f} | {snn['latency_to_lossless']} | {kb} |")


def table(docs: Path) -> str:
    head = ("| weights | QANN val | QANN test | SNN t = 8 | lossless at t | weight size KB (vs float32) |\n"
            "| --- | --- | --- | --- | --- | --- |")
    return "\n".join([head] + [row(docs, n) for n in RUNS if (docs / f"{n}_snn.json").exists()])


if __name__ == "__main__":
    print(table(Path(sys.argv[1])))
