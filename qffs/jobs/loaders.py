"""The loaders of a job: a test-only job's test set, a training job's train / validation / test."""

from __future__ import annotations

from collections.abc import Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch.utils.data import Subset

from qffs.data import Preprocessing, load_dataset, load_training_pool, make_loader
from qffs.errors import QffsError
from qffs.jobs.options import DataOptions, check_trained_on, recorded_preprocessing, with_recorded
from qffs.split import default_size, validation_split

#: Training jobs evaluate in batches of at least this many samples (evaluation needs no small batches).
EVAL_BATCH_MIN = 256


def make_test_loader(opts: DataOptions, prep: Preprocessing | None = None) -> Any:
    """The test loader of a test-only job (the SNN evaluation), in batches of exactly ``batch_size``:
    there the batch bounds the simulation's memory. Training jobs use :func:`training_data`."""
    prep = prep or opts.preprocessing()
    return make_loader(load_dataset(opts.name, "test", root=opts.root, limit=opts.test_limit, preprocessing=prep),
                       opts.batch_size, shuffle=False, num_workers=opts.workers)


def test_data_for(path: str | Path, meta: dict[str, Any], data: DataOptions) -> tuple[DataOptions, Preprocessing, Any]:
    """The test set an artifact is evaluated on: (data options with the recorded ones filled in,
    preprocessing, loader); refuses another dataset than the one it was trained on."""
    data = with_recorded(data, meta)
    check_trained_on(path, meta, data.name)
    prep = data.preprocessing(recorded=recorded_preprocessing(meta, data.name))
    return data, prep, make_test_loader(data, prep)


def validation_data_for(path: str | Path, meta: dict[str, Any], data: DataOptions, prep: Preprocessing) -> Any:
    """The validation split an artifact's epoch was chosen on, rebuilt from its record (size, seed,
    hash) over the same training pool, without augmentation, in batches of ``batch_size``."""
    selection = meta.get("selection") if isinstance(meta.get("selection"), dict) else {}
    record = selection.get("validation") if isinstance(selection, dict) else None
    if not isinstance(record, dict) or not all(k in record for k in ("size", "seed", "sha256", "train_samples")):
        raise QffsError(f"{path} records no validation split (its QANN's epoch was chosen on the test set, or it "
                        "predates validation splits): an exit cannot be chosen on validation; give "
                        "--exit confidence:P@TAU, or re-run qffs quantize")
    pool = int(record["size"]) + int(record["train_samples"])
    _, plain = load_training_pool(data.name, root=data.root, limit=pool, preprocessing=prep)
    split = validation_split(pool, int(record["size"]), int(record["seed"]))
    if len(cast(Sized, plain)) != pool or split.digest() != record["sha256"]:
        raise QffsError(f"the training split found for {data.name} is not the one {path} was chosen on "
                        f"(validation hash {split.digest()} ≠ {record['sha256']}): is --data-root the same?")
    return make_loader(Subset(plain, split.validation.tolist()), data.batch_size, shuffle=False,
                       num_workers=data.workers)


@dataclass
class TrainingData:
    """A training job's loaders: ``train`` (shuffled, augmented), ``validation`` (where the best epoch
    is chosen: the held-out part of the training split, or the test set under ``--select-on-test``)
    and ``test`` (evaluated once, on the kept weights). ``split`` records the hold-out (None: none)."""

    train: Any
    validation: Any
    test: Any
    split: dict[str, Any] | None

    @property
    def selected_on(self) -> str:
        return "validation" if self.split is not None else "test"

    def record(self) -> dict[str, Any]:
        """What an artifact records: where its epoch was chosen, and the split's size, seed and hash."""
        return {"selected_on": self.selected_on, "validation": self.split}

    def batches(self, count: int) -> list[torch.Tensor]:
        """The first ``count`` training batches' inputs (calibration, BatchNorm re-estimation)."""
        batches = []
        for x, _ in self.train:
            batches.append(x)
            if len(batches) >= count:
                break
        return batches


def training_data(opts: DataOptions, prep: Preprocessing | None = None) -> TrainingData:
    """The loaders of a training job (:class:`TrainingData`), evaluating in batches of at least
    ``EVAL_BATCH_MIN``; the validation split is drawn from the training pool by :mod:`qffs.split`."""
    prep = prep or opts.preprocessing()
    eval_batch = max(opts.batch_size, EVAL_BATCH_MIN)
    test = make_loader(load_dataset(opts.name, "test", root=opts.root, limit=opts.test_limit, preprocessing=prep),
                       eval_batch, shuffle=False, num_workers=opts.workers)
    augmented, plain = load_training_pool(opts.name, root=opts.root, limit=opts.limit, preprocessing=prep)
    if opts.select_on_test:
        train_ds, validation, record = augmented, test, None
    else:
        pool = len(cast(Sized, augmented))
        if pool < 2:
            raise QffsError(f"the training split has {pool} sample(s): a validation split needs at least 2")
        size = opts.val_size if opts.val_size is not None else default_size(opts.name, pool, opts.limit is not None)
        split = validation_split(pool, size, opts.val_seed)
        train_ds = Subset(augmented, split.train.tolist())
        validation = make_loader(Subset(plain, split.validation.tolist()), eval_batch, shuffle=False,
                                 num_workers=opts.workers)
        record = split.record()
    train = make_loader(train_ds, opts.batch_size, shuffle=True, seed=opts.seed, num_workers=opts.workers,
                        drop_last=len(cast(Sized, train_ds)) > opts.batch_size)
    return TrainingData(train=train, validation=validation, test=test, split=record)
