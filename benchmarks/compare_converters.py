"""qffs next to SpikingJelly and sinabs: accuracy at every t on the same network and images.

    pip install -e '.[bench]'
    python benchmarks/compare_converters.py --checkpoint models/fmnist_vgg_small.pt \\
        --qann runs/results/q2_3/qann.pt --samples 2000 --out-dir docs/results/fmnist/converters

The FP checkpoint is converted by SpikingJelly 2.0.0 (rate coding, its "max" and "99.9%"
recipes) and sinabs 3.1.3 (``from_model`` after data-based weight normalisation), see
:mod:`converters`; qffs simulates the QANN made from the same checkpoint (all three readouts).
All run on the same test images to ``--timesteps``. Writes ``converters.json`` (every curve, time
per image, the command), ``converters.png`` (accuracy vs t, log-scaled t) and ``converters.md``
(the table at t = 2, 4, …, T).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TABLE_STEPS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _curve(run, batches, timesteps: int) -> tuple[list[float], float]:
    """Accuracy after each step of ``run(x, T)`` ([T, B, classes]) over ``batches``, and seconds per image."""
    correct, samples, seconds = torch.zeros(timesteps), 0, 0.0
    for x, y in batches:
        start = time.perf_counter()
        out = run(x, timesteps)
        seconds += time.perf_counter() - start
        correct += (out.argmax(-1) == y).sum(1).float()
        samples += y.numel()
    return (correct / samples).tolist(), seconds / samples


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qffs.report import save_accuracy_plot

    fig, ax = plt.subplots(figsize=(7.2, 4.6), dpi=120)
    ts = list(range(1, result["timesteps"] + 1))
    for name, row in result["curves"].items():
        ax.plot(ts, [100 * a for a in row["accuracy"]], lw=2.2 if name == "qffs, count" else 1.2, label=name)
    ax.axhline(100 * result["fp_accuracy"], ls=":", color="#2ca02c", label=f"FP ANN {100 * result['fp_accuracy']:.2f}%")
    ax.axhline(100 * result["qann_accuracy"], ls="--", color="#444444",
               label=f"QANN {100 * result['qann_accuracy']:.2f}%")
    ax.set_xscale("log", base=2)
    save_accuracy_plot(fig, ax, result["title"], path, legend_size=7)


def _table(result: dict) -> str:
    steps = [t for t in TABLE_STEPS if t <= result["timesteps"]]
    lines = ["| converter | " + " | ".join(f"t = {t}" for t in steps) + " | ms per image (T = "
             f"{result['timesteps']}) |", "| --- |" + " ---: |" * (len(steps) + 1)]
    for name, row in result["curves"].items():
        cells = [f"{100 * row['accuracy'][t - 1]:.2f}" for t in steps]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {1000 * row['seconds_per_image']:.2f} |")
    lines.append(f"\nFP ANN {100 * result['fp_accuracy']:.2f} %, QANN {100 * result['qann_accuracy']:.2f} %, "
                 f"{result['samples']} test images; `{result['command']}`")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="the FP checkpoint every converter starts from")
    parser.add_argument("--qann", required=True, help="qffs' QANN made from that checkpoint (qffs quantize)")
    parser.add_argument("--samples", type=int, default=2000, help="test images (the first N)")
    parser.add_argument("--timesteps", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--calibration", type=int, default=512, help="training images for the converters' scales")
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args(argv)

    from converters import sinabs_snn, spikingjelly_snn

    from qffs.artifacts import load_qann
    from qffs.data import load_dataset, make_loader
    from qffs.evaluate import evaluate_snn
    from qffs.io import load_model
    from qffs.snn import convert

    torch.manual_seed(0)
    fp, ckpt = load_model(args.checkpoint)
    fp.eval()
    qann, meta = load_qann(args.qann)
    dataset = ckpt.meta.get("dataset") or "fashion-mnist"
    calibration = [x for x, _ in make_loader(load_dataset(dataset, "train", limit=args.calibration, augment=False),
                                             128)]
    batches = list(make_loader(load_dataset(dataset, "test", limit=args.samples), args.batch_size))
    with torch.no_grad():
        fp_acc = sum(float((fp(x).argmax(1) == y).sum()) for x, y in batches) / args.samples
    curves = {}
    start = time.perf_counter()
    report = evaluate_snn(convert(qann), batches, args.timesteps, qann=qann)
    per_image = (time.perf_counter() - start) / args.samples
    for readout, curve in report.snn_accuracy_by_readout.items():
        curves[f"qffs, {readout}"] = {"accuracy": curve, "seconds_per_image": per_image}
    makers = {"SpikingJelly, max": lambda: spikingjelly_snn(fp, calibration, "max"),
              "SpikingJelly, 99.9%": lambda: spikingjelly_snn(fp, calibration, "99.9%"),
              "sinabs": lambda: sinabs_snn(fp, calibration)}
    refused = {}
    for name, make in makers.items():
        try:
            run = make()
        except ValueError as error:
            refused[name] = str(error)
            continue
        accuracy, seconds = _curve(run, batches, args.timesteps)
        curves[name] = {"accuracy": accuracy, "seconds_per_image": seconds}
        print(f"{name}: t={args.timesteps} {100 * accuracy[-1]:.2f}%  {1000 * seconds:.2f} ms/image", flush=True)
    given = argv if argv is not None else sys.argv[1:]
    result = {"command": "python benchmarks/compare_converters.py " + " ".join(given),
              "title": f"{meta['model']} on {dataset}: qffs ({meta.get('bits')}-bit QANN) vs SpikingJelly and sinabs "
                       f"(FP network), {args.samples} test images",
              "timesteps": args.timesteps, "samples": args.samples, "fp_accuracy": fp_acc,
              "qann_accuracy": report.qann_accuracy, "curves": curves, "not_converted": refused}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from qffs.files import write_text_atomic

    write_text_atomic(out / "converters.json", json.dumps(result, indent=2))
    write_text_atomic(out / "converters.md", _table(result))
    _plot(result, out / "converters.png")
    print(_table(result))
    return result


if __name__ == "__main__":
    main()
