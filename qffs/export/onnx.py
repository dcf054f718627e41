"""ONNX export: the QANN with its quantizers as float operations or QCDQ, the SNN unrolled over T steps.

- A QANN's activation quantizers become, by default, ``Div(s) → Round → Clip(0, Q) → Mul(s)``
  (form ``"float"``: plain float operations, so every ONNX runtime at every optimisation level,
  and ``onnx.reference``, computes the levels of ``qann(x)``), or ``QuantizeLinear → Clip →
  DequantizeLinear`` (form ``"qcdq"``: uint8 container, zero point 0, scale = s, the form QDQ
  toolchains read; onnxruntime computes it exactly only with its QDQ rewrites off,
  :data:`qffs.export.runtime.EXACT_SESSION_CONFIG`). An FP model exports as it is.
- An SNN exports as :class:`~qffs.export.unrolled.UnrolledSNN` traced once: input ``x``, output
  ``readout`` ``[T, B, ...]`` (the contract of ``snn(x, timesteps=T)``), membranes and counts as
  tensors between steps, input and bias gating as per-step constants.

A weight-quantized network's conv/linear weights are written as int8 levels and a
``DequantizeLinear`` with their scale (:mod:`qffs.export.int_weights`; listed in the metadata's
``integer_weights``). The batch dimension is dynamic. Each file carries a ``qffs`` metadata entry (JSON) saying what
it is; :mod:`qffs.export.runtime` reads it to run an exported SNN with onnxruntime.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qffs.errors import QffsError, UnsupportedGraphError
from qffs.export.int_weights import write_integer_weights
from qffs.export.unrolled import DIAGNOSTIC_OUTPUTS, OUTPUTS, SingleStepSNN, UnrolledSNN
from qffs.files import atomic_path
from qffs.quant.lsq import STEP_EPS, LSQActivation
from qffs.quant.weight_graph import bake_weights
from qffs.snn.network import SpikingNetwork, check_timesteps

#: The opset written: QuantizeLinear/Clip on uint8 need 13, onnxruntime runs up to 23; 18 is the
#: exporter's native opset, so no version conversion runs.
OPSET = 18
METADATA_KEY = "qffs"
#: How a QANN's activation quantizers are written (module docstring); the first is the default.
QANN_FORMS = ("float", "qcdq")


@torch.library.custom_op("qffs::qcdq", mutates_args=())
def _qcdq(x: torch.Tensor, scale: torch.Tensor, levels: int) -> torch.Tensor:
    """LSQ's forward (SPEC §1): s · clamp(round(x / s), 0, Q), as one op the exporter maps to QCDQ."""
    return torch.round(x / scale).clamp(0, levels) * scale


@_qcdq.register_fake
def _(x: torch.Tensor, scale: torch.Tensor, levels: int) -> torch.Tensor:
    return torch.empty_like(x)


def _qcdq_onnx(x, scale, levels: int):
    """:func:`_qcdq` as QDQ: QuantizeLinear (round half to even, as torch) → Clip → DequantizeLinear."""
    import onnx  # onnx and onnxscript load only when a file is exported (seconds of start-up otherwise)
    from onnxscript import opset18 as op

    zero = op.Constant(value=onnx.helper.make_tensor("zero_point", onnx.TensorProto.UINT8, [], [0]))
    top = op.Constant(value=onnx.helper.make_tensor("levels", onnx.TensorProto.UINT8, [], [levels]))
    return op.DequantizeLinear(op.Clip(op.QuantizeLinear(x, scale, zero), zero, top), scale, zero)


def _float_onnx(x, scale, levels: int):
    """:func:`_qcdq` as the float operations torch runs, in its order: Div → Round (half to even) → Clip → Mul."""
    import onnx  # as above
    from onnxscript import opset18 as op

    zero = op.Constant(value=onnx.helper.make_tensor("zero", onnx.TensorProto.FLOAT, [], [0.0]))
    top = op.Constant(value=onnx.helper.make_tensor("levels", onnx.TensorProto.FLOAT, [], [float(levels)]))
    return op.Mul(op.Clip(op.Round(op.Div(x, scale)), zero, top), scale)


_QUANTIZER_ONNX = {"float": _float_onnx, "qcdq": _qcdq_onnx}


def check_qann_form(form: str) -> str:
    """``form`` if it is one of :data:`QANN_FORMS`, else a one-line error naming them."""
    if form not in QANN_FORMS:
        raise QffsError(f"--qann-form must be one of {', '.join(QANN_FORMS)}, got {form!r}")
    return form


