"""``qffs finetune`` as a job: a converted SNN trained at a fixed T (:mod:`qffs.finetune`).

Like the other training jobs it checks and locks its output, resumes an interrupted run of the
same job, keeps the epoch best on the validation split (by default the one the QANN's epoch was
chosen on, as the artifact records it) and evaluates the test set once, on the kept weights.
An epoch is kept only if it beats the converted SNN on validation; none does: the converted
network is written back unchanged. The result is an SNN artifact — its QANN, the conversion,
and the fine-tuned network's own tensors (``snn.*``) — that every later command runs like any
other, marked as fine-tuned (``finetune`` in its metadata).
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from qffs.artifacts import SNN_TENSORS, ConversionConfig, load_own_tensors, load_snn
from qffs.distributed import init_distributed, main_only, world_size
from qffs.errors import QffsError
from qffs.finetune import (
    LOSS_READOUT,
    FinetuneConfig,
    SpikingTrainee,
    plain_state,
    spiking_loss,
    threshold_table,
    trained_thresholds,
)
from qffs.jobs.convert import layer_summary
from qffs.jobs.loaders import TrainingData, training_data
from qffs.jobs.options import DataOptions, check_trained_on, recorded_preprocessing, with_recorded
from qffs.jobs.training import Log, TrainingRun, check_replicas, job_record
from qffs.train import TrainConfig, config_dict, evaluate, fit, resolve_device

#: Metadata of the input artifact that the fine-tuned one writes anew.
_OWN_FIELDS = ("format", "kind", "created", "qffs_version", "torch_version", "metrics", "finetune", "model")


def recorded_split(data: DataOptions, meta: dict[str, Any]) -> DataOptions:
    """``data`` with the validation split the QANN was chosen on (size and seed), unless given or
    the pool is cut by ``--limit`` (then the split is another one anyway)."""
    selection = meta.get("selection") if isinstance(meta.get("selection"), dict) else {}
    record = selection.get("validation") if isinstance(selection, dict) else None
    if data.val_size is None and data.limit is None and not data.select_on_test and isinstance(record, dict) \
            and "size" in record:
        return replace(data, val_size=int(record["size"]), val_seed=int(record.get("seed", data.val_seed)))
    return data


def artifact_tensors(qann: torch.nn.Module, snn_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What a fine-tuned SNN artifact holds: the QANN's state and the SNN's, prefixed ``snn.``."""
    return {**qann.state_dict(), **{SNN_TENSORS + k: v for k, v in snn_state.items()}}


def finetune_snn(snn_path: str | Path, out: str | Path, data: DataOptions, cfg: TrainConfig,
                 config: FinetuneConfig, *, model: str | None = None, device: str = "auto", resume: bool = False,
                 log: Log = print) -> dict[str, Any]:
    """Fine-tune the SNN artifact ``snn_path`` at ``config.timesteps`` steps into ``out``.

    ``cfg.distill > 0`` distils from the QANN's logits. Writes ``out`` (kind "snn", with a
    ``finetune`` record) and its ``.metrics.json`` by way of ``NAME.partial.pt``, and a resume
    state after every epoch; ``resume`` continues an interrupted run of the same job.
    """
    cfg.validate()
    log = main_only(log)
    with TrainingRun(out, snn_path) as run:
        init_distributed()
        dev = resolve_device(device)
        torch.manual_seed(data.seed)
        snn, qann, meta = load_snn(snn_path, model)
        data = recorded_split(with_recorded(data, meta), meta)
        check_trained_on(snn_path, meta, data.name)
        prep = data.preprocessing(recorded=recorded_preprocessing(meta, data.name))
        source_snn = copy.deepcopy(snn).to(dev)     # the network as it came: the baseline, and kept if nothing beats it
        trainee = SpikingTrainee(snn, config).to(dev)
        run.resume(job_record(data, prep, meta["model"], cfg, kind="snn-finetune",
                              source=str(Path(snn_path).resolve()), finetune=config.record()), resume, log)
        with run.staged():   # an interrupted run leaves only partial files
            loaders = training_data(data, prep)
            return _FinetuneRun(run, trainee, source_snn, qann, meta, loaders, cfg, config, dev, str(snn_path), log)()


