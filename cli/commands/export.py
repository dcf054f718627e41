"""``qffs export``: a QANN or SNN out of Python, as ONNX (onnxruntime) or NIR (neuromorphic toolchains)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from qffs.cli.app import ARTIFACT_MODEL_OPTION, app, examples
from qffs.errors import QffsError


def _shape(text: Optional[str]) -> Optional[tuple[int, ...]]:
    if text is None:
        return None
    try:
        shape = tuple(int(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise QffsError(f"--input-shape expects one sample's shape as positive integers, e.g. 3,32,32; got {text!r}")
    return shape


@app.command(
    "export",
    epilog=examples(
        "qffs export snn.pt --to onnx --out snn.onnx --timesteps 8   # the SNN unrolled over 8 steps",
        "qffs export qann.pt --to onnx --out qann.onnx                # quantizers as Div/Round/Clip/Mul",
        "qffs export qann.pt --to onnx --out qann.onnx --qann-form qcdq   # as QuantizeLinear/Clip/DequantizeLinear",
        "qffs export snn.pt --to onnx --out step.onnx --single-step   # one step, state in and out (streaming)",
        "qffs export snn.pt --to nir --out snn.nir                    # needs: pip install 'qffs[nir]'",
    ),
)
def export(
    artifact: Path = typer.Argument(..., help="An SNN (qffs convert), QANN (qffs quantize) or FP checkpoint."),
    to: str = typer.Option("onnx", "--to", help="onnx (SNN, QANN or FP network) or nir (SNN)."),
    out: Path = typer.Option(..., "--out", "-o", help="File to write (.onnx or .nir)."),
    timesteps: Optional[int] = typer.Option(None, "--timesteps", "-T",
                                            help="SNN to ONNX: steps to unroll (the readout has one row per step). "
                                                 "Default: 8."),
    input_shape: Optional[str] = typer.Option(None, "--input-shape", metavar="C,H,W",
                                              help="One sample's shape, when the artifact does not record it."),
    single_step: bool = typer.Option(False, "--single-step",
                                     help="SNN to ONNX: one step with the state as inputs and outputs (streaming "
                                          "runtimes), instead of T steps unrolled."),
    qann_form: Optional[str] = typer.Option(None, "--qann-form", metavar="float|qcdq",
                                            help="QANN to ONNX: its quantizers as float operations (default: exact in "
                                                 "every ONNX runtime and onnx.reference) or as QuantizeLinear/Clip/"
                                                 "DequantizeLinear (QDQ toolchains; exact in onnxruntime only with "
                                                 "session.disable_quant_qdq=1)."),
    model: Optional[str] = ARTIFACT_MODEL_OPTION,
) -> None:
    """Write an artifact as ONNX or NIR and check the file against the torch network."""
    # loaded when the command runs, so that `qffs --help` and the other commands start fast
    from qffs.jobs.export import export_checkpoint

    summary = export_checkpoint(artifact, out, to=to, timesteps=timesteps, model=model, input_shape=_shape(input_shape),
                                single_step=single_step, qann_form=qann_form, log=typer.echo)
    what = {"snn": "SNN, one step with its state as inputs/outputs" if single_step else
            f"SNN unrolled over T={summary.get('timesteps')}",
            "qann": f"QANN (quantizers as {summary.get('qann_form')})", "fp": "FP network"}
    nir_title = "SNN (NIR graph; see docs/export.md for what a consumer must add)"
    title = what[summary["kind"]] if to == "onnx" else nir_title
    typer.echo(f"wrote {summary['path']}: {title}, {summary['bytes'] / 1e6:.1f} MB"
               + (f", opset {summary['opset']}" if "opset" in summary else ""))
    check = summary["check"]
    if to == "onnx":
        how = f" streamed over {summary['timesteps']} steps" if single_step else ""
        typer.echo(f"check (onnxruntime{how} vs torch, {check['samples']} random inputs): {check['differing_values']} "
                   f"of "
                   f"{check['values']} values differ, max |difference| {check['max_abs_difference']:.3g}, "
                   f"predictions {'identical' if check['same_predictions'] else 'DIFFER'}"
                   + (f" (onnxruntime's default session); onnx.reference: {check['reference']['differing_values']} "
                      f"differ" if "reference" in check else ""))
    else:
        typer.echo(f"check (nir.read): {check['nodes']} nodes, weights and thresholds "
                   f"{'equal' if check['equal'] else 'DIFFER'}")
