"""Running an exported SNN with onnxruntime, behind the same ``simulate`` contract as the torch runtime.

:class:`OnnxSpikingNetwork` runs a file written by :func:`qffs.export.onnx.snn_to_onnx` with
``diagnostics=True`` and returns a :class:`~qffs.snn.network.SimulationResult` — readouts,
convergence, spikes per layer, SOPs — so :func:`qffs.evaluate.evaluate_snn` measures it exactly
as it measures the torch runtime (``qffs evaluate --backend onnxruntime``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qffs.cache import ours_alone
from qffs.errors import QffsError
from qffs.export.onnx import read_metadata
from qffs.files import pid_alive
from qffs.snn.network import NeuronRecord, SimulationResult, SynapseRecord, check_timesteps, settle
from qffs.snn.readout import READOUTS, check_readout, output_readout

#: onnxruntime's QDQ optimisations quantize the float weights next to a DequantizeLinear to int8
#: (a lossy rewrite, on by default since 1.2x); off, its QANN levels equal torch's exactly.
EXACT_SESSION_CONFIG = {"session.disable_quant_qdq": "1"}


def session(path: str | Path, device: str | torch.device = "cpu", *, qdq_rewrites: bool = False):
    """An onnxruntime session for ``path`` that computes what torch computes (:data:`EXACT_SESSION_CONFIG`);
    ``qdq_rewrites=True``: onnxruntime's defaults, as a deployment that knows nothing of qffs runs the file."""
    import onnxruntime as ort  # loads only for an export check or the onnxruntime backend (start-up time)

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()   # torchrun: 1 per process, as torch's (no oversubscription)
    for key, value in ({} if qdq_rewrites else EXACT_SESSION_CONFIG).items():
        options.add_session_config_entry(key, value)
    device = torch.device(device)
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise QffsError("this onnxruntime has no CUDA provider: install onnxruntime-gpu, or use --device cpu")
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
    elif device.type != "cpu":
        raise QffsError(f"onnxruntime runs on cpu or cuda, not {device}")
    return ort.InferenceSession(str(path), options, providers=providers)


class OnnxSpikingNetwork:
    """An exported SNN run by onnxruntime: ``simulate(x, T)`` for any T up to the exported one."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu"):
        meta = read_metadata(path)
        if meta.get("kind") == "snn-step":
            raise QffsError(f"{path} is a single-step SNN (--single-step): drive it step by step with onnxruntime; "
                            "this runner takes an SNN unrolled over T")
        if meta.get("kind") != "snn":
            raise QffsError(f"{path} is not an SNN exported by qffs (qffs export SNN --to onnx)")
        if not meta.get("diagnostics"):
            raise QffsError(f"{path} was exported without the diagnostic outputs a report needs "
                            "(qffs.export.snn_to_onnx(..., diagnostics=True))")
        self.path = Path(path)
        self.meta = meta
        self.timesteps = int(meta["timesteps"])
        self.input_window = int(meta["input_window"])
        self.config = dict(meta["conversion"])
        self.output_neuron = meta["output_neuron"]
        self.session = session(path, device)
        self.outputs = [o.name for o in self.session.get_outputs()]

    def run(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every output of the graph for the batch ``x`` (float32, on the CPU)."""
        values = self.session.run(None, {"x": np.ascontiguousarray(x.detach().float().cpu().numpy())})
        return {name: torch.from_numpy(value) for name, value in zip(self.outputs, values)}

    def __call__(self, x: torch.Tensor, timesteps: int, readout: str = "count") -> torch.Tensor:
        check_readout(readout)
        return self.simulate(x, timesteps, record=False).readouts[readout]

    def simulate(self, x: torch.Tensor, timesteps: int, *, until_quiet: bool = False, record: bool = True,
                 record_counts: bool = False, **_: Any) -> SimulationResult:
        """As :meth:`SpikingNetwork.simulate`; every exported step runs (a graph has no early exit),
        ``until_quiet`` only sets ``steps_run``. Results are on the CPU."""
        timesteps = check_timesteps(timesteps)
        if timesteps > self.timesteps:
            raise QffsError(f"{self.path} is unrolled over {self.timesteps} steps; export it again with "
                            f"--timesteps {timesteps} to run {timesteps}")
        if record and timesteps != self.timesteps:
            raise QffsError(f"the spike and SOP totals of {self.path} cover all {self.timesteps} exported steps: "
                            f"record them with timesteps={self.timesteps}, or pass record=False")
        out = {k: v[:timesteps] if k in ("readout", "counts", "membranes", "active") else v
               for k, v in self.run(x).items()}
        spec = self.meta["output"]
        if spec is None:
            readouts = {name: out["readout"] for name in READOUTS}
        else:
            counts, membranes = out["counts"], out["membranes"]
            params = {k: torch.tensor(spec[k], dtype=counts.dtype) for k in ("threshold", "step_size",
                                                                             "initial_membrane")}
            readouts = {name: output_readout(name, counts, membranes, threshold=params["threshold"],
                                             step_size=params["step_size"], initial_membrane=params["initial_membrane"],
                                             input_window=self.input_window) for name in READOUTS}
        steps_run, convergence, quiet = settle(out["active"], self.input_window, spec is not None, until_quiet)
        result = SimulationResult(readouts["count"], steps_run, self.input_window, convergence, quiet,
                                  readouts=readouts)
        if record:
            for i, layer in enumerate(self.meta["neurons"]):
                counts = out[f"counts.{layer['name']}"] if record_counts else None
                result.neurons.append(NeuronRecord(layer["name"], int(layer["neurons"]), out["pos_spikes"][i].long(),
                                                   out["neg_spikes"][i].long(), counts))
            for i, layer in enumerate(self.meta["synapses"]):
                result.synapses.append(SynapseRecord(layer["name"], out["synops"][i].double(),
                                                     out["events"][i].double(), int(layer["macs"])))
        return result


__all__ = ["EXACT_SESSION_CONFIG", "OnnxSpikingNetwork", "session"]


#: Temporary export folders are named ``qffs-onnx-<pid>-…``, so a later run can tell a killed run's.
_EXPORT_PREFIX = "qffs-onnx-"


def export_folder(stack: contextlib.ExitStack) -> Path:
    """A private temporary folder for an evaluation's ONNX file, removed when ``stack`` closes; the
    folders of runs that were killed (SIGKILL, a crash) before removing theirs go first."""

    base = Path(tempfile.gettempdir())
    for old in base.glob(f"{_EXPORT_PREFIX}*-*"):
        pid = old.name[len(_EXPORT_PREFIX):].split("-", 1)[0]
        with contextlib.suppress(OSError):
            if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)) and ours_alone(old):
                shutil.rmtree(old, ignore_errors=True)
    return Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"{_EXPORT_PREFIX}{os.getpid()}-")))
