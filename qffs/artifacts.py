"""qffs' artifacts read back: the QANN and SNN checkpoints, the configs they record, the shipped models.

An artifact holds a state dict and the records that rebuild its network deterministically: the
model spec, a :class:`QuantConfig` (how it was quantized) and, for an SNN, a
:class:`ConversionConfig` (how it was converted). Each config is saved whole and read back whole;
artifacts written before the records existed (loose ``bits``/``output_bits`` fields) still load.
Everything above (the jobs, the exporters, ``qffs info``) loads artifacts here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from qffs.configs import ConversionConfig, QuantConfig
from qffs.data import dataset_info
from qffs.errors import QffsError
from qffs.io import load_checkpoint, load_into, load_model
from qffs.models import build_model
from qffs.quant import quantize
from qffs.quant.weight_graph import drop_stale_levels
from qffs.snn import SpikingNetwork
from qffs.snn.neuron import SpikingNeuron
from qffs.trust import authorized_spec

#: The artifact kinds qffs writes, and what a user should run to get the one a command needs.
_KIND_NAMES = {"fp": "a full-precision", "foreign": "a plain (non-qffs)", "qann": "a quantized-ANN", "snn": "an SNN"}


def expect_kind(ckpt: Any, kind: str, path: str | Path) -> None:
    """Refuse a checkpoint of another kind than ``kind`` ("qann" or "snn"), saying what to run first."""
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
    want = {"qann": "a quantized ANN", "snn": "an SNN artifact"}[kind]
    raise QffsError(f"{path} is {_KIND_NAMES.get(ckpt.kind, ckpt.kind)} checkpoint, not {want}"
                    + (f"; {advice}" if advice else ""))


def rebuild_qann(meta: dict[str, Any], state_dict: dict[str, torch.Tensor], source: str,
                 model: str | None = None) -> torch.nn.Module:
    """The QANN described by ``meta`` (model spec, :class:`QuantConfig`) with ``state_dict`` loaded.

    A recorded model *file* is run only if ``model`` names that same file (:mod:`qffs.trust`).
    """
    spec = authorized_spec(meta, model, source)
    quant = QuantConfig.from_meta(meta, source)
    qann = quantize(build_model(spec), bits=quant.bits, output_bits=quant.output_bits, weights=quant.weight_spec())
    load_into(qann, state_dict, source=source, spec=spec)
    return qann.eval()


def load_qann(path: str | Path, model: str | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a quantized ANN from its checkpoint alone: (GraphModule in eval mode, metadata).

    The QANN is re-derived from the recorded model spec and bit widths by ``qffs.quantize``
    (deterministic names), then its state dict — weights, BN statistics, step sizes — is loaded.
    ``model`` names the model file when the QANN was made from one (it is never imported on
    the artifact's word alone).
    """
    ckpt = load_checkpoint(path)
    expect_kind(ckpt, "qann", path)
    return rebuild_qann(ckpt.meta, ckpt.state_dict, str(path), model), ckpt.meta


#: The prefix of a fine-tuned SNN's own tensors in its artifact, beside its QANN's (qffs finetune).
SNN_TENSORS = "snn."


def load_snn(path: str | Path, model: str | None = None,
             dtype: torch.dtype | None = None) -> tuple[SpikingNetwork, torch.nn.Module, dict[str, Any]]:
    """Rebuild an SNN artifact: (SpikingNetwork, the QANN it came from, metadata).

    The artifact holds the QANN (spec, bits, state dict) and the conversion options; the
    conversion is deterministic, so this is the SNN that was written. ``model``: as for
    :func:`load_qann`. ``dtype``: convert in this type (float64 for an exact simulation: BatchNorm
    is folded in it, not folded in float32 and then widened).
    """
    ckpt = load_checkpoint(path)
    expect_kind(ckpt, "snn", path)
    own = {k[len(SNN_TENSORS):]: v for k, v in ckpt.state_dict.items() if k.startswith(SNN_TENSORS)}
    qann = rebuild_qann(ckpt.meta, {k: v for k, v in ckpt.state_dict.items() if not k.startswith(SNN_TENSORS)},
                        str(path), model)
    if dtype is not None:
        qann = qann.to(dtype)
    snn = ConversionConfig.from_meta(ckpt.meta, str(path)).convert(qann)
    if own:      # a fine-tuned SNN (qffs finetune): its own weights and thresholds replace the converted ones
        load_own_tensors(snn, {k: v.to(dtype) if dtype is not None and v.is_floating_point() else v
                               for k, v in own.items()}, str(path))
        drop_stale_levels(snn)   # fine-tuned weights are float again: no integer levels to claim
    return snn, qann, ckpt.meta


def load_own_tensors(snn: SpikingNetwork, own: dict[str, torch.Tensor], source: str) -> None:
    """A fine-tuned SNN's own tensors into a converted ``snn`` (per-step thresholds first: a
    converted layer has none for them to load into)."""
    for key in [k for k in own if k.endswith(".step_thresholds")]:
        layer = snn.get_submodule(key[: -len(".step_thresholds")])
        if not isinstance(layer, SpikingNeuron):
            raise QffsError(f"{source}: {key} names no IF layer of the converted network")
        try:
            layer.set_step_thresholds(own[key], snn.input_window)
        except ValueError as err:
            raise QffsError(f"{source}: {key}: {err}") from None
    load_into(snn, own, source=source)


