"""The op table: a registry of :class:`~qffs.ops.records.OpRecord`, and the default one, :data:`OPS`.

``quantize(..., ops=)`` and ``convert(..., ops=)`` take a table; both default to :data:`OPS`.
To teach qffs an op, derive a table and pass it to both stages::

    ops = OPS.with_op(OpRecord(nn.PixelShuffle, OpKind.LINEAR))
    qann = quantize(model, ops=ops)
    snn = convert(qann, ops=ops)

A derived table is a layer over the one it came from: its own records first, then the
parent's, so it sees what is registered into the parent later (qffs' own quantizer registers
itself into :data:`OPS` when :mod:`qffs.quant` is imported) and changes nothing in it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from torch import fx, nn

from qffs.errors import QffsError
from qffs.ops.defaults import RECORDS
from qffs.ops.records import OpKind, OpRecord


class OpTable:
    """Ops by target: module classes (matched along the module's class hierarchy, most derived
    first), functions (by identity) and tensor method names."""

    def __init__(self, records: Iterable[OpRecord] = (), *, parent: OpTable | None = None):
        self._parent = parent
        self._own: dict[Any, OpRecord] = {}
        for record in records:
            self.register(record)

    # --- building ----------------------------------------------------------------------------------
    def register(self, record: OpRecord) -> OpRecord:
        """Add ``record`` to this table in place, replacing any record of the same target; returns it.

        qffs registers its own quantizer into :data:`OPS` this way. To add an op of your own
        without changing what every other caller gets, use :meth:`with_op` instead.
        """
        if not isinstance(record, OpRecord):
            raise QffsError(f"an op table holds OpRecord entries, got {type(record).__name__}")
        self._own[record.target] = record
        return record

    def with_op(self, *records: OpRecord) -> OpTable:
        """A new table: this one plus ``records`` (each replacing any record of the same target)."""
        return OpTable(records, parent=self)

    # --- reading -----------------------------------------------------------------------------------
    def get(self, target: Any) -> OpRecord | None:
        """The record of exactly this target (a module class, a function, a method name), or None."""
        try:
            record = self._own.get(target)
        except TypeError:   # an unhashable call target is in no table
            return None
        if record is None and self._parent is not None:
            return self._parent.get(target)
        return record

    def module_record(self, module: nn.Module) -> OpRecord | None:
        """The record of the most derived registered class of ``module``, or None."""
        for cls in type(module).__mro__:
            record = self.get(cls)
            if record is not None:
                return record
        return None

    def lookup(self, node: fx.Node, gm: fx.GraphModule | None = None) -> OpRecord | None:
        """The record of a node's op (``gm`` is needed for ``call_module`` nodes), or None."""
        if node.op == "call_module":
            return None if gm is None else self.module_record(gm.get_submodule(str(node.target)))
        if node.op == "call_function":
            record = self.get(node.target)
            return record if record is not None and record.op == "call_function" else None
        if node.op == "call_method":
            return self.get(str(node.target))
        return None

    def is_leaf(self, module: nn.Module) -> bool:
        """Should tracing keep this module as one node? Yes for a registered class itself, and for
        anything that is a quantizer (subclasses of a module record are traced through)."""
        record = self.module_record(module)
        return record is not None and (record.target is type(module) or record.kind is OpKind.QUANTIZER)

    @property
    def records(self) -> tuple[OpRecord, ...]:
        """Every record, the parent's first (a replaced one keeps its place)."""
        merged = {r.target: r for r in self._parent.records} if self._parent is not None else {}
        merged.update(self._own)
        return tuple(merged.values())

    def __iter__(self) -> Iterator[OpRecord]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def __contains__(self, target: Any) -> bool:
        return self.get(target) is not None

    def __repr__(self) -> str:
        return f"OpTable({len(self)} ops)"


class _QuantizingTracer(fx.Tracer):
    """fx's tracer, keeping the modules a table knows as single ``call_module`` nodes."""

    def __init__(self, ops: OpTable):
        super().__init__()
        self.ops = ops

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return self.ops.is_leaf(m) or super().is_leaf_module(m, qualname)


def tracer(ops: OpTable) -> fx.Tracer:
    """A ``torch.fx`` tracer that keeps every module ``ops`` knows as one node (as fx already does for torch.nn)."""
    return _QuantizingTracer(ops)


#: The default table: every op qffs knows (``qffs.ops.defaults``) and, once :mod:`qffs.quant` is
#: imported, its LSQ activation quantizer.
OPS = OpTable(RECORDS)

__all__ = ["OPS", "OpTable", "tracer"]
