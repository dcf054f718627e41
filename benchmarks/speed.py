"""Runtime speed: the SNN against the ANN it came from, measured as ratios in one process.

    python benchmarks/speed.py                      # shipped Fashion-MNIST VGG, 1,024 test images
    python benchmarks/speed.py --rounds 3 --compare --out docs/benchmarks/speed.json
    python benchmarks/speed.py --checkpoint resnet20_cifar10.pt --compare --out docs/benchmarks/speed_resnet20.json

Measures, interleaved over ``--rounds`` rounds (minimum taken, as these machines are shared and
noisy): the ANN forward, the QANN forward, the per-step runtime (the default: quiet samples
dropped, rows without input skipped, fused CPU kernels) and the layer-by-layer runtime at
T = 4/8/16/32, and the per-step runtime at T = 8 on PyTorch operations alone (``QFFS_NATIVE=0``:
what runs without a C compiler), all on the same images in batches of ``--batch-size``. Also reports
the run's *dense floor*: Σ_layers (active (step, sample) slices × MACs per slice) / ANN MACs,
the arithmetic the spikes require if every active slice is a dense product. With the bench extra
installed (``pip install -e '.[bench]'``), ``--compare`` times SpikingJelly's and sinabs'
converters on the same FP network and images too (:mod:`converters`), each over all T steps.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _comparisons(fp, calibration) -> tuple[dict, dict]:
    """The other converters on the same FP network: (name → run(x, T), name → why it cannot take it)."""
    try:
        from converters import sinabs_snn, spikingjelly_snn
    except ImportError as error:
        raise SystemExit(f"--compare needs the bench extra (pip install -e '.[bench]'): {error}") from None
    runs, refused = {}, {}
    for name, make in (("spikingjelly", lambda: spikingjelly_snn(fp, calibration, "99.9%")),
                       ("sinabs", lambda: sinabs_snn(fp, calibration))):
        try:
            runs[name] = make()
        except ValueError as error:
            refused[name] = str(error)
            print(f"{name}: cannot convert this network: {error}")
    return runs, refused


def main(argv: list[str] | None = None) -> dict:
    from workload import add_arguments, finish, interleaved_minimum, load_workload

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--timesteps", default="4,8,16,32")
    parser.add_argument("--compare", action="store_true",
                        help="also time SpikingJelly's and sinabs' converters (pip install -e '.[bench]')")
    args = parser.parse_args(argv)

    work = load_workload(args.checkpoint, args.samples, args.batch_size)
    fp, train, batches, qann, snn = work.fp, work.train, work.batches, work.qann, work.snn
    steps = [int(t) for t in args.timesteps.split(",")]

    from qffs.snn import native
    from qffs.snn.allocator import keep_freed_memory

    kept = keep_freed_memory()          # as a simulation would on its first call: every run alike

    def without_kernels(x, T):
        """The per-step runtime on PyTorch operations alone (what runs without a C compiler)."""
        os.environ["QFFS_NATIVE"] = "0"
        native.library.cache_clear()
        try:
            return snn.simulate(x, T, record=False, mode="step")
        finally:
            del os.environ["QFFS_NATIVE"]
            native.library.cache_clear()

    runs = {"ann": lambda x: fp(x), "qann": lambda x: qann(x)}
    for T in steps:
        runs[f"step T={T}"] = lambda x, T=T: snn.simulate(x, T, record=False, mode="step")
        runs[f"layer T={T}"] = lambda x, T=T: snn.simulate(x, T, record=False, mode="layer")
    if 8 in steps:
        runs["step T=8, PyTorch ops"] = lambda x: without_kernels(x, 8)
    refused: dict = {}
    if args.compare:
        converted, refused = _comparisons(fp, train)
        for name, run in converted.items():
            for T in steps:
                runs[f"{name} T={T}"] = lambda x, T=T, run=run: run(x, T)
    best = interleaved_minimum(runs, batches, args.rounds)
    floor = {}
    with torch.no_grad():
        for T in steps:
            macs = active = 0.0
            for x in batches:
                r = snn.simulate(x, T, record=True, mode="layer")
                for syn in r.synapses:
                    active += float(syn.active_slices.sum()) * syn.macs
                    macs += syn.macs * x.shape[0]
            floor[T] = active / macs
    ann = best["ann"]
    result = {
        "command": "python benchmarks/speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "samples": args.samples, "batch_size": args.batch_size, "rounds": args.rounds,
        "seconds": best,
        "network": work.network,
        "ratio_to_ann": {name: t / ann for name, t in best.items()},
        "dense_floor": {str(T): f for T, f in floor.items()},
        "not_converted": refused,
        "fused_kernels": native.library() is not None,
        "malloc_keeps_freed_memory": kept,
    }
    print(f"{'run':<20}{'seconds':>9}{'x ANN':>8}")
    for name, t in best.items():
        print(f"{name:<20}{t:9.3f}{t / ann:8.2f}")
    print("dense floor (x ANN MACs): " + ", ".join(f"T={T}: {f:.2f}" for T, f in floor.items()))
    return finish(result, args.out)


if __name__ == "__main__":
    main()
