"""The ``qffs`` command line (installed as ``qffs.cli``; the console script calls :func:`entry`).

This module imports nothing heavy, so that a Ctrl-C while the commands (torch, typer) are still
being imported also ends with exit code 130 and one line instead of a traceback.
"""

from __future__ import annotations

import sys


def entry() -> None:
    """The console script: run the command line, exit with its code."""
    try:
        from qffs.cli.main import main

        code = main()
    except KeyboardInterrupt:   # during start-up imports (main itself handles it once running)
        print("qffs: interrupted while starting; nothing was written", file=sys.stderr)
        code = 130
    sys.exit(code)
