"""``qffs ablate``: the paper's ablation on one QANN, as one table and one plot."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from qffs.cli.app import (
    ARTIFACT_MODEL_OPTION,
    IMAGE_SIZE_OPTION,
    MEAN_OPTION,
    MEMORY_OPTION,
    STD_OPTION,
    TEST_DATA_ROOT_OPTION,
    TEST_DATASET_OPTION,
    app,
    channel_values,
    examples,
)


@app.command(
    "ablate",
    epilog=examples(
        "qffs ablate qann.pt --timesteps 16 --out-dir results/ablation",
        "qffs ablate qann.pt --also qann_2bit_out.pt --also qann_analog.pt --double --limit 2000 --out-dir ablation/",
    ),
)
def ablate(
    qann: Path = typer.Argument(..., help="QANN checkpoint written by qffs quantize."),
    also: Optional[list[Path]] = typer.Option(None, "--also", help="A QANN of the same network in another precision "
                                                                   "layout (other --bits or --output-bits): adds a "
                                                                   "full-QFFS row. Repeatable."),
    dataset: Optional[str] = TEST_DATASET_OPTION,
    data_root: Optional[str] = TEST_DATA_ROOT_OPTION,
    mean: Optional[str] = MEAN_OPTION,
    std: Optional[str] = STD_OPTION,
    image_size: Optional[int] = IMAGE_SIZE_OPTION,
    timesteps: int = typer.Option(16, "--timesteps", "-T", help="Simulate T steps per setting."),
    out_dir: Path = typer.Option(Path("results/ablation"), "--out-dir", help="Where ablation.csv, .json and .png go."),
    limit: Optional[int] = typer.Option(None, help="Only the first N test samples."),
    batch_size: int = typer.Option(256, help="Samples simulated at once."),
    double: bool = typer.Option(False, "--double", help="Simulate in float64 (exact: the full setting has no neuron "
                                                        "off its level)."),
    model: Optional[str] = ARTIFACT_MODEL_OPTION,
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    memory: Optional[str] = MEMORY_OPTION,
) -> None:
    """Each QFFS mechanism switched off in turn: accuracy at fixed t, latency to lossless, neurons off level."""
    # loaded when the command runs, so that `qffs --help` and the other commands start fast
    from qffs.cli.render import ablation_table, console
    from qffs.jobs.ablate import ablate as run_ablation
    from qffs.jobs.options import DataOptions

    data = DataOptions(dataset=dataset, root=data_root, test_limit=limit, batch_size=batch_size,
                       mean=channel_values(mean, "--mean"), std=channel_values(std, "--std"), image_size=image_size)
    result = run_ablation(qann, data, timesteps, others=tuple(also or ()), device=device, double=double,
                          memory=memory, model=model, out_dir=out_dir, log=typer.echo)
    paths = result["files"]
    console.print(ablation_table(result))
    for note in result["skipped"]:
        typer.echo(f"not run: {note}")
    typer.echo(f"results: {paths['csv']}, {paths['json']}, {paths['png']}")
