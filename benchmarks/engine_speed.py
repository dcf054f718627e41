"""This checkout's runtime against an earlier commit's, in one process, interleaved.

    python benchmarks/engine_speed.py --baseline 34e449e
    python benchmarks/engine_speed.py --baseline 34e449e --checkpoint models/resnet20_cifar10.pt \
        --out docs/benchmarks/engine_speed_resnet20.json

The baseline's ``qffs`` package is taken from git (``git archive``) into a temporary folder and
imported as ``qffs_baseline`` (its imports rewritten), so both runtimes simulate the same
converted QANN on the same batches in the same process, their runs interleaved over
``--rounds`` rounds (each pair in alternating order) and the minimum kept (these machines are
shared and noisy, and a large run's time depends on what the allocator kept from the one before). Reports per
mode and T the seconds of each and the ratio new / baseline, after checking that both give
the same results (curve, readouts, convergence and every layer's record, on every batch).
For a refactor of the engine: a ratio within 1.05 keeps the speed.
"""

from __future__ import annotations

import argparse
import importlib
import io
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def import_baseline(rev: str, folder: Path):
    """The ``qffs`` package of commit ``rev`` as the module ``qffs_baseline``."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "qffs"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    (folder / "qffs").rename(folder / "qffs_baseline")
    for path in (folder / "qffs_baseline").rglob("*.py"):
        text = path.read_text()
        path.write_text(re.sub(r"\bqffs\.(?!cli\b)", "qffs_baseline.", re.sub(r"(from|import) qffs\b(?!\.)",
                                                                                   r"\1 qffs_baseline", text)))
    sys.path.insert(0, str(folder))
    return importlib.import_module("qffs_baseline")


def baseline_snn(package, work):
    """The workload's QANN rebuilt with the baseline's quantizer classes (same state), converted by it."""
    qann = importlib.import_module(f"{package.__name__}.quant").quantize(work.fp, bits=2, output_bits=3)
    qann.load_state_dict(work.qann.state_dict())
    return importlib.import_module(f"{package.__name__}.snn").convert(qann.eval())


def same_results(a, b, mode: str) -> None:
    """Two simulations agree exactly: curve, readouts, convergence, and every layer's record."""
    def equal(x, y, what: str) -> None:
        assert (x is None and y is None) or torch.equal(x, y), f"{mode}: the runtimes disagree on {what}"

    equal(a.output, b.output, "the output")
    for name in a.readouts:
        equal(a.readouts[name], b.readouts[name], f"the {name} readout")
    equal(a.convergence_step, b.convergence_step, "convergence")
    equal(a.converged, b.converged, "quiet")
    assert [r.name for r in a.neurons] == [r.name for r in b.neurons], f"{mode}: neuron layers differ"
    for r, q in zip(a.neurons, b.neurons):
        for field in ("pos_spikes", "neg_spikes", "counts"):
            equal(getattr(r, field), getattr(q, field), f"{r.name}.{field}")
    assert [r.name for r in a.synapses] == [r.name for r in b.synapses], f"{mode}: weighted layers differ"
    for r, q in zip(a.synapses, b.synapses):
        assert r.macs == q.macs
        for field in ("synops", "events", "active_slices"):
            equal(getattr(r, field), getattr(q, field), f"{r.name}.{field}")


def main(argv: list[str] | None = None) -> dict:
    from workload import add_arguments, finish, interleaved_minimum, load_workload

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--baseline", required=True, help="the commit to compare with (e.g. the one before a refactor)")
    parser.add_argument("--timesteps", default="4,8,16,32")
    parser.add_argument("--modes", default="step,layer")
    args = parser.parse_args(argv)

    work = load_workload(args.checkpoint, args.samples, args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        baseline = baseline_snn(import_baseline(args.baseline, Path(tmp)), work)
        current = work.snn
        steps = [int(t) for t in args.timesteps.split(",")]
        modes = args.modes.split(",")
        for mode in modes:         # the same answer before timing anything: every record of every batch
            for x in work.batches:
                same_results(current.simulate(x, max(steps), mode=mode, record_counts=True),
                             baseline.simulate(x, max(steps), mode=mode, record_counts=True), mode)
        runs = {"ann": lambda x: work.fp(x)}
        for mode in modes:
            for T in steps:
                runs[f"baseline {mode} T={T}"] = lambda x, T=T, m=mode: baseline.simulate(x, T, record=False, mode=m)
                runs[f"new {mode} T={T}"] = lambda x, T=T, m=mode: current.simulate(x, T, record=False, mode=m)
        best = {name: float("inf") for name in runs}
        for round_ in range(args.rounds):   # each pair in both orders: the allocator's state after a run
            order = list(runs) if round_ % 2 == 0 else [n.replace("new ", "@").replace("baseline ", "new ")
                                                        .replace("@", "baseline ") for n in runs]
            times = interleaved_minimum({name: runs[name] for name in order}, work.batches, 1)   # favours the next
            best = {name: min(best[name], times[name]) for name in runs}
    rows = {f"{mode} T={T}": {"baseline_s": round(best[f"baseline {mode} T={T}"], 4),
                              "new_s": round(best[f"new {mode} T={T}"], 4),
                              "ratio": round(best[f"new {mode} T={T}"] / best[f"baseline {mode} T={T}"], 3)}
            for mode in modes for T in steps}
    for name, row in rows.items():
        print(f"{name:>14}: baseline {row['baseline_s']:.3f} s, new {row['new_s']:.3f} s, ratio {row['ratio']:.3f}")
    result = {"network": work.network, "baseline": args.baseline, "samples": args.samples,
              "batch_size": args.batch_size, "rounds": args.rounds, "threads": torch.get_num_threads(),
              "ann_s": round(best["ann"], 4), "runs": rows,
              "command": "python benchmarks/engine_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    return finish(result, args.out)


if __name__ == "__main__":
    main()
