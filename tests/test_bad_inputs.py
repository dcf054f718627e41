"""Every mistake a user can make ends the same way: exit code 2, one line on stderr, no traceback,
no file created and no input changed (the error contract of issue 10).

Each case runs the command line in-process (``qffs.cli.main.main``: the same code the script
runs, without a fresh interpreter and torch import per case, which made this module the
slowest of the suite), in its own empty working directory (default output folders would land
there), with its outputs pointed into that directory; the shared inputs are hashed before and
after. ``tests/test_cli.py`` runs the real script for the error contract itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from qffs.io import save_checkpoint
from qffs.jobs.convert import convert_checkpoint
from qffs.models import build_model
from qffs.quant import quantize
from tests.test_cli import SHIPPED

# (id, arguments, a fragment the one line must contain). In the arguments, {in} is the folder of
# shared inputs and {out} the case's own (empty) folder.
CASES: list[tuple[str, list[str], str]] = [
    # files that are missing, empty, truncated, text, of the wrong kind, or a directory
    ("missing-file", ["quantize", "{in}/nope.pt", "--out", "{out}/q.pt"], "checkpoint not found"),
    ("empty-file", ["quantize", "{in}/empty.pt", "--out", "{out}/q.pt"], "empty.pt"),
    ("text-file", ["quantize", "{in}/notes.pt", "--out", "{out}/q.pt"], "notes.pt"),
    ("truncated-file", ["quantize", "{in}/truncated.pt", "--out", "{out}/q.pt"], "truncated.pt"),
    ("html-file", ["info", "{in}/page.pth"], "page.pth"),
    ("lfs-pointer", ["info", "{in}/lfs.pt"], "lfs.pt"),
    ("truncated-info", ["info", "{in}/truncated.pt"], "truncated.pt"),
    ("directory-as-file", ["info", "{in}"], "a directory"),
    ("corrupt-safetensors", ["info", "{in}/bad.safetensors"], "bad.safetensors"),
    ("fp-to-convert", ["convert", "{in}/fp.pt", "--out", "{out}/s.pt"], "not a quantized ANN"),
    ("fp-to-evaluate", ["evaluate", "{in}/fp.pt", "--out-dir", "{out}/ev"], "not an SNN"),
    ("qann-to-evaluate", ["evaluate", "{in}/qann.pt", "--out-dir", "{out}/ev"], "convert it first"),
    ("snn-to-ablate", ["ablate", "{in}/snn.pt", "--out-dir", "{out}/ab"], "already converted"),
    ("fp-as-ablate-also", ["ablate", "{in}/qann.pt", "--also", "{in}/fp.pt", "--out-dir", "{out}/ab"], "quantize it "
                                                                                                       "first"),
    ("snn-to-convert", ["convert", "{in}/snn.pt", "--out", "{out}/s.pt"], "already converted"),
    ("qann-to-quantize", ["quantize", "{in}/qann.pt", "--out", "{out}/q.pt"], "not a full-precision"),
    ("pretrained-empty", ["train", "--pretrained", "{in}/empty.pt", "--out", "{out}/t.pt", "--epochs", "1"],
     "empty.pt"),
    # outputs that would destroy an input or cannot be written
    ("out-is-input", ["quantize", "{in}/fp.pt", "--out", "{in}/fp.pt"], "would overwrite"),
    ("out-is-inputs-partial", ["quantize", "{in}/kept.partial.pt", "--out", "{in}/kept.pt"], "would overwrite"),
    ("out-is-directory", ["quantize", "{in}/fp.pt", "--out", "{in}"], "is a directory"),
    ("out-wrong-suffix", ["quantize", "{in}/fp.pt", "--out", "{out}/q.txt"], "must end in"),
    ("out-under-a-file", ["quantize", "{in}/fp.pt", "--out", "{in}/notes.pt/q.pt"], "is a file"),
    ("out-dir-is-a-file", ["evaluate", "{in}/snn.pt", "--out-dir", "{in}/notes.pt"], "is a file, not a folder"),
    ("run-out-dir-under-a-file", ["run", "{in}/fp.pt", "--out-dir", "{in}/notes.pt/run"], "is a file"),
    ("convert-out-is-input", ["convert", "{in}/qann.pt", "--out", "{in}/qann.pt"], "would overwrite"),
    # out-of-range and non-finite numbers
    ("bits-0", ["quantize", "{in}/fp.pt", "--out", "{out}/q.pt", "--bits", "0"], "--bits"),
    ("bits-64", ["quantize", "{in}/fp.pt", "--out", "{out}/q.pt", "--bits", "64"], "--bits"),
    ("output-bits-9", ["quantize", "{in}/fp.pt", "--out", "{out}/q.pt", "--output-bits", "9"], "--output-bits"),
    ("lr-nan", ["quantize", "{in}/fp.pt", "--out", "{out}/q.pt", "--lr", "nan"], "learning rate"),
    ("lr-inf", ["quantize", "{in}/fp.pt", "--out", "{out}/q.pt", "--lr", "inf"], "learning rate"),
    ("lr-negative", ["train", "--out", "{out}/t.pt", "--lr", "-0.1"], "learning rate"),
    ("momentum-1.5", ["quantize", "{in}/fp.pt", "--out", "{out}/q.pt", "--momentum", "1.5"], "momentum"),
    ("weight-decay-negative", ["train", "--out", "{out}/t.pt", "--weight-decay", "-1"], "weight decay"),
    ("gamma-0", ["quantize", "{in}/fp.pt", "--out", "{out}/q.pt", "--gamma", "0"], "gamma"),
    ("label-smoothing-1", ["quantize", "{in}/fp.pt", "--out", "{out}/q.pt", "--label-smoothing", "1"],
     "label smoothing"),
    ("distill-2", ["quantize", "{in}/fp.pt", "--out", "{out}/q.pt", "--distill", "2"], "distillation weight"),
    ("temperature-0", ["quantize", "{in}/fp.pt", "--out", "{out}/q.pt", "--temperature", "0"], "temperature"),
    ("batch-size-0", ["quantize", "{in}/fp.pt", "--out", "{out}/q.pt", "--batch-size", "0"], "--batch-size"),
    ("evaluate-batch-size-0", ["evaluate", "{in}/snn.pt", "--batch-size", "0", "--out-dir", "{out}/ev"],
     "--batch-size"),
    ("workers-negative", ["train", "--out", "{out}/t.pt", "--workers", "-1"], "--workers"),
    ("seed-2-to-the-64", ["quantize", "{in}/fp.pt", "--out", "{out}/q.pt", "--seed", str(2**64)], "--seed"),
    ("limit-0", ["quantize", "{in}/fp.pt", "--out", "{out}/q.pt", "--limit", "0"], "--limit"),
    ("test-limit-negative", ["evaluate", "{in}/snn.pt", "--limit", "-5", "--out-dir", "{out}/ev"], "--test-limit"),
    ("epochs-0-train", ["train", "--out", "{out}/t.pt", "--epochs", "0"], "--epochs"),
    ("epochs-negative", ["quantize", "{in}/fp.pt", "--out", "{out}/q.pt", "--epochs", "-1"], "epochs"),
    ("timesteps-0", ["evaluate", "{in}/snn.pt", "-T", "0", "--out-dir", "{out}/ev"], "1..4096"),
    ("timesteps-huge", ["evaluate", "{in}/snn.pt", "-T", "1000000000", "--out-dir", "{out}/ev"], "1..4096"),
    ("run-timesteps-0", ["run", "{in}/fp.pt", "-T", "0", "--out-dir", "{out}/run"], "1..4096"),
    ("demo-timesteps-huge", ["demo", "-T", "99999", "--out-dir", "{out}/demo"], "1..4096"),
    ("input-window-0", ["convert", "{in}/qann.pt", "--out", "{out}/s.pt", "--input-window", "0"], "input_window"),
    ("image-size-0", ["quantize", "{in}/fp.pt", "--out", "{out}/q.pt", "--image-size", "0"], "--image-size"),
    # unknown names
    ("calibration-unknown", ["quantize", "{in}/fp.pt", "--out", "{out}/q.pt", "--calibration", "kl"], "kl"),
    ("schedule-unknown", ["quantize", "{in}/fp.pt", "--out", "{out}/q.pt", "--schedule", "step"], "schedule"),
    ("readout-unknown", ["evaluate", "{in}/snn.pt", "--readout", "first", "--out-dir", "{out}/ev"], "first"),
    ("memory-unit-unknown", ["evaluate", "{in}/snn.pt", "--memory", "4XB", "--out-dir", "{out}/ev"],
     "--memory must be"),
    ("memory-on-run-zero", ["run", "{in}/fp.pt", "--memory", "0", "--out-dir", "{out}/r"], "--memory must be"),
    ("max-pool-unknown", ["convert", "{in}/qann.pt", "--out", "{out}/s.pt", "--max-pool", "soft"], "--max-pool must "
                                                                                                   "be one of"),
    ("dataset-unknown", ["quantize", "{in}/fp.pt", "--out", "{out}/q.pt", "--dataset", "imagenet21k"], "imagenet21k"),
    ("dataset-mismatch", ["evaluate", "{in}/snn.pt", "--dataset", "cifar10", "--out-dir", "{out}/ev"], "trained on"),
    ("model-unknown", ["quantize", "{in}/fp.pt", "--out", "{out}/q.pt", "--model", "resnet1000"], "unknown model"),
    ("model-unparsable", ["quantize", "{in}/fp.pt", "--out", "{out}/q.pt", "--model", "vgg_small(num_classes="],
     "cannot parse model spec"),
    ("model-file-missing", ["quantize", "{in}/fp.pt", "--out", "{out}/q.pt", "--model", "{in}/gone.py:net"],
     "model file not found"),
    # devices this machine lacks
    ("device-cuda-99", ["quantize", "{in}/fp.pt", "--out", "{out}/q.pt", "--device", "cuda:99"], "CUDA device"),
    ("device-unknown", ["evaluate", "{in}/snn.pt", "--device", "tpu", "--out-dir", "{out}/ev"], "tpu"),
    # preprocessing
    ("mean-not-numbers", ["quantize", "{in}/fp.pt", "--out", "{out}/q.pt", "--mean", "0.1,abc"], "--mean"),
    ("std-zero", ["quantize", "{in}/fp.pt", "--out", "{out}/q.pt", "--std", "0"], "std"),
    ("mean-wrong-channels", ["quantize", "{in}/fp.pt", "--out", "{out}/q.pt", "--mean", "0.1,0.2"], "channel"),
    # the user's own model code failing, or ending the process
    ("model-code-raises", ["quantize", "{in}/fp.pt", "--out", "{out}/q.pt", "--model", "{in}/raises.py:net"],
     "raises.py:3"),
    ("model-code-exits", ["quantize", "{in}/fp.pt", "--out", "{out}/q.pt", "--model", "{in}/exits.py:net"],
     "sys.exit(0)"),
    # a resume state that is not one
    ("resume-garbage", ["quantize", "{in}/fp.pt", "--out", "{in}/held/q.pt", "--resume"],
     "not a readable qffs resume state"),
    # the command line itself
    ("option-not-a-number", ["quantize", "{in}/fp.pt", "--out", "{out}/q.pt", "--bits", "two"], "--bits"),
    ("option-unknown", ["quantize", "{in}/fp.pt", "--out", "{out}/q.pt", "--bitz", "2"], "--bitz"),
    ("option-missing", ["quantize", "{in}/fp.pt"], "--out"),
    ("command-unknown", ["quantise", "{in}/fp.pt"], "quantise"),
]


def _inputs(folder: Path) -> None:
    folder.mkdir()
    shutil.copy(SHIPPED, folder / "fp.pt")
    shutil.copy(SHIPPED, folder / "kept.partial.pt")
    (folder / "empty.pt").write_bytes(b"")
    (folder / "notes.pt").write_text("these are my notes, not weights\n")
    (folder / "truncated.pt").write_bytes(SHIPPED.read_bytes()[: SHIPPED.stat().st_size // 2])
    (folder / "page.pth").write_text("<!DOCTYPE html><html><body>GitHub</body></html>\n")
    (folder / "lfs.pt").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 123\n")
    (folder / "bad.safetensors").write_bytes(b"\xff" * 64)
    spec = "vgg_small(num_classes=10, in_channels=1)"
    qann = quantize(build_model(spec), bits=2, output_bits=3)
    save_checkpoint(folder / "qann.pt", qann.state_dict(), kind="qann", model=spec, bits=2, output_bits=3,
                    dataset="fashion-mnist", input_shape=[1, 28, 28])
    convert_checkpoint(folder / "qann.pt", folder / "snn.pt")
    (folder / "raises.py").write_text("def net():\n    widths = {}\n    return widths['missing']\n")
    (folder / "exits.py").write_text("import sys\n\n\ndef net():\n    sys.exit(0)\n")
    (folder / "held").mkdir()
    (folder / "held" / "q.resume.pt").write_bytes(b"not a resume state")


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, list[str]]]:
    """Every case run once: id → (result, what its folder holds afterwards)."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("bad_inputs")
    inputs = root / "inputs"
    _inputs(inputs)
    before = _snapshot(inputs)

    from qffs.cli.main import main

    def run(case: tuple[str, list[str], str]):
        name, args, _ = case
        out = root / name
        out.mkdir()
        argv = [a.replace("{in}", str(inputs)).replace("{out}", str(out)) for a in args]
        here = os.getcwd()
        os.chdir(out)
        try:
            with contextlib.redirect_stdout(io.StringIO()) as stdout, \
                    contextlib.redirect_stderr(io.StringIO()) as stderr:
                code = main(argv)
        finally:
            os.chdir(here)
        result = subprocess.CompletedProcess(argv, code, stdout.getvalue(), stderr.getvalue())
        return name, (result, sorted(p.name for p in out.iterdir()))

    results = dict(map(run, CASES))
    results["__inputs__"] = (None, [k for k in set(before) | set(_snapshot(inputs))
                                    if before.get(k) != _snapshot(inputs).get(k)])
    return results


def test_there_are_at_least_40_distinct_cases():
    assert len({name for name, _, _ in CASES}) == len(CASES) >= 40
    assert len({tuple(args) for _, args, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("name,args,fragment", CASES, ids=[c[0] for c in CASES])
def test_a_bad_input_gives_one_line_exit_2_and_writes_nothing(outcomes, name, args, fragment):
    result, left = outcomes[name]
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qffs: error: "), result.stderr
    assert "Traceback" not in result.stderr
    assert fragment in lines[0], lines[0]
    assert left == [], f"{name} created {left}"


def test_no_input_was_changed(outcomes):
    _, changed = outcomes["__inputs__"]
    assert changed == []
