"""Entry point of the ``qffs`` console script: commands, one-line errors, exit codes.

Exit codes: 0 success; 2 a user error (bad option, missing file, unsupported model — one line
on stderr, ``--debug`` for the traceback); 130 interrupted (Ctrl-C), 143 terminated (SIGTERM:
``timeout``, Slurm, systemd), each with one line; 1 an internal error (a bug).
"""

from __future__ import annotations

import os
import shlex
import sys

import typer

from qffs import settings
from qffs.cli import commands  # noqa: F401  (registers the commands on the app)
from qffs.cli.app import app, printable
from qffs.errors import Interrupted, QffsError
from qffs.signals import exit_code, ignore_further, restore, stop_on_signals, stop_word

#: What a Ctrl-C or SIGTERM outside a training job leaves: outputs are written atomically, at their end.
INTERRUPTED = "no output was half-written (files are written whole, at the end of each stage)"


def _say(line: str) -> None:
    """``line`` on stderr in one write: under torchrun every rank writes to the same pipe, and a
    line written as text and newline in two writes can be split by another rank's line."""
    sys.stderr.flush()
    try:
        os.write(sys.stderr.fileno(), (line + "\n").encode(errors="replace"))
    except (AttributeError, OSError, ValueError):   # a captured stderr without a file descriptor
        print(line, file=sys.stderr)


def _stopped(message: str) -> int:
    """The one line of a stopped job ("interrupted: ..." or "terminated (SIGTERM): ..."), and its exit code."""
    ignore_further()
    word = stop_word()
    if message.startswith("interrupted"):
        message = word + message[len("interrupted"):]
    _say(f"qffs: {printable(message)}")
    return exit_code()


def _rank() -> str:
    """' (rank 1 of 2)' in a torchrun worker other than rank 0, whose errors may be its own; '' otherwise."""
    rank, world = settings.torchrun_rank(), settings.torchrun_world_size()
    return f" (rank {rank} of {world})" if world > 1 and rank > 0 else ""


def main(argv: list[str] | None = None, *, console: bool = False) -> int:
    """Run one command line; returns its exit code. In the console script (``console``) a signal
    after the command finished is ignored; called in-process, the signal handlers are put back."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    command = typer.main.get_command(app)
    previous = stop_on_signals()
    outer = os.environ.get(settings.COMMAND_VARIABLE)
    os.environ[settings.COMMAND_VARIABLE] = shlex.join(["qffs", *args])   # what its reports record
    try:
        return _run(command, args, debug)
    finally:
        if outer is None:
            os.environ.pop(settings.COMMAND_VARIABLE, None)
        else:
            os.environ[settings.COMMAND_VARIABLE] = outer
        if console:
            ignore_further()   # done: a signal between here and the exit changes nothing
        else:
            restore(previous)


def _run(command, args: list[str], debug: bool) -> int:
    try:
        code = command.main(args=args, prog_name="qffs", standalone_mode=False)
        if code == 130:   # typer turns a Ctrl-C it sees into a returned 130
            return _stopped(f"interrupted; {INTERRUPTED}")
        code = code if isinstance(code, int) else 0
        if code == 0 and settings.torchrun_world_size() > 1:
            # only under torchrun (it imports torch): every rank done, then all leave the group together
            from qffs.distributed import finish

            finish()
        return code
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    except typer.TyperException as exc:  # usage errors (bad option, missing argument): one line too
        if type(exc).__name__ == "NoArgsIsHelpError":   # plain `qffs`, `qffs quantize`: the help
            print(exc.format_message())
            return 0
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else "qffs"
        message = " ".join(exc.format_message().split())
        _say(f"qffs: error: {printable(message)} (see: {where} --help)")
        return 2
    except Interrupted as exc:   # a job that knows what it kept
        return _stopped(str(exc))
    except (KeyboardInterrupt, typer.Abort):
        return _stopped(f"interrupted; {INTERRUPTED}")
    except QffsError as exc:
        if debug:
            raise
        _say(f"qffs: error{_rank()}: {printable(str(exc))}")   # paths and names may come from files
        return 2   # under torchrun a rank that exits stops the others (torchrun ends the job), no hang
    except (Exception, SystemExit) as exc:  # the user's model code failing, else a bug: one line unless --debug
        if debug:
            raise
        # loaded when the command runs, so that `qffs --help` and the other commands start fast
        from qffs.models import user_code_error

        found = user_code_error(exc)
        if found is not None:
            _say(f"qffs: error: {printable(str(found))}")
            return 2
        if isinstance(exc, SystemExit):   # not from a model file: keep its meaning
            raise
        msg = str(exc).splitlines()[0] if str(exc) else ""
        _say(f"qffs: internal error: {type(exc).__name__}: {msg} (run with --debug for the traceback)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
