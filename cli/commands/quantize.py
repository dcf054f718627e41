"""``qffs quantize``: QFFS stage 1, a pretrained checkpoint becomes a 2/3-bit QANN (LSQ QAT)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

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
from qffs.jobs.recipes import DEFAULT_RECIPE, by_recipe


def recipe_option(setting: str, text: str, *flags: str, **kwargs: Any) -> Any:
    """An option that replaces one setting of the chosen recipe (None: the recipe's); its help names each
    recipe's value."""
    return typer.Option(None, *flags, help=f"{text} {by_recipe(setting)}", **kwargs)


@app.command(
    "quantize",
    epilog=examples(
        "qffs quantize models/fmnist_vgg_small.pt --out qann.pt    # 2-bit hidden, 3-bit output, recipe qffs",
        "qffs quantize fp.pt --out q.pt --epochs 3                 # a shorter run of the default recipe",
        "qffs quantize fp.pt --out q.pt --recipe paper              # QFFS's own: 40 epochs, batch 32, exp decay",
        "qffs quantize fp.pt --out q.pt --bit-schedule 4,3,2        # progressive precision",
        "qffs quantize fp.pt --out q4.pt --weight-bits 4            # 4-bit weights (first/last layer 8-bit)",
        "qffs quantize fp.pt --out qann_analog.pt --output-bits 0  # analog (float) output",
        "qffs quantize resnet20.th --model resnet20 --dataset cifar10-jpeg --epochs 1 --limit 5000 --out r20q.pt",
        "qffs quantize ckpt.pth --model repo/resnet.py:resnet20 --dataset cifar10-jpeg \\",
        "    --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 --epochs 0 --out q.pt  # their normalisation",
    ),
)
def quantize(
    checkpoint: Path = typer.Argument(..., help="Pretrained full-precision checkpoint."),
    out: Path = typer.Option(..., "--out", "-o", help="QANN checkpoint to write (.pt or .safetensors)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model spec (resnet20, tv:NAME, "
                                                                    "path/to/model.py:factory): needed when the "
                                                                    "checkpoint does not record one, and to name a "
                                                                    "model file it records (qffs never imports a file "
                                                                    "on a checkpoint's word)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Dataset to fine-tune and evaluate on "
                                                                        "(default: the one the checkpoint records, "
                                                                        "else fashion-mnist)."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="Dataset location."),
    mean: Optional[str] = MEAN_OPTION,
    std: Optional[str] = STD_OPTION,
    image_size: Optional[int] = IMAGE_SIZE_OPTION,
    bits: int = typer.Option(2, help="Bits of the hidden activations (Q = 2^bits - 1 levels)."),
    output_bits: int = typer.Option(3, help="Bits of the output (logits) quantizer; 0 keeps the output analog."),
    recipe: str = typer.Option(DEFAULT_RECIPE, "--recipe", help="QAT recipe the options below start from: qffs (a "
                                                                "long schedule with distillation, docs/guide.md) or "
                                                                "paper (QFFS's Table 2). An option given explicitly "
                                                                "replaces the recipe's value."),
    epochs: Optional[int] = recipe_option("epochs", "Quantization-aware training epochs (0: calibration only)."),
    lr: Optional[float] = recipe_option("lr", "Initial learning rate."),
    momentum: Optional[float] = recipe_option("momentum", "SGD momentum."),
    weight_decay: Optional[float] = recipe_option("weight_decay", "Weight decay, not applied to step sizes."),
    schedule: Optional[str] = recipe_option("schedule", "Learning-rate decay: cosine (to 0 over the run), exp or "
                                                        "constant."),
    gamma: Optional[float] = recipe_option("gamma", "Per-epoch decay factor for --schedule exp."),
    batch_size: Optional[int] = recipe_option("batch_size", "Batch size (larger is faster on CPU)."),
    freeze_bn: Optional[bool] = recipe_option("freeze_bn", "BatchNorm keeps its running statistics during QAT.",
                                              "--freeze-bn/--no-freeze-bn"),
    label_smoothing: Optional[float] = recipe_option("label_smoothing", "Label smoothing of the cross-entropy "
                                                                        "(0: off)."),
    distill: Optional[float] = recipe_option("distill", "Weight of knowledge distillation from the FP model (0: off, "
                                                        "0.5: half CE, half soft targets)."),
    temperature: Optional[float] = recipe_option("temperature", "Softmax temperature of the distillation term."),
    bit_schedule: Optional[str] = recipe_option(
        "bit_schedule", "Progressive precision, e.g. 4,3,2 (ending at --bits): the epochs are split across the "
        "widths; at each change the steps are carried over as s*Q_old/Q_new and re-calibrated and BatchNorm is "
        "re-estimated; only final-width epochs are kept.", "--bit-schedule", metavar="B1,B2,.."),
    bn_reestimate: Optional[bool] = recipe_option(
        "bn_reestimate", "After QAT, recompute BatchNorm statistics over training batches with the quantizers in "
        "place; kept only if the validation accuracy rises.", "--bn-reestimate/--no-bn-reestimate"),
    calibration: str = typer.Option("mse", help="Step-size initialisation: mse or lsq (2*mean|x|/sqrt(Q))."),
    weight_bits: Optional[int] = typer.Option(None, "--weight-bits", help="Quantize the conv/linear weights to B bits "
                                              "(1: ±1, B >= 2: -(2^(B-1)-1)..2^(B-1)-1 times a scale) on the grid "
                                              "of the weight with its BatchNorm folded in. Default: float weights, "
                                              "as in the paper."),
    weight_quantizer: str = typer.Option("lsq", "--weight-quantizer", help="lsq (learned step, straight-through) or "
                                         "sigmoid (sigmoid-sum, soft while training, exact steps at inference)."),
    per_channel: bool = typer.Option(False, "--per-channel", help="One weight scale per output channel (default: "
                                     "one per layer)."),
    edge_weight_bits: int = typer.Option(8, "--edge-weight-bits", help="Weight bits of the first and last layer "
                                         "(0: --weight-bits, like the others)."),
    temperature_rate: float = typer.Option(10.0, "--temperature-rate", help="Sigmoid-sum temperature T = rate x "
                                           "epoch (1-based)."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N training samples."),
    test_limit: Optional[int] = typer.Option(None, help="Use only the first N test samples."),
    val_size: Optional[int] = VAL_SIZE_OPTION,
    val_seed: int = VAL_SEED_OPTION,
    select_on_test: bool = SELECT_ON_TEST_OPTION,
    seed: int = typer.Option(0, help="Random seed."),
    workers: int = typer.Option(0, help="DataLoader worker processes."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    resume: bool = RESUME_OPTION,
) -> None:
    """Fine-tune a pretrained model into a quantized ANN (2-bit hidden, 3-bit output by default)."""
    # loaded when the command runs, so that `qffs --help` and the other commands start fast
    from qffs.distributed import main_only
    from qffs.jobs.options import DataOptions
    from qffs.jobs.quantize import quantize_checkpoint
    from qffs.jobs.recipes import resolve_recipe

    chosen = resolve_recipe(recipe, epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay,
                            schedule=schedule, gamma=gamma, batch_size=batch_size, freeze_bn=freeze_bn,
                            label_smoothing=label_smoothing, distill=distill, temperature=temperature,
                            bit_schedule=bit_schedule, bn_reestimate=bn_reestimate)
    result = quantize_checkpoint(
        checkpoint, out,
        DataOptions(dataset=dataset, root=data_root, limit=limit, test_limit=test_limit,
                    batch_size=chosen.batch_size, workers=workers, seed=seed, mean=channel_values(mean, "--mean"),
                    std=channel_values(std, "--std"), image_size=image_size,
                    val_size=val_size, val_seed=val_seed, select_on_test=select_on_test),
        chosen.train_config(),
        chosen.quant_config(bits=bits, output_bits=output_bits or None, calibration=calibration, recipe=recipe,
                            weight_bits=weight_bits, weight_quantizer=weight_quantizer, weight_per_channel=per_channel,
                            edge_weight_bits=edge_weight_bits or None, temperature_rate=temperature_rate),
        model=model, device=device, resume=resume, log=typer.echo,
    )
    echo = main_only(typer.echo)   # under torchrun: one summary, from rank 0
    echo(quantize_summary(result))


def quantize_summary(result: dict) -> str:
    """One line: FP and QANN test accuracy, where the kept epoch was chosen, and its validation accuracy."""
    chosen = ("chosen on the TEST set" if result["selected_on"] == "test"
              else f"validation {100 * result['qann_val_accuracy']:.2f}%")
    size = result.get("weight_size")
    weights = (f"; weights {size['kilobytes']:,.1f} KB, {size['compression']:.1f}x smaller than float32"
               if size else "")
    return (f"FP {100 * result['fp_accuracy']:.2f}%  QANN {100 * result['qann_accuracy']:.2f}% on the test set "
            f"(epoch {result['best_epoch']}, {chosen}; calibrated at {result['calibrated_bits']} bits "
            f"{100 * result['calibrated_val_accuracy']:.2f}% validation; {result['seconds']:.0f} s{weights}); wrote "
            f"{result['checkpoint']}")
