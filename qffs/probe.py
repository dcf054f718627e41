"""A look inside a few samples: per-step spikes against the QANN's levels, a raster and output traces.

The evaluation (:mod:`qffs.evaluate`) sums over the test set; a report's figures also want what
happens at each step inside a few samples. :func:`probe_samples` runs the per-step engine on the
first test images, every sample every step (nothing dropped), and reads every neuron layer's
counts after each step (:meth:`~qffs.snn.engine.Engine.run_steps`' observer). From them:

- ``off_level``: per IF layer and step t, the fraction of neurons whose count is not yet their
  QANN level (needs the QANN; the final entry is the evaluation's mismatch on these samples);
- ``examples``: for the first few images, a raster (per layer the neurons that spiked most, their
  signed spike at each step) and the output layer's membrane (or integrated current) after each step.

Everything is plain lists, so it goes into the report's JSON and figures are drawn from there.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from qffs.quant import quantizers
from qffs.snn.network import SpikingNetwork

#: Neurons per layer a raster shows: those that spiked most in the sample.
RASTER_NEURONS = 8


def quantizer_levels(qann: nn.Module, x: torch.Tensor, output_name: str | None
                     ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(QANN output, the input of the quantizer named ``output_name`` — the SNN's output neuron —
    or the output itself when there is none, every quantizer's levels)."""
    levels: dict[str, torch.Tensor] = {}
    inputs: dict[str, torch.Tensor] = {}

    def keep(module, args, _, name):
        levels[name] = module.level(args[0])
        if name == output_name:
            inputs["output"] = args[0]

    hooks = [q.register_forward_hook(lambda m, i, o, name=name: keep(m, i, o, name)) for name, q in quantizers(qann)]
    try:
        out = qann(x)
    finally:
        for h in hooks:
            h.remove()
    return out, inputs.get("output", out), levels


def _raster(spikes: list[torch.Tensor]) -> dict[str, Any]:
    """One sample's raster of one layer from its signed spikes per step ([T] tensors of [N]): the
    :data:`RASTER_NEURONS` neurons with the most spikes (fewest index first among equals)."""
    z = torch.stack(spikes).reshape(len(spikes), -1)                       # [T, N]
    busy = z.abs().sum(0)
    chosen = torch.argsort(-busy, stable=True)[:RASTER_NEURONS]
    chosen = chosen[busy[chosen] > 0]
    return {"neurons": chosen.tolist(), "spikes": z[:, chosen].T.round().long().tolist(),
            "active_neurons": int((busy > 0).sum()), "neurons_total": int(z.shape[1])}


@torch.no_grad()
def probe_samples(snn: SpikingNetwork, x: torch.Tensor, y: torch.Tensor, timesteps: int, *,
                  qann: nn.Module | None = None, examples: int = 4, chunk: int = 64) -> dict[str, Any]:
    """Per-step measures of the samples ``x`` (labels ``y``) over ``timesteps`` steps, in chunks
    of ``chunk`` samples; the first ``examples`` of them get a raster and output traces (see the
    module docstring). The network and ``x`` must be on one device and of one type."""
    engine = snn.engine
    names = [engine.sites[i].target for i in engine.neurons]
    off = {name: torch.zeros(timesteps, dtype=torch.float64) for name in names}
    sizes: dict[str, int] = {}
    shown: list[dict[str, Any]] = []
    for start in range(0, x.shape[0], chunk):
        xb = x[start:start + chunk]
        levels = {} if qann is None else quantizer_levels(qann, xb, snn.output_neuron)[2]
        n_show = max(0, min(examples - start, xb.shape[0]))
        counts: dict[str, list[torch.Tensor]] = {name: [] for name in names}

        def observe(t: int, states: list, levels: dict = levels, counts: dict = counts, n_show: int = n_show) -> None:
            for i, name in zip(engine.neurons, names):
                count = engine.sites[i].module.readout_state(states[i])[0]
                sizes[name] = count[0].numel()
                if name in levels:
                    off[name][t] += float((count != levels[name]).sum())
                if n_show:
                    counts[name].append(count[:n_show].detach().to(torch.float32).clone())

        run = engine.run_steps(xb, timesteps, until_quiet=False, drop_quiet=False, monitor=None, observer=observe)
        for b in range(n_show):
            shown.append(_example(snn, run, counts, b, int(y[start + b]), timesteps))
    n = x.shape[0]
    return {"samples": n, "timesteps": timesteps,
            "off_level": None if qann is None else {k: (v / max(sizes.get(k, 1) * n, 1)).tolist()
                                                    for k, v in off.items() if k in sizes},
            "examples": shown, "raster_neurons": RASTER_NEURONS}


def _example(snn: SpikingNetwork, run: Any, counts: dict[str, list[torch.Tensor]], b: int, label: int,
             timesteps: int) -> dict[str, Any]:
    """Sample ``b`` of a probed chunk: its label, each layer's raster, and the output after each step."""
    raster = {}
    for name, per_step in counts.items():
        if per_step:
            cumulative = torch.stack([c[b] for c in per_step])
            steps = torch.diff(cumulative, dim=0, prepend=torch.zeros_like(cumulative[:1]))
            raster[name] = _raster(list(steps))
    if run.history:
        trace, kind = run.history["membrane"][:, b], "membrane"
        module = snn.engine.sites[snn.engine.output].module
        threshold = float(module.threshold)
    else:
        trace, kind, threshold = torch.stack([a[b] for a in run.analog]), "integrated current", None
    trace = trace.reshape(trace.shape[0], -1)[:timesteps]
    return {"label": label, "raster": raster, "output_kind": kind, "output_threshold": threshold,
            "output_trace": trace.T.tolist()}


__all__ = ["RASTER_NEURONS", "probe_samples", "quantizer_levels"]
