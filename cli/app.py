"""The Typer application object and the options every command shares."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="qffs",
    help=(
        "QFFS: pretrained ANN → 2/3-bit quantized ANN → spiking network that answers in a few "
        "time steps.\n\n"
        "Examples:\n\n"
        "  qffs demo                                      # the whole pipeline on the shipped Fashion-MNIST net\n\n"
        "  qffs train --model vgg_small --dataset fashion-mnist --epochs 15 --out fp.pt\n\n"
        "  qffs info models/fmnist_vgg_small.pt\n\n"
        "Errors print one line and exit with code 2; add --debug for the traceback."
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
