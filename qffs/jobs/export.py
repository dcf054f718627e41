"""``qffs export`` as a job: an artifact (FP, QANN or SNN checkpoint) → an ONNX or NIR file, checked.

After writing, the file is read back and compared with the torch network on a fixed random
batch: onnxruntime's output (QANN: identical levels; SNN: the readout at every step), or for
NIR the weights and thresholds that :func:`nir.read` returns.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from qffs.artifacts import load_network, sample_input_shape
from qffs.errors import QffsError
from qffs.export.nir import check_nir, to_nir
from qffs.export.onnx import OPSET, QANN_FORMS, check_qann_form, read_metadata, snn_step_to_onnx, to_onnx
from qffs.export.runtime import session
from qffs.export.unrolled import SingleStepSNN
from qffs.files import atomic_path
from qffs.io import MAX_SAMPLE_VALUES
from qffs.jobs.outputs import writing
from qffs.metrics import predict
from qffs.report import environment
from qffs.snn.network import SpikingNetwork, check_timesteps

FORMATS = ("onnx", "nir")
#: The SNN's unrolled length when --timesteps is not given: QFFS answers within a handful of steps.
DEFAULT_TIMESTEPS = 8
CHECK_BATCH = 4


def _input_shape(meta: dict[str, Any], given: tuple[int, ...] | None, path: str | Path) -> tuple[int, ...]:
    shape = given or sample_input_shape(meta)
    if shape is None:
        raise QffsError(f"{path} does not record its input shape: pass --input-shape C,H,W")
    shape = tuple(int(d) for d in shape)
    if not 1 <= len(shape) <= 4 or min(shape) < 1 or math.prod(shape) > MAX_SAMPLE_VALUES:
        raise QffsError(f"--input-shape {','.join(map(str, shape))} is not a sample's shape: 1 to 4 positive sizes, "
                        f"at most {MAX_SAMPLE_VALUES:,} values")
    return shape


#: Unrolled exports hold every step in the graph, so tracing time and file size grow with T: past
#: this, --single-step (one step, state in and out, looped by the runtime) is the form to use.
MAX_UNROLLED_TIMESTEPS = 256


def _takes(network: torch.nn.Module, example: torch.Tensor, kind: str, given: bool) -> None:
    """Run the network once on ``example``: a shape it does not take is one line before any tracing."""
    try:
        with torch.no_grad():
            network(example, timesteps=1) if kind == "snn" else network(example)
    except (RuntimeError, ValueError, IndexError) as exc:
        shape = ",".join(str(d) for d in example.shape[1:])
        what = f"--input-shape {shape}" if given else f"the recorded input shape {shape}"
        raise QffsError(f"the network does not take {what}: {str(exc).splitlines()[0]}") from None


def _check_onnx(network: torch.nn.Module, path: Path, example: torch.Tensor, timesteps: int | None,
                qann_form: str | None = None) -> dict[str, Any]:
    """onnxruntime against torch on ``example``: differing values, max |difference|, predictions.
    A QANN in float form is run in onnxruntime's default session (QDQ rewrites on, as any deployment
    runs it) and by ``onnx.reference`` as well (``"reference"``)."""
    with torch.no_grad():
        ref = network(example, timesteps=timesteps) if timesteps else network(example)
    default = qann_form == "float"
    check = _compare(torch.from_numpy(session(path, qdq_rewrites=default).run(None, {"x": example.numpy()})[0]), ref)
    if default:
        from onnx.reference import ReferenceEvaluator  # deferred: onnx loads only for an export (start-up time)

        outputs = cast(list, ReferenceEvaluator(str(path)).run(None, {"x": example.numpy()}))
        check.update(session="onnxruntime defaults", reference=_compare(torch.from_numpy(outputs[0]), ref))
    return check


def _compare(got: torch.Tensor, ref: torch.Tensor) -> dict[str, Any]:
    """onnxruntime's output ``got`` against torch's ``ref``: what the export check reports."""
    return {"samples": int(ref.shape[-2]), "values": int(ref.numel()),
            "differing_values": int((got != ref).sum()), "max_abs_difference": float((got - ref).abs().max()),
            "same_predictions": bool((predict(got)[0] == predict(ref)[0]).all())}


def _check_stream(snn, path: Path, example: torch.Tensor, timesteps: int) -> dict[str, Any]:
    """The single-step graph driven by onnxruntime for ``timesteps`` steps against ``snn(x, T)``."""
    run, meta = session(path), read_metadata(path)
    state = [t.numpy() for t in SingleStepSNN(snn.float()).initial_state(example)]
    rows = []
    for t in range(timesteps):
        window = np.array(1.0 if t < meta["input_window"] else 0.0, dtype=np.float32)
        readout, *state = run.run(None, {"x": example.numpy(), "in_window": window,
                                         **{s["name"]: v for s, v in zip(meta["state"], state)}})
        rows.append(torch.from_numpy(readout))
    with torch.no_grad():
        return _compare(torch.stack(rows), snn(example, timesteps=timesteps))


def export_checkpoint(path: str | Path, out: str | Path, *, to: str = "onnx", timesteps: int | None = None,
                      model: str | None = None, input_shape: tuple[int, ...] | None = None,
                      single_step: bool = False, qann_form: str | None = None, log=print) -> dict[str, Any]:
    """Export the artifact at ``path`` to ``out`` and check the file; returns what was written.

    ONNX: an SNN unrolled over ``timesteps`` (default :data:`DEFAULT_TIMESTEPS`), a QANN with its
    quantizers in ``qann_form`` (:data:`~qffs.export.onnx.QANN_FORMS`, default float), an FP
    network as it is. NIR: SNNs only. The summary is also written beside the
    file (:func:`check_path`), where ``qffs report`` finds it.
    """
    if to not in FORMATS:
        raise QffsError(f"--to must be one of {', '.join(FORMATS)}, got {to!r}")
    if qann_form is not None:
        check_qann_form(qann_form)
    suffix = {"onnx": ".onnx", "nir": ".nir"}[to]
    if Path(out).resolve() == Path(path).resolve():
        raise QffsError(f"--out {out} would overwrite the input")
    # two exports to one file: the second is refused, not silently overwritten
    with writing(out, path, suffixes=(suffix,), writes=(Path(out), check_path(out))) as out:
        summary = _export(path, out, to=to, timesteps=timesteps, model=model, input_shape=input_shape,
                          single_step=single_step, qann_form=qann_form, log=log)
        with atomic_path(check_path(out)) as tmp:     # what qffs report shows as the export check
            tmp.write_text(json.dumps({**summary, "environment": environment()}, indent=2))
        return summary


def check_path(out: str | Path) -> Path:
    """The JSON beside an exported file (``snn.onnx.json``): what was written and how it checked."""
    return Path(f"{out}.json")


def _export(path: str | Path, out: Path, *, to: str, timesteps: int | None, model: str | None,
            input_shape: tuple[int, ...] | None, single_step: bool, qann_form: str | None, log) -> dict[str, Any]:
    if timesteps is not None:
        timesteps = check_timesteps(timesteps, "--timesteps")
    network, kind, meta = load_network(path, model)
    if kind != "snn" and (to == "nir" or timesteps is not None or single_step):
        what = "NIR describes spiking networks" if to == "nir" else \
            "--single-step writes an SNN's step" if single_step else "--timesteps unrolls an SNN"
        raise QffsError(f"{path} is a {kind} checkpoint and {what}: convert it first (qffs convert)")
    if single_step and to != "onnx":
        raise QffsError("--single-step is an ONNX form (--to onnx)")
    if qann_form is not None and kind != "qann":
        raise QffsError(f"--qann-form writes a QANN's quantizers; {path} is a {kind} checkpoint")
    generator = torch.Generator().manual_seed(0)
    example = torch.randn((CHECK_BATCH, *_input_shape(meta, input_shape, path)), generator=generator)
    if kind == "snn" and to == "onnx" and not single_step and (timesteps or DEFAULT_TIMESTEPS) > MAX_UNROLLED_TIMESTEPS:
        raise QffsError(f"--timesteps {timesteps}: an unrolled export holds every step, so past "
                        f"{MAX_UNROLLED_TIMESTEPS} it traces for a long time into a huge file — export one step "
                        "with --single-step (the runtime loops it) or choose fewer steps")
    _takes(network, example, kind, input_shape is not None)
    summary: dict[str, Any] = {"source": str(path), "kind": kind, "format": to, "path": str(out)}
    provenance = {"source": Path(path).name, "model": meta.get("model"), "dataset": meta.get("dataset")}
    if to == "nir":
        to_nir(cast(SpikingNetwork, network), out, example, metadata=provenance)
        summary["check"] = check_nir(cast(SpikingNetwork, network), out)
    else:
        if kind == "snn":
            timesteps = DEFAULT_TIMESTEPS if timesteps is None else timesteps
        if single_step:   # checked by streaming --timesteps steps through it (an SNN: checked above)
            snn = cast(SpikingNetwork, network)
            steps = DEFAULT_TIMESTEPS if timesteps is None else timesteps
            snn_step_to_onnx(snn, out, example, metadata=provenance)
            summary.update(opset=OPSET, single_step=True, timesteps=steps,
                           check=_check_stream(snn, out, example, steps))
        else:
            if kind == "snn":
                log(f"tracing the SNN over {timesteps} steps (seconds to minutes: the graph holds every step) ...")
            form = {"form": qann_form or QANN_FORMS[0]} if kind == "qann" else {}
            to_onnx(network, out, example, timesteps=timesteps, metadata=provenance, **form)
            summary.update(opset=OPSET, timesteps=timesteps, **{f"qann_{k}": v for k, v in form.items()},
                           check=_check_onnx(network, out, example, timesteps, form.get("form")))
    summary["bytes"] = out.stat().st_size
    return summary


__all__ = ["DEFAULT_TIMESTEPS", "FORMATS", "export_checkpoint"]
