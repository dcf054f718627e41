"""QFFS stage 1 as a job: a pretrained checkpoint fine-tuned into a QANN (LSQ QAT, SPEC §1).

Everything that can be refused is checked before any data is read: the output, the options, the
file, the preprocessing, the model code against the weights, and every graph node (:mod:`qffs.ops`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from qffs.artifacts import QuantConfig
from qffs.data import Preprocessing, dataset_info
from qffs.distributed import broadcast_module, init_distributed, main_only, world_size
from qffs.errors import QffsError
from qffs.io import load_checkpoint, load_into
from qffs.jobs.loaders import TrainingData, training_data
from qffs.jobs.options import DataOptions, data_meta, model_spec_for, recorded_preprocessing, with_recorded
from qffs.jobs.training import Log, TrainingRun, check_replicas, job_record
from qffs.models import build_model
from qffs.progress import status
from qffs.quant import calibrate, quantize, quantizers
from qffs.quant.graph import NOTES
from qffs.quant.schedule import (
    first_final_epoch,
    hidden_bits,
    reestimate_batchnorm,
    set_hidden_bits,
    stage_bits,
    stage_epochs,
)
from qffs.quant.weight_graph import set_temperature, weight_size
from qffs.resume import TrainState, resume_path
from qffs.train import TrainConfig, config_dict, evaluate, fit, resolve_device
from qffs.trust import authorized_spec, model_provenance, records_model_file

#: Training batches over which BatchNorm statistics are re-estimated (bit-schedule changes, after QAT).
BATCHNORM_BATCHES = 50


def check_input_channels(gm: torch.fx.GraphModule, data: DataOptions) -> None:
    """Refuse, before any data is read, a network whose first convolution takes another number of
    channels than the dataset's images have (a forgotten ``--dataset`` would otherwise fail inside
    the model's own code)."""
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        layer = gm.get_submodule(str(node.target))
        if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            if isinstance(layer, nn.Conv2d):
                have = dataset_info(data.name, data.root).in_channels
                if layer.in_channels != have:
                    raise QffsError(f"the model takes {layer.in_channels} input channel(s), {data.dataset} has {have}: "
                                    "pass --dataset (and --data-root) for the data it was trained on")
            return


def load_fp(checkpoint: str | Path, model: str | None,
            data: DataOptions) -> tuple[nn.Module, DataOptions, Preprocessing, str]:
    """(FP model with its weights, ``data`` completed from the checkpoint, its preprocessing, the spec
    used): ``model`` if given, else the recorded spec (a recorded model file only if ``model`` names it)."""
    ckpt = load_checkpoint(checkpoint)
    data = with_recorded(data, ckpt.meta)
    if ckpt.kind not in ("fp", "foreign"):
        raise QffsError(f"{checkpoint} is a {ckpt.kind} checkpoint, not a full-precision model")
    prep = data.preprocessing(recorded=recorded_preprocessing(ckpt.meta, data.name))
    if model and not records_model_file(ckpt.meta):
        spec = model_spec_for(model, data, prep)
    else:
        spec = authorized_spec(ckpt.meta, model, str(checkpoint))
    net = build_model(spec)
    try:
        load_into(net, ckpt.state_dict, source=str(checkpoint), spec=spec)
    except QffsError as err:
        recorded = ckpt.meta.get("model")
        if model and recorded and recorded != spec and not records_model_file(ckpt.meta):
            raise QffsError(f"{err} (the checkpoint records its model as {recorded!r}: leave out --model to use "
                            "it)") from err
        raise
    return net, data, prep, spec


def quantize_checkpoint(checkpoint: str | Path, out: str | Path, data: DataOptions, cfg: TrainConfig,
                        quant: QuantConfig | None = None, *, model: str | None = None, device: str = "auto",
                        resume: bool = False, log: Log = print) -> dict[str, Any]:
    """QFFS stage 1: fine-tune a pretrained checkpoint into a QANN as ``quant`` says.

    Load the FP model and measure it; ``quantize`` it (every ReLU → LSQ quantizer, logits → output
    quantizer); initialise step sizes on a few training batches; QAT for ``cfg.epochs`` (with
    ``cfg.distill > 0`` the FP model is the distillation teacher; a bit schedule trains the hidden
    quantizers at falling widths, :mod:`qffs.quant.schedule`); keep the epoch best on validation;
    optionally re-estimate BatchNorm, kept only if validation improves. With ``quant.weight_bits``
    the weights are quantized too, each on its folded grid while its BatchNorm trains. Writes
    ``out`` (kind "qann") and its ``.metrics.json`` by way of ``NAME.partial.pt`` and a resume state after every epoch;
    ``resume`` continues an interrupted run of the same job.
    """
    quant = quant or QuantConfig()
    cfg.validate()
    log = main_only(log)
    if quant.bit_schedule is not None:
        stage_epochs(cfg.epochs, len(quant.bit_schedule))
    with TrainingRun(out, checkpoint) as run:
        init_distributed()
        dev = resolve_device(device)
        torch.manual_seed(data.seed)
        with status(f"loading {checkpoint}"):
            fp_model, data, prep, spec = load_fp(checkpoint, model, data)
        qann = quantize(fp_model, bits=quant.bits, output_bits=quant.output_bits, weights=quant.weight_spec()).to(dev)
        for note in qann.meta.get(NOTES, []):
            log(f"note: {note}")
        check_input_channels(qann, data)
        run.resume(job_record(data, prep, spec, cfg, kind="qann", source=str(Path(checkpoint).resolve()),
                              **quant.training_key()), resume, log)
        with run.staged():   # an interrupted run leaves only partial files
            return QatRun(run, qann, fp_model, spec, data, prep, cfg, quant, dev, str(checkpoint), log)()


