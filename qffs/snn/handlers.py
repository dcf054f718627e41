"""How :func:`~qffs.snn.convert.convert` rewrites each kind of node (SPEC §2): one handler per op kind.

A handler is ``handler(node, rewrite) -> None``: it replaces the node's module (or the node)
in ``rewrite.gm`` by its spiking form. :data:`HANDLERS` is the default table, keyed by
:class:`~qffs.ops.OpKind`; ``LINEAR`` ops have none (they act on each step's tensor unchanged).
:data:`NEURONS` maps an activation quantizer class to the spiking neuron class that replaces
it; the neuron is built as ``cls(θ, s, Q, precharge=…, negative_spikes=…, is_output=…)`` from
the quantizer's ``step_size()``, ``levels`` and ``is_output``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import fx, nn

from qffs.ops import OpKind
from qffs.quant.fold import set_module
from qffs.quant.lsq import LSQActivation
from qffs.snn.layers import GatedAffine, GatedLayer
from qffs.snn.neuron import IFNeuron, SpikingNeuron
from qffs.snn.pooling import BoundPool, EventMaxPool, NaiveMaxPool


@dataclass
class Rewrite:
    """What a handler sees: the graph being rewritten and the conversion's settings."""

    gm: fx.GraphModule
    input_window: int                          # T_in: θ = T_in·s
    precharge: bool
    negative_spikes: bool
    max_pool: str                              # "event" or "naive"
    neurons: dict[str, type[SpikingNeuron]]    # quantizer path → its neuron class (from neuron_map)
    output_node: Any                           # the graph's output value
    calls: dict[str, int]                      # call sites per module path
    taken: set[str]                            # module names in use

    def module(self, node: fx.Node) -> nn.Module:
        return self.gm.get_submodule(str(node.target))

    def replace_module(self, node: fx.Node, module: nn.Module) -> None:
        set_module(self.gm, str(node.target), module)

    def fresh_name(self, base: str) -> str:
        name, i = base, 1
        while name in self.taken:
            name, i = f"{base}_{i}", i + 1
        self.taken.add(name)
        return name


Handler = Callable[[fx.Node, Rewrite], None]


def spiking_neuron(node: fx.Node, rw: Rewrite) -> None:
    """A quantizer (step s, Q levels) → its neuron: θ = T_in·s, Z_max = Q."""
    q = rw.module(node)
    s = q.step_size().detach()
    neuron = rw.neurons[str(node.target)]
    rw.replace_module(node, neuron(rw.input_window * s, s, q.levels, precharge=rw.precharge,
                                   negative_spikes=rw.negative_spikes, is_output=q.is_output or node is rw.output_node))


def gated_layer(node: fx.Node, rw: Rewrite) -> None:
    """A conv/linear layer stays, its bias fed only during the input window."""
    rw.replace_module(node, GatedLayer(rw.module(node)))


def gated_affine(node: fx.Node, rw: Rewrite) -> None:
    """A BatchNorm not folded into a layer → a per-channel affine op, its shift gated like a bias."""
    rw.replace_module(node, GatedAffine(rw.module(node)))


def _pool_callable(node: fx.Node, gm: fx.GraphModule):
    if node.op == "call_module":
        return gm.get_submodule(str(node.target)), repr(gm.get_submodule(str(node.target)))
    args, kwargs, fn = tuple(node.args[1:]), dict(node.kwargs), node.target
    return BoundPool(fn, args, kwargs), f"{getattr(fn, '__name__', fn)}{args}"


def max_pool(node: fx.Node, rw: Rewrite) -> None:
    """Max pooling → event max pooling (``naive``: per-step pooling). Stateful: one pool per call site."""
    pool, text = _pool_callable(node, rw.gm)
    module = (EventMaxPool if rw.max_pool == "event" else NaiveMaxPool)(pool, text)
    if node.op == "call_module" and rw.calls[str(node.target)] == 1:
        rw.replace_module(node, module)
        return
    name = rw.fresh_name(str(node.target) if node.op == "call_module" else node.name)
    rw.gm.add_submodule(name, module)
    with rw.gm.graph.inserting_before(node):
        site = rw.gm.graph.call_module(name, args=(node.args[0],))
    node.replace_all_uses_with(site)
    rw.gm.graph.erase_node(node)


#: The default handler of each op kind that changes in the SNN.
HANDLERS: dict[OpKind, Handler] = {
    OpKind.QUANTIZER: spiking_neuron,
    OpKind.WEIGHTED: gated_layer,
    OpKind.BATCHNORM: gated_affine,
    OpKind.MAXPOOL: max_pool,
}

#: The default activation quantizer → spiking neuron map.
NEURONS: dict[type[nn.Module], type[SpikingNeuron]] = {LSQActivation: IFNeuron}

__all__ = ["HANDLERS", "NEURONS", "Handler", "Rewrite", "gated_affine", "gated_layer", "max_pool", "set_module",
           "spiking_neuron"]
