"""What qffs knows about one op: its kind, its flags and a check of its state (:class:`OpRecord`).

A record matches one target: a module class (``call_module`` nodes, by ``isinstance``, the most
derived registered class winning), a function (``call_function`` nodes, by identity) or a
tensor method's name (``call_method`` nodes).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

from torch import fx, nn

from qffs.errors import QffsError


class OpKind(str, Enum):
    """What a node becomes. A ``str`` enum: ``OpKind.LINEAR == "linear"``."""

    QUANTIZER = "quantizer"      # an activation quantizer: becomes a spiking neuron
    RELU = "relu"                # ReLU-like: quantize gives it a quantizer, convert refuses it bare
    WEIGHTED = "weighted"        # conv/linear: stays, its bias gated to the input window
    BATCHNORM = "batchnorm"      # folded into the layer before it, else a gated per-channel affine op
    MAXPOOL = "maxpool"          # becomes event max pooling
    LINEAR = "linear"            # acts on each step's tensor unchanged (pooling, views, sums, …)
    UNSUPPORTED = "unsupported"  # refused by name
    IO = "io"                    # placeholders, outputs, attributes (never a record's kind)

    __str__ = str.__str__
    __format__ = str.__format__   # type: ignore[assignment]   # format as the plain string, as str does


#: How a ReLU-like op's arguments say whether this call is a ReLU (low bound 0, high bound absent or > 0):
#: ``hardtanh`` — (min_val=-1, max_val=1), arguments 1 and 2 or the module's attributes;
#: ``clamp`` — (min, max), arguments 1 and 2; ``clamp_min`` — min, argument 1.
Bounds = Literal["hardtanh", "clamp", "clamp_min"]
BOUNDS = ("hardtanh", "clamp", "clamp_min")

#: A check of a matched op's state: the module (``call_module``) or the node (function, method);
#: returns why it is refused, or None.
Check = Callable[[Any], "str | None"]


@dataclass(frozen=True)
class OpRecord:
    """One op of the table.

    - ``target``: a module class, a function, or a tensor method's name;
    - ``kind``: an :class:`OpKind` (or its value);
    - ``scaling``: a product, quotient or negation — linear only while at most one operand is an activation;
    - ``sum``: an addition or subtraction — every tensor operand must be an activation;
    - ``shape``: integer arithmetic on shape values (``x.size(0) // 2``) is allowed whatever its kind;
    - ``shape_source``: a method that returns its input's shape, not an activation (``x.size()``);
    - ``inplace``: always mutates its first argument (``relu_``); ``inplace_arg``: position of an
      ``inplace`` argument (``F.relu``: 1);
    - ``bounds``: for a ReLU-like op, how its arguments are read (:data:`Bounds`);
    - ``dropout``: linear only when not training (a module in eval mode, ``training=False``);
    - ``indices_arg``: position of a pooling function's ``return_indices`` argument;
    - ``check``: refuses a matched op by its state (:data:`Check`), e.g. BatchNorm without statistics.
    """

    target: type[nn.Module] | Callable[..., Any] | str
    kind: OpKind
    scaling: bool = False
    sum: bool = False
    shape: bool = False
    shape_source: bool = False
    inplace: bool = False
    inplace_arg: int | None = None
    bounds: Bounds | None = None
    dropout: bool = False
    indices_arg: int | None = None
    check: Check | None = None

    def __post_init__(self) -> None:
        try:
            kind = OpKind(self.kind)
        except ValueError:
            kind = None
        if kind is None or kind is OpKind.IO:
            allowed = ", ".join(k.value for k in OpKind if k is not OpKind.IO)
            raise QffsError(f"an op's kind must be one of {allowed}, got {self.kind!r}")
        object.__setattr__(self, "kind", kind)
        if (inspect.isclass(self.target) and not issubclass(self.target, nn.Module)) or \
                (not isinstance(self.target, str) and not callable(self.target)):
            what = f"the class {self.target.__qualname__}" if inspect.isclass(self.target) else repr(self.target)
            raise QffsError(f"an op's target must be an nn.Module class, a function or a method name, got {what}")
        if self.bounds is not None and self.bounds not in BOUNDS:
            raise QffsError(f"an op's bounds must be one of {BOUNDS} or None, got {self.bounds!r}")
        if self.check is not None and not callable(self.check):
            raise QffsError(f"an op's check must be callable, got {self.check!r}")

    @property
    def op(self) -> str:
        """The fx node op it matches: ``call_module``, ``call_function`` or ``call_method``."""
        if isinstance(self.target, str):
            return "call_method"
        return "call_module" if inspect.isclass(self.target) else "call_function"

    def refusal(self, node: fx.Node, gm: fx.GraphModule) -> str | None:
        """Why this matched node is refused by its state (:attr:`check`), or None."""
        if self.check is None:
            return None
        return self.check(gm.get_submodule(str(node.target)) if node.op == "call_module" else node)


__all__ = ["BOUNDS", "Bounds", "Check", "OpKind", "OpRecord"]
