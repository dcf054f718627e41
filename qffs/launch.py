"""``qffs-torchrun``: torchrun, with a stop that ends as every qffs command ends.

torchrun answers Ctrl-C or SIGTERM by stopping its workers and then raising its own
``SignalException``, and a failed worker with ``ChildFailedError``: either prints a traceback and
exits 1. Each qffs worker has already said in one line what it kept or what was wrong; this
wrapper adds one line for the launcher and exits 130 (Ctrl-C), 143 (SIGTERM) or the failed
worker's own code (2 for a qffs error), as a single qffs process does. Everything else is
torchrun's, options included:

    qffs-torchrun --nproc-per-node 4 --no-python qffs quantize fp.pt --out qann.pt
"""

from __future__ import annotations

import signal
import sys


def main(argv: list[str] | None = None) -> int:
    """Run torchrun with ``argv`` (default: the command line); returns its exit code."""
    # torch.distributed.run loads only when qffs-torchrun runs (its import takes a second)
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(argv if argv is not None else sys.argv[1:])
    except ChildFailedError as exc:   # a worker failed and said why (qffs: one line each); its code, not 1
        rank, failure = exc.get_first_failure()   # the rank that failed first, not one torchrun then stopped
        code = failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode   # killed by a signal: 128 + it
        print(f"qffs-torchrun: {len(exc.failures)} process(es) failed; rank {rank} exited with code {code}",
              file=sys.stderr)
        return code
    except SignalException as exc:
        sig = int(exc.sigval)
        word = "terminated (SIGTERM)" if sig == signal.SIGTERM else "interrupted"
        print(f"qffs-torchrun: {word}: every process was stopped (each said above what it kept)", file=sys.stderr)
        return 128 + sig
    except KeyboardInterrupt:
        print("qffs-torchrun: interrupted while starting; nothing was written", file=sys.stderr)
        return 130
    return 0


def entry() -> None:
    """The console script."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
