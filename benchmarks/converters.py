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
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

Runner = Callable[[torch.Tensor, int], torch.Tensor]

#: Functional nonlinearities neither converter turns into neurons (they would stay analog).
_NONLINEAR = {"relu6", "leaky_relu", "gelu", "silu", "sigmoid", "tanh", "elu", "selu", "celu", "prelu", "hardswish",
              "hardsigmoid", "hardtanh", "softplus", "mish", "softmax", "log_softmax", "abs", "clamp", "clip",
              "exp", "log", "pow", "sqrt", "rsqrt", "square", "sin", "cos", "erf"}
_PRODUCTS = {"mul", "matmul", "bmm", "einsum"}
_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _cumulative_mean(outputs: torch.Tensor) -> torch.Tensor:
    """[T, ...] per-step outputs → mean over steps 1..t for each t."""
    steps = torch.arange(1, outputs.shape[0] + 1, dtype=outputs.dtype, device=outputs.device)
    return outputs.cumsum(0) / steps.view(-1, *[1] * (outputs.dim() - 1))


def _traced(model: nn.Module) -> fx.GraphModule:
    """FX trace of an eval-mode copy of ``model`` with every functional ReLU an ``nn.ReLU`` module."""
    try:
        gm = fx.symbolic_trace(copy.deepcopy(model).eval())
    except Exception as exc:  # data-dependent control flow and the like
        raise ValueError(f"the network cannot be FX-traced: {type(exc).__name__}: {exc}") from exc
    modules = dict(gm.named_modules())
    for i, node in enumerate(list(gm.graph.nodes)):
        if node.op == "call_module":
            kind = type(modules[node.target])
            if kind is not nn.ReLU and kind.__module__ == "torch.nn.modules.activation":
                raise ValueError(f"{kind.__name__} at {node.target!r}: only ReLUs convert to IF neurons")
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


def _flatten(start_dim: int = 0, end_dim: int = -1) -> nn.Flatten:
    """The ``nn.Flatten`` of a ``torch.flatten`` call (whose start_dim defaults to 0)."""
    return nn.Flatten(start_dim, end_dim)


def _chain(gm: fx.GraphModule) -> list[nn.Module]:
    """The modules of a graph that is a plain chain, each BatchNorm folded into the layer before it."""
    modules = dict(gm.named_modules())
    layers: list[nn.Module] = []
    previous = None
    for node in gm.graph.nodes:
        if node.op == "output" and node.args[0] is previous:
            break
        name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
        if node.op in ("call_function", "call_method") and name == "flatten" and node.args[:1] == (previous,):
            layers.append(_flatten(*node.args[1:], **node.kwargs))  # x.flatten(1), torch.flatten(x, 1)
        elif not (node.op == "placeholder" and previous is None
                  or node.op == "call_module" and node.args == (previous,) and not node.kwargs):
            raise ValueError(f"sinabs conversion needs a plain chain of modules (weight normalisation scales one "
                             f"layer after the other): node {node.name!r} ({node.op} {node.target}) does not just "
                             "take the previous module's output (a branch, residual add or functional op)")
        module = modules.get(node.target) if node.op == "call_module" else None
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if not layers or not isinstance(layers[-1], _WEIGHTED):
                raise ValueError(f"BatchNorm {node.target!r} does not follow a conv or linear layer")
            fuse = fuse_linear_bn_eval if isinstance(layers[-1], nn.Linear) else fuse_conv_bn_eval
            layers[-1] = fuse(layers[-1], module)
        elif module is not None:
            if not isinstance(module, _WEIGHTED) and any(True for _ in module.parameters()):
                raise ValueError(f"{type(module).__name__} {node.target!r} has parameters sinabs cannot normalise")
            layers.append(module)
        previous = node
    return layers


def _normalise(layers: nn.Sequential, data: torch.Tensor, percentile: float) -> None:
    """Data-based weight normalisation (Rueckauer et al. 2017, the rule sinabs cites): each ReLU's
    ``percentile`` activation λ becomes 1 (weights × λ_in/λ, biases / λ), the output keeps its scale."""
    acts: dict[int, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, out, k=k: acts.__setitem__(k, out.detach().clone()))
             for k, m in enumerate(layers) if isinstance(m, nn.ReLU)]
    with torch.no_grad():
        layers(data)
        for hook in hooks:
            hook.remove()
        scale = 1.0  # the signal entering layer k is (ANN signal) / scale
        for k, m in enumerate(layers):
            if not isinstance(m, _WEIGHTED):
                continue
            nxt = next((j for j in range(k + 1, len(layers)) if isinstance(layers[j], (nn.ReLU, *_WEIGHTED))), None)
            lam = float(np.percentile(acts[nxt].cpu().numpy(), percentile)) if nxt in acts else 1.0
            lam = lam if lam > 0 else 1.0  # a silent layer: any scale will do
            m.weight.mul_(scale / lam)
            if m.bias is not None:
                m.bias.div_(lam)
            scale = lam


def sinabs_snn(model: nn.Module, calibration: list[torch.Tensor], *, percentile: float = 99.0,
               max_rows: int = 4096) -> Runner:
    """sinabs conversion: BN folded, data-based weight normalisation on ``calibration`` at
    ``percentile`` (sinabs' default 99), then ``sinabs.from_model`` with its defaults
    (``IAFSqueeze`` neurons, threshold 1, ``MultiSpike``: several spikes per step allowed,
    subtractive reset, v_mem ≥ -1, no spiking output layer: the last layer's output is read).

    The normalisation is the rule ``sinabs.utils.normalize_weights`` cites, not that function,
    which is exact only without biases (folded BN has them: on the shipped VGG it changed the
    ANN's own argmax on 5 of 64 images). Needs a plain chain of modules (VGG-style; residual
    adds are refused). Time is folded into the batch as sinabs wants ([B·t, ...], batch-major),
    ``max_rows`` rows at a time, the neuron state carrying over between chunks.
    """
    import sinabs

    ann = nn.Sequential(*_chain(_traced(model)))
    _normalise(ann, torch.cat(list(calibration)), percentile)
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
