"""Whether an exported QANN computes its levels in runtimes that know nothing of qffs.

For a QANN artifact (default: the QAT demo network in a run folder, or the shipped CIFAR-10
ResNet-20 QANN): export it in both forms (``--qann-form float|qcdq``) and compare, on the first
test images, every logit of onnxruntime's default session, onnxruntime with its QDQ rewrites off,
and ``onnx.reference`` (on fewer images: it is numpy) against ``qann(x)`` in torch.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("qann", help="a QANN artifact (qffs quantize)")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--reference-samples", type=int, default=1000)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator

    from qffs.artifacts import load_qann
    from qffs.export.onnx import QANN_FORMS, qann_to_onnx
    from qffs.export.runtime import session
    from qffs.jobs.loaders import test_data_for
    from qffs.jobs.options import DataOptions
    from qffs.report import environment

    qann, meta = load_qann(args.qann)
    _, _, loader = test_data_for(args.qann, meta, DataOptions(test_limit=args.samples, batch_size=args.samples))
    x, _ = next(iter(loader))
    with torch.no_grad():
        ref = qann.float().eval()(x).numpy()
    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        for form in QANN_FORMS:
            path = str(qann_to_onnx(qann, Path(folder) / f"{form}.onnx", x, form=form))
            runs = {"onnxruntime defaults": lambda p=path: ort.InferenceSession(p).run(None, {"x": x.numpy()})[0],
                    "onnxruntime, QDQ rewrites off": lambda p=path: session(p).run(None, {"x": x.numpy()})[0],
                    "onnx.reference": lambda p=path: ReferenceEvaluator(p).run(
                        None, {"x": x[:args.reference_samples].numpy()})[0]}
            for name, run in runs.items():
                started = time.perf_counter()
                try:
                    got = run()
                except Exception as err:   # onnx.reference refuses opset-18 DequantizeLinear
                    rows[f"{form} / {name}"] = {"error": str(err).splitlines()[0][:200]}
                    continue
                want = ref[:len(got)]
                rows[f"{form} / {name}"] = {"samples": len(got), "logits": int(want.size),
                                            "differing_logits": int((got != want).sum()),
                                            "differing_predictions": int((got.argmax(1) != want.argmax(1)).sum()),
                                            "seconds": round(time.perf_counter() - started, 1)}
                print(form, name, rows[f"{form} / {name}"], flush=True)
    result = {"qann": args.qann, "rows": rows, "command": " ".join(sys.argv), "environment": environment()}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
