"""The one exception type users see.

Anything the user can fix (a missing file, a wrong key, an unsupported graph node) raises
:class:`QffsError` with a one-line message that says what is wrong and what to do. The CLI
prints that line and exits with code 2; a traceback means a bug in qffs.
"""

from __future__ import annotations


class QffsError(ValueError):
    """A user-facing error with a one-line, actionable message (a ValueError, so callers can catch it as one)."""


class Interrupted(Exception):
    """The user stopped a job (Ctrl-C); the message says what was kept. Not a ValueError (so
    ``except ValueError`` never swallows it) and not a KeyboardInterrupt (which the CLI framework
    would turn into a bare exit code); the CLI prints it and exits with 130."""


class UnsupportedGraphError(QffsError):
    """A graph node that cannot be quantized or converted; the message names node and op."""
