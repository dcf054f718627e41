"""The comparison converters, adapted to run on the same full-precision PyTorch network.

``spikingjelly_snn`` and ``sinabs_snn`` each convert a copy of a trained ReLU network (the model
passed in is not touched) and return ``run(x, T)``: the input ``x`` is presented as a constant
current at every step (direct coding), the network state is reset, and the result is the mean
of the output over steps 1..t for every t, shape [T, B, classes], computed under no_grad.

Both converters only turn ``nn.ReLU`` modules into neurons, so functional ReLUs (``F.relu``,
``torch.relu``, ``x.relu()``) are first made ``nn.ReLU`` modules on an FX trace (the same ANN);
any other activation is refused with a ``ValueError``, as is a network a converter cannot take.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import fx, nn

Runner = Callable[[torch.Tensor, int], torch.Tensor]

#: Functional nonlinearities neither converter turns into neurons (they would stay analog).
_NONLINEAR = {"relu6", "leaky_relu", "gelu", "silu", "sigmoid", "tanh", "elu", "selu", "celu", "prelu", "hardswish",
              "hardsigmoid", "hardtanh", "softplus", "mish", "softmax", "log_softmax", "abs", "clamp", "clip",
              "exp", "log", "pow", "sqrt", "rsqrt", "square", "sin", "cos", "erf"}
_PRODUCTS = {"mul", "matmul", "bmm", "einsum"}


def _cumulative_mean(outputs: torch.Tensor) -> torch.Tensor:
    """[T, ...] per-step outputs → mean over steps 1..t for each t."""
    steps = torch.arange(1, outputs.shape[0] + 1, dtype=outputs.dtype, device=outputs.device)
    return outputs.cumsum(0) / steps.view(-1, *[1] * (outputs.dim() - 1))


def _traced(model: nn.Module) -> fx.GraphModule:
    """FX trace of an eval-mode copy of ``model`` with every ReLU call its own ``nn.ReLU`` module
    (functional ReLUs become modules, a module called at two places becomes two): neurons have state."""
    try:
        gm = fx.symbolic_trace(copy.deepcopy(model).eval())
    except Exception as exc:  # data-dependent control flow and the like
        raise ValueError(f"the network cannot be FX-traced: {type(exc).__name__}: {exc}") from exc
    modules, called = dict(gm.named_modules()), set()
    for i, node in enumerate(list(gm.graph.nodes)):
        if node.op == "call_module":
            kind = type(modules[node.target])
            if kind is not nn.ReLU and kind.__module__ == "torch.nn.modules.activation":
                raise ValueError(f"{kind.__name__} at {node.target!r}: only ReLUs convert to IF neurons")
            if kind is nn.ReLU and node.target in called:  # a ReLU called twice becomes two neuron layers
                gm.add_submodule(f"_relu_call_{i}", nn.ReLU())
                node.target = f"_relu_call_{i}"
            called.add(node.target)
            continue
        if node.op not in ("call_function", "call_method"):
            continue
        name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
        name = name.rstrip("_")  # in-place variants
        operands = [a for a in node.args if isinstance(a, fx.Node) and a.op != "get_attr"]
        if name in _NONLINEAR or (name in _PRODUCTS and len(operands) > 1):
            raise ValueError(f"nonlinear op {name!r} at node {node.name!r}: only ReLUs convert to IF neurons")
        if name == "relu":
            gm.add_submodule(f"_functional_relu_{i}", nn.ReLU())
            with gm.graph.inserting_after(node):
                source = node.args[0] if node.args else node.kwargs["input"]
                module_node = gm.graph.call_module(f"_functional_relu_{i}", (source,))
            node.replace_all_uses_with(module_node)
            gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    return gm


def spikingjelly_snn(model: nn.Module, calibration: list[torch.Tensor], recipe: str = "99.9%") -> Runner:
    """SpikingJelly 2.0 rate coding: ``FXConverter(RateCodingRecipe(dataloader=calibration, mode=recipe))``.

    ``recipe``: "max" (max-norm) or a percentile such as "99.9%" (robust norm) of each ReLU's
    activations, over the ``calibration`` batches (≤ 16M activations per layer and batch:
    torch.quantile's limit). It folds BN into convs and puts soft-reset IF neurons (threshold 1)
    between scalers 1/λ and λ. Run step by step as in SpikingJelly's examples: the recipe's
    multi-step adapter is skipped, as it refuses ``F.pad`` (ResNet-20's shortcut) and was slower.
    """
    from spikingjelly.activation_based import ann2snn, functional

    if recipe != "max" and not recipe.endswith("%"):
        raise ValueError(f"recipe must be 'max' or a percentile such as '99.9%', not {recipe!r}")

    class SingleStepRateCoding(ann2snn.RateCodingRecipe):
        def replace(self, converter, fx_model):  # the stock replace minus the multi-step adapter
            return self._replace_by_neurons(fx_model).to(converter.device)

    snn = ann2snn.FXConverter(SingleStepRateCoding(dataloader=calibration, mode=recipe)).convert(_traced(model))
    snn.eval()  # the converter restores the training flags the modules had
    modules = dict(snn.named_modules())
    if any(n.op == "call_module" and isinstance(modules[n.target], nn.ReLU) for n in snn.graph.nodes):
        raise ValueError("SpikingJelly left a ReLU unconverted: the network would not be an SNN")

    def run(x: torch.Tensor, T: int) -> torch.Tensor:
        functional.reset_net(snn)
        with torch.no_grad():
            return _cumulative_mean(torch.stack([snn(x) for _ in range(T)]))

    return run


class _Scale(nn.Module):
    """Multiplies by a constant: the stateless λ and 1/λ around a balanced ReLU."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def _balanced(gm: fx.GraphModule, data: torch.Tensor, percentile: float) -> fx.GraphModule:
    """Each ``nn.ReLU`` of ``gm`` rewritten as ``λ·ReLU(x/λ)``, λ its ``percentile`` activation on ``data``.

    The same ANN (ReLU is positively homogeneous; checked by the caller), and the data-based
    normalisation of Rueckauer et al. (2017) that sinabs cites, written as scales around each
    neuron instead of folded into the weights: folding needs one scale per tensor, which a
    residual add of two differently scaled branches does not have, while this form needs none.
    """
    relus = [n.target for n in gm.graph.nodes   # one module per call site (_traced)
             if n.op == "call_module" and isinstance(gm.get_submodule(n.target), nn.ReLU)]
    acts: dict[str, torch.Tensor] = {}
    hooks = [gm.get_submodule(name).register_forward_hook(
        lambda _m, _i, out, name=name: acts.__setitem__(name, out.detach().flatten().cpu()))
        for name in relus]
    with torch.no_grad():
        gm(data)
    for hook in hooks:
        hook.remove()
    for name in relus:
        lam = float(np.percentile(acts[name].numpy(), percentile))
        lam = lam if lam > 0 else 1.0  # a silent neuron layer: any scale will do
        parent, _, leaf = name.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, leaf,
                nn.Sequential(_Scale(1.0 / lam), nn.ReLU(), _Scale(lam)))
    gm.recompile()
    return gm


def sinabs_snn(model: nn.Module, calibration: list[torch.Tensor], *, percentile: float = 99.0,
               max_rows: int = 4096) -> Runner:
    """sinabs conversion: data-based normalisation on ``calibration`` at ``percentile`` (sinabs'
    default 99), then ``sinabs.from_model`` with its defaults (``IAFSqueeze`` neurons, threshold 1,
    ``MultiSpike``: several spikes per step allowed, subtractive reset, v_mem ≥ -1, no spiking
    output layer: the last layer's output is read).

    The normalisation is the rule ``sinabs.utils.normalize_weights`` cites, written as λ·ReLU(x/λ)
    (:func:`_balanced`), not that function, which is exact only without biases (folded BN has
    them: on the shipped VGG it changed the ANN's own argmax on 5 of 64 images) and only for a
    chain of layers. The rewritten ANN must give the original's outputs (checked on the
    calibration data; ``ValueError`` otherwise). Time is folded into the batch as sinabs wants
    ([B·t, ...], batch-major), ``max_rows`` rows at a time, the neuron state carrying over.
    """
    import sinabs

    data = torch.cat(list(calibration))
    ann = _balanced(_traced(model), data, percentile)
    with torch.no_grad():
        reference, rewritten = model.eval()(data), ann(data)
    if not torch.allclose(rewritten, reference, rtol=1e-4, atol=1e-4 * float(reference.abs().max())):
        raise ValueError("the balanced network does not compute the original's outputs "
                         f"(max difference {float((rewritten - reference).abs().max()):.3g})")
    net = sinabs.from_model(ann, batch_size=1).eval()  # batch size set per call

    def run(x: torch.Tensor, T: int) -> torch.Tensor:
        b = x.shape[0]
        sinabs.utils.set_batch_size(net.spiking_model, b)
        net.reset_states()
        chunk, outputs = max(1, max_rows // b), []
        with torch.no_grad():
            for start in range(0, T, chunk):
                n = min(chunk, T - start)
                rows = x.unsqueeze(1).expand(b, n, *x.shape[1:]).reshape(b * n, *x.shape[1:])
                outputs.append(net(rows).unflatten(0, (b, n)))
        return _cumulative_mean(torch.cat(outputs, 1).transpose(0, 1))

    return run


__all__ = ["Runner", "sinabs_snn", "spikingjelly_snn"]
