"""Models written the way public repositories write them, through the whole user path.

The corpus (``tests/model_corpus/``, loaded by spec string like a user's model file, plus
torchvision models by name) covers the idioms a real model brings: akamaster's option-A
``LambdaLayer`` shortcut (strided slice + channel zero-padding) and ``F.avg_pool2d(out,
out.size()[3])``; kuangliu's ``torch.relu``, ``hasattr(self, 'shortcut')``, cfg-list VGG,
Inception ``torch.cat`` with a max pool called twice, ``x.mean((2, 3))`` and
``torch.flatten``; one ``nn.ReLU(inplace=True)`` module called at several sites (torchvision
style), including an in-place ReLU whose input is read again afterwards; MobileNetV2's
``ReLU6(inplace=True)``, depthwise convs, inverted residuals and dropout.

For every entry:

1. a *foreign* checkpoint (DataParallel ``module.`` keys nested under ``state_dict`` with
   training metadata, as ``torch.save`` in a training script writes it) loads through
   ``qffs.io.load_model`` into a model that computes exactly what the original computed;
2. ``quantize`` puts one quantizer on every ReLU call site (counted per entry), and with very
   fine steps the QANN reproduces the float model (the graph transform keeps its meaning,
   in-place aliasing included);
3. quantize → calibrate → convert satisfies invariant E (SPEC §3) in float64: run until quiet,
   the SNN output equals the QANN output and every IF layer's spike counts equal the QANN's
   integer levels.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from qffs.io import load_model
from qffs.models import build_model
from qffs.quant import calibrate, quantize, quantizers
from qffs.snn import convert
from tests.conftest import REPO
from tests.snn_graphs import quantizer_levels

#: Every entry here goes quiet after 8-9 steps (T_in = 3 at 2 bits, and the whole graph runs
#: once per step); 64 leaves a wide margin for the deepest (torchvision mobilenet_v2, 35 IF layers).
T_MAX = 64


@dataclass(frozen=True)
class Entry:
    spec: str
    shape: tuple[int, ...]      # calibration/test batch
    relu_sites: int             # ReLU call sites the model's forward makes
    relu6: bool = False         # its activations are ReLU6 (capped at 6)


C = "tests/model_corpus"
CORPUS = [
    # akamaster/pytorch_resnet_cifar10: 1 stem + 2 per BasicBlock
    Entry(f"{C}/cifar_resnet_lambda.py:resnet8(width=4)", (2, 3, 8, 8), 1 + 2 * 3),
    Entry(f"{C}/cifar_resnet_lambda.py:resnet20(width=4)", (2, 3, 16, 16), 1 + 2 * 9),
    # kuangliu/pytorch-cifar
    Entry(f"{C}/kuangliu_style.py:LeNet()", (2, 3, 32, 32), 4),
    Entry(f"{C}/kuangliu_style.py:VGG(vgg_name='VGG11', width_div=16)", (2, 3, 32, 32), 8),
    Entry(f"{C}/kuangliu_style.py:PreActResNet10(width=4)", (2, 3, 32, 32), 2 * 4),
    Entry(f"{C}/kuangliu_style.py:GoogLeNetMini()", (2, 3, 16, 16), 1 + 7 * 2),
    # one ReLU module, many call sites: net.relu x3, block.relu x2 (two blocks)
    Entry(f"{C}/shared_inplace_relu.py:small_resnet(width=8)", (2, 3, 16, 16), 3 + 2 * 2),
    Entry(f"{C}/shared_inplace_relu.py:small_resnet(width=8, preact=True)", (2, 3, 16, 16), 3 + 2 * 2),
    # stem + (1) + 2 per expanding block x4 + last 1x1
    Entry(f"{C}/mobilenet_relu6.py:mobilenet_v2_tiny()", (2, 3, 16, 16), 1 + 1 + 2 * 4 + 1, relu6=True),
    # torchvision, by name: 1 + 2 x 8 blocks; 8 conv + 2 classifier; 1 + 1 + 2 x 16 + 1
    Entry("tv:resnet18(num_classes=10)", (2, 3, 32, 32), 17),
    Entry("tv:vgg11_bn(num_classes=10)", (2, 3, 32, 32), 10),  # 32x32: the smallest input 5 pools allow
    Entry("tv:mobilenet_v2(num_classes=10)", (2, 3, 32, 32), 35, relu6=True),
]
IDS = [e.spec.removeprefix(f"{C}/") for e in CORPUS]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    """File specs are relative to the repository root, as a user would type them there."""
    monkeypatch.chdir(REPO)


def _randomize_batchnorm(model: nn.Module) -> None:
    """Give every BatchNorm non-trivial statistics and affine parameters (a trained model's are)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(-1.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)


def _float_model(entry: Entry) -> tuple[nn.Module, torch.Tensor]:
    model = build_model(entry.spec)
    _randomize_batchnorm(model)
    return model.eval(), torch.randn(entry.shape)


@pytest.mark.parametrize("entry", CORPUS, ids=IDS)
def test_foreign_checkpoint_loads_unchanged(entry, tmp_path):
    model, x = _float_model(entry)
    path = tmp_path / "checkpoint.th"
    state = {f"module.{k}": v for k, v in model.state_dict().items()}  # saved from nn.DataParallel
    torch.save({"state_dict": state, "epoch": 3, "best_prec1": 91.2}, path)

    loaded, ckpt = load_model(path, spec=entry.spec)
    assert ckpt.kind == "foreign"
    own = model.state_dict()
    assert set(loaded.state_dict()) == set(own)
    assert all(torch.equal(v, own[k]) for k, v in loaded.state_dict().items())
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("entry", CORPUS, ids=IDS)
def test_fine_quantizers_reproduce_the_float_model(entry):
    """With 40-bit quantizers clamping at the model's own cap, the QANN is the float model up to rounding.

    Catches a transform that changes the graph's meaning (a missed in-place alias, a ReLU
    site dropped or doubled), which the SNN-vs-QANN invariant below cannot see.
    """
    model, x = _float_model(entry)
    model, x = model.double(), x.double()
    qann = quantize(model, bits=40, output_bits=None)
    cap = 6.0 if entry.relu6 else 1e3   # ReLU: far above any activation of these nets
    with torch.no_grad():
        for _, q in quantizers(qann):
            q.step.fill_(cap / q.levels)
        expected, got = model(x), qann(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6 * float(expected.abs().max()))


@pytest.mark.parametrize("entry", CORPUS, ids=IDS)
def test_invariant_e_on_the_corpus(entry):
    model, x = _float_model(entry)
    qann = quantize(model, bits=2, output_bits=3)
    names = [name for name, _ in quantizers(qann)]
    assert len(names) == entry.relu_sites + 1, names        # one per ReLU call site + the output
    assert names[-1] == "output_quantizer"
    calibrate(qann, [x])

    qann, x = qann.double(), x.double()
    snn = convert(qann)
    r = snn.simulate(x, T_MAX, until_quiet=True, record_counts=True)
    assert r.converged.all(), f"not quiet after {T_MAX} steps"
    with torch.no_grad():
        expected = qann(x)
    assert torch.equal(r.output[-1], expected)               # exactly, float64

    levels = quantizer_levels(qann, x)
    counts = {n.name: n.counts for n in r.neurons}
    assert set(counts) == set(levels) == set(names)
    for name, level in levels.items():                        # every IF layer = QANN integer levels
        assert torch.equal(counts[name], level), name
    # not vacuous: the network carries activity to the output
    assert levels["output_quantizer"].any()
    assert sum(bool(level.any()) for level in levels.values()) >= 0.75 * len(levels)
