"""Resumable training: the state saved after every epoch, and how an interrupted run continues.

A training job (``qffs train``, ``qffs quantize``) writes ``NAME.resume.pt`` beside its output
after each epoch: model, optimizer (momentum buffers), the learning-rate schedule (its
``LambdaLR`` state; a state saved before it was one has the step count alone, which is enough),
every random number generator qffs or a model may draw from, the data order's generator, the
history and the best epoch so far. ``--resume`` loads it and continues with the next epoch, so
a run killed at any moment and resumed ends with the same weights as one never interrupted
(same machine, same seed). It is also how a long training is split into chunks on a small
machine.

The file is read with ``weights_only=True`` like every checkpoint: tensors and plain data only.
A resume state records the job's options and is refused for a job with different ones.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qffs.errors import QffsError
from qffs.files import atomic_path

FORMAT = "qffs-resume-1"


@dataclass
class TrainState:
    """Everything a training loop needs to continue after ``epoch`` finished epochs."""

    epoch: int
    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    history: list[dict[str, Any]]
    best_accuracy: float
    best_state: dict[str, torch.Tensor]
    rng: dict[str, Any] = field(default_factory=dict)
    loader_rng: torch.Tensor | None = None            # the shuffling generator's state (None: none to restore)
    job: dict[str, Any] = field(default_factory=dict)   # the options that define the run
    extra: dict[str, Any] = field(default_factory=dict)  # what the job measured before training
    scheduler: dict[str, Any] | None = None          # the LambdaLR's state_dict (None: saved before it was one)


def resume_path(out: str | Path) -> Path:
    """``runs/qann.pt`` → ``runs/qann.resume.pt``: the interrupted run's state, beside its output."""
    out = Path(out)
    return out.with_name(f"{out.stem}.resume.pt")


def rng_state() -> dict[str, Any]:
    """The random number generators a training epoch may draw from (torch CPU and CUDA, Python, NumPy)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": _plain(random.getstate()),
                             "numpy": [kind, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss),
                                       float(gauss)]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved (CUDA only where this machine has as many devices)."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively: what ``weights_only`` loading gives back either way."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def save_state(path: str | Path, state: TrainState) -> Path:
    """Write ``state`` atomically (a kill mid-write leaves the previous epoch's state)."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **asdict(state)}, tmp)
    return Path(path)


def load_state(path: str | Path, job: dict[str, Any] | None = None) -> TrainState:
    """The state at ``path``, refused (naming the options) unless it was saved by a run of ``job``
    (None: any run's)."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:   # truncated, or not a resume state
        raise QffsError(f"{path} is not a readable qffs resume state ({type(exc).__name__}); delete it to start "
                        "over") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise QffsError(f"{path} is not a qffs resume state; delete it to start over")
    raw.pop("format")
    try:
        state = TrainState(**raw)
    except TypeError:
        raise QffsError(f"{path} is an incomplete qffs resume state; delete it to start over") from None
    if job is None:
        return state
    differ = sorted(k for k in set(job) | set(state.job) if _plain(job.get(k)) != _plain(state.job.get(k)))
    if differ:
        shown = ", ".join(f"{k} {state.job.get(k)!r} → {job.get(k)!r}" for k in differ[:4])
        raise QffsError(f"{path} belongs to a run with other options ({shown}): resume with the same options, or "
                        "delete it to start over")
    return state


def check_resumable(out: Path, resume: bool) -> Path | None:
    """The resume state to continue from, or None to start afresh; an interrupted run's state is
    never silently discarded: without ``resume`` it is refused."""
    path = resume_path(out)
    if not path.exists():
        return None
    if not resume:
        raise QffsError(f"{path} holds an interrupted run of this job: add --resume to continue it, or delete it "
                        "to start over")
    return path


__all__ = ["TrainState", "check_resumable", "load_state", "resume_path", "rng_state", "save_state", "set_rng_state"]
