"""``qffs train``: train or fine-tune a full-precision model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from qffs.cli.app import (
    IMAGE_SIZE_OPTION,
    MEAN_OPTION,
    RESUME_OPTION,
    SELECT_ON_TEST_OPTION,
    STD_OPTION,
    VAL_SEED_OPTION,
    VAL_SIZE_OPTION,
    app,
    channel_values,
    examples,
)


@app.command(
    "train",
    epilog=examples(
        "qffs train --model vgg_small --dataset fashion-mnist --epochs 15 --lr 0.05 --out fp.pt",
        "qffs train --model resnet20 --dataset cifar10-jpeg --epochs 2 --pretrained resnet20.th --out ft.pt",
        "torchrun --nproc-per-node 4 -m qffs.cli.main train --model resnet18 --dataset cifar10 --data-root ~/data "
        "--out r18.pt",
    ),
)
def train(
    out: Path = typer.Option(..., "--out", "-o", help="Checkpoint to write (.pt or .safetensors); metrics JSON goes "
                                                      "beside it."),
    model: str = typer.Option("vgg_small", "--model", "-m", help="Model spec: vgg_small, vgg16, resnet18, resnet20, "
                                                                 "tv:NAME, or file.py:factory."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="fashion-mnist (default, or the one "
                                                                        "--pretrained records), mnist, cifar10, "
                                                                        "cifar10-jpeg or imagefolder."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="Dataset location (default: the dataset's "
                                                                      "standard place)."),
    mean: Optional[str] = MEAN_OPTION,
    std: Optional[str] = STD_OPTION,
    image_size: Optional[int] = IMAGE_SIZE_OPTION,
    epochs: int = typer.Option(15, help="Training epochs."),
    lr: float = typer.Option(0.05, help="Initial learning rate (SGD)."),
    momentum: float = typer.Option(0.9, help="SGD momentum."),
    weight_decay: float = typer.Option(5e-4, help="L2 weight decay."),
    schedule: str = typer.Option("cosine", help="Learning-rate decay: cosine, exp or constant."),
    gamma: float = typer.Option(0.9, help="Per-epoch decay factor for --schedule exp."),
    batch_size: int = typer.Option(128, help="Batch size (per process under torchrun)."),
    pretrained: Optional[str] = typer.Option(None, help="Start from this checkpoint (fine-tuning)."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N training samples (quick runs)."),
    test_limit: Optional[int] = typer.Option(None, help="Use only the first N test samples."),
    val_size: Optional[int] = VAL_SIZE_OPTION,
    val_seed: int = VAL_SEED_OPTION,
    select_on_test: bool = SELECT_ON_TEST_OPTION,
    seed: int = typer.Option(0, help="Random seed (initialisation, shuffling, augmentation)."),
    workers: int = typer.Option(0, help="DataLoader worker processes."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    resume: bool = RESUME_OPTION,
) -> None:
    """Train or fine-tune a full-precision model; keeps the best epoch's checkpoint."""
    # loaded when the command runs, so that `qffs --help` and the other commands start fast
    from qffs.jobs.options import DataOptions
    from qffs.jobs.training import train_fp
    from qffs.train import TrainConfig

    result = train_fp(
        model, out,
        DataOptions(dataset=dataset, root=data_root, limit=limit, test_limit=test_limit,
                    batch_size=batch_size, workers=workers, seed=seed, mean=channel_values(mean, "--mean"),
                    std=channel_values(std, "--std"), image_size=image_size,
                    val_size=val_size, val_seed=val_seed, select_on_test=select_on_test),
        TrainConfig(epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay,
                    schedule=schedule, gamma=gamma),
        pretrained=pretrained, device=device, resume=resume, log=typer.echo,
    )
    # loaded when the command runs, so that `qffs --help` and the other commands start fast
    from qffs.distributed import main_only

    echo = main_only(typer.echo)   # under torchrun: one summary, from rank 0
    chosen = ("chosen on the TEST set" if result["selected_on"] == "test"
              else f"chosen on validation, {100 * result['val_accuracy']:.2f}%")
    echo(f"test accuracy {100 * result['test_accuracy']:.2f}% at epoch {result['best_epoch']} ({chosen}; "
         f"{result['seconds']:.0f} s); wrote {result['checkpoint']}")
