"""The op table: what every fx node of a network means for QFFS.

Both stages read it: :func:`qffs.quantize` refuses, before any data is read or any training
runs, exactly the networks that :func:`qffs.convert` would refuse later, by the same
:func:`check_graph`. Every op qffs knows is one :class:`OpRecord` (its target, an
:class:`OpKind`, flags, and an optional check of its state) in an :class:`OpTable`; the
default table is :data:`OPS`, and both stages take another one as ``ops=``. Every node
falls into one kind (:func:`classify`):

- ``QUANTIZER`` — an activation quantizer (:class:`~qffs.quant.lsq.LSQActivation`, which
  registers itself): becomes a spiking neuron;
- ``RELU`` — a ReLU-like call site (``ReLU``, ``ReLU6``, ``hardtanh(0, m)``, ``clamp(min=0)``,
  ``x.relu()`` …): ``quantize`` gives it a quantizer; ``convert`` refuses it (no step size);
- ``WEIGHTED`` — ``nn.Conv1d/2d`` or ``nn.Linear``: stays, its bias gated to the input window;
- ``BATCHNORM`` — folded into the layer before it, or kept as a gated per-channel affine op;
  refused without running statistics;
- ``MAXPOOL`` — max pooling, adaptive too: becomes event max pooling;
- ``LINEAR`` — linear or selection ops that act on each time step's tensor unchanged
  (average pooling, flatten/view, sums, scaling by a constant, concatenation, slicing,
  interpolation, ``zeros_like`` …);
- ``UNSUPPORTED`` — anything else (sigmoid, abs, layer norm, …): refused by name.

Modules: :mod:`~qffs.ops.records` (the record), :mod:`~qffs.ops.table` (the registry),
:mod:`~qffs.ops.defaults` (the default records and their state checks),
:mod:`~qffs.ops.classify` (a node's kind), :mod:`~qffs.ops.rules` (the argument rules and
:func:`check_graph`), :mod:`~qffs.ops.nodes` (reading and naming nodes).
"""

from __future__ import annotations

from qffs.ops.classify import classify, is_inplace, is_relu_site, is_scaling, is_sum, table_kind
from qffs.ops.nodes import argument, describe, node_inputs, owner_path
from qffs.ops.records import OpKind, OpRecord
from qffs.ops.rules import STAGES, check_graph
from qffs.ops.table import OPS, OpTable, tracer

__all__ = ["OPS", "STAGES", "OpKind", "OpRecord", "OpTable", "argument", "check_graph", "classify", "describe",
           "is_inplace", "is_relu_site", "is_scaling", "is_sum", "node_inputs", "owner_path", "table_kind", "tracer"]
