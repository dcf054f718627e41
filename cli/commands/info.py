"""``qffs info``: what a checkpoint holds and how it was made."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cli.app import app, examples


@app.command("info", epilog=examples("qffs info models/fmnist_vgg_small.pt"))
def info(checkpoint: Path = typer.Argument(..., help="A .pt/.pth/.th/.safetensors file.")) -> None:
    """Print a checkpoint's kind, model spec, dataset, metrics and provenance."""
    from qffs.io import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    params = sum(t.numel() for t in ckpt.state_dict.values())
    typer.echo(f"{checkpoint}: {ckpt.kind} checkpoint, {len(ckpt.state_dict)} tensors, {params:,} values")
    for key in ("model", "dataset", "bits", "output_bits", "qffs_version", "created"):
        if key in ckpt.meta:
            typer.echo(f"  {key}: {ckpt.meta[key]}")
    if "metrics" in ckpt.meta:
        typer.echo(f"  metrics: {json.dumps(ckpt.meta['metrics'])}")
