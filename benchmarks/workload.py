"""The workload the speed benchmarks share: an FP checkpoint, its calibrated 2/3-bit QANN and SNN,
and batches of test images (default: the shipped Fashion-MNIST VGG)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Workload:
    fp: nn.Module
    network: str                  # "spec on dataset", for the results
    train: list[torch.Tensor]     # 4 training batches: calibration (and the other converters' normalisation)
    batches: list[torch.Tensor]   # the timed test batches
    qann: nn.Module
    snn: nn.Module


def load_workload(checkpoint: str | None, samples: int, batch_size: int) -> Workload:
    """Seeded; the QANN's step sizes calibrated on 4 training batches of ``batch_size``."""
    from qffs.artifacts import SHIPPED_FMNIST
    from qffs.data import load_dataset, make_loader
    from qffs.io import load_model
    from qffs.quant import calibrate, quantize
    from qffs.snn import convert

    torch.manual_seed(0)
    fp, ckpt = load_model(checkpoint or SHIPPED_FMNIST)
    fp.eval()
    dataset = ckpt.meta.get("dataset") or "fashion-mnist"
    train = [x for x, _ in make_loader(load_dataset(dataset, "train", limit=4 * batch_size, augment=False), batch_size)]
    batches = [x for x, _ in make_loader(load_dataset(dataset, "test", limit=samples), batch_size)]
    qann = quantize(fp, bits=2, output_bits=3)
    calibrate(qann, train)
    qann.eval()
    return Workload(fp, f"{ckpt.meta.get('model')} on {dataset}", train, batches, qann, convert(qann))


@torch.no_grad()
def interleaved_minimum(runs: dict, batches: list[torch.Tensor], rounds: int) -> dict[str, float]:
    """Seconds for each run over all ``batches``: the runs interleaved, ``rounds`` times, the minimum kept
    (these machines are shared and noisy: the minimum is the least disturbed)."""
    import time

    best = {name: float("inf") for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            start = time.perf_counter()
            for x in batches:
                fn(x)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def finish(result: dict, out: str | None) -> dict:
    """Write ``result`` as JSON to ``out`` (atomically) when asked; return it."""
    if out:
        import json

        from qffs.files import write_text_atomic

        write_text_atomic(out, json.dumps(result, indent=2))
    return result


def add_arguments(parser) -> None:
    """The options every speed benchmark takes: --checkpoint, --samples, --batch-size, --rounds, --out."""
    parser.add_argument("--checkpoint", default=None, help="FP checkpoint (default: the shipped Fashion-MNIST VGG)")
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
