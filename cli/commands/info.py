"""``qffs info``: what a checkpoint holds and how it was made."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from qffs.cli.app import app, examples, printable


@app.command("info", epilog=examples("qffs info models/fmnist_vgg_small.pt"))
def info(checkpoint: Path = typer.Argument(..., help="A .pt/.pth/.th/.safetensors file.")) -> None:
    """Print a checkpoint's kind, model spec, dataset, metrics and provenance."""
    # loaded when the command runs, so that `qffs --help` and the other commands start fast
    from qffs.artifacts import ConversionConfig, QuantConfig, describe_recipe, describe_weights
    from qffs.io import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    if ckpt.kind in ("qann", "snn"):   # their records are read back before anything is printed
        QuantConfig.from_meta(ckpt.meta, str(checkpoint))
        ConversionConfig.from_meta(ckpt.meta, str(checkpoint))
    params = sum(t.numel() for t in ckpt.state_dict.values())
    typer.echo(printable(f"{checkpoint}: {ckpt.kind} checkpoint, {len(ckpt.state_dict)} tensors, {params:,} values"))
    if ckpt.kind == "foreign" and (ckpt.entry or ckpt.stripped):
        where = f"weights under {ckpt.entry!r}" if ckpt.entry else "weights at the top level"
        typer.echo(f"  {where}" + (f", prefixes removed: {' '.join(ckpt.stripped)}" if ckpt.stripped else ""))
    for key in ("model", "model_file_sha256", "dataset", "data_root", "preprocessing", "input_shape", "quant", "bits",
                "output_bits",
                "qffs_version", "created"):
        if ckpt.meta.get(key) is not None:
            value = ckpt.meta[key]
            typer.echo(f"  {key}: {printable(json.dumps(value) if isinstance(value, (dict, list)) else str(value))}")
    recipe = describe_recipe({**ckpt.meta, "kind": ckpt.kind})
    if recipe:
        typer.echo(f"  recipe: {printable(recipe)}")
    weights = describe_weights({**ckpt.meta, "kind": ckpt.kind})
    if weights:
        typer.echo(f"  weights: {printable(weights)}")
    finetune = ckpt.meta.get("finetune")
    if isinstance(finetune, dict):
        surrogate = finetune.get("surrogate") or {}
        typer.echo(printable(f"  fine-tuned: {finetune.get('method')} at T={finetune.get('timesteps')}, loss "
                             f"{finetune.get('loss')} on the {finetune.get('loss_readout')} readout, surrogate "
                             f"{surrogate.get('kind')} (width {surrogate.get('width')}); not bound to its QANN"))
        typer.echo(printable(f"  thresholds after fine-tuning: {json.dumps(finetune.get('thresholds_after'))}"))
    if "metrics" in ckpt.meta:
        typer.echo(f"  metrics: {printable(json.dumps(ckpt.meta['metrics']))}")
