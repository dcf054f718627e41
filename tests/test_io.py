"""Checkpoints: every format round-trips, prefixes are stripped, unsafe pickles are refused."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from qffs.errors import QffsError
from qffs.files import atomic_path
from qffs.io import load_checkpoint, load_model, save_checkpoint
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


# --- checkpoints as people have them (issue: real networks in) -------------------------------------
def _outputs_equal(a, b, shape=(2, 3, 32, 32)):
    x = torch.randn(shape)
    return torch.equal(a.eval()(x), b.eval()(x))


def _trained_bn(model):
    """BatchNorm statistics as training leaves them (so a loading mistake changes the outputs)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(391)
    return model


def test_batchnorm_without_num_batches_tracked_loads(tmp_path, model):
    """PyTorch < 0.4.1 did not save num_batches_tracked; PyTorch's own rules back-fill it."""
    _trained_bn(model)
    sd = model.state_dict()   # an OrderedDict whose metadata says BN version 2 (modern PyTorch)
    for key in [k for k in sd if k.endswith("num_batches_tracked")]:
        del sd[key]
    assert not any(k.endswith("num_batches_tracked") for k in sd)
    torch.save(sd, tmp_path / "old.th")
    loaded, _ = load_model(tmp_path / "old.th", spec=SPEC)
    assert _outputs_equal(loaded, model)
    assert all(int(v) == 0 for k, v in loaded.state_dict().items() if k.endswith("num_batches_tracked"))


def test_really_missing_keys_are_still_named(tmp_path, model):
    sd = model.state_dict()
    del sd["layer1.0.bn1.running_var"]
    torch.save(sd, tmp_path / "w.pt")
    with pytest.raises(QffsError, match="missing keys: layer1.0.bn1.running_var$"):
        load_model(tmp_path / "w.pt", spec=SPEC)


def test_tensors_saved_on_cuda_load_on_the_cpu(tmp_path, model, monkeypatch):
    """Storages tagged 'cuda:0' (a checkpoint saved on a GPU machine) load on a CPU-only one."""
    _trained_bn(model)
    monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
    torch.save({"state_dict": model.state_dict(), "epoch": 10}, tmp_path / "gpu.pth")
    monkeypatch.undo()
    if not torch.cuda.is_available():   # the file really is CUDA-tagged: without map_location it fails here
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(tmp_path / "gpu.pth", weights_only=True)
    loaded, _ = load_model(tmp_path / "gpu.pth", spec=SPEC)
    assert all(t.device.type == "cpu" for t in loaded.state_dict().values())
    assert _outputs_equal(loaded, model)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "_orig_mod.module.", "module._orig_mod."])
def test_wrapper_prefixes_in_any_combination(tmp_path, model, prefix):
    _trained_bn(model)
    torch.save({f"{prefix}{k}": v for k, v in model.state_dict().items()}, tmp_path / "w.pt")
    loaded, ckpt = load_model(tmp_path / "w.pt", spec=SPEC)
    assert "".join(ckpt.stripped) == prefix
    assert _outputs_equal(loaded, model)