class _FinetuneRun:
    """The part of :func:`finetune_snn` that reads data."""

    def __init__(self, run: TrainingRun, trainee: SpikingTrainee, source_snn: Any, qann: torch.nn.Module,
                 meta: dict[str, Any], loaders: TrainingData, cfg: TrainConfig, config: FinetuneConfig,
                 dev: torch.device, source: str, log: Log) -> None:
        self.run, self.trainee, self.source_snn, self.qann, self.loaders = run, trainee, source_snn, qann, loaders
        self.cfg, self.config, self.dev, self.source, self.log = cfg, config, dev, source, log
        self.spec = str(meta["model"])
        recorded: dict[str, Any] = meta["metrics"] if isinstance(meta.get("metrics"), dict) else {}
        inherited = ("fp_accuracy", "fp_val_accuracy", "qann_accuracy", "qann_val_accuracy")
        self.inherited = {k: recorded[k] for k in inherited if k in recorded}   # what its reports show of its QANN
        self.meta = {k: v for k, v in meta.items() if k not in _OWN_FIELDS}
        self.before: dict[str, float] = {}
        self.thresholds: dict[str, float | list[float]] = {}
        self.history: list[dict[str, Any]] = []

    def __call__(self) -> dict[str, Any]:
        state, T = self.run.state, self.config.timesteps
        self.thresholds = threshold_table(self.trainee.snn)
        if state is None:
            self.before = evaluate(_Final(self.source_snn, T), self.loaders.validation, self.dev,
                                   description=f"converted SNN at T={T} (validation)")
        else:
            self.history = list(state.history)        # the epochs before the interruption, in every sidecar
            self.before = dict(state.extra.get("converted", {}))
            if not self.before:
                raise QffsError(f"{self.run.out}: its resume state is incomplete; delete it to start over")
        self.log(f"converted SNN, current readout at T={T}: validation {100 * self.before['accuracy']:.2f}%")
        best = None
        if self.cfg.epochs > 0:
            extra = {"converted": self.before}
            history, best = fit(self.trainee, self.loaders.train, self.loaders.validation, self.cfg, device=self.dev,
                                teacher=self.qann if self.cfg.distill > 0 else None, log=self.log,
                                baseline=self.before["accuracy"], start=state, on_epoch=self._epoch_done,
                                on_state=self.run.state_writer(extra),
                                criterion=spiking_loss(self.config, self.cfg.label_smoothing))
            self.history = history
        snn = self._kept(best)
        self.meta["layers"] = layer_summary(snn, self.meta)
        test = evaluate(_Final(snn, T), self.loaders.test, self.dev, description=f"fine-tuned SNN at T={T} (test)")
        self._write(snn.state_dict(), test)
        return {"checkpoint": str(self.run.out), **self._metrics(test)}

    def _kept(self, best: dict[str, torch.Tensor] | None) -> Any:
        """The kept weights in a freshly converted SNN (the artifact's own reload path); the network
        as it came, bit for bit, when no epoch beat it."""
        if best is None or not any(r.get("best") for r in self.history):
            return self.source_snn
        snn = ConversionConfig.from_meta(self.meta, self.source).convert(self.qann)
        load_own_tensors(snn, plain_state(best, snn.input_window), self.source)
        return snn.to(self.dev)

    def _epoch_done(self, record: dict[str, Any], model: torch.nn.Module) -> None:
        check_replicas(record, model)
        self.history.append(record)
        self._write(plain_state(model.state_dict(), self.trainee.snn.input_window) if record.get("best") else None,
                    None)

    def _metrics(self, test: dict[str, float] | None) -> dict[str, Any]:
        kept = [r for r in self.history if r.get("best")]
        best = kept[-1] if kept else {"val_accuracy": self.before["accuracy"], "epoch": 0}
        return {**self.inherited, "converted_val_accuracy": self.before["accuracy"],
                "finetuned_val_accuracy": best["val_accuracy"],
                "best_epoch": best["epoch"], "selected_on": self.loaders.selected_on,
                "timesteps": self.config.timesteps,
                "snn_accuracy": None if test is None else test["accuracy"],
                "test_samples": None if test is None else test["samples"], "seconds": self.run.seconds()}

    def _write(self, snn_state: dict[str, torch.Tensor] | None, test: dict[str, float] | None) -> None:
        """The artifact (``snn_state``: the SNN's own state dict, if this is a new best) and its sidecar."""
        weights = None if snn_state is None else artifact_tensors(self.qann, snn_state)
        record = {**self.config.record(), "train_config": config_dict(self.cfg), "world_size": world_size(),
                  "thresholds_before": self.thresholds, "source_snn": self.source}
        if snn_state is not None:
            record["thresholds_after"] = trained_thresholds(snn_state)
        self.run.write(kind="snn", spec=self.spec, meta={**self.meta, "finetune": record,
                                                                 "selection": self.loaders.record()},
                       metrics=self._metrics(test), history=self.history, weights=weights)


class _Final(torch.nn.Module):
    """The kept SNN as :func:`qffs.train.evaluate` reads it: the exact runtime's current at T."""

    def __init__(self, snn: Any, timesteps: int):
        super().__init__()
        self.snn, self.timesteps = snn, timesteps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.snn.simulate(x, self.timesteps, record=False).readouts[LOSS_READOUT][-1]


__all__ = ["artifact_tensors", "finetune_snn", "recorded_split"]
