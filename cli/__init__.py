"""The ``qffs`` command line (installed as ``qffs.cli``; the console script calls :func:`entry`).

This module imports nothing heavy, so that a Ctrl-C while the commands (torch, typer) are still
being imported also ends with exit code 130 and one line instead of a traceback.
"""

from __future__ import annotations

import sys


def entry() -> None:
    """The console script: run the command line, exit with its code."""
    # loaded when the command runs, so that `qffs --help` and the other commands start fast
    from qffs.signals import exit_code, ignore_further, stop_on_signals, stop_word

    stop_on_signals()   # SIGTERM too, from the first import on
    code = None
    try:
        # loaded when the command runs, so that `qffs --help` and the other commands start fast
        from qffs.cli.main import main

        code = main(console=True)   # which ignores signals once the command is done
    except KeyboardInterrupt:   # during start-up imports (main itself handles it once running)
        ignore_further()
        if code is None:
            print(f"qffs: {stop_word()} while starting; nothing was written", file=sys.stderr)
            code = exit_code()
    sys.exit(code)
