"""End-to-end jobs that compose data, models, training and checkpoints (the CLI calls these).

Each job validates its inputs before any long work, shows progress, and writes its outputs
atomically, so an interrupted run leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from qffs.errors import QffsError
from qffs.io import exclusive, interrupts_held, load_checkpoint, load_into, save_checkpoint, write_text_atomic
from qffs.models import build_model, with_defaults
from qffs.quant.graph import NOTES
from qffs.resume import TrainState, check_resumable, load_state, resume_path, save_state
from qffs.snn.memory import parse_memory
from qffs.snn.network import check_timesteps
from qffs.snn.readout import DEFAULT_READOUT, check_readout
from qffs.distributed import (barrier, broadcast_module, init_distributed, is_main_process, main_only,
                               replicas_identical, world_size)
from qffs.train import TrainConfig, config_dict, evaluate, fit, resolve_device
from qffs.trust import authorized_spec, model_provenance, records_model_file

if TYPE_CHECKING:
    from qffs.data import Preprocessing


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
        from qffs.split import check_val_size

        check_val_size(self.val_size, self.select_on_test)
        for name, value, low, optional in (("--batch-size", self.batch_size, 1, False), ("--workers", self.workers, 0, False),
                                           ("--seed", self.seed, 0, False), ("--limit", self.limit, 1, True),
                                           ("--test-limit", self.test_limit, 1, True), ("--val-seed", self.val_seed, 0, False),
                                           ("--image-size", self.image_size, 1, True)):
            if value is None and optional:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low or value >= 2**63:
                raise QffsError(f"{name} must be an integer in {low}..2^63-1, got {value!r}")

    def preprocessing(self, recorded: dict[str, Any] | None = None) -> Preprocessing:
        """This job's preprocessing: the options given, else ``recorded`` (an artifact's), else the dataset's."""
        from qffs.data import resolve_preprocessing

        return resolve_preprocessing(self.dataset, self.root, mean=self.mean, std=self.std,
                                     image_size=self.image_size, recorded=recorded)


def data_meta(opts: DataOptions, prep: Preprocessing) -> dict[str, Any]:
    """What every artifact records about its data, so later stages need not be told again
    (the data root as an absolute path: they may run from another directory)."""
    root = str(Path(opts.root).expanduser().resolve()) if opts.root else None
    return {"dataset": opts.dataset, "data_root": root, "preprocessing": prep.as_dict()}


def _same_dataset(meta: dict[str, Any], dataset: str) -> bool:
    return meta.get("dataset") == dataset or {meta.get("dataset"), dataset} <= {"cifar10", "cifar10-jpeg"}


def recorded_preprocessing(meta: dict[str, Any], dataset: str) -> dict[str, Any] | None:
    """An artifact's preprocessing, if it was recorded for this dataset (CIFAR-10's two forms are one)."""
    return meta.get("preprocessing") if _same_dataset(meta, dataset) else None


#: The dataset of a job whose input records none and that is given none.
DEFAULT_DATASET = "fashion-mnist"


def with_recorded(data: DataOptions, meta: dict[str, Any]) -> DataOptions:
    """``data`` completed from an input artifact's metadata: its dataset if none is given (else
    :data:`DEFAULT_DATASET`), and its data root if none is given for that same dataset."""
    if data.dataset is None:
        data = replace(data, dataset=str(meta.get("dataset") or DEFAULT_DATASET))
    if data.root is None and meta.get("data_root") and meta.get("dataset") == data.dataset:
        data = replace(data, root=str(meta["data_root"]))
    return data


def model_spec_for(model: str, data: DataOptions, prep: Preprocessing) -> str:
    """``model`` with the dataset's classes, channels and image size where the spec leaves them open."""
    from qffs.data import dataset_info

    info = dataset_info(data.dataset, data.root)
    return with_defaults(model, num_classes=info.num_classes, in_channels=info.in_channels,
                         image_size=prep.image_size)


#: Training jobs evaluate in batches of at least this many samples (evaluation needs no small batches).
EVAL_BATCH_MIN = 256


def make_test_loader(opts: DataOptions, prep: Preprocessing | None = None):
    """The test loader of a test-only job (the SNN evaluation), in batches of exactly ``batch_size``:
    there the batch bounds the simulation's memory. Training jobs use :func:`training_data`."""
    from qffs.data import load_dataset, make_loader

    prep = prep or opts.preprocessing()
    return make_loader(load_dataset(opts.dataset, "test", root=opts.root, limit=opts.test_limit, preprocessing=prep),
                       opts.batch_size, shuffle=False, num_workers=opts.workers)


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


def training_data(opts: DataOptions, prep: Preprocessing | None = None) -> TrainingData:
    """The loaders of a training job (:class:`TrainingData`), evaluating in batches of at least
    ``EVAL_BATCH_MIN``; the validation split is drawn from the training pool by :mod:`qffs.split`."""
    from torch.utils.data import Subset

    from qffs.data import load_dataset, load_training_pool, make_loader
    from qffs.split import default_size, validation_split

    prep = prep or opts.preprocessing()
    eval_batch = max(opts.batch_size, EVAL_BATCH_MIN)
    test = make_loader(load_dataset(opts.dataset, "test", root=opts.root, limit=opts.test_limit, preprocessing=prep),
                       eval_batch, shuffle=False, num_workers=opts.workers)
    augmented, plain = load_training_pool(opts.dataset, root=opts.root, limit=opts.limit, preprocessing=prep)
    if opts.select_on_test:
        train_ds, validation, record = augmented, test, None
    else:
        pool = len(augmented)
        if pool < 2:
            raise QffsError(f"the training split has {pool} sample(s): a validation split needs at least 2")
        size = opts.val_size if opts.val_size is not None else default_size(opts.dataset, pool, opts.limit is not None)
        split = validation_split(pool, size, opts.val_seed)
        train_ds = Subset(augmented, split.train.tolist())
        validation = make_loader(Subset(plain, split.validation.tolist()), eval_batch, shuffle=False,
                                 num_workers=opts.workers)
        record = split.record()
    train = make_loader(train_ds, opts.batch_size, shuffle=True, seed=opts.seed, num_workers=opts.workers,
                        drop_last=len(train_ds) > opts.batch_size)
    return TrainingData(train=train, validation=validation, test=test, split=record)


