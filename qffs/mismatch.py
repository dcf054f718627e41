"""What does not match between a checkpoint's weights and a model, said as the fix.

:func:`qffs.io.load_into` names every missing, unexpected and misshapen key; this module turns
the two mismatches people hit most — another number of classes, other input channels — into a
ready ``--model`` option (or says which code to change when the model takes no such option).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from qffs.errors import QffsError
from qffs.models import ModelSpec, keyword_options, parse_spec


def few(items: list[str]) -> str:
    """The first five of ``items``, and how many more."""
    more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
    return ", ".join(items[:5]) + more


def _weighted_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]


def _spec_with(spec: str | None, what: str, **kwargs: Any) -> str:
    """'pass --model ...' setting ``kwargs`` on ``spec`` where its factory takes them, else what to change."""
    settings = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    if not spec:
        return f"pass {settings} in the model spec"
    try:
        accepted = keyword_options(spec)
    except QffsError:
        accepted = set()
    if accepted is not None and not set(kwargs) <= accepted:
        return f"{spec} takes no {', '.join(kwargs)} option, so change {what} in its code"
    parsed = parse_spec(spec)
    return f"pass --model '{ModelSpec(parsed.source, parsed.name, {**parsed.kwargs, **kwargs}, parsed.path)}'"


def mismatch_hint(model: nn.Module, shapes: dict[str, tuple[tuple, tuple]], spec: str | None) -> str:
    """Name the two mismatches people hit most: the number of classes and of input channels.

    ``shapes`` maps each misshapen key to (the checkpoint's shape, the model's); "" when neither
    explains them all."""
    weighted = _weighted_modules(model)
    if not weighted or not shapes:
        return ""
    owners = {k.rpartition(".")[0] for k in shapes}
    first, last = weighted[0], weighted[-1]
    if owners == {last[0]} and all(a[1:] == b[1:] for a, b in shapes.values()):
        theirs, ours = next(iter(shapes.values()))
        return (f" — only the classifier head ({last[0] or 'the last layer'}) differs: the checkpoint predicts "
                f"{theirs[0]} classes, the model {ours[0]}; to keep the checkpoint's head "
                f"{_spec_with(spec, 'the number of classes', num_classes=theirs[0])} and use data with {theirs[0]} "
                f"classes")
    weight = f"{first[0]}.weight".lstrip(".")
    if owners == {first[0]} and set(shapes) == {weight} and len(shapes[weight][0]) > 1:
        theirs, ours = shapes[weight]
        if theirs[0] == ours[0] and theirs[2:] == ours[2:] and theirs[1] != ours[1]:
            groups = getattr(first[1], "groups", 1)
            c_theirs, c_ours = theirs[1] * groups, ours[1] * groups
            return (f" — only the input channels differ: the checkpoint's first layer takes {c_theirs}, the model "
                    f"{c_ours}; {_spec_with(spec, 'the input channels', in_channels=c_theirs)} and use data with "
                    f"{c_theirs} channel{'s' if c_theirs != 1 else ''}")
    return ""


__all__ = ["few", "mismatch_hint"]
