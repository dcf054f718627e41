"""Model registry: every built-in builds and runs; specs round-trip; user factories load."""

from __future__ import annotations

import pytest
import torch

from qffs.errors import QffsError
from qffs.models import build_model, parse_spec, with_defaults


@pytest.mark.parametrize(
    ("spec", "shape", "params"),
    [
        ("vgg_small", (2, 1, 28, 28), 468_010),
        ("resnet20", (2, 3, 32, 32), 269_722),  # He et al.'s 0.27M
        ("resnet18", (2, 3, 32, 32), 11_173_962),
        ("vgg16", (2, 3, 32, 32), 14_724_042),
        ("tv:resnet18(num_classes=10)", (1, 3, 64, 64), 11_181_642),
    ],
)
def test_builtin_models_build_and_run(spec, shape, params):
    model = build_model(spec).eval()
    assert sum(p.numel() for p in model.parameters()) == params
    assert model(torch.randn(shape)).shape == (shape[0], 10)


def test_spec_kwargs_and_round_trip():
    spec = parse_spec("resnet20(num_classes=100, in_channels=1)")
    assert spec.name == "resnet20" and spec.kwargs == {"num_classes": 100, "in_channels": 1}
    assert parse_spec(str(spec)) == spec
    model = build_model(str(spec))
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 100)


def test_with_defaults_keeps_explicit_values():
    assert with_defaults("vgg_small", num_classes=10, in_channels=1) == "vgg_small(num_classes=10, in_channels=1)"
    assert with_defaults("resnet20(num_classes=5)", num_classes=10) == "resnet20(num_classes=5)"
    assert with_defaults("tv:resnet18", num_classes=10, in_channels=3) == "tv:resnet18(num_classes=10)"


def test_user_factory(tmp_path):
    file = tmp_path / "my_net.py"
    file.write_text(
        "import torch.nn as nn\n"
        "def make(width=4):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 3))\n"
    )
    model = build_model(f"{file}:make(width=8)")
    assert model[1].out_features == 8
    assert model(torch.randn(2, 4)).shape == (2, 3)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("resnet99", "unknown model 'resnet99'; known: resnet18, resnet20, vgg16, vgg_small"),
        ("tv:not_a_net", "unknown torchvision model 'not_a_net'"),
        ("/no/such/file.py:make", "model file not found: /no/such/file.py"),
        ("resnet20(num_classes=", "cannot parse model spec"),
        ("resnet20(widht=2)", "unexpected keyword argument 'widht'"),
    ],
)
def test_bad_specs_name_the_problem(spec, message):
    with pytest.raises(QffsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_model(spec)


def test_user_factory_errors(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("raise ImportError('needs foo')\n")
    with pytest.raises(QffsError, match=r"model code at .*broken.py:1 \(in <module>\) raised ImportError while "
                                        r"importing .*broken.py: needs foo"):
        build_model(f"{broken}:make")
    ok = tmp_path / "ok.py"
    ok.write_text("x = 1\n")
    with pytest.raises(QffsError, match="has no callable 'make'"):
        build_model(f"{ok}:make")
