"""Stage 3: the converted network and its simulation (SPEC §3–§5).

``snn(x, timesteps=T)`` returns the cumulative readout after each step, ``[T, *qann(x).shape]``,
in the QANN's units: output spike counts × output step size (bit-identical to the QANN's
``s · level`` once quiet), or for an analog output the integrated current / T_in.
``snn.simulate`` also returns per-layer spike counts, synaptic operations and each sample's
convergence step, and can stop a batch as soon as every sample is quiet. The runs are the
engine's (:mod:`qffs.snn.engine`); records and readouts are :mod:`qffs.snn.records`.
"""

from __future__ import annotations

import contextlib
import numbers
from dataclasses import dataclass

import torch
from torch import fx, nn

from qffs.errors import QffsError
from qffs.snn.allocator import keep_freed_memory
from qffs.snn.engine import FORMS, Engine, neuron_modules
from qffs.snn.exits import ConfidenceRule
from qffs.snn.layers import GatedLayer
from qffs.snn.memory import default_budget, samples_at_once
from qffs.snn.monitor import Monitor
from qffs.snn.neuron import SpikingNeuron
from qffs.snn.readout import check_readout
from qffs.snn.records import (
    NeuronRecord,
    SimulationResult,
    SynapseRecord,
    add_records,
    concat_results,
    exit_after_run,
    result_of,
    settle,
)
from qffs.snn.spiking import SpikingModule
from qffs.snn.surrogate import Surrogate

#: The most time steps one simulation may run. QFFS answers in a handful of steps, and every
#: step's output is kept (count, membrane and current readouts): T × batch × outputs × 12 bytes,
#: 126 MB at this bound for 256 samples of 10 classes; a typo like ``-T 1000000000`` would ask for 24 GB.
MAX_TIMESTEPS = 4096


def check_timesteps(value: object, option: str = "timesteps",
                    why: str = "every step's output is kept: T x batch x outputs x 12 bytes") -> int:
    """``value`` as a number of time steps in 1…:data:`MAX_TIMESTEPS`, or a one-line QffsError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= int(value) <= MAX_TIMESTEPS:
        raise QffsError(f"{option} must be an integer in 1..{MAX_TIMESTEPS}, got {value!r} ({why})")
    return int(value)


#: Runtimes: "step" (the whole graph once per step: the reference, and the default), "layer"
#: (each layer over all T steps at once) and "functional" (per step without mutation:
#: differentiable, what the exporters trace). They give identical spike counts; on CPU "step",
#: which drops quiet samples and runs fused kernels, is the fastest (benchmarks/speed.py).
MODES = tuple(FORMS)


class _Shapes(fx.Interpreter):
    """Each node's output shape over one run of the graph (fx's ShapeProp, minus its traceback print)."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.shapes: dict[str, torch.Size] = {}

    def run_node(self, n: fx.Node):
        result = super().run_node(n)
        if isinstance(result, torch.Tensor):
            self.shapes[n.name] = result.shape
        return result


def propagate_shapes(gm: fx.GraphModule, example: torch.Tensor) -> dict[str, torch.Size]:
    """Per fx node name, its output's shape in one step from rest on ``example`` (spiking modules'
    ``forward``). A graph that cannot take this batch size raises what PyTorch raises there (a
    reshape to a fixed size: RuntimeError; an index past the batch: IndexError)."""
    run = _Shapes(gm)
    with torch.no_grad():
        run.run(example)
    return run.shapes


@dataclass(frozen=True)
class _Probe:
    """What one step of one sample showed: batch-freeness, and elements per sample."""

    batch_free: bool
    state: int          # neuron and pool state
    activations: int    # every layer's output (x2), one step
    outputs: int        # the network's output


