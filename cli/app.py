"""The Typer application object and the options every command shares."""

from __future__ import annotations

import typer

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
