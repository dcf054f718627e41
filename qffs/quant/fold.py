"""BatchNorm folded into the conv/linear layer that feeds it (SPEC §2.1).

The converter folds before it rewrites; weight quantization folds before it quantizes, so that
the trained grid is the deployed one (folding after would scale each channel off its grid).
"""

from __future__ import annotations

from typing import Any

from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from qffs.ops import OPS, OpKind, OpTable, classify


def set_module(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    """Put ``module`` at the dotted path ``target`` of ``gm``."""
    parent, _, leaf = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, leaf, module)


def foldable(gm: fx.GraphModule, ops: OpTable = OPS) -> list[tuple[fx.Node, fx.Node]]:
    """(conv/linear node, BatchNorm node) for each BatchNorm fed only by a conv/linear it can fold into."""
    pairs = []
    for node in gm.graph.nodes:
        if classify(node, gm, ops) is not OpKind.BATCHNORM:
            continue
        src = node.args[0]
        if not (isinstance(src, fx.Node) and classify(src, gm, ops) is OpKind.WEIGHTED and len(src.users) == 1):
            continue
        layer, bn = gm.get_submodule(str(src.target)), gm.get_submodule(str(node.target))
        if getattr(bn, "running_var", None) is None:   # batch statistics at inference too: nothing to fold
            continue
        if (isinstance(layer, nn.Linear) and isinstance(bn, nn.BatchNorm1d)) or isinstance(layer, (nn.Conv1d,
                                                                                                   nn.Conv2d)):
            pairs.append((src, node))
    return pairs


def remove_node(gm: fx.GraphModule, node: fx.Node, by: fx.Node) -> None:
    """Route every use of ``node`` (a folded BatchNorm) to ``by`` and drop it from the graph."""
    node.replace_all_uses_with(by)
    gm.graph.erase_node(node)


def fold_batchnorm(gm: fx.GraphModule, ops: OpTable = OPS) -> int:
    """Fold each BatchNorm fed only by a conv/linear into that layer; returns how many were folded."""
    pairs = foldable(gm, ops)
    for src, node in pairs:
        layer: nn.Module = gm.get_submodule(str(src.target))
        bn: Any = gm.get_submodule(str(node.target))
        fused = fuse_linear_bn_eval(layer, bn) if isinstance(layer, nn.Linear) else fuse_conv_bn_eval(layer, bn)
        set_module(gm, str(src.target), fused)
        remove_node(gm, node, src)
    gm.graph.eliminate_dead_code()
    return len(pairs)
