"""``qffs run`` (all three stages from a pretrained checkpoint) and ``qffs demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from qffs.cli.app import (
    ENERGY_OPTION,
    EXAMPLES_OPTION,
    IMAGE_SIZE_OPTION,
    MEAN_OPTION,
    MEMORY_OPTION,
    READOUT_OPTION,
    RESUME_OPTION,
    SELECT_ON_TEST_OPTION,
    STD_OPTION,
    VAL_SEED_OPTION,
    VAL_SIZE_OPTION,
    app,
    channel_values,
    examples,
)
from qffs.errors import QffsError
from qffs.jobs.recipes import DEFAULT_RECIPE, RECIPES, by_recipe, resolve_recipe

#: QAT epochs of ``qffs demo``: a few minutes on a laptop CPU.
DEMO_EPOCHS = 1


def _finish(report: dict) -> None:
    # loaded when the command runs, so that `qffs --help` and the other commands start fast
    from qffs.cli.render import print_report
    from qffs.distributed import is_main_process

    if not is_main_process():   # under torchrun rank 0 alone prints (and wrote the files)
        return
    print_report(report)
    files = report["files"]
    typer.echo(f"done in {report['pipeline_seconds']:.0f} s; results in {Path(files['json']).parent}/ "
               "(" + ("report.html, " if "html" in files else "") + "curve.png, curve.csv, curve.json, qann.pt, "
               "snn.pt)")


@app.command(
    "run",
    epilog=examples(
        "qffs run models/fmnist_vgg_small.pt --out-dir runs/fmnist --epochs 3 --timesteps 16",
        "qffs run resnet20.th --model resnet20 --dataset cifar10-jpeg --epochs 1 --out-dir runs/r20",
        "qffs run fp.pt --dataset imagefolder --data-root ~/data/tiny --image-size 32 --out-dir runs/tiny",
    ),
)
def run(
    checkpoint: Path = typer.Argument(..., help="Pretrained full-precision checkpoint."),
    out_dir: Path = typer.Option(Path("runs/latest"), "--out-dir",
                                 help="Where qann.pt, snn.pt and the curve files go."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model spec (resnet20, tv:NAME, "
                                                                    "path/to/model.py:factory): needed when the "
                                                                    "checkpoint does not record one, and to name a "
                                                                    "model file it records (qffs never imports a file "
                                                                    "on a checkpoint's word)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Dataset for QAT and evaluation (default: the "
                                                                        "one the checkpoint records, else "
                                                                        "fashion-mnist)."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="Dataset location."),
    mean: Optional[str] = MEAN_OPTION,
    std: Optional[str] = STD_OPTION,
    image_size: Optional[int] = IMAGE_SIZE_OPTION,
    bits: int = typer.Option(2, help="Hidden activation bits."),
    output_bits: int = typer.Option(3, help="Output bits; 0 keeps the output analog."),
    recipe: str = typer.Option(DEFAULT_RECIPE, "--recipe",
                               help="QAT recipe (see qffs quantize --help): qffs or paper."),
    epochs: Optional[int] = typer.Option(None, help="QAT epochs. " + by_recipe("epochs")),
    lr: Optional[float] = typer.Option(None, help="QAT learning rate. " + by_recipe("lr")),
    batch_size: Optional[int] = typer.Option(None, help="QAT batch size. " + by_recipe("batch_size")),
    timesteps: int = typer.Option(16, "--timesteps", "-T", help="Simulated time steps."),
    limit: Optional[int] = typer.Option(None, help="Only the first N training samples."),
    test_limit: Optional[int] = typer.Option(None, help="Only the first N test samples."),
    val_size: Optional[int] = VAL_SIZE_OPTION,
    val_seed: int = VAL_SEED_OPTION,
    select_on_test: bool = SELECT_ON_TEST_OPTION,
    double: bool = typer.Option(False, "--double", help="Simulate in float64."),
    readout: str = READOUT_OPTION,
    memory: Optional[str] = MEMORY_OPTION,
    seed: int = typer.Option(0, help="Random seed."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    resume: bool = RESUME_OPTION,
    report: bool = typer.Option(True, "--report/--no-report", help="Draw the figures and write report.html."),
    examples_shown: int = EXAMPLES_OPTION,
    energy: str = ENERGY_OPTION,
) -> None:
    """Quantize, convert and evaluate in one go: a pretrained checkpoint → latency–accuracy curve."""
    # loaded when the command runs, so that `qffs --help` and the other commands start fast
    from qffs.jobs.options import DataOptions
    from qffs.jobs.pipeline import run_pipeline

    chosen = resolve_recipe(recipe, epochs=epochs, lr=lr, batch_size=batch_size)
    result = run_pipeline(
        checkpoint, out_dir, DataOptions(dataset=dataset, root=data_root, limit=limit, test_limit=test_limit,
                                         batch_size=chosen.batch_size, seed=seed, mean=channel_values(mean, "--mean"),
                                         std=channel_values(std, "--std"), image_size=image_size,
                    val_size=val_size, val_seed=val_seed, select_on_test=select_on_test),
        chosen.train_config(), chosen.quant_config(bits=bits, output_bits=output_bits or None, recipe=recipe),
        timesteps=timesteps, model=model, device=device, double=double, readout=readout, memory=memory,
        resume=resume, energy=energy, examples=examples_shown, page=report, log=typer.echo)
    _finish(result)


@app.command("demo", epilog=examples("qffs demo", "qffs demo --epochs 2 --out-dir runs/demo2"))
def demo(
    out_dir: Path = typer.Option(Path("runs/demo"), "--out-dir", help="Where the results go."),
    epochs: int = typer.Option(DEMO_EPOCHS, help="QAT epochs of the default recipe: 1 keeps the demo to a few minutes "
                                                 "on a laptop CPU (the recipe itself runs "
                                                 f"{RECIPES[DEFAULT_RECIPE].epochs})."),
    timesteps: int = typer.Option(16, "--timesteps", "-T", help="Simulated time steps."),
    limit: Optional[int] = typer.Option(None, help="Only the first N training samples (faster, less accurate)."),
    test_limit: Optional[int] = typer.Option(None, help="Only the first N test samples."),
    readout: str = READOUT_OPTION,
    resume: bool = RESUME_OPTION,
) -> None:
    """The embedded default: shipped Fashion-MNIST VGG → 2/3-bit QANN → SNN → curve, table and plot."""
    # loaded when the command runs, so that `qffs --help` and the other commands start fast
    from qffs.artifacts import SHIPPED_FMNIST
    from qffs.jobs.options import DataOptions
    from qffs.jobs.pipeline import run_pipeline

    chosen = resolve_recipe(DEFAULT_RECIPE, epochs=epochs)
    if epochs < RECIPES[DEFAULT_RECIPE].epochs:
        typer.echo(f"demo: {epochs} QAT epoch(s) of the default recipe, which runs {RECIPES[DEFAULT_RECIPE].epochs} "
                   f"(qffs quantize): a shorter, less accurate schedule that fits a few minutes")
    if not SHIPPED_FMNIST.is_file():
        raise QffsError(f"the shipped checkpoint {SHIPPED_FMNIST} is missing (a broken install?)")
    result = run_pipeline(
        SHIPPED_FMNIST, out_dir, DataOptions(dataset="fashion-mnist", limit=limit, test_limit=test_limit,
                                             batch_size=chosen.batch_size),
        chosen.train_config(), chosen.quant_config(recipe=DEFAULT_RECIPE), timesteps=timesteps, readout=readout,
        resume=resume, log=typer.echo)
    _finish(result)
