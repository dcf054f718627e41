"""What both training jobs share (:class:`TrainingRun`), and the full-precision training job.

A training run checks its output, locks it, finds the resume state an interrupted run of the same
job left, writes its best result so far to ``NAME.partial.pt`` after every epoch and moves it onto
``--out`` only when it finishes (:mod:`qffs.jobs.outputs`).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from qffs import settings
from qffs.data import Preprocessing
from qffs.distributed import init_distributed, is_main_process, main_only, replicas_identical, world_size
from qffs.errors import QffsError
from qffs.files import exclusive, write_text_atomic
from qffs.io import load_checkpoint, load_into, save_checkpoint
from qffs.jobs.loaders import TrainingData, training_data
from qffs.jobs.options import DataOptions, data_meta, model_spec_for, recorded_preprocessing, with_recorded
from qffs.jobs.outputs import check_output, metrics_path, partial_path, staged_output
from qffs.models import build_model
from qffs.resume import TrainState, check_resumable, load_state, resume_path, save_state
from qffs.train import TrainConfig, config_dict, evaluate, fit, resolve_device
from qffs.trust import model_provenance

Log = Callable[..., None]


def job_record(data: DataOptions, prep: Preprocessing, spec: str, cfg: TrainConfig, **options: Any) -> dict[str, Any]:
    """The options that define a training run: a resume state is only continued by the same ones
    (the data root may move; the data, its order and the recipe may not)."""
    return {"model": spec, "dataset": data.dataset, "preprocessing": prep.as_dict(), "batch_size": data.batch_size,
            "seed": data.seed, "limit": data.limit, "test_limit": data.test_limit, "train_config": config_dict(cfg),
            "val_size": data.val_size, "val_seed": data.val_seed, "select_on_test": data.select_on_test,
            "workers": data.workers, "processes": settings.torchrun_world_size(), **options}


def check_replicas(record: dict[str, Any], model: torch.nn.Module) -> None:
    """Under torchrun, after an epoch: every rank must hold the same weights (DDP keeps them so);
    recorded in the epoch's history entry, and a difference stops the job (on every rank)."""
    if world_size() == 1:
        return
    record["replicas_identical"] = replicas_identical(model)
    if not record["replicas_identical"]:
        raise QffsError(f"the {world_size()} processes hold different weights after epoch {record['epoch']}: "
                        "the data-parallel training went out of step")


class TrainingRun:
    """One training job's output, as a context manager: ``--out`` checked against the inputs when
    made, locked while the job runs; :meth:`resume` finds the state to continue, :meth:`staged` the
    partial file the job writes, :meth:`write` the best result so far and its sidecar."""

    def __init__(self, out: str | Path, *inputs: str | Path | None) -> None:
        self.out = check_output(out, *inputs)
        self.partial = partial_path(self.out)
        self.state: TrainState | None = None
        self.job: dict[str, Any] = {}
        self.started = time.perf_counter()
        self.before = 0.0   # seconds the run spent before this process continued it
        self._lock = contextlib.ExitStack()

    def __enter__(self) -> TrainingRun:
        self._lock.enter_context(exclusive(self.out, "--out"))   # a second run writing the same --out is refused
        return self

    def __exit__(self, *exc: Any) -> None:
        self._lock.close()

    def seconds(self) -> float:
        """The run's wall time: this process's, plus that of the chunks it resumes."""
        return round(self.before + time.perf_counter() - self.started, 1)

    def resume(self, job: dict[str, Any], resume: bool, log: Log = print) -> TrainState | None:
        """The state an interrupted run of ``job`` left (``resume``), else None; checked before any work."""
        self.job = job
        path = check_resumable(self.out, resume)
        if path is None:
            if resume:
                log(f"nothing to resume at {resume_path(self.out)}: starting at epoch 1")
            return None
        self.state = load_state(path, job)
        recorded = self.state.extra.get("seconds")   # states written before it was recorded: their epochs' time
        self.before = float(recorded) if isinstance(recorded, (int, float)) else float(
            sum(r.get("epoch_seconds", 0.0) for r in self.state.history))
        log(f"resuming from {path}: {self.state.epoch} epoch(s) done")
        return self.state

    def state_writer(self, extra: dict[str, Any]) -> Callable[[TrainState], None]:
        """``on_state`` for :func:`~qffs.train.fit`: the run's resume state, after every epoch."""
        def write(state: TrainState) -> None:
            state.job, state.extra = self.job, {**extra, "seconds": self.seconds()}
            save_state(resume_path(self.out), state)
        return write

    def staged(self) -> contextlib.AbstractContextManager[Path]:
        """The partial file, moved onto ``--out`` when the job finishes (:func:`staged_output`)."""
        return staged_output(self.out, resuming=self.state is not None)

    def write(self, *, kind: str, spec: str, meta: dict[str, Any], metrics: dict[str, Any],
              history: list[dict[str, Any]], weights: dict[str, torch.Tensor] | None = None, **fields: Any) -> None:
        """The best result so far (``weights``, if this epoch is a new best) and the sidecar with the
        whole history (every epoch); rank 0 alone writes."""
        if not is_main_process():
            return
        if weights is not None:
            save_checkpoint(self.partial, weights, kind=kind, model=spec, metrics=metrics, **fields, **meta)
        write_text_atomic(metrics_path(self.partial), json.dumps(
            {"model": spec, **meta, "metrics": metrics, **fields, "history": history}, indent=2))


