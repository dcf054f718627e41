"""Checkpoints: every format round-trips, prefixes are stripped, unsafe pickles are refused."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from qffs.errors import QffsError
from qffs.io import atomic_path, load_checkpoint, load_model, save_checkpoint
from qffs.models import build_model

SPEC = "resnet20(num_classes=10, in_channels=3)"


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def model():
    return build_model(SPEC)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".th", ".safetensors"])
def test_qffs_checkpoint_round_trip(tmp_path, model, suffix):
    path = save_checkpoint(tmp_path / f"net{suffix}", model.state_dict(), kind="fp", model=SPEC,
                           dataset="cifar10", metrics={"test_accuracy": torch.tensor(0.91)})
    rebuilt, ckpt = load_model(path)
    assert _same(rebuilt.state_dict(), model.state_dict())
    assert ckpt.kind == "fp" and ckpt.meta["model"] == SPEC and ckpt.meta["dataset"] == "cifar10"
    assert ckpt.meta["metrics"] == {"test_accuracy": pytest.approx(0.91)}
    assert ckpt.meta["qffs_version"]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp files left


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "net"])
@pytest.mark.parametrize("suffix", [".pt", ".th"])
def test_foreign_layouts_and_dataparallel_prefix(tmp_path, model, wrap, suffix):
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}
    obj = sd if wrap == "plain" else {wrap: sd, "epoch": 3, "best_prec1": 91.2}
    torch.save(obj, tmp_path / f"foreign{suffix}")
    rebuilt, ckpt = load_model(tmp_path / f"foreign{suffix}", spec=SPEC)
    assert ckpt.kind == "foreign"
    assert _same(rebuilt.state_dict(), model.state_dict())


def test_foreign_safetensors(tmp_path, model):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    rebuilt, _ = load_model(tmp_path / "w.safetensors", spec=SPEC)
    assert _same(rebuilt.state_dict(), model.state_dict())


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_refuses_pickle_that_would_execute_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "payload": _Evil()}, path)
    with pytest.raises(QffsError, match="refusing to load .*evil.pt: it contains pickled Python objects"):
        load_checkpoint(path)


def test_plain_pickle_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(pickle.dumps("hello") + b"garbage")
    with pytest.raises(QffsError, match="junk.pt"):
        load_checkpoint(path)


def test_missing_file():
    with pytest.raises(QffsError, match="checkpoint not found: /nope/net.pt"):
        load_checkpoint("/nope/net.pt")


def test_mismatch_names_missing_unexpected_and_shapes(tmp_path, model):
    sd = dict(model.state_dict())
    sd.pop("linear.weight")
    sd["extra.weight"] = torch.zeros(1)
    sd["conv1.weight"] = torch.zeros(16, 3, 5, 5)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(QffsError) as err:
        load_model(tmp_path / "bad.pt", spec=SPEC)
    msg = str(err.value)
    assert "missing keys: linear.weight" in msg
    assert "unexpected keys: extra.weight" in msg
    assert "shape mismatch: conv1.weight (16, 3, 5, 5) vs model (16, 3, 3, 3)" in msg
    assert "\n" not in msg


def test_foreign_file_without_spec_asks_for_one(tmp_path, model):
    torch.save(model.state_dict(), tmp_path / "w.pt")
    with pytest.raises(QffsError, match="does not record its model: pass the model spec"):
        load_model(tmp_path / "w.pt")


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.pt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
