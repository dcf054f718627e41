"""Exported networks under onnxruntime against qffs' torch runtime, measured in one process.

    python benchmarks/onnx_speed.py --out docs/benchmarks/onnx_speed.json
    python benchmarks/onnx_speed.py --checkpoint models/resnet20_cifar10.pt --samples 512 \\
        --out docs/benchmarks/onnx_speed_resnet20.json

On the same images, batches of ``--batch-size``, interleaved over ``--rounds`` rounds (minimum
taken): the FP network and the QANN in torch and in onnxruntime, the SNN at T in torch (the
per-step runtime, statistics off) and as the exported graph unrolled over T, with and without
the diagnostic outputs a report needs (``qffs evaluate --backend onnxruntime`` runs the latter);
the QANN in both export forms (float operations, the default, and QCDQ).
Prints images per second and each time as a multiple of the torch ANN forward; also how long
each export took. The QANN is calibrated on 4 training batches (2-bit hidden / 3-bit output).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> dict:
    from workload import add_arguments, finish, interleaved_minimum, load_workload

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--timesteps", type=int, default=8)
    args = parser.parse_args(argv)

    import onnxruntime

    from qffs.export.onnx import qann_to_onnx, snn_to_onnx
    from qffs.export.runtime import OnnxSpikingNetwork, session

    work = load_workload(args.checkpoint, args.samples, args.batch_size)
    fp, batches, qann, snn = work.fp, work.batches, work.qann, work.snn
    T = args.timesteps
    folder = Path(tempfile.mkdtemp(prefix="qffs-onnx-bench-"))
    exports = {}
    for name, write in (("fp", lambda p: qann_to_onnx(fp, p, batches[0])),
                        ("qann", lambda p: qann_to_onnx(qann, p, batches[0])),
                        ("qann qcdq", lambda p: qann_to_onnx(qann, p, batches[0], form="qcdq")),
                        ("snn", lambda p: snn_to_onnx(snn, p, batches[0], T)),
                        ("snn diagnostics", lambda p: snn_to_onnx(snn, p, batches[0], T, diagnostics=True))):
        started = time.perf_counter()
        write(folder / f"{name.replace(' ', '_')}.onnx")
        exports[name] = time.perf_counter() - started
    sessions = {name: session(folder / f"{name.replace(' ', '_')}.onnx")
                for name in ("fp", "qann", "qann qcdq", "snn")}
    diagnostics = OnnxSpikingNetwork(folder / "snn_diagnostics.onnx")

    def ort(name):
        s = sessions[name]
        return lambda x: s.run(None, {"x": x.numpy()})

    runs = {"torch ANN": lambda x: fp(x), "onnxruntime ANN": ort("fp"),
            "torch QANN": lambda x: qann(x), "onnxruntime QANN": ort("qann"),
            "onnxruntime QANN (QCDQ)": ort("qann qcdq"),
            f"torch SNN T={T}": lambda x: snn.simulate(x, T, record=False),
            f"onnxruntime SNN T={T}": ort("snn"),
            f"onnxruntime SNN T={T} + diagnostics": lambda x: diagnostics.run(x)}
    best = interleaved_minimum(runs, batches, args.rounds)
    ann = best["torch ANN"]
    result = {
        "command": "python benchmarks/onnx_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
                   f"onnxruntime {onnxruntime.__version__}",
        "network": work.network,
        "samples": args.samples, "batch_size": args.batch_size, "rounds": args.rounds, "timesteps": T,
        "seconds": best, "images_per_second": {k: args.samples / v for k, v in best.items()},
        "ratio_to_ann": {k: v / ann for k, v in best.items()}, "export_seconds": exports,
    }
    print(f"{'run':<38}{'seconds':>9}{'images/s':>10}{'x ANN':>8}")
    for name, t in best.items():
        print(f"{name:<38}{t:9.3f}{args.samples / t:10.0f}{t / ann:8.2f}")
    print("export seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in exports.items()))
    return finish(result, args.out)


if __name__ == "__main__":
    main()
