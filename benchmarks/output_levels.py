"""How many steps the spike-count readout needs at least: the QANN's winning output level per image.

    .venv/bin/python benchmarks/output_levels.py runs/cifar_results/q2_3/qann.pt [--limit 10000]

An IF neuron emits at most one spike per step (SPEC §3), so an output neuron whose QANN level
is L has at most t spikes after t steps while t < L: before step L the count readout cannot
show the QANN's winning count, and it decides on fewer spikes than the QANN does (often a
tie, which goes to the lowest class). This prints, over the test images, the distribution of
the winning level L (the largest output level), the fraction with L > t for small t (a floor
on what the count readout can have settled by step t), and the QANN's ties. Reads the QANN
only; runs no SNN.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("qann", help="a QANN with an output quantizer (qffs quantize, --output-bits > 0)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N test images")
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args(argv)

    from qffs.artifacts import load_qann
    from qffs.jobs.loaders import test_data_for
    from qffs.jobs.options import DataOptions
    from qffs.probe import quantizer_levels
    from qffs.quant import quantizers
    from qffs.quant.graph import OUTPUT_QUANTIZER

    qann, meta = load_qann(args.qann)
    output = dict(quantizers(qann)).get(OUTPUT_QUANTIZER)
    if output is None:
        parser.error(f"{args.qann} has an analog output layer: its readout needs no output spikes")
    _, _, loader = test_data_for(args.qann, meta, DataOptions(test_limit=args.limit, batch_size=args.batch_size))
    qann.eval()
    levels, tied = [], 0
    with torch.no_grad():
        for x, _ in loader:
            level = quantizer_levels(qann, x, OUTPUT_QUANTIZER)[2][OUTPUT_QUANTIZER]   # [B, classes]
            top = level.max(1).values
            levels.append(top)
            tied += int(((level == top[:, None]).sum(1) > 1).sum())
    top = torch.cat(levels).long()
    n = top.numel()
    hist = torch.bincount(top, minlength=output.levels + 1)
    result = {"qann": args.qann, "samples": n, "z_max": output.levels,
              "winning_level_histogram": {int(k): int(v) for k, v in enumerate(hist)},
              "fraction_above": {t: float((top > t).sum()) / n for t in range(1, output.levels)},
              "qann_tied": tied / n,
              "command": "python benchmarks/output_levels.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