class SpikingNetwork(nn.Module):
    """A converted QANN: the rewritten fx graph, and the engine that runs it in time."""

    def __init__(self, graph: fx.GraphModule, input_window: int, output_neuron: str | None, config: dict):
        super().__init__()
        self.graph = graph
        self.input_window = int(input_window)
        self.output_neuron = output_neuron
        self.config = dict(config)
        self._probes: dict[tuple[int, ...], _Probe] = {}   # per sample shape: see _probe()
        self._engine: Engine | None = None                  # built on first use

    def _apply(self, fn, recurse: bool = True):
        self._engine = None     # .to()/.double(): the generated forms hold references to the graph's constants
        return super()._apply(fn, recurse)

    @property
    def engine(self) -> Engine:
        """The engine that runs this graph in its three forms (:mod:`qffs.snn.engine`)."""
        if self._engine is None:
            self._engine = Engine(self.graph, self.input_window, self.output_neuron)
        return self._engine

    # -- structure ---------------------------------------------------------------------------
    def named_neurons(self) -> list[tuple[str, SpikingNeuron]]:
        return neuron_modules(self.graph)

    def named_synapses(self) -> list[tuple[str, GatedLayer]]:
        return [(n, m) for n, m in self.graph.named_modules() if isinstance(m, GatedLayer)]

    def batch_free(self, x: torch.Tensor) -> bool:
        """Whether the graph runs on any batch size: only then may the runtime drop quiet samples,
        fold time into the batch or split a batch into chunks. A graph that writes a batch size
        into a reshape (say ``x.view(32, -1)``) does not; it is probed once, with one sample."""
        return self._probe(x).batch_free

    def bytes_per_sample(self, x: torch.Tensor, timesteps: int, mode: str = "step") -> int:
        """Estimated peak memory of simulating one sample of ``x``: neuron and pool state, the
        output's history, and every layer's activations (× T layer by layer: all steps at once)."""
        probe = self._probe(x)
        activations = probe.activations * (timesteps if mode == "layer" else 1)
        return x.element_size() * (probe.state + activations + 2 * timesteps * probe.outputs)

    def _probe(self, x: torch.Tensor) -> _Probe:
        """One step of one sample (shapes propagated) for batch-freeness and per-sample sizes; cached per
        sample shape."""
        key = tuple(x.shape[1:])
        if key not in self._probes:
            try:
                shapes = propagate_shapes(self.graph, x[:1])
            except (RuntimeError, IndexError, ValueError):   # it cannot take one sample: a fixed batch size
                self._probes[key] = _Probe(False, 0, 0, 0)
                return self._probes[key]
            state = activations = 0
            batches = []
            for node in self.graph.graph.nodes:
                if node.op != "call_module" or node.name not in shapes:
                    continue
                activations += 2 * shapes[node.name].numel()     # 2x: functional ops and temporaries
                module = self.graph.get_submodule(str(node.target))
                arg = node.args[0] if node.args else None
                if isinstance(module, SpikingModule) and isinstance(arg, fx.Node) and arg.name in shapes:
                    batches.append(shapes[arg.name][0])
                    x_in = torch.zeros(shapes[arg.name], dtype=x.dtype, device=x.device)
                    held = sum(t.numel() for t in module.init_state(x_in))
                    state += held + (x_in.numel() if isinstance(module, SpikingNeuron) else 0)   # + settled counts
            out = next(n for n in self.graph.graph.nodes if n.op == "output").args[0]
            out_shape = shapes.get(out.name) if isinstance(out, fx.Node) else None
            free = out_shape is not None and out_shape[0] == 1 and all(b == 1 for b in batches)
            self._probes[key] = _Probe(free, state, activations, out_shape.numel() if out_shape is not None else 0)
        return self._probes[key]

    # -- running -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, timesteps: int, readout: str = "count") -> torch.Tensor:
        """Cumulative output after each of ``timesteps`` steps, ``[T, *qann(x).shape]``.

        ``readout`` (SPEC §5, :mod:`qffs.snn.readout`): "count" (spike counts × s, the QANN's
        units and exact once quiet), "tiebreak" (counts, ties broken by the membrane) or
        "current" (the integrated current per input-window step).
        """
        check_readout(readout)
        return self.simulate(x, timesteps, record=False).readouts[readout]

    def simulate(self, x: torch.Tensor, timesteps: int, *, until_quiet: bool = False, record: bool = True,
                 record_counts: bool = False, mode: str = "step", memory: int | None = None,
                 grad: bool = False, surrogate: Surrogate | None = None,
                 exit_rule: ConfidenceRule | None = None) -> SimulationResult:
        """Run ``timesteps`` steps on the batch ``x``, from rest.

        ``until_quiet`` stops as soon as every sample is quiet; the remaining rows of
        ``output`` repeat the final readout, so the shape stays ``[timesteps, ...]``.
        ``record`` keeps spike and synaptic-operation statistics; ``record_counts`` also
        the final spike count of every neuron (memory: one tensor per IF layer).

        ``mode``: "step" (default) calls the whole graph once per step (the reference);
        "layer" runs each layer over all T steps at once — stateless ops on time folded into
        the batch, a scan per neuron layer, only the (step, sample) rows with input through
        each weighted layer; "functional" runs per step without mutation or dropped samples.
        Spike counts, statistics and convergence are identical; the membrane-based readouts
        agree to rounding (a product over T·B rows may round differently from one over B rows).
        A graph with a fixed batch size (:meth:`batch_free`) always runs per step, every sample every step.

        ``grad``: keep the autograd graph (mode "functional" only: the other forms update state
        in place); ``surrogate`` (:mod:`qffs.snn.surrogate`) gives the spike decisions a gradient
        there, for fine-tuning (the spikes stay exact).

        ``exit_rule`` (:mod:`qffs.snn.exits`): a sample whose readout it finds confident after a
        step exits there: its readouts are frozen from that step (``exit_step``) and, per step,
        it leaves the batch (``rows_simulated`` counts the samples simulated at each step).

        ``memory`` (bytes; default half the memory free on ``x``'s device) bounds the estimated
        peak (:meth:`bytes_per_sample`): a larger batch is simulated in chunks of samples, with
        the same results.
        """
        timesteps = check_timesteps(timesteps)
        if mode not in MODES:
            raise QffsError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if (grad or surrogate is not None) and mode != "functional":
            raise QffsError(f"grad and surrogate need mode='functional' (mode {mode!r} updates its state in place)")
        if x.device.type == "cpu" and mode != "functional":
            keep_freed_memory()       # every step allocates the same large tensors: reuse them (allocator.py)
        with contextlib.nullcontext() if grad else torch.no_grad():
            free = self.batch_free(x)
            if not free:   # a fixed batch size: every sample every step (and never in chunks)
                mode = "functional" if mode == "functional" else "step"
            else:
                budget = default_budget(x.device) if memory is None else memory
                kept = "layer" if grad else mode      # with grad, autograd keeps every step's activations
                chunk = samples_at_once(x.shape[0], self.bytes_per_sample(x, timesteps, kept), budget)
                if chunk < x.shape[0]:
                    return concat_results([self._simulate(part, timesteps, until_quiet, record, record_counts, mode,
                                                          free, surrogate, exit_rule) for part in x.split(chunk)])
            return self._simulate(x, timesteps, until_quiet, record, record_counts, mode, free, surrogate, exit_rule)

    def _simulate(self, x: torch.Tensor, timesteps: int, until_quiet: bool, record: bool, record_counts: bool,
                  mode: str, free: bool, surrogate: Surrogate | None,
                  exit_rule: ConfidenceRule | None) -> SimulationResult:
        """One simulation of the whole batch ``x`` in ``mode``."""
        engine = self.engine
        monitor = Monitor(x.shape[0]) if record else None
        drop = free and mode == "step"
        if mode == "layer":
            run = engine.run_layers(x, timesteps, monitor)
            run.rows = [x.shape[0]] * timesteps
        else:
            run = engine.run_steps(x, timesteps, until_quiet, drop_quiet=drop, monitor=monitor,
                                   functional=mode == "functional", surrogate=surrogate,
                                   exit_rule=exit_rule if drop else None)
        result = result_of(engine, run, timesteps, until_quiet)
        if exit_rule is not None and not drop:   # nothing could leave the batch: the same exits, found after
            exit_after_run(result, exit_rule)
        if monitor is not None:
            add_records(result, engine, run, monitor, record_counts)
        return result

    # -- description -------------------------------------------------------------------------
    def summary(self) -> list[dict]:
        """Per layer, in graph order: kind, θ, Z_max, s, fan-in (weighted layers), from each module's ``describe``."""
        rows = []
        for node in self.graph.graph.nodes:
            if node.op == "call_module":
                m = self.graph.get_submodule(str(node.target))
                rows.append({"name": str(node.target),
                             **(m.describe() if isinstance(m, SpikingModule) else {"kind": type(m).__name__})})
        return rows

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.items())


__all__ = ["MAX_TIMESTEPS", "MODES", "NeuronRecord", "SimulationResult", "SpikingNetwork", "SynapseRecord",
           "check_timesteps", "concat_results", "propagate_shapes", "settle"]
