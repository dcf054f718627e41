"""``qffs finetune``: a converted SNN trained at a fixed T (ATIF thresholds, MPR, surrogate gradients)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from qffs.cli.app import (
    ARTIFACT_MODEL_OPTION,
    RESUME_OPTION,
    SELECT_ON_TEST_OPTION,
    VAL_SEED_OPTION,
    VAL_SIZE_OPTION,
    app,
    examples,
)


@app.command(
    "finetune",
    epilog=examples(
        "qffs finetune snn.pt --timesteps 4 --out ft.pt                   # ATIF-u thresholds, loss over steps 1..4",
        "qffs finetune snn.pt --timesteps 2 --mpr 3 --out ft.pt           # with membrane rectification (k = 3)",
        "qffs finetune snn.pt --thresholds fixed --loss final --out ft.pt # weights only, loss at T",
        "qffs evaluate ft.pt --timesteps 8 --out-dir results_ft/          # its curve, like any SNN",
    ),
)
def finetune(
    snn: Path = typer.Argument(..., help="SNN artifact (qffs convert) to fine-tune."),
    out: Path = typer.Option(..., "--out", "-o", help="Fine-tuned SNN artifact to write (.pt or .safetensors)."),
    timesteps: int = typer.Option(4, "--timesteps", "-T", help="Steps the network is trained (and chosen) at."),
    thresholds: str = typer.Option("layer", help="What trains besides the weights: fixed (weights only), layer "
                                                 "(one θ per hidden IF layer, ATIF-u) or step (one θ per layer and "
                                                 "step, ATIF-nu)."),
    loss: str = typer.Option("all-steps", help="Cross-entropy of the integrated current at T (final) or averaged "
                                               "over steps 1..T (all-steps: the whole early curve improves)."),
    surrogate: str = typer.Option("sigmoid", help="Spike-decision gradient: sigmoid (ATIF) or rectangular (MPR)."),
    surrogate_width: Optional[float] = typer.Option(None, help="Sigmoid slope α (default 4) or rectangle width a "
                                                               "(default 1), on the membrane in units of 2θ."),
    mpr: Optional[float] = typer.Option(None, "--mpr", metavar="K", help="Membrane potential rectification with "
                                                                         "shape K (the paper's best: 3)."),
    distill: float = typer.Option(0.0, help="Weight of distillation from the QANN's logits (0: off)."),
    temperature: float = typer.Option(1.0, help="Softmax temperature of the distillation term."),
    epochs: int = typer.Option(3, help="Training epochs (0: the converted SNN, evaluated and written back)."),
    lr: float = typer.Option(0.002, help="Initial learning rate (SGD, cosine decay to 0)."),
    momentum: float = typer.Option(0.9, help="SGD momentum."),
    weight_decay: float = typer.Option(1e-4, help="Weight decay, not applied to thresholds (per layer or per step) "
                                                  "and biases."),
    batch_size: int = typer.Option(64, help="Batch size (BPTT holds T steps of activations per sample)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Dataset (default: the artifact's)."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="Dataset location."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N training samples."),
    test_limit: Optional[int] = typer.Option(None, help="Use only the first N test samples."),
    val_size: Optional[int] = VAL_SIZE_OPTION,
    val_seed: int = VAL_SEED_OPTION,
    select_on_test: bool = SELECT_ON_TEST_OPTION,
    seed: int = typer.Option(0, help="Random seed."),
    workers: int = typer.Option(0, help="DataLoader worker processes."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    model: Optional[str] = ARTIFACT_MODEL_OPTION,
    resume: bool = RESUME_OPTION,
) -> None:
    """Train a converted SNN at a fixed T by back-propagation through time (leaves invariant E)."""
    # loaded when the command runs, so that `qffs --help` and the other commands start fast
    from qffs.distributed import main_only
    from qffs.finetune import FinetuneConfig
    from qffs.jobs.finetune import finetune_snn
    from qffs.jobs.options import DataOptions
    from qffs.snn.surrogate import Surrogate
    from qffs.train import TrainConfig

    config = FinetuneConfig(timesteps, thresholds, loss, Surrogate(surrogate, surrogate_width, mpr))
    cfg = TrainConfig(epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay, distill=distill,
                      temperature=temperature, no_decay_names=(".original", "bias"))
    result = finetune_snn(snn, out, DataOptions(dataset=dataset, root=data_root, limit=limit, test_limit=test_limit,
                                                batch_size=batch_size, workers=workers, seed=seed, val_size=val_size,
                                                val_seed=val_seed, select_on_test=select_on_test),
                          cfg, config, model=model, device=device, resume=resume)
    chosen = "chosen on the TEST set" if result["selected_on"] == "test" else "validation"
    main_only(typer.echo)(
        f"{config.method} at T={timesteps}: {chosen} {100 * result['converted_val_accuracy']:.2f}% converted -> "
        f"{100 * result['finetuned_val_accuracy']:.2f}% (epoch {result['best_epoch']}); test "
        f"{100 * result['snn_accuracy']:.2f}% (current readout at T={timesteps}; {result['seconds']:.0f} s); "
        f"wrote {result['checkpoint']}")
