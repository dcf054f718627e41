"""The Typer application object and the options every command shares."""

from __future__ import annotations

from typing import Optional

import typer

from qffs.errors import QffsError

#: Preprocessing options, shared by every command that reads data (validated in qffs.data).
MEAN_OPTION = typer.Option(
    None, "--mean", metavar="M1,M2,..",
    help="Input normalisation the checkpoint was trained with: per-channel mean of images scaled to [0, 1], "
         "comma-separated (e.g. 0.485,0.456,0.406). Default: the value recorded in the checkpoint, else the "
         "dataset's usual one.")
STD_OPTION = typer.Option(
    None, "--std", metavar="S1,S2,..",
    help="Per-channel standard deviation, comma-separated (e.g. 0.229,0.224,0.225). Default: as for --mean.")
IMAGE_SIZE_OPTION = typer.Option(
    None, "--image-size", min=1,
    help="ImageFolder input size in pixels. Default: recorded in the checkpoint, else the tree's own image size "
         "up to 64 px (CIFAR-style), else 224.")

#: The validation split of training jobs (qffs.split): where the best epoch is chosen.
VAL_SIZE_OPTION = typer.Option(
    None, "--val-size", metavar="N",
    help="Training images held out (seeded, deterministic) to choose the best epoch on; the test set is then "
         "evaluated once, on the kept weights. Default: 5,000 for CIFAR-10 and (Fashion-)MNIST, 10% of an "
         "ImageFolder tree or of a --limit pool. 0 needs --select-on-test.")
VAL_SEED_OPTION = typer.Option(0, "--val-seed", help="Seed of the validation hold-out (independent of --seed).")
SELECT_ON_TEST_OPTION = typer.Option(
    False, "--select-on-test",
    help="With --val-size 0: choose the best epoch on the test set (optimistic; every report says so).")

#: --model for commands that rebuild an artifact: only needed (and only used) for model files.
ARTIFACT_MODEL_OPTION = typer.Option(
    None, "--model", "-m",
    help="The model file, when the artifact was made from one (path/to/model.py:factory): qffs never runs code "
         "that an artifact names, only a file you name, and only if it is the file the artifact was made with.")

#: --resume for training jobs (qffs.resume): continue the interrupted run whose state lies beside --out.
RESUME_OPTION = typer.Option(
    False, "--resume",
    help="Continue an interrupted run of this same command from the state saved after its last finished epoch "
         "(NAME.resume.pt beside --out); the result equals an uninterrupted run. Also splits long trainings into "
         "chunks.")

TEST_DATASET_OPTION = typer.Option(None, "--dataset", "-d", help="Test set (default: the one the artifact was trained "
                                                                 "on).")
TEST_DATA_ROOT_OPTION = typer.Option(None, "--data-root", help="Dataset location (default: the one recorded in the "
                                                               "artifact).")
MEMORY_OPTION = typer.Option(
    None, "--memory", metavar="<bytes>",
    help="Memory budget of the simulation, e.g. 4GB or 512MiB: larger batches are simulated in chunks of "
         "samples, with the same results. Default: half the memory free on the device.")
READOUT_OPTION = typer.Option(
    "count", "--readout",
    help="Headline readout of the report (all are measured): count (spike counts, exact), tiebreak (counts, "
         "ties broken by the output membrane) or current (integrated output current).")

#: What a report states and shows: energy constants and the test images followed step by step.
ENERGY_OPTION = typer.Option(
    "auto", "--energy", metavar="PRESET|AC,MAC",
    help="Energy per operation of the estimate: a preset (Horowitz, ISSCC 2014, 45 nm; accumulate / "
         "multiply-accumulate: fp32-45nm 0.9/4.6 pJ, int32-45nm 0.1/3.2 pJ, int8-45nm 0.03/0.23 pJ) or two "
         "energies in pJ, 'AC,MAC'. auto: int32-45nm for integer weights (--weight-bits), else fp32-45nm.")
EXAMPLES_OPTION = typer.Option(
    4, "--examples", metavar="N",
    help="Test images whose spike raster and output membranes the report shows (0-16; the first 256 images are "
         "followed step by step for the off-level figure).")


def printable(text: str) -> str:
    """Text that came from a file, safe for a terminal: control characters (escapes, newlines) shown escaped."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def channel_values(text: Optional[str], option: str) -> Optional[tuple[float, ...]]:
    """'0.485,0.456,0.406' → (0.485, 0.456, 0.406); None stays None (qffs.data checks the values)."""
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise QffsError(f"{option} expects comma-separated numbers, one per channel (e.g. {option} "
                        f"0.485,0.456,0.406), got {text!r}") from None


def examples(*lines: str) -> str:
    """An "Examples:" block that help output keeps verbatim (click's \\b marker: no re-wrapping)."""
    return "Examples:\n\n\b\n" + "\n".join(f"  {line}" for line in lines)


app = typer.Typer(
    name="qffs",
    help=(
        "QFFS: pretrained ANN → 2/3-bit quantized ANN → spiking network that answers in a few "
        "time steps.\n\n"
        + examples(
            "qffs demo                                  # whole pipeline on the shipped Fashion-MNIST net",
            "qffs quantize fp.pt --out qann.pt          # stage 1: 2-bit hidden / 3-bit output QANN",
            "qffs convert qann.pt --out snn.pt          # stage 2: IF neurons, thresholds, BN folded",
            "qffs evaluate snn.pt -T 16 --out-dir res/  # stage 3: latency-accuracy curve",
            "qffs run fp.pt --out-dir runs/x            # all three stages",
            "qffs export snn.pt --out snn.onnx -T 8     # the SNN for onnxruntime (or --to nir)",
        )
        + "\n\nErrors print one line and exit with code 2; add --debug for the traceback."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
) -> None:
    """Global options (``--debug`` may also appear anywhere on the command line)."""
