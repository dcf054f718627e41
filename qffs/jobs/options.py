"""The data options every job shares, and what an artifact records about its data.

A job's dataset, root and preprocessing default to those its input artifact records, so later
stages need not be told again; :class:`DataOptions` is checked when it is made, before any work.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from qffs.data import Preprocessing, dataset_info, resolve_preprocessing
from qffs.errors import QffsError
from qffs.models import with_defaults
from qffs.split import check_val_size

#: The dataset of a job whose input records none and that is given none.
DEFAULT_DATASET = "fashion-mnist"


@dataclass(frozen=True)
class DataOptions:
    """Which data, where, and how much: shared by every job.

    ``dataset``/``root`` None: the ones the input artifact records (:func:`with_recorded`),
    else fashion-mnist in its standard place.
    """

    dataset: str | None = None
    root: str | None = None
    limit: int | None = None          # first N training samples (quick runs)
    test_limit: int | None = None     # first N test samples
    batch_size: int = 128
    workers: int = 0
    seed: int = 0
    mean: tuple[float, ...] | None = None   # per-channel normalisation; None: recorded, else the dataset's
    std: tuple[float, ...] | None = None
    image_size: int | None = None           # ImageFolder input size; None: recorded, else the tree's
    val_size: int | None = None             # validation hold-out of the training split; None: qffs.split's default
    val_seed: int = 0                       # the hold-out's own seed (not the training seed)
    select_on_test: bool = False            # val_size 0: the best epoch is chosen on the test set, and says so

    def __post_init__(self) -> None:
        """Counts are checked when the options are made, before any work (one place for all jobs)."""
        check_val_size(self.val_size, self.select_on_test)
        for name, value, low, optional in (("--batch-size", self.batch_size, 1, False),
                                           ("--workers", self.workers, 0, False), ("--seed", self.seed, 0, False),
                                           ("--limit", self.limit, 1, True), ("--test-limit", self.test_limit, 1, True),
                                           ("--val-seed", self.val_seed, 0, False),
                                           ("--image-size", self.image_size, 1, True)):
            if value is None and optional:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low or value >= 2**63:
                raise QffsError(f"{name} must be an integer in {low}..2^63-1, got {value!r}")

    @property
    def name(self) -> str:
        """The dataset: as given or recorded (:func:`with_recorded`), else :data:`DEFAULT_DATASET`."""
        return self.dataset or DEFAULT_DATASET

    def preprocessing(self, recorded: dict[str, Any] | None = None) -> Preprocessing:
        """This job's preprocessing: the options given, else ``recorded`` (an artifact's), else the dataset's."""
        return resolve_preprocessing(self.name, self.root, mean=self.mean, std=self.std,
                                     image_size=self.image_size, recorded=recorded)


def data_meta(opts: DataOptions, prep: Preprocessing) -> dict[str, Any]:
    """What every artifact records about its data, so later stages need not be told again
    (the data root as an absolute path: they may run from another directory)."""
    root = str(Path(opts.root).expanduser().resolve()) if opts.root else None
    return {"dataset": opts.dataset, "data_root": root, "preprocessing": prep.as_dict()}


def same_dataset(meta: dict[str, Any], dataset: str) -> bool:
    """Whether an artifact was trained on ``dataset`` (CIFAR-10's two forms are one)."""
    return meta.get("dataset") == dataset or {meta.get("dataset"), dataset} <= {"cifar10", "cifar10-jpeg"}


def recorded_preprocessing(meta: dict[str, Any], dataset: str) -> dict[str, Any] | None:
    """An artifact's preprocessing, if it was recorded for this dataset."""
    return meta.get("preprocessing") if same_dataset(meta, dataset) else None


def with_recorded(data: DataOptions, meta: dict[str, Any]) -> DataOptions:
    """``data`` completed from an input artifact's metadata: its dataset if none is given (else
    :data:`DEFAULT_DATASET`), and its data root if none is given for that same dataset."""
    if data.dataset is None:
        data = replace(data, dataset=str(meta.get("dataset") or DEFAULT_DATASET))
    if data.root is None and meta.get("data_root") and meta.get("dataset") == data.dataset:
        data = replace(data, root=str(meta["data_root"]))
    return data


def check_trained_on(path: str | Path, meta: dict[str, Any], dataset: str) -> None:
    """Refuse evaluating an artifact on another dataset than the one it was trained on."""
    trained_on = meta.get("dataset")
    if trained_on and not same_dataset(meta, dataset):
        raise QffsError(f"{path} was trained on {trained_on}, not {dataset}: pass --dataset {trained_on}")


def model_spec_for(model: str, data: DataOptions, prep: Preprocessing) -> str:
    """``model`` with the dataset's classes, channels and image size where the spec leaves them open."""
    info = dataset_info(data.name, data.root)
    return with_defaults(model, num_classes=info.num_classes, in_channels=info.in_channels,
                         image_size=prep.image_size)