class QCDQActivation(nn.Module):
    """An :class:`LSQActivation` frozen for export: its step is a buffer, its forward one QCDQ op."""

    def __init__(self, quantizer: LSQActivation):
        super().__init__()
        if quantizer.levels > 255:
            raise QffsError(f"a {quantizer.bits}-bit quantizer does not fit QuantizeLinear's uint8 (at most 8 bits)")
        self.levels = quantizer.levels
        self.register_buffer("scale", quantizer.step.detach().clamp_min(STEP_EPS).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.qffs.qcdq(x, self.scale.to(x.dtype), self.levels)


def _replace_quantizers(model: nn.Module) -> nn.Module:
    """A float32 copy of ``model`` with every LSQ quantizer replaced by :class:`QCDQActivation`, and
    every weight quantizer baked (its hard weights: integers once written, :mod:`qffs.export.int_weights`)."""
    model = copy.deepcopy(model).float().eval()
    bake_weights(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, LSQActivation):
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, QCDQActivation(module))
    return model


def _first_line(err: BaseException) -> str:
    """The first line of the innermost cause (the exporter wraps the error that names the op), no ANSI colours."""
    while err.__cause__ is not None:
        err = err.__cause__
    line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return re.sub(r"\x1b\[[0-9;]*m", "", line)[:300]


def _export(module: nn.Module, example: torch.Tensor | tuple, path: Path, output_names: list[str],
            metadata: dict[str, Any], opset: int, optimize: bool = True, input_names: list[str] | None = None,
            dynamic: tuple | None = None, qann_form: str = QANN_FORMS[0]) -> Path:
    """Trace ``module`` on ``example`` (one tensor whose first dimension, the batch, is dynamic; or
    a tuple of inputs with their ``dynamic`` shapes, torch.export's form) and write a checked ONNX
    file atomically; quantizers in the form ``qann_form``."""
    import onnx  # as above

    inputs = example if isinstance(example, tuple) else (example,)
    dynamic = dynamic or ({0: torch.export.Dim("batch")},)
    quiet = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript", "torch._dynamo")]
    levels = [log.level for log in quiet]
    try:
        for log in quiet:
            log.setLevel(logging.CRITICAL)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module, inputs, dynamo=True, opset_version=opset, input_names=input_names or ["x"],
                output_names=output_names, dynamic_shapes=dynamic,
                custom_translation_table={torch.ops.qffs.qcdq.default: _QUANTIZER_ONNX[qann_form]},
                optimize=optimize, verbose=False, report=False)
    except Exception as err:  # the exporter raises many types; the first line names the op
        raise QffsError(f"ONNX export failed: {_first_line(err)} (if the network writes its batch size into a "
                        "reshape, use x.flatten(1) or x.view(x.size(0), -1): the exported batch is dynamic)") from err
    finally:
        for log, level in zip(quiet, levels):
            log.setLevel(level)
    proto = program.model_proto
    integer = write_integer_weights(proto, module)
    if integer:
        metadata = {**metadata, "integer_weights": integer}
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    onnx.checker.check_model(proto)
    path = Path(path)
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp))
    return path


def _example(example: torch.Tensor) -> torch.Tensor:
    """A float32 batch of two samples like ``example`` (a batch of one would fix the batch size)."""
    sample = example[:1].detach().float()
    return torch.cat([sample, sample.flip(0) if sample.dim() else sample]).contiguous() if sample.shape[0] else sample


def qann_to_onnx(model: nn.Module, path: str | Path, example: torch.Tensor, *, opset: int = OPSET,
                 metadata: dict[str, Any] | None = None, form: str = QANN_FORMS[0]) -> Path:
    """Write ``model`` (a QANN, or an FP network) as ONNX (float32), its quantizers in ``form``
    (:data:`QANN_FORMS`, module docstring).

    ``example``: an input batch (only its shape is used). The output equals ``model(x)``: the same
    levels, as Round and QuantizeLinear round half to even like torch.
    """
    check_qann_form(form)
    module = _replace_quantizers(model)
    kind = "qann" if any(isinstance(m, QCDQActivation) for m in module.modules()) else "fp"
    return _export(module, _example(example), Path(path), ["logits"],
                   {"kind": kind, "opset": opset, **({"qann_form": form} if kind == "qann" else {}),
                    **(metadata or {})}, opset, qann_form=form)


def _fanouts(snn: SpikingNetwork, example: torch.Tensor) -> dict[str, torch.Tensor]:
    """Synapses driven by each input element of every weighted layer (one step on one sample)."""
    snn.simulate(example[:1], 1, record=True)
    return {name: layer.fanout(torch.zeros(1, *layer._fanout.shape, dtype=example.dtype))
            for name, layer in snn.named_synapses()}


def snn_description(snn: SpikingNetwork, timesteps: int, example: torch.Tensor, diagnostics: bool) -> dict[str, Any]:
    """What a runner needs to know of an exported SNN besides its tensors (stored as metadata)."""
    result = snn.simulate(example[:1], 1, record=True)
    out = snn.graph.get_submodule(snn.output_neuron) if snn.output_neuron else None
    return {
        "kind": "snn", "timesteps": timesteps, "input_window": snn.input_window, "conversion": dict(snn.config),
        "output_neuron": snn.output_neuron,
        "output": None if out is None else {"threshold": float(out.threshold), "step_size": float(out.step_size),
                                             "initial_membrane": float(out.initial_membrane())},
        "neurons": [{"name": r.name, "neurons": r.neurons} for r in result.neurons],
        "synapses": [{"name": r.name, "macs": r.macs} for r in result.synapses],
        "outputs": list(OUTPUTS) + (list(DIAGNOSTIC_OUTPUTS) + [f"counts.{r.name}" for r in result.neurons]
                                    if diagnostics else []),
        "diagnostics": diagnostics,
    }