def metrics_path(checkpoint: str | Path) -> Path:
    """``models/net.pt`` → ``models/net.pt.metrics.json``: named after the whole file, so that
    ``net.safetensors`` written from ``net.pt`` never overwrites the input's own sidecar."""
    p = Path(checkpoint)
    return p.with_name(p.name + ".metrics.json")


def check_output_dir(folder: str | Path, option: str = "--out-dir", *, writes: tuple[str, ...] = (),
                     inputs: tuple[str | Path | None, ...] = ()) -> Path:
    """A folder a job may write into, checked before any work: not a file, its nearest existing
    ancestor a writable directory (the rest is created when the job writes), and none of the
    files the job ``writes`` there (fixed names) one of its ``inputs`` or an input's sidecar."""
    folder = Path(folder)
    written = {(folder / name).resolve() for name in writes}
    for given in (Path(i) for i in inputs if i is not None):
        clash = {given.resolve(), metrics_path(given).resolve()} & written
        if clash:
            raise QffsError(f"{option} {folder} would overwrite {sorted(map(str, clash))[0]}, which belongs to the "
                            f"input {given}: choose another {option}")
    if folder.exists() and not folder.is_dir():
        raise QffsError(f"{option} {folder} is a file, not a folder")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise QffsError(f"{option} {folder}: {existing} is a file, so no folder can be created there")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise QffsError(f"{option} {folder}: {existing} is not writable")
    return folder


def check_output(out: str | Path, *inputs: str | Path | None) -> Path:
    """``--out`` as a path, refused unless it is a checkpoint name that is not a directory, and
    neither it nor its sidecar would overwrite an input or an input's sidecar."""
    out = Path(out)
    if out.is_dir():
        raise QffsError(f"--out {out} is a directory: give a file name, e.g. {out / 'model.pt'}")
    if out.suffix not in (".pt", ".pth", ".safetensors"):
        raise QffsError(f"--out must end in .pt, .pth or .safetensors, got {out.name}")
    check_output_dir(out.parent, f"--out {out}: the folder")
    written = {p.resolve() for p in (out, metrics_path(out), partial_path(out), metrics_path(partial_path(out)),
                                     resume_path(out))}
    for given in (Path(i) for i in inputs if i is not None):
        clash = {given.resolve(), metrics_path(given).resolve()} & written
        if clash:
            raise QffsError(f"--out {out} would overwrite {sorted(map(str, clash))[0]}, which belongs to the input "
                            f"{given}: choose another output name")
    return out


def partial_path(out: Path) -> Path:
    """Where a run keeps its best result so far until it finishes: ``net.pt`` → ``net.partial.pt``."""
    return out.with_name(f"{out.stem}.partial{out.suffix}")


@contextlib.contextmanager
def staged_output(out: Path, *, resuming: bool = False) -> Iterator[Path]:
    """Yield the path a training job writes to while it runs (:func:`partial_path`); move it and
    its sidecar onto ``out`` only when the job finishes (and drop its resume state), so an
    interrupted run never leaves a file that looks complete. An earlier run's partial files are
    removed unless this run continues it (``resuming``). Ctrl-C becomes
    :class:`~qffs.errors.Interrupted`, naming what was kept."""
    from qffs.errors import Interrupted

    partial = partial_path(out)
    if not resuming:
        for stale in (partial, metrics_path(partial)):   # an earlier interrupted run's: not this run's result
            if stale.exists():
                stale.unlink()
    try:
        yield partial
    except KeyboardInterrupt:
        kept = f"the best result so far is in {partial}" if partial.exists() else "nothing was written"
        again = "; add --resume to the same command to continue" if resume_path(out).exists() else ""
        raise Interrupted(f"interrupted: {out} was not written; {kept}{again}") from None
    if is_main_process() and partial.exists():
        with interrupts_held():   # the result, its sidecar and the end of its resume state: together
            os.replace(partial, out)
            if metrics_path(partial).exists():
                os.replace(metrics_path(partial), metrics_path(out))
            resume_path(out).unlink(missing_ok=True)


def _resume_from(out: Path, resume: bool, job: dict[str, Any], log=print) -> TrainState | None:
    """The state an interrupted run of ``job`` left (``resume``), else None; checked before any work."""
    path = check_resumable(out, resume)
    if path is None:
        if resume:
            log(f"nothing to resume at {resume_path(out)}: starting at epoch 1")
        return None
    state = load_state(path, job)
    log(f"resuming from {path}: {state.epoch} epoch(s) done")
    return state


def _state_writer(out: Path, job: dict[str, Any], extra: dict[str, Any]):
    """``on_state`` for :func:`~qffs.train.fit`: the run's resume state, after every epoch."""
    def write(state: TrainState) -> None:
        state.job, state.extra = job, extra
        save_state(resume_path(out), state)
    return write


def _job(data: DataOptions, prep: Preprocessing, spec: str, cfg: TrainConfig, **options: Any) -> dict[str, Any]:
    """The options that define a training run: a resume state is only continued by the same ones
    (the data root may move; the data, its order and the recipe may not)."""
    return {"model": spec, "dataset": data.dataset, "preprocessing": prep.as_dict(), "batch_size": data.batch_size,
            "seed": data.seed, "limit": data.limit, "test_limit": data.test_limit, "train_config": config_dict(cfg),
            "val_size": data.val_size, "val_seed": data.val_seed, "select_on_test": data.select_on_test,
            "workers": data.workers, "processes": int(os.environ.get("WORLD_SIZE", "1")), **options}


