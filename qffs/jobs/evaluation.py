"""QFFS stage 3 as a job: an SNN artifact simulated on a test set, with qffs' runtime or onnxruntime."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import torch

from qffs.artifacts import QuantConfig, load_snn, qann_selected_on
from qffs.data.loaders import dataset_info
from qffs.distributed import init_distributed, is_main_process, main_only
from qffs.errors import QffsError
from qffs.evaluate import evaluate_snn
from qffs.figures import FIGURE_FILES
from qffs.jobs.early_exit import EXIT_TOLERANCE, check_tolerance, evaluate_with_exit
from qffs.jobs.loaders import test_data_for, validation_data_for
from qffs.jobs.options import DataOptions
from qffs.jobs.outputs import writing_dir
from qffs.probe import probe_samples
from qffs.progress import status
from qffs.quant.weight_graph import integer_weights, weight_size
from qffs.report import AUTO_ENERGY, EXIT_PLOT, parse_energy, report_files, write_report
from qffs.report_page import REPORT_PAGE, write_page
from qffs.snn.exits import NO_EXIT, ExitPolicy, parse_exit
from qffs.snn.memory import parse_memory
from qffs.snn.network import check_timesteps
from qffs.snn.readout import DEFAULT_READOUT, check_readout
from qffs.train import resolve_device

#: Runtimes ``qffs evaluate`` can simulate with: qffs' own, or the SNN exported to ONNX.
BACKENDS = ("torch", "onnxruntime")
#: The energy constants of a report (:data:`qffs.report.ENERGY_PRESETS`), and the first test
#: images a report's probe follows step by step: ``DEFAULT_EXAMPLES`` shown, ``PROBE_SAMPLES`` measured.
DEFAULT_ENERGY = AUTO_ENERGY
DEFAULT_EXAMPLES, MAX_EXAMPLES, PROBE_SAMPLES = 4, 16, 256


def bits_label(bits: int | None) -> str:
    """"3-bit", or "analog" for an output without quantizer."""
    return "analog" if bits is None else f"{bits}-bit"


def check_evaluation(timesteps: int, readout: str, backend: str, double: bool, memory: str | int | None,
                     exit: str = "none", exit_tolerance: float = EXIT_TOLERANCE, energy: str = DEFAULT_ENERGY,
                     examples: int = DEFAULT_EXAMPLES) -> int | None:
    """Every evaluation option checked before any work; returns the memory budget in bytes (None: none)."""
    check_timesteps(timesteps, "--timesteps")
    parse_energy(energy)
    if not 0 <= examples <= MAX_EXAMPLES:
        raise QffsError(f"--examples must be 0…{MAX_EXAMPLES} (test images shown step by step), got {examples}")
    check_readout(readout)
    if backend not in BACKENDS:
        raise QffsError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "onnxruntime" and double:
        raise QffsError("--backend onnxruntime runs the exported float32 graph; --double needs --backend torch")
    parse_exit(exit).check_timesteps(timesteps)
    if parse_exit(exit) != NO_EXIT and backend != "torch":
        raise QffsError("--exit drops exited samples from qffs' runtime: it needs --backend torch")
    check_tolerance(exit_tolerance)
    return None if memory is None else parse_memory(memory)


def evaluate_checkpoint(snn_path: str | Path, data: DataOptions, timesteps: int, *, device: str = "auto",
                        double: bool = False, readout: str = DEFAULT_READOUT, model: str | None = None,
                        memory: str | int | None = None, backend: str = "torch",
                        out_dir: str | Path | None = None, exit: str = "none",
                        exit_tolerance: float = EXIT_TOLERANCE, energy: str = DEFAULT_ENERGY, page: bool = False,
                        examples: int = DEFAULT_EXAMPLES) -> dict[str, Any]:
    """Simulate an SNN artifact on a test set; returns the report dict (every readout measured,
    ``readout`` the headline; ``memory``: the simulation's budget, as for ``--memory``).
    ``backend="onnxruntime"`` exports the SNN unrolled over ``timesteps`` (float32) and runs that
    file with onnxruntime instead (:mod:`qffs.export.runtime`). ``exit`` (``--exit``, :mod:`qffs.snn.exits`):
    also measure that exit policy, completed on the validation split where it needs it, within
    ``exit_tolerance`` of the QANN there (:mod:`qffs.jobs.early_exit`; the report's ``"exit"``).
    ``out_dir``: also write ``curve.csv/.json/.png`` (and ``exit.png``) there (checked first,
    locked while the job runs; paths under ``"files"``). ``energy``: a preset of
    :data:`~qffs.report.ENERGY_PRESETS` or "AC,MAC" in pJ. ``page``: also follow the first test
    images step by step (:mod:`qffs.probe`; ``examples`` of them shown) and, with ``out_dir``, draw
    the figures and write ``report.html`` (:mod:`qffs.report_page`)."""
    check_evaluation(timesteps, readout, backend, double, memory, exit, exit_tolerance, energy, examples)
    policy = parse_exit(exit)
    args = (snn_path, data, timesteps, device, double, readout, model, memory, backend, policy, exit_tolerance,
            energy, examples if page else None)
    if out_dir is None:
        return _evaluate(*args)
    writes = report_files() + (() if policy == NO_EXIT else (EXIT_PLOT,)) + ((*FIGURE_FILES, REPORT_PAGE) if page
                                                                             else ())
    with writing_dir(out_dir, writes=writes, inputs=(snn_path,)) as folder:   # two evaluations never mix
        report = _evaluate(*args)
        if is_main_process():            # under torchrun rank 0 alone writes the whole report
            report["files"] = {k: str(v) for k, v in write_report(report, folder).items()}
            if page:
                report["files"]["html"] = str(write_page(folder))
        return report


def finetuned_note(meta: dict[str, Any]) -> str:
    """The title's word on a fine-tuned SNN (qffs finetune): its method and T, and that it no
    longer equals its QANN (invariant E left on purpose)."""
    record = meta.get("finetune")
    if not isinstance(record, dict):
        return ""
    return f"; fine-tuned ({record.get('method')}, T={record.get('timesteps')}): not bound to its QANN"


def _evaluate(snn_path: str | Path, data: DataOptions, timesteps: int, device: str, double: bool, readout: str,
              model: str | None, memory: str | int | None, backend: str, policy: ExitPolicy,
              exit_tolerance: float, energy_spec: str, examples: int | None) -> dict[str, Any]:
    budget = None if memory is None else parse_memory(memory)
    init_distributed()   # under torchrun each process simulates its shard of the test set
    dev = resolve_device(device)
    with status(f"loading {snn_path}"):
        snn, qann, meta = load_snn(snn_path, model, torch.float64 if double else None)
    integer = integer_weights(snn)   # quantized weights, not fine-tuned off their grid since
    energy = parse_energy(energy_spec, integer_weights=integer)
    data, prep, test_loader = test_data_for(snn_path, meta, data)
    started = time.perf_counter()
    dtype = torch.float64 if double else torch.float32
    probe = None if examples is None or not is_main_process() else _probe(snn, qann, test_loader.dataset, timesteps,
                                                                          examples, dev, dtype)
    with contextlib.ExitStack() as stack:
        if backend == "onnxruntime":
            snn = _onnxruntime_network(snn, test_loader, timesteps, dev, stack)

        def simulate(loader: Any, **exits: Any) -> dict[str, Any]:
            return evaluate_snn(snn, loader, timesteps, qann=qann, device=dev if backend == "torch" else "cpu",
                                dtype=dtype, readout=readout, memory=budget, e_ac=energy[0], e_mac=energy[1],
                                **exits).to_dict()

        if policy == NO_EXIT:
            report = simulate(test_loader)
        else:
            report = evaluate_with_exit(policy, simulate, test_loader,
                                        lambda: validation_data_for(snn_path, meta, data, prep), timesteps,
                                        readout, exit_tolerance)
    metrics, quant = meta.get("metrics", {}), QuantConfig.from_meta(meta, str(snn_path))
    selected_on = qann_selected_on(metrics)
    report.update({
        "title": f"{meta['model']} on {data.dataset}: {quant.bits}-bit hidden / "
                 f"{bits_label(quant.output_bits)} output, T_in={snn.input_window}"
                 + ("; QANN epoch chosen on the test set" if selected_on == "test" else "")
                 + finetuned_note(meta)
                 + ("; simulated by onnxruntime (the exported graph)" if backend == "onnxruntime" else ""),
        "qann_selected_on": selected_on,
        "finetune": meta.get("finetune"),
        "fp_accuracy": metrics.get("fp_accuracy"),
        "fp_samples": metrics.get("test_samples"),
        "qann_accuracy_trained": metrics.get("qann_accuracy"),
        "model": meta["model"], "dataset": data.dataset, "snn_artifact": str(snn_path),
        "bits": quant.bits, "output_bits": quant.output_bits, "weight_bits": quant.weight_bits if integer else None,
        "weight_size": weight_size(qann, float_weights=not integer),
        "seconds": round(time.perf_counter() - started, 1),
        "probe": probe, "class_names": _class_names(test_loader.dataset, data),
        "backend": backend,
        "config": {"timesteps": timesteps, "batch_size": data.batch_size, "test_limit": data.test_limit,
                   "device": device, "double": double, "readout": readout, "memory": budget, "data_root": data.root,
                   "backend": backend, "preprocessing": prep.as_dict(), "exit": policy.label(),
                   "exit_tolerance": exit_tolerance, "energy_pj": {"ac": energy[0], "mac": energy[1]}},
    })
    return report


def _probe(snn: Any, qann: Any, dataset: Any, timesteps: int, examples: int, device: torch.device,
           dtype: torch.dtype) -> dict[str, Any] | None:
    """The first test images followed step by step (:func:`qffs.probe.probe_samples`); None where
    the graph has a fixed batch size (the probe simulates them together)."""
    n = min(len(dataset), max(examples, PROBE_SAMPLES))
    with status(f"following the first {n:,} test images step by step"):
        items = [dataset[i] for i in range(n)]
        x = torch.stack([item[0] for item in items]).to(device=device, dtype=dtype)
        y = torch.tensor([int(item[1]) for item in items])
        snn = snn.to(device=device, dtype=dtype).eval()
        if not snn.batch_free(x):
            return None
        return probe_samples(snn, x, y, timesteps, qann=None if qann is None else qann.to(device=device, dtype=dtype)
                             .eval(), examples=examples)


def _class_names(dataset: Any, data: DataOptions) -> list[str] | None:
    """The test set's class names: the dataset's own, else the registry's."""
    names = getattr(dataset, "classes", None)
    if not names and data.dataset:
        try:
            names = dataset_info(data.dataset, data.root).classes
        except QffsError:
            return None
    return [str(n) for n in names] if names else None


def _onnxruntime_network(snn: Any, loader: Any, timesteps: int, device: torch.device,
                         stack: contextlib.ExitStack) -> Any:
    """``snn`` exported (with the report's diagnostic outputs) into a temporary folder that
    ``stack`` removes, and opened with onnxruntime."""
    # onnxruntime and the exporter load only for this backend (start-up time of every other evaluation)
    import onnxruntime

    from qffs.export.onnx import snn_to_onnx
    from qffs.export.runtime import OnnxSpikingNetwork, export_folder

    x = loader.dataset[0][0].unsqueeze(0)   # the whole test set's first sample (a rank's shard may be empty)
    if device.type == "cuda" and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        device = torch.device("cpu")      # "auto" found a GPU, this onnxruntime cannot use it
    folder = export_folder(stack)
    main_only(print)(f"exporting the SNN unrolled over {timesteps} steps to ONNX ...", flush=True)
    path = snn_to_onnx(snn, folder / "snn.onnx", x, timesteps, diagnostics=True)
    return OnnxSpikingNetwork(path, device)
