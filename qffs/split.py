"""The validation split: a deterministic, seeded hold-out of the *training* split.

Training jobs pick their best epoch on it and evaluate the test set once, on the kept weights,
so no reported accuracy is chosen on the test set. The split is a fixed permutation of the
training pool (the first ``--limit`` samples, or all of them) drawn from its own generator
(``seed``), independent of the training seed, so runs with different training seeds share it.
Its size, seed and a hash of its indices are recorded in every artifact (:meth:`ValidationSplit.record`).

    split = validation_split(60_000, 5_000, seed=0)    # split.train, split.validation: index tensors
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from qffs.errors import QffsError

#: Default validation size for the fixed-size datasets (CIFAR-10, Fashion-MNIST, MNIST); ImageFolder
#: trees, and any pool cut by ``--limit``, hold out :data:`DEFAULT_FRACTION` of it instead.
DEFAULT_SIZE = 5_000
DEFAULT_FRACTION = 0.1
_FIXED_SIZE = ("fashion-mnist", "mnist", "cifar10", "cifar10-jpeg")


@dataclass(frozen=True)
class ValidationSplit:
    """Indices into the training pool: ``train`` (trained on) and ``validation`` (held out), disjoint."""

    train: torch.Tensor
    validation: torch.Tensor
    seed: int

    @property
    def size(self) -> int:
        return int(self.validation.numel())

    def digest(self) -> str:
        """SHA-256 (first 16 hex digits) of the validation indices, in order: names the split exactly."""
        data = self.validation.to(torch.int64).contiguous().numpy().tobytes()
        return hashlib.sha256(data).hexdigest()[:16]

    def record(self) -> dict[str, object]:
        """What an artifact records about the split (``selected_on`` says where the best epoch was chosen)."""
        return {"size": self.size, "seed": self.seed, "sha256": self.digest(), "train_samples": int(self.train.numel())}


def default_size(dataset: str, pool: int, limited: bool) -> int:
    """5,000 images for the fixed-size datasets taken whole; 10 % (at least 1) of an ImageFolder
    tree or of a pool cut by ``--limit``."""
    if dataset in _FIXED_SIZE and not limited:
        return min(DEFAULT_SIZE, pool - 1)
    return max(1, int(pool * DEFAULT_FRACTION))


def validation_split(pool: int, size: int, seed: int = 0) -> ValidationSplit:
    """Hold out ``size`` of ``pool`` training samples, chosen by a permutation seeded with ``seed``.

    Both parts keep the pool's order (sorted indices), so a loader over the training part shuffles
    as before and the split depends on nothing but (pool, size, seed)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise QffsError(f"--val-size must be a positive integer, got {size!r}")
    if size >= pool:
        raise QffsError(f"--val-size {size} leaves no training samples: the training split has {pool:,} "
                        f"(give a smaller --val-size, or a larger --limit)")
    order = torch.randperm(pool, generator=torch.Generator().manual_seed(seed))
    held = torch.zeros(pool, dtype=torch.bool)
    held[order[:size]] = True
    index = torch.arange(pool)
    return ValidationSplit(train=index[~held], validation=index[held], seed=seed)


def check_val_size(val_size: int | None, select_on_test: bool) -> None:
    """``--val-size`` is None (the default), a positive count, or 0 together with ``--select-on-test``."""
    if val_size is None:
        if select_on_test:
            raise QffsError("--select-on-test chooses the epoch on the test set instead of a validation split: "
                            "it needs --val-size 0")
        return
    if isinstance(val_size, bool) or not isinstance(val_size, int) or val_size < 0 or val_size >= 2**63:
        raise QffsError(f"--val-size must be an integer >= 0, got {val_size!r}")
    if val_size == 0 and not select_on_test:
        raise QffsError("--val-size 0 would choose the best epoch on the test set: add --select-on-test to accept "
                        "that (every report then says so), or hold out a validation split")
    if val_size > 0 and select_on_test:
        raise QffsError("--select-on-test goes with --val-size 0 (no validation split); drop one of them")
