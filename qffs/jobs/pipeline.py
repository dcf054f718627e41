"""``qffs run`` as a job: quantize (QAT) → convert → evaluate, into one folder."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from qffs.artifacts import QuantConfig
from qffs.distributed import barrier, is_main_process, main_only
from qffs.errors import Interrupted
from qffs.figures import FIGURE_FILES
from qffs.jobs.convert import convert_checkpoint
from qffs.jobs.evaluation import DEFAULT_ENERGY, DEFAULT_EXAMPLES, bits_label, check_evaluation, evaluate_checkpoint
from qffs.jobs.options import DataOptions
from qffs.jobs.outputs import metrics_path, partial_path, writing_dir
from qffs.jobs.quantize import quantize_checkpoint
from qffs.jobs.training import Log
from qffs.report import report_files, write_report
from qffs.report_page import REPORT_PAGE, write_page
from qffs.resume import resume_path
from qffs.snn.readout import DEFAULT_READOUT
from qffs.train import TrainConfig


def _pipeline_files() -> tuple[str, ...]:
    files = []
    for name in ("qann.pt", "snn.pt"):
        for path in (Path(name), partial_path(Path(name))):
            files += [path.name, metrics_path(path).name]
        files.append(resume_path(Path(name)).name)
    return (*files, *report_files(), *FIGURE_FILES, REPORT_PAGE)


#: Every file ``qffs run`` may write into its ``--out-dir``.
PIPELINE_FILES = _pipeline_files()


def run_pipeline(checkpoint: str | Path, out_dir: str | Path, data: DataOptions, cfg: TrainConfig,
                 quant: QuantConfig | None = None, *, timesteps: int = 16, model: str | None = None,
                 device: str = "auto", double: bool = False, readout: str = DEFAULT_READOUT,
                 memory: str | int | None = None, resume: bool = False, energy: str = DEFAULT_ENERGY,
                 examples: int = DEFAULT_EXAMPLES, page: bool = True, log: Log = print) -> dict[str, Any]:
    """All three stages into ``out_dir`` (``resume``: continue an interrupted QAT there).

    Writes ``qann.pt``, ``snn.pt``, ``curve.csv/.json/.png`` and (``page``) the figures and
    ``report.html`` (each atomically); returns the evaluation report with the paths under ``"files"``.
    ``energy``, ``examples``: as for :func:`~qffs.jobs.evaluation.evaluate_checkpoint`.
    """
    quant = quant or QuantConfig()
    check_evaluation(timesteps, readout, "torch", double, memory, energy=energy, examples=examples)
    with writing_dir(out_dir, writes=PIPELINE_FILES, inputs=(checkpoint,)) as out:   # two runs never share one
        started = time.perf_counter()
        log = main_only(log)
        log(f"[1/3] quantize: {quant.bits}-bit hidden, {bits_label(quant.output_bits)} output, "
            f"{cfg.epochs} QAT epoch(s)")
        q = quantize_checkpoint(checkpoint, out / "qann.pt", data, cfg, quant, model=model, device=device,
                                resume=resume, log=log)
        chosen = ("epoch chosen on the TEST set" if q["selected_on"] == "test"
                  else f"validation {100 * q['qann_val_accuracy']:.2f}%")
        log(f"      FP {100 * q['fp_accuracy']:.2f}%  QANN {100 * q['qann_accuracy']:.2f}% on the test set "
            f"(epoch {q['best_epoch']}, {chosen})  ({q['seconds']:.0f} s)")
        report = _convert_and_evaluate(out, data, timesteps, model=model, device=device, double=double,
                                       readout=readout, memory=memory, log=log,
                                       report_options={"energy": energy, "examples": examples, "page": page})
        report["pipeline_seconds"] = round(time.perf_counter() - started, 1)
        report["quantize"] = q
        if is_main_process():
            report["files"] = {k: str(v) for k, v in write_report(report, out).items()}
            if page:
                report["files"]["html"] = str(write_page(out))
        return report


def _convert_and_evaluate(out: Path, data: DataOptions, timesteps: int, *, model: str | None, device: str,
                          double: bool, readout: str, memory: str | int | None, log: Log,
                          report_options: dict[str, Any]) -> dict[str, Any]:
    """Stages 2 and 3 on the folder's new ``qann.pt``; an earlier run's SNN and curve are removed first."""
    snn_path = out / "snn.pt"
    if is_main_process():   # an earlier run's SNN and curve no longer match the new qann.pt: never leave them beside it
        for stale in (snn_path, metrics_path(snn_path), *(out / name for name in (*report_files(), *FIGURE_FILES,
                                                                                   REPORT_PAGE))):
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
        return evaluate_checkpoint(snn_path, data, timesteps, device=device, double=double, readout=readout,
                                   model=model, memory=memory, **report_options)
    except KeyboardInterrupt:
        done = f"{out / 'qann.pt'} is this run's" + (f", and so is {snn_path}" if snn_path.exists() else "")
        then = (f"qffs evaluate {snn_path} -T {timesteps} --out-dir {out}" if snn_path.exists()
                else f"qffs convert {out / 'qann.pt'} --out {snn_path}, then qffs evaluate")
        raise Interrupted(f"interrupted in stage {stage}: {done}; the curve was not written (an earlier run's "
                          f"snn.pt and curve files were removed); to finish: {then}") from None