def best_record(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The epoch with the highest validation accuracy ({} before the first)."""
    return max(history, key=lambda r: r["val_accuracy"]) if history else {}


def _fp_network(model: str, data: DataOptions, pretrained: str | None) -> tuple[torch.nn.Module, DataOptions,
                                                                                 Preprocessing, str]:
    """(the network, with ``pretrained``'s weights if given; data completed from it; preprocessing; spec)."""
    source = load_checkpoint(pretrained) if pretrained else None
    data = with_recorded(data, source.meta if source else {})
    prep = data.preprocessing(recorded=recorded_preprocessing(source.meta, data.name) if source else None)
    spec = model_spec_for(model, data, prep)
    net = build_model(spec)
    if source is not None:
        load_into(net, source.state_dict, source=str(pretrained), spec=spec)
    return net, data, prep, spec


def train_fp(model: str, out: str | Path, data: DataOptions, cfg: TrainConfig, *,
             pretrained: str | None = None, device: str = "auto", resume: bool = False,
             log: Log = print) -> dict[str, Any]:
    """Train (or fine-tune from ``pretrained``) a full-precision model; keep the best epoch.

    Writes ``NAME.partial.pt`` (best checkpoint so far, with spec, dataset, metrics, config), its
    ``.metrics.json`` and the resume state after every epoch, and moves them onto ``out`` when
    done. ``resume`` continues an interrupted run of the same job. Returns the final metrics dict.
    """
    cfg.validate()
    if cfg.epochs < 1:
        raise QffsError(f"--epochs must be >= 1 to train, got {cfg.epochs}")
    log = main_only(log)
    with TrainingRun(out, pretrained) as run:
        distributed = init_distributed()
        dev = resolve_device(device)
        torch.manual_seed(data.seed)
        net, data, prep, spec = _fp_network(model, data, pretrained)
        state = run.resume(job_record(data, prep, spec, cfg, kind="fp",
                                      pretrained=str(Path(pretrained).resolve()) if pretrained else None), resume, log)
        meta = {**data_meta(data, prep), **model_provenance(spec), "train_config": config_dict(cfg),
                "batch_size": data.batch_size, "seed": data.seed, "limit": data.limit, "pretrained": pretrained,
                "distributed": distributed, "world_size": world_size()}
        loaders = training_data(data, prep)
        meta["selection"] = loaders.record()
        return _train(run, net, spec, meta, loaders, cfg, dev, list(state.history) if state else [], log)


def _train(run: TrainingRun, net: torch.nn.Module, spec: str, meta: dict[str, Any], loaders: TrainingData,
           cfg: TrainConfig, dev: torch.device, history: list[dict[str, Any]], log: Log) -> dict[str, Any]:
    """The part of :func:`train_fp` that trains: every epoch recorded, the kept one tested once."""
    test_result: dict[str, float] = {}

    def write(weights: dict[str, torch.Tensor] | None) -> None:
        best = best_record(history)
        metrics = {"val_accuracy": best["val_accuracy"], "test_accuracy": test_result.get("accuracy"),
                   "test_samples": test_result.get("samples"), "best_epoch": best["epoch"],
                   "selected_on": loaders.selected_on, "seconds": run.seconds()}
        run.write(kind="fp", spec=spec, meta=meta, metrics=metrics, history=history, weights=weights)

    def on_epoch(record: dict[str, Any], trained: torch.nn.Module) -> None:
        check_replicas(record, trained)
        history.append(record)
        write(trained.state_dict() if record.get("best") else None)

    if run.state is not None and run.state.history:   # the best so far, as the state has it (a kill may have
        write(run.state.best_state)                    # come between writing the partial file and the state)
    with run.staged():
        _, best_state = fit(net, loaders.train, loaders.validation, cfg, device=dev, on_epoch=on_epoch, log=log,
                            start=run.state, on_state=run.state_writer({}))
        net.load_state_dict(best_state)   # the kept epoch, now evaluated once on the test set
        test_result.update(evaluate(net, loaders.test, dev, description="test (kept epoch)"))
        write(best_state)
    best = best_record(history)
    return {"model": spec, "checkpoint": str(run.out), "val_accuracy": best.get("val_accuracy"),
            "test_accuracy": test_result["accuracy"], "best_epoch": best.get("epoch"),
            "selected_on": loaders.selected_on, "seconds": run.seconds()}
