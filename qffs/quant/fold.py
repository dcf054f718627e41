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


def fold_batchnorm(gm: fx.GraphModule, ops: OpTable = OPS) -> int:
    """Fold each BatchNorm fed only by a conv/linear into that layer; returns how many were folded."""
    folded = 0
    for node in list(gm.graph.nodes):
        if classify(node, gm, ops) is not OpKind.BATCHNORM:
            continue
        src = node.args[0]
        if not (isinstance(src, fx.Node) and classify(src, gm, ops) is OpKind.WEIGHTED and len(src.users) == 1):
            continue
        layer: nn.Module = gm.get_submodule(str(src.target))
        bn: Any = gm.get_submodule(str(node.target))
        fused: nn.Module
        if isinstance(layer, nn.Linear) and isinstance(bn, nn.BatchNorm1d):
            fused = fuse_linear_bn_eval(layer, bn)
        elif isinstance(layer, (nn.Conv1d, nn.Conv2d)):
            fused = fuse_conv_bn_eval(layer, bn)
        else:
            continue
        set_module(gm, str(src.target), fused)
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        folded += 1
    gm.graph.eliminate_dead_code()
    return folded