def _measured(state: TrainState, out: Path) -> dict[str, Any]:
    try:
        return {k: state.extra[k] for k in ("fp", "fp_val", "ptq", "input_shape")}
    except KeyError:
        raise QffsError(f"{resume_path(out)} is an incomplete resume state; delete it to start over") from None


@dataclass
class QatRun:
    """The part of :func:`quantize_checkpoint` that reads data: measure, calibrate, QAT, writing the
    best QANN so far to the partial file. Resuming, the measurements come from the resume state."""

    run: TrainingRun
    qann: torch.fx.GraphModule
    fp_model: nn.Module
    spec: str
    data: DataOptions
    prep: Preprocessing
    cfg: TrainConfig
    quant: QuantConfig
    dev: torch.device
    source: str
    log: Log
    history: list[dict[str, Any]] = field(default_factory=list)
    measured: dict[str, Any] = field(default_factory=dict)   # fp, fp_val, ptq (accuracy dicts), input_shape
    test_result: dict[str, float] = field(default_factory=dict)
    batchnorm: dict[str, Any] = field(default_factory=dict)

    def __call__(self) -> dict[str, Any]:
        self.loaders: TrainingData = training_data(self.data, self.prep)
        state = self.run.state
        schedule = self.quant.bit_schedule
        if schedule is not None:   # the width the run is at: its first stage's, or that of the last finished epoch
            done = state.epoch if state is not None else 0
            set_hidden_bits(self.qann, stage_bits(schedule, self.cfg.epochs, max(done - 1, 0)), keep_range=False)
        if state is None:
            self.measured = self._measure()
        else:
            self.measured = _measured(state, self.run.out)
            self.fp_model.to(self.dev)
            self.history = list(state.history)
            self.qann.load_state_dict(state.best_state)   # the best so far as the state has it (a kill may have
        self.meta = self._meta()                          # come between writing the partial file and the state)
        self.write(save=True)   # the calibrated QANN (or, resuming, the best so far) first
        if self.cfg.epochs > 0:
            self._train()
        self.test_result.update(evaluate(self.qann, self.loaders.test, self.dev, description="QANN (kept epoch, test)"))
        self.write(save=True)
        return {"model": self.spec, "checkpoint": str(self.run.out), **self.summary()}

    def _calibrate(self, only_hidden: bool = False) -> list[torch.Tensor]:
        """Step sizes initialised on the first training batches (returned: they give the input shape)."""
        batches = self.loaders.batches(self.quant.calibration_batches)
        with status(f"calibrating step sizes ({self.quant.calibration}) on {len(batches)} batches"):
            calibrate(self.qann, [b.to(self.dev) for b in batches], method=self.quant.calibration,
                      only_hidden=only_hidden)
        return batches

    def _measure(self) -> dict[str, Any]:
        """FP accuracy (test and validation), calibration, the calibrated QANN's validation accuracy."""
        fp = evaluate(self.fp_model.to(self.dev), self.loaders.test, self.dev, description="FP accuracy (test)")
        fp_val = evaluate(self.fp_model, self.loaders.validation, self.dev, description="FP accuracy (validation)")
        input_shape = list(self._calibrate()[0].shape[1:])
        broadcast_module(self.qann)   # under torchrun: rank 0's step sizes (from its shard's batches) everywhere
        ptq = evaluate(self.qann, self.loaders.validation, self.dev,
                       description="QANN after calibration (validation)")
        return {"fp": fp, "fp_val": fp_val, "ptq": ptq, "input_shape": input_shape}

    def _meta(self) -> dict[str, Any]:
        return {**data_meta(self.data, self.prep), **model_provenance(self.spec),
                "input_shape": self.measured["input_shape"], "quant": self.quant.record(),
                "source_checkpoint": self.source, "train_config": config_dict(self.cfg),
                "batch_size": self.data.batch_size, "seed": self.data.seed, "limit": self.data.limit,
                "world_size": world_size(), "selection": self.loaders.record()}

    def summary(self) -> dict[str, Any]:
        """The run's metrics: FP, calibrated and kept QANN accuracies, where and when it was kept."""
        fp, fp_val, ptq = self.measured["fp"], self.measured["fp_val"], self.measured["ptq"]
        kept = [r for r in self.history if r.get("best")]   # fit flags each new best; the last one is kept
        best = kept[-1] if kept else {"val_accuracy": ptq["accuracy"], "epoch": 0}
        schedule = self.quant.bit_schedule
        return {"fp_accuracy": fp["accuracy"], "test_samples": fp["samples"], "fp_val_accuracy": fp_val["accuracy"],
                "calibrated_val_accuracy": ptq["accuracy"],
                "calibrated_bits": schedule[0] if schedule else self.quant.bits,
                "qann_val_accuracy": self.batchnorm.get("val_accuracy", best["val_accuracy"]),
                "qann_accuracy": self.test_result.get("accuracy"), "best_epoch": best["epoch"],
                "selected_on": self.loaders.selected_on,
                **({"batchnorm_reestimated": self.batchnorm} if self.batchnorm else {}),
                **({"weight_size": weight_size(self.qann)} if self.quant.weight_bits is not None else {}),
                "seconds": self.run.seconds()}

    def write(self, save: bool) -> None:
        """The sidecar, and the QANN itself if ``save`` (never an earlier bit-schedule stage's network)."""
        steps = {name: float(q.step_size().detach()) for name, q in quantizers(self.qann)}
        if self.quant.bit_schedule is not None and hidden_bits(self.qann) != self.quant.bits:
            save = False
        self.run.write(kind="qann", spec=self.spec, meta=self.meta, metrics=self.summary(), history=self.history,
                       weights=self.qann.state_dict() if save else None, step_sizes=steps)

    def on_epoch(self, record: dict[str, Any], trained: nn.Module) -> None:
        check_replicas(record, trained)
        if self.quant.bit_schedule is not None:
            record["bits"] = hidden_bits(trained)
        self.history.append(record)
        self.write(save=bool(record.get("best")))

    def epoch_start(self, epoch: int) -> None:
        """Before ``epoch`` trains: a bit schedule's change of width, the sigmoid sums' temperature."""
        if self.quant.bit_schedule is not None:
            self.next_stage(epoch)
        if self.quant.weight_bits is not None and self.quant.weight_quantizer == "sigmoid":
            set_temperature(self.qann, self.quant.temperature(epoch))

    def next_stage(self, epoch: int) -> None:
        """A bit schedule's change of width, before ``epoch`` trains: steps carried over and
        re-calibrated, BatchNorm re-estimated."""
        schedule = self.quant.bit_schedule
        assert schedule is not None   # called by epoch_start for a bit schedule only
        width = stage_bits(schedule, self.cfg.epochs, epoch)
        old = hidden_bits(self.qann)
        if width == old:
            return
        set_hidden_bits(self.qann, width)
        self._calibrate(only_hidden=True)
        used = reestimate_batchnorm(self.qann, self.loaders.batches(BATCHNORM_BATCHES))
        broadcast_module(self.qann)   # torchrun: rank 0's steps and statistics everywhere
        self.log(f"bit schedule: hidden {old} -> {width} bits from epoch {epoch + 1} (steps re-calibrated, "
                 f"BatchNorm re-estimated on {used:,} images)")

    def _train(self) -> None:
        schedule = self.quant.bit_schedule
        _, best_state = fit(
            self.qann, self.loaders.train, self.loaders.validation, self.cfg, device=self.dev,
            on_epoch=self.on_epoch, log=self.log, start=self.run.state,
            teacher=self.fp_model if self.cfg.distill > 0 else None,
            baseline=self.measured["ptq"]["accuracy"] if schedule is None else -1.0,
            on_state=self.run.state_writer(self.measured),
            on_epoch_start=self.epoch_start,
            keep_from=0 if schedule is None else first_final_epoch(schedule, self.cfg.epochs))
        if schedule is not None:
            set_hidden_bits(self.qann, self.quant.bits, keep_range=False)   # the kept epoch is a final-width one
        self.qann.load_state_dict(best_state)
        if self.quant.bn_reestimate:
            self.batchnorm.update(self._reestimate_if_better(self.summary()["qann_val_accuracy"]))

    def _reestimate_if_better(self, kept_val: float) -> dict[str, Any]:
        """BatchNorm statistics recomputed over training batches with the quantizers in place; kept
        only if the validation accuracy rises (else the trained statistics are put back)."""
        before = copy.deepcopy(self.qann.state_dict())
        used = reestimate_batchnorm(self.qann, self.loaders.batches(BATCHNORM_BATCHES))
        if used == 0:
            return {}
        broadcast_module(self.qann, buffers_only=True)
        after = evaluate(self.qann, self.loaders.validation, self.dev,
                         description="QANN, BatchNorm re-estimated (validation)")["accuracy"]
        kept = after > kept_val
        if not kept:
            self.qann.load_state_dict(before)
        self.log(f"BatchNorm re-estimated on {used:,} training images: validation {100 * kept_val:.2f}% -> "
                 f"{100 * after:.2f}% ({'kept' if kept else 'not kept'})")
        return {"images": used, "val_accuracy_before": kept_val, "val_accuracy_after": after, "kept": kept,
                **({"val_accuracy": after} if kept else {})}
