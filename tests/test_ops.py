"""The op table (qffs.ops.OPS) walked op by op: both stages agree on every op.

Each example puts one op after a ReLU'd conv. The float version goes through ``quantize``;
the same network written as a QANN by hand (``LSQActivation`` in place of the ReLU, an
output quantizer) goes through ``convert``. Then:

- an op the table accepts passes ``quantize``, its QANN passes ``convert``, and invariant E
  holds exactly (float64) — so what the table calls linear really is linear per step;
- an op the table refuses is refused by ``quantize`` and by ``convert``, naming node and op;
- a ReLU-like op becomes a quantizer in ``quantize`` and is refused by ``convert`` when it has
  none (a ReLU without step size).

Every entry of the table has at least one accepted example, so the table cannot grow without
being walked here.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qffs import ops
from qffs.errors import UnsupportedGraphError
from qffs.quant import LSQActivation, calibrate, quantize
from qffs.snn import convert

C = 4  # channels of the activation h the ops act on: h is [2, 4, 4, 4]


@dataclass(frozen=True)
class Example:
    key: Any                                   # the table entry walked (class, function, method name); None: not in it
    use: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    accepted: bool = True
    module: Callable[[], nn.Module] | None = None
    exact: bool = True                         # False: a float32 cast inside, compare to float32 rounding
    name: str = ""


def _bn(cls: type[nn.Module]) -> nn.Module:
    bn = cls(C)
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.uniform_(-1.5, 1.5)
    bn.bias.data.uniform_(-0.5, 0.5)
    return bn


def op(m, h):
    return m.op(h)


def seq(h):      # [2, 4, 16]: for the 1-d ops
    return h.flatten(2)


E = Example
EXAMPLES: list[Example] = [
    # --- modules ----------------------------------------------------------------------------------
    E(nn.Conv1d, lambda m, h: m.op(seq(h)), module=lambda: nn.Conv1d(C, 3, 3, padding=1)),
    E(nn.Conv2d, op, module=lambda: nn.Conv2d(C, 3, 3, padding=1)),
    E(nn.Linear, lambda m, h: m.op(h.flatten(1)), module=lambda: nn.Linear(C * 16, 5)),
    E(nn.BatchNorm1d, lambda m, h: m.op(seq(h)), module=lambda: _bn(nn.BatchNorm1d)),
    E(nn.BatchNorm2d, op, module=lambda: _bn(nn.BatchNorm2d)),
    E(nn.MaxPool1d, lambda m, h: m.op(seq(h)), module=lambda: nn.MaxPool1d(2)),
    E(nn.MaxPool2d, op, module=lambda: nn.MaxPool2d(2)),
    E(nn.AdaptiveMaxPool1d, lambda m, h: m.op(seq(h)), module=lambda: nn.AdaptiveMaxPool1d(3)),
    E(nn.AdaptiveMaxPool2d, op, module=lambda: nn.AdaptiveMaxPool2d((3, 2))),
    E(nn.ReLU, op, module=lambda: nn.ReLU(inplace=True)),
    E(nn.ReLU6, op, module=nn.ReLU6),
    E(nn.Hardtanh, op, module=lambda: nn.Hardtanh(0.0, 2.0)),
    E(nn.AvgPool1d, lambda m, h: m.op(seq(h)), module=lambda: nn.AvgPool1d(2)),
    E(nn.AvgPool2d, op, module=lambda: nn.AvgPool2d(2)),
    E(nn.AdaptiveAvgPool1d, lambda m, h: m.op(seq(h)), module=lambda: nn.AdaptiveAvgPool1d(3)),
    E(nn.AdaptiveAvgPool2d, op, module=lambda: nn.AdaptiveAvgPool2d(1)),
    E(nn.Flatten, op, module=nn.Flatten),
    E(nn.Unflatten, lambda m, h: m.op(h.flatten(1)), module=lambda: nn.Unflatten(1, (C, 16))),
    E(nn.Identity, op, module=nn.Identity),
    E(nn.Dropout, op, module=nn.Dropout),
    E(nn.Dropout1d, lambda m, h: m.op(seq(h)), module=nn.Dropout1d),
    E(nn.Dropout2d, op, module=nn.Dropout2d),
    E(nn.ZeroPad2d, op, module=lambda: nn.ZeroPad2d(1)),
    E(nn.ConstantPad2d, op, module=lambda: nn.ConstantPad2d(1, 0.0)),
    E(nn.Upsample, op, module=lambda: nn.Upsample(scale_factor=2, mode="bilinear")),
    # --- functions --------------------------------------------------------------------------------
    E(F.max_pool1d, lambda m, h: F.max_pool1d(seq(h), 2)),
    E(F.max_pool2d, lambda m, h: F.max_pool2d(h, 2, 1)),
    E(F.adaptive_max_pool1d, lambda m, h: F.adaptive_max_pool1d(seq(h), 5)),
    E(F.adaptive_max_pool2d, lambda m, h: F.adaptive_max_pool2d(h, 1)),
    E(F.relu, lambda m, h: F.relu(h, inplace=True)),
    E(F.relu_, lambda m, h: F.relu_(h)),
    E(torch.relu, lambda m, h: torch.relu(h)),
    E(torch.relu_, lambda m, h: torch.relu_(h)),
    E(F.relu6, lambda m, h: F.relu6(h)),
    E(F.hardtanh, lambda m, h: F.hardtanh(h, 0.0, 3.0)),
    E(F.hardtanh_, lambda m, h: F.hardtanh_(h, 0.0, 3.0)),
    E(torch.clamp, lambda m, h: torch.clamp(h, min=0)),
    E(torch.clamp_, lambda m, h: torch.clamp_(h, 0, 6)),
    E(torch.clip, lambda m, h: torch.clip(h, 0.0)),
    E(torch.clamp_min, lambda m, h: torch.clamp_min(h, 0)),
    E(operator.add, lambda m, h: h + h),
    E(operator.sub, lambda m, h: h - h[:, :1]),
    E(torch.add, lambda m, h: torch.add(h, h)),
    E(torch.add, lambda m, h: torch.add(h, h[:, :1], alpha=-2.0), name="torch.add alpha"),
    E(torch.sub, lambda m, h: torch.sub(h, h[:, :2].repeat(1, 2, 1, 1))),
    E(operator.mul, lambda m, h: h * 0.5),
    E(operator.truediv, lambda m, h: h / h.size(1)),
    E(torch.mul, lambda m, h: torch.mul(h, -2.0)),
    E(torch.div, lambda m, h: torch.div(h, 3.0)),
    E(operator.neg, lambda m, h: -h),
    E(torch.neg, lambda m, h: torch.neg(h)),
    E(torch.cat, lambda m, h: torch.cat([h, h[:, :1]], 1)),
    E(torch.concat, lambda m, h: torch.concat((h, h), dim=2)),
    E(torch.stack, lambda m, h: torch.stack([h, h], 1)),
    E(torch.flatten, lambda m, h: torch.flatten(h, 1)),
    E(torch.reshape, lambda m, h: torch.reshape(h, (2, -1))),
    E(torch.permute, lambda m, h: torch.permute(h, (0, 2, 3, 1))),
    E(torch.transpose, lambda m, h: torch.transpose(h, 1, 3)),
    E(torch.squeeze, lambda m, h: torch.squeeze(h[:, :1], 1)),
    E(torch.unsqueeze, lambda m, h: torch.unsqueeze(h, 2)),
    E(torch.chunk, lambda m, h: torch.chunk(h, 2, 1)[1]),
    E(torch.split, lambda m, h: torch.split(h, [1, 3], 1)[1]),
    E(torch.narrow, lambda m, h: torch.narrow(h, 1, 1, 2)),
    E(torch.mean, lambda m, h: torch.mean(h, (2, 3))),
    E(torch.sum, lambda m, h: torch.sum(h, 1)),
    E(operator.getitem, lambda m, h: h[:, :, ::2, ::2]),
    E(F.avg_pool1d, lambda m, h: F.avg_pool1d(seq(h), 4)),
    E(F.avg_pool2d, lambda m, h: F.avg_pool2d(h, h.size()[3])),
    E(F.adaptive_avg_pool1d, lambda m, h: F.adaptive_avg_pool1d(seq(h), 2)),
    E(F.adaptive_avg_pool2d, lambda m, h: F.adaptive_avg_pool2d(h, (1, 1))),
    E(F.dropout, lambda m, h: F.dropout(h, 0.5, training=m.training)),
    E(F.dropout1d, lambda m, h: F.dropout1d(seq(h), 0.5, m.training)),
    E(F.dropout2d, lambda m, h: F.dropout2d(h, 0.5, training=False)),
    E(F.pad, lambda m, h: F.pad(h[:, :, ::2, ::2], (0, 0, 0, 0, 2, 2), "constant", 0)),
    E(F.interpolate, lambda m, h: F.interpolate(h, scale_factor=2, mode="nearest")),
    E(torch.zeros_like, lambda m, h: torch.cat([h, torch.zeros_like(h)], 1)),
    E(getattr, lambda m, h: h.reshape(h.shape[0], -1)),
    # --- methods ----------------------------------------------------------------------------------
    E("view", lambda m, h: h.view(h.size(0), -1)),
    E("reshape", lambda m, h: h.reshape(2, C, 16)),
    E("flatten", lambda m, h: h.flatten(h.dim() - 3)),
    E("permute", lambda m, h: h.permute(0, 3, 1, 2)),
    E("transpose", lambda m, h: h.transpose(2, 3)),
    E("squeeze", lambda m, h: h.mean(3, keepdim=True).squeeze(3)),
    E("unsqueeze", lambda m, h: h.unsqueeze(1)),
    E("contiguous", lambda m, h: h.transpose(1, 2).contiguous()),
    E("chunk", lambda m, h: h.chunk(4, 1)[3]),
    E("split", lambda m, h: h.split(2, 1)[0]),
    E("narrow", lambda m, h: h.narrow(2, 1, 2)),
    E("mean", lambda m, h: h.mean((2, 3))),
    E("sum", lambda m, h: h.sum(1, keepdim=True)),
    E("add", lambda m, h: h.add(h[:, :, :, :1])),
    E("sub", lambda m, h: h.sub(h[:, :1, :, :])),
    E("mul", lambda m, h: h.mul(h.size(1) // 2)),
    E("div", lambda m, h: h.div(h.shape[1] * 4)),
    E("neg", lambda m, h: h.neg()),
    E("size", lambda m, h: h.view(h.size(0), h.size(1) // 2, -1)),
    E("dim", lambda m, h: h.mean(h.dim() - 1)),
    E("expand", lambda m, h: h[:, :1].expand(2, C, 4, 4)),
    E("repeat", lambda m, h: h.repeat(1, 2, 1, 1)),
    E("unflatten", lambda m, h: h.flatten(1).unflatten(1, (C, 16))),
    E("view_as", lambda m, h: h.transpose(2, 3).contiguous().view_as(h)),
    E("reshape_as", lambda m, h: h.flatten(1).reshape_as(h)),
    E("expand_as", lambda m, h: h[:, :1].expand_as(h)),
    E("clone", lambda m, h: h.clone()),
    E("float", lambda m, h: h.float(), exact=False),
    E("double", lambda m, h: h.double()),
    E("to", lambda m, h: h.to(h.dtype)),
    E("type_as", lambda m, h: h.type_as(h)),
    E("relu", lambda m, h: h.relu()),
    E("relu_", lambda m, h: h.relu_()),
    E("clamp", lambda m, h: h.clamp(min=0)),
    E("clamp_", lambda m, h: h.clamp_(0, 4)),
    E("clip", lambda m, h: h.clip(0)),
    E("clip_", lambda m, h: h.clip_(min=0.0)),
    E("clamp_min", lambda m, h: h.clamp_min(0)),
    E("clamp_min_", lambda m, h: h.clamp_min_(0.0)),
    # --- refused by both stages -------------------------------------------------------------------
    E(None, lambda m, h: torch.sigmoid(h), False, name="torch.sigmoid"),
    E(None, lambda m, h: h.abs(), False, name="Tensor.abs"),
    E(None, lambda m, h: torch.abs(h), False, name="torch.abs"),
    E(None, lambda m, h: torch.exp(h), False, name="torch.exp"),
    E(None, lambda m, h: F.gelu(h), False, name="F.gelu"),
    E(None, lambda m, h: F.softmax(h, 1), False, name="F.softmax"),
    E(None, op, False, module=nn.GELU, name="nn.GELU"),
    E(None, op, False, module=lambda: nn.LayerNorm([C, 4, 4]), name="nn.LayerNorm"),
    E(None, op, False, module=nn.Hardtanh, name="nn.Hardtanh(-1, 1)"),
    E(None, lambda m, h: F.hardtanh(h), False, name="F.hardtanh(-1, 1)"),
    E(None, lambda m, h: h.clamp(min=0.5), False, name="clamp(min=0.5)"),
    E(None, lambda m, h: torch.clamp(h, -1, 1), False, name="torch.clamp(-1, 1)"),
    E(None, lambda m, h: h.clamp(max=2), False, name="clamp(max=2)"),
    E(None, lambda m, h: h * h, False, name="h*h"),
    E(None, lambda m, h: h / (h + h), False, name="h/h"),
    E(None, lambda m, h: h + 1, False, name="h+1"),
    E(None, lambda m, h: h - h.size(1), False, name="h-size"),
    E(None, lambda m, h: torch.matmul(h, h), False, name="matmul"),
    E(None, lambda m, h: h.amax(1), False, name="amax"),
    E(None, lambda m, h: torch.max(h, 1)[0], False, name="torch.max"),
    E(None, lambda m, h: F.pad(h, (1, 1, 1, 1), mode="reflect"), False, name="F.pad reflect"),
    E(None, lambda m, h: F.pad(h, (1, 1), value=1.0), False, name="F.pad value=1"),
    E(None, lambda m, h: F.dropout(h, 0.5), False, name="F.dropout training=True"),
    E(None, op, False, module=lambda: nn.ConstantPad2d(1, 0.5), name="nn.ConstantPad2d value=0.5"),
    E(None, lambda m, h: torch.cat([h, m.const], 1), False, name="cat a buffer"),
    E(None, lambda m, h: torch.stack([h, m.const.expand_as(h)], 1), False, name="stack a buffer"),
    E(None, lambda m, h: torch.div(h, 0.5, rounding_mode="floor"), False, name="div rounding_mode"),
    E(None, lambda m, h: h.to(torch.int64).to(h.dtype), False, name="to int64"),
    E(None, lambda m, h: F.adaptive_max_pool2d(h, 1, True)[0], False, name="adaptive_max_pool2d indices"),
    E(None, lambda m, h: F.max_pool2d(h, 2, return_indices=True)[0], False, name="max_pool2d indices"),
    E(None, lambda m, h: m.op(h)[0], False, module=lambda: nn.MaxPool2d(2, return_indices=True),
      name="MaxPool2d indices"),
    E(None, op, False, module=lambda: nn.BatchNorm2d(C, track_running_stats=False).eval(),
      name="BatchNorm2d(track_running_stats=False)"),
]


def _id(e: Example) -> str:
    if e.name:
        return e.name
    if isinstance(e.key, str):
        return f"Tensor.{e.key}"
    return f"{getattr(e.key, '__module__', '')}.{getattr(e.key, '__name__', e.key)}".replace("torch.nn.modules.", "nn.")


class Probe(nn.Module):
    """conv → ReLU (or a quantizer) → the op → sum over features → (output quantizer)."""

    def __init__(self, example: Example, hand_made_qann: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(2, C, 3, padding=1)
        self.act = LSQActivation(2) if hand_made_qann else nn.ReLU()
        self.op = example.module() if example.module else nn.Identity()
        self.out = LSQActivation(3, is_output=True) if hand_made_qann else nn.Identity()
        self.use = example.use
        self.register_buffer("const", torch.ones(2, 1, 4, 4))

    def forward(self, x):
        y = self.use(self, self.act(self.conv(x)))
        return self.out(y.flatten(1).sum(1, keepdim=True))


def _kind(example: Example) -> str:
    record = ops.OPS.get(example.key) if example.key is not None else None
    return record.kind if record is not None else "unsupported"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("example", EXAMPLES, ids=[_id(e) for e in EXAMPLES])
def test_both_stages_agree(example):
    torch.manual_seed(0)
    x = torch.randn(2, 2, 4, 4)
    float_model = Probe(example).eval()
    with torch.no_grad():
        float_model(x)   # the example itself is valid PyTorch
    hand_made = Probe(example, hand_made_qann=True).eval()

    if not example.accepted:
        for stage, call in (("quantize", lambda: quantize(float_model)), ("convert", lambda: convert(hand_made))):
            with pytest.raises(UnsupportedGraphError) as err:
                call()
            message = str(err.value)
            assert message.startswith(f"cannot {stage} node ") or "single tensor" in message, message
            assert "\n" not in message
        return

    qann = quantize(float_model)                       # accepted by stage 1 …
    calibrate(qann, [x])
    snn = convert(qann.double())                       # … and by stage 2
    qann, x = qann.double(), x.double()
    result = snn.simulate(x, 60, until_quiet=True)
    assert result.converged.all()
    if example.exact:
        assert torch.equal(result.output[-1], qann(x))  # invariant E: the op is linear per step
    else:
        torch.testing.assert_close(result.output[-1], qann(x), rtol=1e-5, atol=1e-5)

    if _kind(example) == "relu":                       # a ReLU with no step size: convert refuses it
        with pytest.raises(UnsupportedGraphError, match="a ReLU without quantizer"):
            convert(hand_made)
    else:
        convert(hand_made)


def test_every_table_entry_is_walked():
    walked = {id(e.key) for e in EXAMPLES if e.accepted}
    # the quantizer is what the probes' ReLUs become; unsupported records are shape arithmetic only (x.size(0) // 2)
    entries = [r.target for r in ops.OPS if r.kind not in (ops.OpKind.QUANTIZER, ops.OpKind.UNSUPPORTED)]
    missing = [e for e in entries if id(e) not in walked]
    assert not missing, f"op table entries without an accepted example: {missing}"
    assert all(_kind(e) != "unsupported" for e in EXAMPLES if e.accepted and e.key is not None)
    assert all(e.key is None for e in EXAMPLES if not e.accepted)   # refused examples are named by their own id


def test_check_graph_rejects_an_unknown_stage():
    with pytest.raises(ValueError, match="stage must be one of"):
        ops.check_graph(torch.fx.symbolic_trace(nn.Identity()), "run")
