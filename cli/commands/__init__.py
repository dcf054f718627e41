"""One module per command; importing this package registers them all on ``qffs.cli.app.app``."""

from qffs.cli.commands import train, quantize, snn, finetune, export, ablate, pipeline, info  # noqa: F401, I001  (order = help order)