def train_fp(model: str, out: str | Path, data: DataOptions, cfg: TrainConfig, *,
             pretrained: str | None = None, device: str = "auto", resume: bool = False,
             log=print) -> dict[str, Any]:
    """Train (or fine-tune from ``pretrained``) a full-precision model; keep the best epoch.

    Writes ``NAME.partial.pt`` (best checkpoint so far, with spec, dataset, metrics, config), its
    ``.metrics.json`` and the resume state after every epoch, and moves them onto ``out`` when
    done. ``resume`` continues an interrupted run of the same job. Returns the final metrics dict.
    """
    cfg.validate()
    if cfg.epochs < 1:
        raise QffsError(f"--epochs must be >= 1 to train, got {cfg.epochs}")
    out = check_output(out, pretrained)
    log = main_only(log)
    with exclusive(out, "--out"):   # a second run writing the same --out is refused
        distributed = init_distributed()
        dev = resolve_device(device)
        torch.manual_seed(data.seed)
        source = load_checkpoint(pretrained) if pretrained else None
        data = with_recorded(data, source.meta if source else {})
        prep = data.preprocessing(recorded=recorded_preprocessing(source.meta, data.dataset) if source else None)
        spec = model_spec_for(model, data, prep)
        net = build_model(spec)
        if source is not None:
            load_into(net, source.state_dict, source=str(pretrained), spec=spec)
        job = _job(data, prep, spec, cfg, kind="fp", pretrained=str(Path(pretrained).resolve()) if pretrained else None)
        state = _resume_from(out, resume, job, log)
        partial = partial_path(out)
        started = time.perf_counter()
        meta = {**data_meta(data, prep), **model_provenance(spec), "train_config": config_dict(cfg),
                "batch_size": data.batch_size,
                "seed": data.seed, "limit": data.limit, "pretrained": pretrained, "distributed": distributed,
                "world_size": world_size()}
        history: list[dict[str, Any]] = list(state.history) if state else []
        loaders = training_data(data, prep)
        meta["selection"] = loaders.record()
        test_result: dict[str, float] = {}

        def write(best_weights: dict[str, torch.Tensor] | None) -> None:
            if not is_main_process():
                return
            best = max(history, key=lambda r: r["val_accuracy"])
            metrics = {"val_accuracy": best["val_accuracy"], "test_accuracy": test_result.get("accuracy"),
                       "test_samples": test_result.get("samples"), "best_epoch": best["epoch"],
                       "selected_on": loaders.selected_on, "seconds": round(time.perf_counter() - started, 1)}
            if best_weights is not None:
                save_checkpoint(partial, best_weights, kind="fp", model=spec, metrics=metrics, **meta)
            write_text_atomic(metrics_path(partial), json.dumps(
                {"model": spec, **meta, "metrics": metrics, "history": history}, indent=2))

        def on_epoch(record: dict[str, Any], trained: torch.nn.Module) -> None:
            check_replicas(record, trained)
            history.append(record)
            write(trained.state_dict() if record.get("best") else None)

        if state is not None and state.history:   # the best so far, as the state has it (a kill may have
            write(state.best_state)                # come between writing the partial file and the state)
        with staged_output(out, resuming=state is not None):
            _, best_state = fit(net, loaders.train, loaders.validation, cfg, device=dev, on_epoch=on_epoch, log=log,
                                start=state, on_state=_state_writer(out, job, {}))
            net.load_state_dict(best_state)   # the kept epoch, now evaluated once on the test set
            test_result.update(evaluate(net, loaders.test, dev, description="test (kept epoch)"))
            write(best_state)
        best = max(history, key=lambda r: r["val_accuracy"]) if history else {}
        return {"model": spec, "checkpoint": str(out), "val_accuracy": best.get("val_accuracy"),
                "test_accuracy": test_result["accuracy"], "best_epoch": best.get("epoch"),
                "selected_on": loaders.selected_on, "seconds": round(time.perf_counter() - started, 1)}


def check_replicas(record: dict[str, Any], model: torch.nn.Module) -> None:
    """Under torchrun, after an epoch: every rank must hold the same weights (DDP keeps them so);
    recorded in the epoch's history entry, and a difference stops the job (on every rank)."""
    if world_size() == 1:
        return
    record["replicas_identical"] = replicas_identical(model)
    if not record["replicas_identical"]:
        raise QffsError(f"the {world_size()} processes hold different weights after epoch {record['epoch']}: "
                        "the data-parallel training went out of step")


def _calibration_batches(loader, count: int) -> list[torch.Tensor]:
    batches = []
    for x, _ in loader:
        batches.append(x)
        if len(batches) >= count:
            break
    return batches


def _rebuild_qann(meta: dict[str, Any], state_dict: dict[str, torch.Tensor], source: str,
                  model: str | None = None) -> torch.nn.Module:
    """The QANN described by ``meta`` (model spec, bit widths) with ``state_dict`` loaded.

    A recorded model *file* is run only if ``model`` names that same file (:mod:`qffs.trust`).
    """
    from qffs.quant import quantize

    spec = authorized_spec(meta, model, source)
    output_bits = meta.get("output_bits")
    qann = quantize(build_model(spec), bits=int(meta["bits"]),
                    output_bits=None if output_bits is None else int(output_bits))
    load_into(qann, state_dict, source=source, spec=spec)
    return qann.eval()


def _expect_kind(ckpt, kind: str, path: str | Path) -> None:
    if ckpt.kind == kind:
        return
    advice = {
        ("qann", "fp"): f"quantize it first: qffs quantize {path} --out qann.pt",
        ("qann", "foreign"): f"quantize it first: qffs quantize {path} --model SPEC --out qann.pt",
        ("qann", "snn"): "it is already converted; pass it to qffs evaluate",
        ("snn", "qann"): f"convert it first: qffs convert {path} --out snn.pt",
        ("snn", "fp"): f"quantize and convert it first (or use qffs run {path})",
        ("snn", "foreign"): "quantize and convert it first (qffs run)",
    }.get((kind, ckpt.kind), "")
    names = {"fp": "a full-precision", "foreign": "a plain (non-qffs)", "qann": "a quantized-ANN", "snn": "an SNN"}
    want = {"qann": "a quantized ANN", "snn": "an SNN artifact"}[kind]
    raise QffsError(f"{path} is {names.get(ckpt.kind, ckpt.kind)} checkpoint, not {want}" + (f"; {advice}" if advice else ""))