@pytest.mark.parametrize("key", ["model_state_dict", "ema", "state_dict_ema", "model_ema"])
def test_nested_under_any_usual_key_beside_training_state(tmp_path, model, key):
    import argparse

    import numpy as np

    _trained_bn(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    model.eval()
    torch.save({key: model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 182,
                "best_acc": np.float64(91.7), "args": argparse.Namespace(arch="resnet20", lr=0.1),
                "scheduler": {"last_epoch": 182}}, tmp_path / "ckpt.pth.tar")
    loaded, ckpt = load_model(tmp_path / "ckpt.pth.tar", spec=SPEC)
    assert ckpt.entry == key
    assert _outputs_equal(loaded, model)


def test_legacy_serialization_format(tmp_path, model):
    torch.save(model.state_dict(), tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    loaded, _ = load_model(tmp_path / "legacy.pth", spec=SPEC)
    assert _same(loaded.state_dict(), model.state_dict())


def test_refusal_names_the_objects_that_would_run_code(tmp_path):
    torch.save({"state_dict": {"w": torch.ones(1)}, "payload": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(QffsError, match=r"beyond tensors \(.*posix.system|beyond tensors \(.*os.system"):
        load_checkpoint(tmp_path / "evil.pt")


def test_only_the_classifier_head_differs(tmp_path):
    source = build_model("resnet20(num_classes=100, in_channels=3)")
    torch.save(source.state_dict(), tmp_path / "c100.th")
    with pytest.raises(QffsError) as err:
        load_model(tmp_path / "c100.th", spec=SPEC)
    msg = str(err.value)
    assert "shape mismatch: linear.weight (100, 64) vs model (10, 64), linear.bias (100,) vs model (10,)" in msg
    assert "only the classifier head (linear) differs: the checkpoint predicts 100 classes, the model 10" in msg
    assert "--model 'resnet20(num_classes=100, in_channels=3)'" in msg
    assert "\n" not in msg


def test_only_the_input_channels_differ(tmp_path):
    source = build_model("resnet20(num_classes=10, in_channels=1)")
    torch.save(source.state_dict(), tmp_path / "gray.th")
    with pytest.raises(QffsError) as err:
        load_model(tmp_path / "gray.th", spec=SPEC)
    msg = str(err.value)
    assert "conv1.weight (16, 1, 3, 3) vs model (16, 3, 3, 3)" in msg
    assert "only the input channels differ: the checkpoint's first layer takes 1, the model 3" in msg
    assert "--model 'resnet20(num_classes=10, in_channels=1)'" in msg


def test_no_hint_when_the_architecture_differs(tmp_path):
    torch.save(build_model("vgg_small").state_dict(), tmp_path / "vgg.pt")
    with pytest.raises(QffsError) as err:
        load_model(tmp_path / "vgg.pt", spec=SPEC)
    assert "missing keys:" in str(err.value) and "only the" not in str(err.value)


def test_numpy_1_names_beside_the_weights_load(tmp_path, model):
    """Most downloaded checkpoints were pickled under numpy < 2 (numpy.core, not numpy._core)."""
    import zipfile

    import numpy as np

    torch.save({"state_dict": model.state_dict(), "best_prec1": np.float64(91.7)}, tmp_path / "np2.th")
    with zipfile.ZipFile(tmp_path / "np2.th") as src, zipfile.ZipFile(tmp_path / "np1.th", "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            dst.writestr(info, data)
    assert "numpy.core.multiarray.scalar" in torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "np1.th")
    loaded, _ = load_model(tmp_path / "np1.th", spec=SPEC)
    assert _same(loaded.state_dict(), model.state_dict())


@pytest.mark.parametrize(("content", "fragment"), [
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n", "is a Git LFS pointer"),
    (b"<!DOCTYPE html><html><body>Sign in</body></html>", "is a web page"),
    (bytes(range(7, 200)), "is not a PyTorch checkpoint"),
])
def test_files_that_are_no_checkpoint_say_what_they_are(tmp_path, content, fragment):
    (tmp_path / "resnet20.th").write_bytes(content)
    with pytest.raises(QffsError, match=fragment):
        load_checkpoint(tmp_path / "resnet20.th")


def test_hint_only_suggests_options_the_model_code_takes(tmp_path):
    code = tmp_path / "repo_resnet.py"
    code.write_text("from torch import nn\n\n\ndef resnet20():  # the repository's factory: no options\n"
                    "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(64, 10))\n")
    spec = f"{code}:resnet20"
    sd = build_model(spec).state_dict()
    sd["2.weight"], sd["2.bias"] = torch.zeros(100, 64), torch.zeros(100)
    torch.save(sd, tmp_path / "c100.th")
    with pytest.raises(QffsError, match=f"{code}:resnet20 takes no num_classes option, so change the number of "
                                        "classes in its code"):
        load_model(tmp_path / "c100.th", spec=spec)


def test_torchvision_hint_and_bad_option_are_user_errors(tmp_path):
    gray = build_model("tv:resnet18(num_classes=10)")
    gray.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    torch.save(gray.state_dict(), tmp_path / "gray.pth")
    with pytest.raises(QffsError, match="takes no in_channels option, so change the input channels in its code"):
        load_model(tmp_path / "gray.pth", spec="tv:resnet18(num_classes=10)")
    with pytest.raises(QffsError, match="unexpected keyword argument 'in_channels'"):
        build_model("tv:resnet18(in_channels=1)")
