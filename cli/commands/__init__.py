"""One module per command; importing this package registers them all on ``cli.app.app``."""

from cli.commands import train, quantize, snn, pipeline, info  # noqa: F401, I001  (order = help order)