def load_qann(path: str | Path, model: str | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a quantized ANN from its checkpoint alone: (GraphModule in eval mode, metadata).

    The QANN is re-derived from the recorded model spec and bit widths by ``qffs.quantize``
    (deterministic names), then its state dict — weights, BN statistics, step sizes — is loaded.
    ``model`` names the model file when the QANN was made from one (it is never imported on
    the artifact's word alone).
    """
    ckpt = load_checkpoint(path)
    _expect_kind(ckpt, "qann", path)
    return _rebuild_qann(ckpt.meta, ckpt.state_dict, str(path), model), ckpt.meta


CONVERT_OPTIONS = ("input_window", "precharge", "negative_spikes", "max_pool")


def load_snn(path: str | Path, model: str | None = None, dtype: torch.dtype | None = None):
    """Rebuild an SNN artifact: (SpikingNetwork, the QANN it came from, metadata).

    The artifact holds the QANN (spec, bits, state dict) and the conversion options; the
    conversion is deterministic, so this is the SNN that was written. ``model``: as for
    :func:`load_qann`. ``dtype``: convert in this type (float64 for an exact simulation: BatchNorm
    is folded in it, not folded in float32 and then widened).
    """
    from qffs.snn import convert

    ckpt = load_checkpoint(path)
    _expect_kind(ckpt, "snn", path)
    qann = _rebuild_qann(ckpt.meta, ckpt.state_dict, str(path), model)
    if dtype is not None:
        qann = qann.to(dtype)
    options = {k: ckpt.meta["conversion"][k] for k in CONVERT_OPTIONS if k in ckpt.meta.get("conversion", {})}
    return convert(qann, **options), qann, ckpt.meta


def sample_input_shape(meta: dict[str, Any]) -> tuple[int, ...] | None:
    """One sample's input shape: recorded by quantize (``input_shape``), else the dataset's, else unknown."""
    from qffs.data import dataset_info

    if meta.get("input_shape"):
        return tuple(int(d) for d in meta["input_shape"])
    if meta.get("dataset") and meta["dataset"] != "imagefolder":
        info = dataset_info(meta["dataset"])
        return (info.in_channels, info.image_size, info.image_size)
    return None


def convert_checkpoint(qann_path: str | Path, out: str | Path, *, input_window: int | None = None,
                       precharge: bool = True, negative_spikes: bool = True, max_pool: str = "event",
                       model: str | None = None) -> tuple[Path, list[dict[str, Any]]]:
    """QFFS stage 2 as a job: QANN checkpoint → SNN artifact; returns (path, per-layer summary).

    The summary lists, per layer, θ, Z_max, step size, fan-in and neurons per sample (found by
    one step on a zero input of the dataset's shape).
    """
    out = check_output(out, qann_path)
    with exclusive(out, "--out"):   # a second convert writing the same --out is refused
        return _convert(qann_path, out, input_window=input_window, precharge=precharge,
                        negative_spikes=negative_spikes, max_pool=max_pool, model=model)


def _convert(qann_path: str | Path, out: Path, *, input_window: int | None, precharge: bool, negative_spikes: bool,
             max_pool: str, model: str | None) -> tuple[Path, list[dict[str, Any]]]:
    from qffs.snn import convert

    qann, meta = load_qann(qann_path, model)
    snn = convert(qann, input_window=input_window, precharge=precharge, negative_spikes=negative_spikes,
                  max_pool=max_pool)
    summary = snn.summary()
    shape = sample_input_shape(meta)
    if shape is not None:
        result = snn.simulate(torch.zeros(2, *shape), 1)   # 2: a model may squeeze() its batch dimension away
        neurons = {r.name: r.neurons for r in result.neurons}
        for row in summary:
            if row["name"] in neurons:
                row["neurons"] = neurons[row["name"]]
    keep = {k: v for k, v in meta.items() if k not in ("format", "kind", "created", "qffs_version", "torch_version")}
    save_checkpoint(out, qann.state_dict(), kind="snn", **{**keep, "model": meta["model"]},
                    conversion=dict(snn.config), source_qann=str(qann_path), layers=summary)
    return out, summary


def _bits(bits: int | None) -> str:
    return "analog" if bits is None else f"{bits}-bit"


def test_data_for(path: str | Path, meta: dict[str, Any], data: DataOptions):
    """The test set an artifact is evaluated on: (data options with the recorded ones filled in,
    preprocessing, loader); refuses another dataset than the one it was trained on."""
    data = with_recorded(data, meta)
    check_trained_on(path, meta, data.dataset)
    prep = data.preprocessing(recorded=recorded_preprocessing(meta, data.dataset))
    test_loader = make_test_loader(data, prep)
    return data, prep, test_loader


def check_trained_on(path: str | Path, meta: dict[str, Any], dataset: str) -> None:
    """Refuse evaluating an artifact on another dataset than the one it was trained on."""
    trained_on = meta.get("dataset")
    if trained_on and not _same_dataset(meta, dataset):
        raise QffsError(f"{path} was trained on {trained_on}, not {dataset}: pass --dataset {trained_on}")


#: Runtimes ``qffs evaluate`` can simulate with: qffs' own, or the SNN exported to ONNX.
BACKENDS = ("torch", "onnxruntime")


def evaluate_checkpoint(snn_path: str | Path, data: DataOptions, timesteps: int, *, device: str = "auto",
                        double: bool = False, readout: str = DEFAULT_READOUT, model: str | None = None,
                        memory: str | int | None = None, backend: str = "torch") -> dict[str, Any]:
    """QFFS stage 3 as a job: simulate an SNN artifact on a test set; returns the report dict
    (every readout measured, ``readout`` the headline; ``memory``: the simulation's budget, as
    for ``--memory``). ``backend="onnxruntime"`` exports the SNN unrolled over ``timesteps``
    (float32) and runs that file with onnxruntime instead (:mod:`qffs.export.runtime`)."""
    from qffs.evaluate import evaluate_snn

    check_timesteps(timesteps, "--timesteps")
    check_readout(readout)
    if backend not in BACKENDS:
        raise QffsError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "onnxruntime" and double:
        raise QffsError("--backend onnxruntime runs the exported float32 graph; --double needs --backend torch")
    budget = None if memory is None else parse_memory(memory)
    init_distributed()   # under torchrun each process simulates its shard of the test set
    dev = resolve_device(device)
    snn, qann, meta = load_snn(snn_path, model, torch.float64 if double else None)
    data, prep, test_loader = test_data_for(snn_path, meta, data)
    dataset = data.dataset
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if backend == "onnxruntime":
            snn = _onnxruntime_network(snn, test_loader, timesteps, dev, stack)
        report = evaluate_snn(snn, test_loader, timesteps, qann=qann, device=dev if backend == "torch" else "cpu",
                              dtype=torch.float64 if double else torch.float32, readout=readout,
                              memory=budget).to_dict()
    metrics = meta.get("metrics", {})
    selected_on = qann_selected_on(metrics)
    report.update({
        "title": f"{meta['model']} on {dataset}: {meta.get('bits')}-bit hidden / "
                 f"{_bits(meta.get('output_bits'))} output, T_in={snn.input_window}"
                 + ("; QANN epoch chosen on the test set" if selected_on == "test" else ""),
        "qann_selected_on": selected_on,
        "fp_accuracy": metrics.get("fp_accuracy"),
        "fp_samples": metrics.get("test_samples"),
        "qann_accuracy_trained": metrics.get("qann_accuracy"),
        "model": meta["model"], "dataset": dataset, "snn_artifact": str(snn_path),
        "bits": meta.get("bits"), "output_bits": meta.get("output_bits"),
        "seconds": round(time.perf_counter() - started, 1),
        "backend": backend,
        "config": {"timesteps": timesteps, "batch_size": data.batch_size, "test_limit": data.test_limit,
                   "device": device, "double": double, "readout": readout, "memory": budget, "data_root": data.root,
                   "backend": backend,
                   "preprocessing": prep.as_dict()},
    })
    return report


def qann_selected_on(metrics: dict[str, Any]) -> str | None:
    """Where a QANN's kept epoch was chosen: "validation", "test", or None (calibration only). QANNs
    written before the validation split record nothing and were chosen on the test set."""
    if metrics.get("selected_on") in ("validation", "test"):
        return metrics["selected_on"]
    return "test" if metrics.get("best_epoch") else None


def _onnxruntime_network(snn, loader, timesteps: int, device: torch.device, stack: contextlib.ExitStack):
    """``snn`` exported (with the report's diagnostic outputs) into a temporary folder that
    ``stack`` removes, and opened with onnxruntime."""
    from qffs.export.onnx import snn_to_onnx
    from qffs.export.runtime import OnnxSpikingNetwork

    import onnxruntime

    x = loader.dataset[0][0].unsqueeze(0)   # the whole test set's first sample (a rank's shard may be empty)
    if device.type == "cuda" and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        device = torch.device("cpu")      # "auto" found a GPU, this onnxruntime cannot use it
    from qffs.export.runtime import export_folder

    folder = export_folder(stack)
    main_only(print)(f"exporting the SNN unrolled over {timesteps} steps to ONNX ...", flush=True)
    path = snn_to_onnx(snn, folder / "snn.onnx", x, timesteps, diagnostics=True)
    return OnnxSpikingNetwork(path, device)


#: QAT learning-rate schedule. The paper decays exponentially over a long run; in a fine-tune of
#: a few epochs that barely decays (γ = 0.9/epoch ends at 0.81·lr), and annealing to zero measured
#: better: 3-epoch QAT of the shipped VGG, best of 3 epochs, 92.41–92.51 % with cosine (4 runs)
#: against 91.47–92.41 % with exp (6 runs); docs/results.md has the table.
QAT_SCHEDULE = "cosine"


def qat_config(epochs: int, lr: float = 0.01, **overrides: Any) -> TrainConfig:
    """The QAT recipe: SGD lr 0.01, momentum 0.9, weight decay 5e-4 except on step sizes, cosine decay."""
    return TrainConfig(**{"epochs": epochs, "lr": lr, "schedule": QAT_SCHEDULE, "no_decay_names": ("step",),
                          **overrides})


def check_input_channels(gm: torch.fx.GraphModule, data: DataOptions) -> None:
    """Refuse, before any data is read, a network whose first convolution takes another number of
    channels than the dataset's images have (a forgotten ``--dataset`` would otherwise fail inside
    the model's own code)."""
    import torch.nn as nn

    from qffs.data import dataset_info

    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        layer = gm.get_submodule(str(node.target))
        if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            if isinstance(layer, nn.Conv2d):
                have = dataset_info(data.dataset, data.root).in_channels
                if layer.in_channels != have:
                    raise QffsError(f"the model takes {layer.in_channels} input channel(s), {data.dataset} has {have}: "
                                    "pass --dataset (and --data-root) for the data it was trained on")
            return


def _load_fp(checkpoint: str | Path, model: str | None, data: DataOptions):
    """(FP model with its weights, the checkpoint, ``data`` completed from it, its preprocessing, the spec
    used): ``model`` if given, else the recorded spec."""
    ckpt = load_checkpoint(checkpoint)
    data = with_recorded(data, ckpt.meta)
    if ckpt.kind not in ("fp", "foreign"):
        raise QffsError(f"{checkpoint} is a {ckpt.kind} checkpoint, not a full-precision model")
    prep = data.preprocessing(recorded=recorded_preprocessing(ckpt.meta, data.dataset))
    if model and not records_model_file(ckpt.meta):
        spec = model_spec_for(model, data, prep)
    else:   # the recorded spec, and a recorded model file only if the caller names that same file
        spec = authorized_spec(ckpt.meta, model, str(checkpoint))
    net = build_model(spec)
    try:
        load_into(net, ckpt.state_dict, source=str(checkpoint), spec=spec)
    except QffsError as err:
        recorded = ckpt.meta.get("model")
        recorded = ckpt.meta.get("model")
        if model and recorded and recorded != spec and not records_model_file(ckpt.meta):
            raise QffsError(f"{err} (the checkpoint records its model as {recorded!r}: leave out --model to use it)") from err
        raise
    return net, ckpt, data, prep, spec


def quantize_checkpoint(checkpoint: str | Path, out: str | Path, data: DataOptions, cfg: TrainConfig, *,
                        bits: int = 2, output_bits: int | None = 3, calibration: str = "mse",
                        calibration_batches: int = 4, model: str | None = None, bit_schedule: str | None = None,
                        bn_reestimate: bool = True, recipe: str | None = None, device: str = "auto",
                        resume: bool = False, log=print) -> dict[str, Any]:
    """QFFS stage 1: fine-tune a pretrained checkpoint into a ``bits``/``output_bits`` QANN.

    Steps: load the FP model, measure its accuracy; ``quantize`` it (every ReLU → LSQ
    quantizer, logits → output quantizer); initialise step sizes on a few training batches;
    QAT for ``cfg.epochs`` (step sizes without weight decay unless ``cfg.no_decay_names`` is
    emptied; with ``cfg.distill > 0`` the FP model is the distillation teacher); keep the best
    epoch. ``bit_schedule`` ("4,3,2"): train the hidden quantizers at falling widths, ending at
    ``bits`` (:mod:`qffs.quant.schedule`). ``bn_reestimate``: after QAT, recompute BatchNorm's
    running statistics over training batches with the quantizers in place, kept only if the
    validation accuracy improves. Writes ``out`` (kind "qann": spec, bits, step sizes, state dict, metrics,
    provenance) and ``.metrics.json`` beside it, by way of ``NAME.partial.pt`` and a resume
    state written after every epoch; ``resume`` continues an interrupted run of the same job.
    """
    from qffs.quant import quantize
    from qffs.quant.calibrate import check_method
    from qffs.quant.lsq import check_bits

    cfg.validate()
    log = main_only(log)
    out = check_output(out, checkpoint)
    check_bits("--bits", bits)
    if output_bits is not None:
        check_bits("--output-bits", output_bits)
    check_method(calibration)
    from qffs.quant.schedule import parse_bit_schedule, stage_epochs

    schedule = parse_bit_schedule(bit_schedule, bits)
    if schedule is not None:
        stage_epochs(cfg.epochs, len(schedule))
    with exclusive(out, "--out"):   # a second run writing the same --out is refused
        init_distributed()
        dev = resolve_device(device)
        torch.manual_seed(data.seed)
        # everything that can be refused is checked before any data is read: the file, the
        # preprocessing, the model code against the weights, and every graph node (qffs.ops)
        fp_model, _, data, prep, spec = _load_fp(checkpoint, model, data)
        qann = quantize(fp_model, bits=bits, output_bits=output_bits).to(dev)
        for note in qann.meta.get(NOTES, []):
            log(f"note: {note}")
        check_input_channels(qann, data)
        options = {"bits": bits, "output_bits": output_bits, "calibration": calibration,
                   "calibration_batches": calibration_batches, "bit_schedule": list(schedule) if schedule else None,
                   "bn_reestimate": bn_reestimate, "recipe": recipe}
        # what a resume must keep: the training itself. BatchNorm re-estimation comes after the last epoch
        # and the recipe's name is a label (its settings are in cfg), so neither is part of it; a bit
        # schedule is, when there is one (so a run begun before these three options existed resumes)
        trained = {k: v for k, v in options.items() if k not in ("bn_reestimate", "recipe")
                   and not (k == "bit_schedule" and v is None)}
        job = _job(data, prep, spec, cfg, kind="qann", source=str(Path(checkpoint).resolve()), **trained)
        state = _resume_from(out, resume, job, log)
        started = time.perf_counter()
        with staged_output(out, resuming=state is not None) as partial:   # an interrupted run leaves only partial files
            return _qat(qann, fp_model, spec, out, partial, data, prep, cfg, dev, started,
                        {**options, "source_checkpoint": str(checkpoint)}, job, state, log)


def _qat(qann, fp_model, spec: str, out: Path, partial: Path, data: DataOptions, prep: Preprocessing,
         cfg: TrainConfig, dev: torch.device, started: float, options: dict[str, Any], job: dict[str, Any],
         state: TrainState | None, log) -> dict[str, Any]:
    """The part of :func:`quantize_checkpoint` that reads data: measure, calibrate, QAT, writing
    the best QANN so far to ``partial``. Resuming, the measurements come from ``state``."""
    from qffs.quant import calibrate, quantizers

    from qffs.quant.schedule import first_final_epoch, hidden_bits, reestimate_batchnorm, set_hidden_bits, stage_bits

    loaders = training_data(data, prep)
    schedule = tuple(options["bit_schedule"]) if options["bit_schedule"] else None
    if schedule is not None:   # the width the run is at: its first stage's, or that of the last finished epoch
        done = state.epoch if state is not None else 0
        set_hidden_bits(qann, stage_bits(schedule, cfg.epochs, max(done - 1, 0)), keep_range=False)
    if state is None:
        fp = evaluate(fp_model.to(dev), loaders.test, dev, description="FP accuracy (test)")
        fp_val = evaluate(fp_model, loaders.validation, dev, description="FP accuracy (validation)")
        batches = _calibration_batches(loaders.train, options["calibration_batches"])
        calibrate(qann, [b.to(dev) for b in batches], method=options["calibration"])
        broadcast_module(qann)   # under torchrun: rank 0's step sizes (from its shard's batches) everywhere
        ptq = evaluate(qann, loaders.validation, dev, description="QANN after calibration (validation)")
        input_shape = list(batches[0].shape[1:])
    else:   # measured before the interruption; the weights come from the state
        try:
            fp, fp_val, ptq, input_shape = (state.extra["fp"], state.extra["fp_val"], state.extra["ptq"],
                                            state.extra["input_shape"])
        except KeyError:
            raise QffsError(f"{resume_path(out)} is an incomplete resume state; delete it to start over") from None
        fp_model.to(dev)
    meta = {**data_meta(data, prep), **model_provenance(spec), "input_shape": input_shape,
            "bits": options["bits"], "output_bits": options["output_bits"], "calibration": options["calibration"],
            "bit_schedule": options["bit_schedule"], "bn_reestimate": options["bn_reestimate"], "recipe": options["recipe"], "source_checkpoint": options["source_checkpoint"],
            "train_config": config_dict(cfg), "batch_size": data.batch_size, "seed": data.seed, "limit": data.limit,
            "world_size": world_size(), "selection": loaders.record()}
    history: list[dict[str, Any]] = list(state.history) if state else []
    test_result: dict[str, float] = {}
    batchnorm: dict[str, Any] = {}

    def summary() -> dict[str, Any]:
        kept = [r for r in history if r.get("best")]   # fit flags each new best; the last one is kept
        best = kept[-1] if kept else {"val_accuracy": ptq["accuracy"], "epoch": 0}
        return {"fp_accuracy": fp["accuracy"], "test_samples": fp["samples"], "fp_val_accuracy": fp_val["accuracy"],
                "calibrated_val_accuracy": ptq["accuracy"], "calibrated_bits": schedule[0] if schedule else options["bits"],
                "qann_val_accuracy": batchnorm.get("val_accuracy", best["val_accuracy"]),
                "qann_accuracy": test_result.get("accuracy"), "best_epoch": best["epoch"],
                "selected_on": loaders.selected_on, **({"batchnorm_reestimated": batchnorm} if batchnorm else {}),
                "seconds": round(time.perf_counter() - started, 1)}

    def write(trained: torch.nn.Module, save: bool) -> None:
        if not is_main_process():
            return
        metrics = summary()
        steps = {name: float(q.step_size().detach()) for name, q in quantizers(trained)}
        if schedule is not None and hidden_bits(trained) != options["bits"]:
            save = False   # an earlier stage's network is not a QANN of the recorded width: never a partial file
        if save:
            save_checkpoint(partial, trained.state_dict(), kind="qann", model=spec, metrics=metrics,
                            step_sizes=steps, **meta)
        write_text_atomic(metrics_path(partial), json.dumps(
            {"model": spec, **meta, "metrics": metrics, "step_sizes": steps, "history": history}, indent=2))

    def on_epoch(record: dict[str, Any], trained: torch.nn.Module) -> None:
        check_replicas(record, trained)
        if schedule is not None:
            record["bits"] = hidden_bits(trained)
        history.append(record)
        write(trained, save=bool(record.get("best")))

    def next_stage(epoch: int) -> None:   # a bit schedule's change of width, before the epoch trains
        width = stage_bits(schedule, cfg.epochs, epoch)
        if width != hidden_bits(qann):
            old = hidden_bits(qann)
            set_hidden_bits(qann, width)
            calibrate(qann, [b.to(dev) for b in _calibration_batches(loaders.train, options["calibration_batches"])],
                      method=options["calibration"], only_hidden=True)
            used = reestimate_batchnorm(qann, _calibration_batches(loaders.train, BATCHNORM_BATCHES))
            broadcast_module(qann)   # torchrun: rank 0's steps and statistics everywhere
            log(f"bit schedule: hidden {old} -> {width} bits from epoch {epoch + 1} (steps re-calibrated, "
                f"BatchNorm re-estimated on {used:,} images)")

    if state is not None:   # the best so far as the state has it (a kill may have come between
        qann.load_state_dict(state.best_state)   # writing the partial file and the state)
    write(qann, save=True)   # the calibrated QANN (or, resuming, the best so far) first
    if cfg.epochs > 0:
        _, best_state = fit(qann, loaders.train, loaders.validation, cfg, device=dev, on_epoch=on_epoch, log=log,
                            start=state, teacher=fp_model if cfg.distill > 0 else None,
                            baseline=ptq["accuracy"] if schedule is None else -1.0,
                            on_state=_state_writer(out, job, {"fp": fp, "fp_val": fp_val, "ptq": ptq,
                                                              "input_shape": input_shape}),
                            on_epoch_start=None if schedule is None else next_stage,
                            keep_from=0 if schedule is None else first_final_epoch(schedule, cfg.epochs))
        if schedule is not None:
            set_hidden_bits(qann, options["bits"], keep_range=False)   # the kept epoch is a final-width one
        qann.load_state_dict(best_state)
        if options["bn_reestimate"]:
            batchnorm.update(_reestimate_if_better(qann, loaders, summary()["qann_val_accuracy"], dev, log))
    test_result.update(evaluate(qann, loaders.test, dev, description="QANN (kept epoch, test)"))
    write(qann, save=True)
    return {"model": spec, "checkpoint": str(out), **summary()}


#: Training batches over which BatchNorm statistics are re-estimated (bit-schedule changes, after QAT).
BATCHNORM_BATCHES = 50


def _reestimate_if_better(qann: torch.nn.Module, loaders: TrainingData, kept_val: float, dev: torch.device,
                          log) -> dict[str, Any]:
    """BatchNorm statistics recomputed over training batches with the quantizers in place; kept only
    if the validation accuracy rises (else the trained statistics are put back). Returns what happened."""
    import copy

    from qffs.quant.schedule import reestimate_batchnorm

    before = copy.deepcopy(qann.state_dict())
    used = reestimate_batchnorm(qann, _calibration_batches(loaders.train, BATCHNORM_BATCHES))
    if used == 0:
        return {}
    broadcast_module(qann, buffers_only=True)
    after = evaluate(qann, loaders.validation, dev, description="QANN, BatchNorm re-estimated (validation)")["accuracy"]
    kept = after > kept_val
    if not kept:
        qann.load_state_dict(before)
    log(f"BatchNorm re-estimated on {used:,} training images: validation {100 * kept_val:.2f}% -> "
        f"{100 * after:.2f}% ({'kept' if kept else 'not kept'})")
    return {"images": used, "val_accuracy_before": kept_val, "val_accuracy_after": after, "kept": kept,
            **({"val_accuracy": after} if kept else {})}


def describe_recipe(meta: dict[str, Any]) -> str | None:
    """One line on how a trained artifact was made: epochs, optimiser, schedule, distillation, bit
    schedule, BatchNorm re-estimation, and where its epoch was chosen (None: nothing recorded)."""
    cfg = meta.get("train_config")
    if not isinstance(cfg, dict):
        return None
    kind = "QAT" if meta.get("kind") in ("qann", "snn") else "training"
    named = f"{meta['recipe']} — " if meta.get("recipe") else ""
    parts = [f"{named}{kind} {cfg.get('epochs')} epoch(s), SGD lr {cfg.get('lr')} {cfg.get('schedule')}, momentum "
             f"{cfg.get('momentum')}, weight decay {cfg.get('weight_decay')}, batch {meta.get('batch_size')}"]
    if cfg.get("distill"):
        parts.append(f"distillation from the FP network {cfg['distill']} (temperature {cfg.get('temperature')})")
    if cfg.get("label_smoothing"):
        parts.append(f"label smoothing {cfg['label_smoothing']}")
    if cfg.get("freeze_bn"):
        parts.append("BatchNorm frozen")
    if meta.get("bit_schedule"):
        parts.append("bit schedule " + ",".join(str(b) for b in meta["bit_schedule"]))
    reestimated = (meta.get("metrics") or {}).get("batchnorm_reestimated") if isinstance(meta.get("metrics"), dict) else None
    if isinstance(reestimated, dict) and "kept" in reestimated:
        parts.append("BatchNorm re-estimated after QAT" if reestimated["kept"] else
                     "BatchNorm re-estimation tried, not kept")
    selection = meta.get("selection") if isinstance(meta.get("selection"), dict) else {}
    split = selection.get("validation")
    if isinstance(split, dict):
        parts.append(f"epoch chosen on validation ({split.get('size')} training images held out, seed "
                     f"{split.get('seed')}, sha256 {split.get('sha256')})")
    else:
        parts.append("epoch chosen on the TEST set")
    return "; ".join(parts)


def shipped_model(name: str) -> Path:
    """A checkpoint shipped with qffs: installed as package data (``qffs/shipped/``), or, in a
    checkout, in ``models/`` at the top of the repository."""
    here = Path(__file__).resolve().parent
    for folder in (here / "shipped", here.parent / "models"):
        if (folder / name).is_file():
            return folder / name
    return here / "shipped" / name


#: The shipped Fashion-MNIST network the demo starts from.
SHIPPED_FMNIST = shipped_model("fmnist_vgg_small.pt")


def run_pipeline(checkpoint: str | Path, out_dir: str | Path, data: DataOptions, cfg: TrainConfig, *,
                 timesteps: int = 16, bits: int = 2, output_bits: int | None = 3, model: str | None = None,
                 calibration: str = "mse", device: str = "auto", double: bool = False,
                 readout: str = DEFAULT_READOUT, memory: str | int | None = None, resume: bool = False,
                 bit_schedule: str | None = None, bn_reestimate: bool = True, recipe: str | None = None,
                 log=print) -> dict[str, Any]:
    """All three stages: quantize (QAT) → convert → evaluate, into ``out_dir`` (``resume``: continue
    an interrupted QAT there).

    Writes ``qann.pt``, ``snn.pt`` and ``curve.csv/.json/.png`` (each atomically); returns the
    evaluation report with the paths under ``"files"``.
    """
    check_readout(readout)
    check_timesteps(timesteps, "--timesteps")
    if memory is not None:
        parse_memory(memory)
    out = check_output_dir(out_dir, writes=PIPELINE_FILES, inputs=(checkpoint,))
    with exclusive(out, "--out-dir"):   # two runs never write one directory
        return _pipeline(checkpoint, out, data, cfg, timesteps=timesteps, bits=bits, output_bits=output_bits,
                         model=model, calibration=calibration, device=device, double=double, readout=readout,
                         memory=memory, resume=resume, bit_schedule=bit_schedule, bn_reestimate=bn_reestimate,
                         recipe=recipe, log=log)


def _pipeline_files() -> tuple[str, ...]:
    from qffs.report import report_files

    files = []
    for name in ("qann.pt", "snn.pt"):
        for path in (Path(name), partial_path(Path(name))):
            files += [path.name, metrics_path(path).name]
        files.append(resume_path(Path(name)).name)
    return (*files, *report_files())


#: Every file ``qffs run`` may write into its ``--out-dir``.
PIPELINE_FILES = _pipeline_files()


def _pipeline(checkpoint: str | Path, out: Path, data: DataOptions, cfg: TrainConfig, *, timesteps: int, bits: int,
              output_bits: int | None, model: str | None, calibration: str, device: str, double: bool, readout: str,
              memory: str | int | None, resume: bool, bit_schedule: str | None, bn_reestimate: bool,
              recipe: str | None, log) -> dict[str, Any]:
    from qffs.report import write_report

    started = time.perf_counter()
    log = main_only(log)
    log(f"[1/3] quantize: {bits}-bit hidden, {_bits(output_bits)} output, {cfg.epochs} QAT epoch(s)")
    q = quantize_checkpoint(checkpoint, out / "qann.pt", data, cfg, bits=bits, output_bits=output_bits,
                            calibration=calibration, model=model, device=device, resume=resume,
                            bit_schedule=bit_schedule, bn_reestimate=bn_reestimate, recipe=recipe, log=log)
    chosen = "epoch chosen on the TEST set" if q["selected_on"] == "test" else f"validation {100 * q['qann_val_accuracy']:.2f}%"
    log(f"      FP {100 * q['fp_accuracy']:.2f}%  QANN {100 * q['qann_accuracy']:.2f}% on the test set "
        f"(epoch {q['best_epoch']}, {chosen})  ({q['seconds']:.0f} s)")
    from qffs.errors import Interrupted
    from qffs.report import report_files

    snn_path = out / "snn.pt"
    if is_main_process():   # an earlier run's SNN and curve no longer match the new qann.pt: never leave them beside it
        for stale in (snn_path, metrics_path(snn_path), *(out / name for name in report_files())):
            stale.unlink(missing_ok=True)
    stage = "2 (convert)"
    try:
        log("[2/3] convert")
        barrier()                      # under torchrun, rank 0 wrote qann.pt; it alone writes snn.pt
        if is_main_process():
            snn_path, summary = convert_checkpoint(out / "qann.pt", snn_path, model=model)
            log(f"      {sum(1 for r in summary if r['kind'].startswith('IF'))} IF layers, "
                f"{sum(r.get('neurons', 0) for r in summary):,} neurons per sample")
        barrier()
        stage = "3 (evaluate)"
        log(f"[3/3] evaluate: T = {timesteps}")
        report = evaluate_checkpoint(snn_path, data, timesteps, device=device, double=double, readout=readout,
                                     model=model, memory=memory)
    except KeyboardInterrupt:
        done = f"{out / 'qann.pt'} is this run's" + (f", and so is {snn_path}" if snn_path.exists() else "")
        then = (f"qffs evaluate {snn_path} -T {timesteps} --out-dir {out}" if snn_path.exists()
                else f"qffs convert {out / 'qann.pt'} --out {snn_path}, then qffs evaluate")
        raise Interrupted(f"interrupted in stage {stage}: {done}; the curve was not written (an earlier run's "
                          f"snn.pt and curve files were removed); to finish: {then}") from None
    report["pipeline_seconds"] = round(time.perf_counter() - started, 1)
    report["quantize"] = q
    if is_main_process():
        report["files"] = {k: str(v) for k, v in write_report(report, out).items()}
    return report
