"""``qffs convert`` (stage 2) and ``qffs evaluate`` (stage 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from qffs.cli.app import (
    ARTIFACT_MODEL_OPTION,
    ENERGY_OPTION,
    EXAMPLES_OPTION,
    IMAGE_SIZE_OPTION,
    MEAN_OPTION,
    MEMORY_OPTION,
    READOUT_OPTION,
    STD_OPTION,
    TEST_DATA_ROOT_OPTION,
    TEST_DATASET_OPTION,
    app,
    channel_values,
    examples,
)


@app.command(
    "convert",
    epilog=examples(
        "qffs convert qann.pt --out snn.pt",
        "qffs convert qann.pt --out snn_noneg.pt --no-negative-spikes   # ablation: the paper's occasional noise",
    ),
)
def convert(
    qann: Path = typer.Argument(..., help="QANN checkpoint written by qffs quantize."),
    out: Path = typer.Option(..., "--out", "-o", help="SNN artifact to write (.pt or .safetensors)."),
    input_window: Optional[int] = typer.Option(None, help="T_in: steps during which input and biases flow (default: Q "
                                                          "of the hidden layers)."),
    precharge: bool = typer.Option(True, "--precharge/--no-precharge", help="Pre-charge membranes to θ/2 (round "
                                                                            "instead of floor)."),
    negative_spikes: bool = typer.Option(True, "--negative-spikes/--no-negative-spikes", help="Allow negative spikes "
                                                                                              "that undo overshoots."),
    max_pool: str = typer.Option("event", help="Max pooling: event (exact) or naive (ablation)."),
    model: Optional[str] = ARTIFACT_MODEL_OPTION,
) -> None:
    """Convert a quantized ANN into a spiking network artifact and print its layers."""
    # loaded when the command runs, so that `qffs --help` and the other commands start fast
    from qffs.artifacts import ConversionConfig
    from qffs.cli.render import console, layer_table
    from qffs.jobs.convert import convert_checkpoint

    conversion = ConversionConfig(input_window=input_window, precharge=precharge, negative_spikes=negative_spikes,
                                  max_pool=max_pool)
    path, summary = convert_checkpoint(qann, out, conversion, model=model)
    console.print(layer_table(summary))
    typer.echo(f"wrote {path}")


@app.command(
    "evaluate",
    epilog=examples(
        "qffs evaluate snn.pt --timesteps 16 --out-dir results/",
        "qffs evaluate snn.pt --dataset fashion-mnist --timesteps 32 --double --limit 1000 --out-dir results/",
        "qffs evaluate snn.pt --timesteps 8 --backend onnxruntime --out-dir results_ort/",
        "qffs evaluate snn.pt --timesteps 16 --exit auto --out-dir results_exit/",
        "qffs evaluate snn.pt --timesteps 8 --report --energy int8-45nm --out-dir results/   # + figures, report.html",
    ),
)
def evaluate(
    snn: Path = typer.Argument(..., help="SNN artifact written by qffs convert (or qffs run)."),
    dataset: Optional[str] = TEST_DATASET_OPTION,
    data_root: Optional[str] = TEST_DATA_ROOT_OPTION,
    mean: Optional[str] = MEAN_OPTION,
    std: Optional[str] = STD_OPTION,
    image_size: Optional[int] = IMAGE_SIZE_OPTION,
    timesteps: int = typer.Option(16, "--timesteps", "-T", help="Simulate T steps; the curve covers t = 1..T."),
    out_dir: Path = typer.Option(Path("results"), "--out-dir", help="Where curve.csv, curve.json and curve.png go."),
    limit: Optional[int] = typer.Option(None, help="Only the first N test samples."),
    batch_size: int = typer.Option(256, help="Samples simulated at once."),
    double: bool = typer.Option(False, "--double", help="Simulate in float64 (exact; float32 may differ at level "
                                                        "boundaries)."),
    readout: str = READOUT_OPTION,
    model: Optional[str] = ARTIFACT_MODEL_OPTION,
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    memory: Optional[str] = MEMORY_OPTION,
    backend: str = typer.Option("torch", "--backend",
                                help="torch (qffs' runtime) or onnxruntime (the SNN exported to ONNX, unrolled over "
                                     "T steps, float32: checks an export and measures its speed)."),
    exit: str = typer.Option("none", "--exit",
                             help="Per-sample early exit: none, quiet (exact: each sample's convergence step), "
                                  "confidence:P[@TAU][,READOUT][,deadline=D] (softmax confidence ≥ P; TAU fitted on "
                                  "the validation split unless given; READOUT: the one confidence is taken of, default "
                                  "--readout; D: a sample still unsure answers at step D, default --timesteps) or "
                                  "auto (readout, TAU, P and D chosen on the validation split: least mean latency "
                                  "within --exit-tolerance of the QANN). Also writes exit.png."),
    exit_tolerance: float = typer.Option(0.1, "--exit-tolerance",
                                         help="With --exit auto: the validation accuracy the exit may lose "
                                              "against the QANN, in percentage points."),
    report: bool = typer.Option(False, "--report", help="Also draw the per-layer and per-sample figures and write "
                                                        "report.html, one self-contained page (qffs report)."),
    examples_shown: int = EXAMPLES_OPTION,
    energy: str = ENERGY_OPTION,
) -> None:
    """Simulate an SNN on a test set: accuracy at every time step, spikes, SOPs, energy; CSV/JSON/PNG."""
    # loaded when the command runs, so that `qffs --help` and the other commands start fast
    from qffs.cli.render import print_report
    from qffs.distributed import is_main_process
    from qffs.jobs.evaluation import evaluate_checkpoint
    from qffs.jobs.options import DataOptions

    data = DataOptions(dataset=dataset, root=data_root, test_limit=limit,
                       batch_size=batch_size, mean=channel_values(mean, "--mean"), std=channel_values(std, "--std"),
                       image_size=image_size)
    result = evaluate_checkpoint(snn, data, timesteps, device=device, double=double, readout=readout, model=model,
                                 memory=memory, backend=backend, out_dir=out_dir, exit=exit,
                                 exit_tolerance=exit_tolerance / 100, energy=energy, page=report,
                                 examples=examples_shown)
    if not is_main_process():            # under torchrun rank 0 alone writes and prints the whole report
        return
    paths = result["files"]
    print_report(result)
    typer.echo("results: " + ", ".join(str(p) for p in paths.values()))


@app.command("report", epilog=examples("qffs report runs/demo", "qffs report results/ --no-figures"))
def report_page(
    run_dir: Path = typer.Argument(..., help="A folder with curve.json: the --out-dir of qffs evaluate or qffs run."),
    figures: bool = typer.Option(True, "--figures/--no-figures", help="Draw the figures again from curve.json "
                                                                      "(else embed those in the folder)."),
) -> None:
    """Write RUN_DIR/report.html: command, configuration, curve, figures and tables on one self-contained page."""
    # loaded when the command runs, so that `qffs --help` and the other commands start fast
    from qffs.report_page import write_page

    typer.echo(f"wrote {write_page(run_dir, draw=figures)}")