def snn_to_onnx(snn: SpikingNetwork, path: str | Path, example: torch.Tensor, timesteps: int, *,
                diagnostics: bool = False, opset: int = OPSET, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``snn`` unrolled over ``timesteps`` steps as ONNX (float32).

    Input ``x`` ``[B, ...]``, output ``readout`` ``[T, B, ...]``: the cumulative count readout
    after each step, as ``snn(x, timesteps=T)``. ``diagnostics`` adds the outputs a report needs
    (:class:`~qffs.export.unrolled.UnrolledSNN`): what ``qffs evaluate --backend onnxruntime`` uses.
    Such a graph is written without onnxscript's optimisation passes, which on it cost more
    time than they save (ResNet-20, T = 8: minutes); onnxruntime optimises it on loading anyway.
    """
    timesteps = check_timesteps(timesteps, "--timesteps")
    snn = copy.deepcopy(snn).float().eval()
    example = _example(example)
    description = snn_description(snn, timesteps, example, diagnostics)
    module = UnrolledSNN(snn, timesteps, diagnostics=diagnostics,
                         fanouts=_fanouts(snn, example) if diagnostics else None)
    return _export(module, example, Path(path), description["outputs"], {**description, "opset": opset,
                                                                          **(metadata or {})}, opset,
                   optimize=not diagnostics)


def snn_step_to_onnx(snn: SpikingNetwork, path: str | Path, example: torch.Tensor, *, opset: int = OPSET,
                     metadata: dict[str, Any] | None = None) -> Path:
    """Write one step of ``snn`` with its state as inputs and outputs (streaming runtimes; float32).

    Inputs ``x`` ``[B, ...]`` (this step's input), ``in_window`` (a scalar: 1.0 for t < T_in,
    0.0 after: input and biases flow only then), then the state ``[B, ...]`` named in the
    metadata's ``state`` list; outputs ``readout`` (the cumulative readout after this step, row
    t of ``snn(x, timesteps=T)``) and the next state, ``next.<name>``. Before step 0 every
    membrane is its layer's u₀ (``initial`` in the list) and everything else zero:
    :meth:`~qffs.export.unrolled.SingleStepSNN.initial_state`.
    """
    stepped = [name for name, m in snn.named_modules() if getattr(m, "step_thresholds", None) is not None]
    if stepped:
        raise UnsupportedGraphError(f"{stepped[0]} has per-step thresholds (a fine-tuned ATIF-nu network): one "
                                    "streaming step cannot know which step it is; export it unrolled (--timesteps T)")
    snn = copy.deepcopy(snn).float().eval()
    example = _example(example)
    module = SingleStepSNN(snn)
    state = module.initial_state(example)
    names = module.state_names
    layers = [{"name": name, "shape": list(t.shape[1:]),
               "initial": float(t.flatten()[0]) if name.endswith(".membrane") else 0.0} for name, t in zip(names,
                                                                                                           state)]
    description = {**snn_description(snn, 1, example, False), "kind": "snn-step", "timesteps": None,
                   "state": layers, "outputs": ["readout", *(f"next.{n}" for n in names)]}
    batch = torch.export.Dim("batch")
    return _export(module, (example, torch.tensor(1.0), *state), Path(path), description["outputs"],
                   {**description, "opset": opset, **(metadata or {})}, opset,
                   input_names=["x", "in_window", *names],
                   dynamic=({0: batch}, None, tuple({0: batch} for _ in state)))   # forward(x, in_window, *state)


def to_onnx(network: nn.Module, path: str | Path, example: torch.Tensor, *, timesteps: int | None = None,
            **options: Any) -> Path:
    """Export a network: an SNN (:func:`snn_to_onnx`, needs ``timesteps``), else a QANN or FP
    network (:func:`qann_to_onnx`)."""
    if isinstance(network, SpikingNetwork):
        if timesteps is None:
            raise QffsError("exporting an SNN needs the number of time steps to unroll (timesteps=, --timesteps)")
        return snn_to_onnx(network, path, example, timesteps, **options)
    if timesteps is not None:
        raise QffsError("timesteps applies to an SNN; this network is not one (convert it first to export an SNN)")
    return qann_to_onnx(network, path, example, **options)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``qffs`` metadata of an ONNX file written by this module ({} for another file)."""
    import onnx  # as above

    proto = onnx.load(str(path), load_external_data=False)
    for entry in proto.metadata_props:
        if entry.key == METADATA_KEY:
            return json.loads(entry.value)
    return {}


__all__ = ["OPSET", "QANN_FORMS", "QCDQActivation", "check_qann_form", "qann_to_onnx", "read_metadata",
           "snn_step_to_onnx", "snn_to_onnx", "to_onnx"]
