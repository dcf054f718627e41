"""QAT overhead: time of one QAT epoch / one FP epoch, same model, batch and data, one run.

Goal (issue 3): ratio <= 1.25. Run on demand:

    .venv/bin/python benchmarks/qat_overhead.py [--model vgg_small] [--samples 12800] [--repeats 3]

Writes docs/benchmarks/qat_overhead.json and prints a one-line summary. FP and QAT epochs are
interleaved and the median of ``--repeats`` is taken, so drift of the machine hits both alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qffs.data import dataset_info, load_dataset, make_loader  # noqa: E402
from qffs.files import write_text_atomic  # noqa: E402
from qffs.models import build_model, with_defaults  # noqa: E402
from qffs.quant import calibrate, quantize  # noqa: E402
from qffs.report import environment  # noqa: E402


def epoch_seconds(model: nn.Module, loader, device: torch.device) -> float:
    """One training epoch (forward, backward, SGD step), wall time."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    model.train()
    start = time.perf_counter()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vgg_small")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--samples", type=int, default=12800)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "docs" / "benchmarks" / "qat_overhead.json"))
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    info = dataset_info(args.dataset)
    spec = with_defaults(args.model, num_classes=info.num_classes, in_channels=info.in_channels)
    # Pre-load the batches once so data loading is excluded from both timings alike.
    loader = make_loader(load_dataset(args.dataset, "train", limit=args.samples), args.batch_size, shuffle=True)
    batches = [(x, y) for x, y in loader]
    torch.manual_seed(0)
    fp = build_model(spec).to(device)
    qann = quantize(fp, bits=2, output_bits=3).to(device)
    calibrate(qann, [batches[0][0].to(device)], method="lsq")
    epoch_seconds(fp, batches[:4], device)  # warm-up
    epoch_seconds(qann, batches[:4], device)
    fp_times, qat_times = [], []
    for _ in range(args.repeats):
        fp_times.append(epoch_seconds(fp, batches, device))
        qat_times.append(epoch_seconds(qann, batches, device))
    fp_s, qat_s = statistics.median(fp_times), statistics.median(qat_times)
    result = {
        "benchmark": "qat_overhead", "model": spec, "dataset": args.dataset, "samples": len(batches) * args.batch_size,
        "batch_size": args.batch_size, "device": str(device), "threads": torch.get_num_threads(),
        "fp_epoch_seconds": fp_times, "qat_epoch_seconds": qat_times,
        "ratio": qat_s / fp_s, "goal": 1.25, "command": "python " + " ".join(sys.argv),
        "environment": environment(),
    }
    write_text_atomic(args.out, json.dumps(result, indent=2))
    print(f"FP epoch {fp_s:.2f}s, QAT epoch {qat_s:.2f}s, ratio {qat_s / fp_s:.3f} (goal <= 1.25); wrote {args.out}")


if __name__ == "__main__":
    main()