def load_network(path: str | Path, model: str | None = None) -> tuple[torch.nn.Module, str, dict[str, Any]]:
    """(network, kind "fp" | "qann" | "snn", metadata) of any artifact, rebuilt in eval mode."""
    kind = load_checkpoint(path).kind
    if kind == "snn":
        snn, _, meta = load_snn(path, model)
        return snn, kind, meta
    if kind == "qann":
        qann, meta = load_qann(path, model)
        return qann, kind, meta
    net, ckpt = load_model(path, model)
    return net.eval(), "fp", ckpt.meta


def sample_input_shape(meta: dict[str, Any]) -> tuple[int, ...] | None:
    """One sample's input shape: recorded by quantize (``input_shape``), else the dataset's, else unknown."""
    if meta.get("input_shape"):
        return tuple(int(d) for d in meta["input_shape"])
    if meta.get("dataset") and meta["dataset"] != "imagefolder":
        info = dataset_info(meta["dataset"])
        return (info.in_channels, info.image_size, info.image_size)
    return None


def qann_selected_on(metrics: dict[str, Any]) -> str | None:
    """Where a QANN's kept epoch was chosen: "validation", "test", or None (calibration only). QANNs
    written before the validation split record nothing and were chosen on the test set."""
    if metrics.get("selected_on") in ("validation", "test"):
        return metrics["selected_on"]
    return "test" if metrics.get("best_epoch") else None


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

def describe_recipe(meta: dict[str, Any]) -> str | None:
    """One line on how a trained artifact was made: epochs, optimiser, schedule, distillation, bit
    schedule, BatchNorm re-estimation, and where its epoch was chosen (None: nothing recorded)."""
    quant = QuantConfig.from_meta(meta) if meta.get("kind") in ("qann", "snn") else None   # refuses a bad record
    cfg = meta.get("train_config")
    if not isinstance(cfg, dict):
        return None
    kind = "QAT" if quant is not None else "training"
    named = f"{quant.recipe} — " if quant is not None and quant.recipe else ""
    parts = [f"{named}{kind} {cfg.get('epochs')} epoch(s), SGD lr {cfg.get('lr')} {cfg.get('schedule')}, momentum "
             f"{cfg.get('momentum')}, weight decay {cfg.get('weight_decay')}, batch {meta.get('batch_size')}"]
    if cfg.get("distill"):
        parts.append(f"distillation from the FP network {cfg['distill']} (temperature {cfg.get('temperature')})")
    if cfg.get("label_smoothing"):
        parts.append(f"label smoothing {cfg['label_smoothing']}")
    if cfg.get("freeze_bn"):
        parts.append("BatchNorm frozen")
    if quant is not None and quant.bit_schedule:
        parts.append("bit schedule " + ",".join(str(b) for b in quant.bit_schedule))
    metrics = meta["metrics"] if isinstance(meta.get("metrics"), dict) else {}
    reestimated = metrics.get("batchnorm_reestimated")
    if isinstance(reestimated, dict) and "kept" in reestimated:
        parts.append("BatchNorm re-estimated after QAT" if reestimated["kept"] else
                     "BatchNorm re-estimation tried, not kept")
    selection = meta["selection"] if isinstance(meta.get("selection"), dict) else {}
    split = selection.get("validation")
    if isinstance(split, dict):
        parts.append(f"epoch chosen on validation ({split.get('size')} training images held out, seed "
                     f"{split.get('seed')}, sha256 {split.get('sha256')})")
    else:
        parts.append("epoch chosen on the TEST set")
    return "; ".join(parts)


def describe_weights(meta: dict[str, Any]) -> str | None:
    """One line on a QANN's or SNN's weights: float32, or their width, quantizer, scales and size
    against float32 (None: not a QANN or SNN)."""
    if meta.get("kind") not in ("qann", "snn"):
        return None
    quant = QuantConfig.from_meta(meta)
    if quant.weight_bits is None:
        return "float32 (not quantized)"
    edges = f", first and last layer {quant.edge_weight_bits}-bit" if quant.edge_weight_bits else ""
    scales = "one scale per output channel" if quant.weight_per_channel else "one scale per layer"
    line = f"{quant.weight_bits}-bit {quant.weight_quantizer} ({scales}{edges})"
    if meta.get("finetune"):
        return line + " in its QANN; fine-tuning moved the SNN's weights off that grid (float32)"
    metrics = meta["metrics"] if isinstance(meta.get("metrics"), dict) else {}
    size = metrics.get("weight_size")
    if isinstance(size, dict) and {"kilobytes", "float32_kilobytes", "compression"} <= set(size):
        line += (f"; {size['kilobytes']:,.1f} KB with biases and scales, {size['float32_kilobytes']:,.1f} KB in "
                 f"float32 ({size['compression']:.1f}x smaller)")
    return line


__all__ = ["SHIPPED_FMNIST", "ConversionConfig", "QuantConfig", "describe_weights", "expect_kind", "load_network",
           "load_qann", "describe_recipe", "load_snn", "qann_selected_on", "rebuild_qann", "sample_input_shape",
           "shipped_model"]
