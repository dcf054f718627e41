"""The evaluate stage of the README's demo, this checkout against an earlier commit, in fresh processes.

    python benchmarks/evaluate_speed.py --baseline 145d9fc --rounds 2 --out docs/benchmarks/evaluate_speed.json

A calibrated QANN of the shipped network (``qffs quantize models/fmnist_vgg_small.pt
--epochs 0``) is converted once, by this checkout; then each round runs
``evaluate_checkpoint`` on the whole Fashion-MNIST test set (10,000 images, T = 16, the demo's
defaults) once with the baseline's code (a git worktree of ``--baseline``) and once with this
checkout's, each in a fresh process with its set-up included. The minimum per side is kept and
both reports' accuracy curves must be equal.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

EVALUATE = """
import json, sys, qffs
from qffs.jobs.evaluation import evaluate_checkpoint
from qffs.jobs.options import DataOptions
report = evaluate_checkpoint(sys.argv[1], DataOptions(), int(sys.argv[2]), device="cpu")
print(json.dumps({"file": qffs.__file__, "curve": report["snn_accuracy"]}))
"""


def _run(tree: Path, snn: Path, timesteps: int) -> tuple[float, dict]:
    """Seconds of one evaluate process on the code in ``tree``, and what it printed."""
    env = dict(os.environ, PYTHONPATH=str(tree), QFFS_PROGRESS="0")
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", EVALUATE, str(snn), str(timesteps)], env=env, cwd=tree,
                         capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if run.returncode:
        raise SystemExit(f"evaluate with the code in {tree} failed:\n{run.stderr[-2000:]}")
    printed = json.loads(run.stdout.strip().splitlines()[-1])
    if not printed["file"].startswith(str(tree)):
        raise SystemExit(f"the process imported {printed['file']}, not the code in {tree}")
    return seconds, printed


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="145d9fc", help="git revision to compare with")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--timesteps", type=int, default=16)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        baseline = scratch / "baseline"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(baseline), args.baseline],
                       check=True)
        try:
            qffs = [sys.executable, "-m", "qffs.cli.main"]
            subprocess.run([*qffs, "quantize", str(REPO / "models" / "fmnist_vgg_small.pt"), "--epochs", "0",
                            "--out", str(scratch / "qann.pt")], check=True, capture_output=True)
            subprocess.run([*qffs, "convert", str(scratch / "qann.pt"), "--out", str(scratch / "snn.pt")],
                           check=True, capture_output=True)
            best: dict[str, float] = {}
            curves: dict[str, list] = {}
            for _ in range(args.rounds):
                for name, tree in (("baseline", baseline), ("current", REPO)):
                    seconds, printed = _run(tree, scratch / "snn.pt", args.timesteps)
                    best[name] = min(best.get(name, float("inf")), seconds)
                    curves[name] = printed["curve"]
                    print(f"{name:<9} {seconds:7.1f} s")
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(baseline)], check=False)
    if curves["baseline"] != curves["current"]:
        raise SystemExit("the two reports' accuracy curves differ")
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    if subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                      text=True).stdout.strip():
        commit += "+uncommitted"              # the measured tree is not that commit
    result = {
        "command": "python benchmarks/evaluate_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "baseline": args.baseline, "current": commit, "timesteps": args.timesteps, "rounds": args.rounds,
        "seconds": best, "speedup": best["baseline"] / best["current"],
        "accuracy_at_T": curves["current"][-1],
    }
    print(f"baseline {args.baseline}: {best['baseline']:.1f} s, current {commit}: {best['current']:.1f} s, "
          f"{result['speedup']:.2f}x faster; curves equal")
    from workload import finish

    return finish(result, args.out)


if __name__ == "__main__":
    main()
