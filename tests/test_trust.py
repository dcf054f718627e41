"""Artifacts carry data, never code: a model file named by an artifact is run only when the user
names that same file (qffs.trust)."""

from __future__ import annotations

import hashlib
import importlib.util

import pytest
import torch

from qffs.io import load_checkpoint, save_checkpoint
from tests.test_cli import _one_line_error

SUBSET = ("--limit", "128", "--test-limit", "64", "--batch-size", "64")

MODEL = '''
from torch import nn


def net():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten(), nn.Linear(4 * 49, 10))
'''

EVIL = '''
from pathlib import Path
Path({marker!r}).write_text("code from an artifact ran")
from torch import nn


def net():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
'''


@pytest.fixture
def evil(tmp_path):
    """Artifacts of every kind whose recorded spec names a file that leaves a marker when imported."""
    marker = tmp_path / "MARKER"
    code = tmp_path / "evil.py"
    code.write_text(EVIL.format(marker=str(marker)))
    weights = {"1.weight": torch.zeros(10, 784), "1.bias": torch.zeros(10)}
    spec = f"{code}:net"
    paths = {kind: save_checkpoint(tmp_path / f"{kind}.pt", weights, kind=kind, model=spec, dataset="fashion-mnist",
                                   bits=2, output_bits=3) for kind in ("fp", "qann", "snn")}
    return marker, paths


def test_no_command_runs_code_an_artifact_names(cli, evil, tmp_path):
    marker, paths = evil
    _one_line_error(cli("quantize", paths["fp"], "--out", tmp_path / "q.pt", "--epochs", "0"),
                    "names model code in", "never runs code it names", "--model")
    _one_line_error(cli("convert", paths["qann"], "--out", tmp_path / "s.pt"), "never runs code it names")
    _one_line_error(cli("evaluate", paths["snn"], "--out-dir", tmp_path / "ev"), "never runs code it names")
    _one_line_error(cli("run", paths["fp"], "--out-dir", tmp_path / "run"), "never runs code it names")
    for path in paths.values():
        assert cli("info", path).returncode == 0
    assert not marker.exists()
    assert not (tmp_path / "q.pt").exists() and not (tmp_path / "s.pt").exists()


def test_the_named_file_is_used_only_if_it_is_the_recorded_one(cli, tmp_path):
    code = tmp_path / "model.py"
    code.write_text(MODEL)
    spec = f"{code}:net"
    loader = importlib.util.spec_from_file_location("trust_model", code)
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    torch.save(module.net().state_dict(), tmp_path / "fp.pth")

    q, s = tmp_path / "q.pt", tmp_path / "s.pt"
    assert cli("quantize", tmp_path / "fp.pth", "--model", spec, "--out", q, "--epochs", "0", *SUBSET).returncode == 0
    meta = load_checkpoint(q).meta
    assert meta["model_file_sha256"] == hashlib.sha256(code.read_bytes()).hexdigest()
    _one_line_error(cli("convert", q, "--out", s), "never runs code it names", f"--model '{spec}'")
    assert cli("convert", q, "--out", s, "--model", spec).returncode == 0
    moved = tmp_path / "copy.py"                     # the same file elsewhere is the same code
    moved.write_text(code.read_text())
    r = cli("evaluate", s, "-T", "4", "--limit", "64", "--model", f"{moved}:net", "--out-dir", tmp_path / "ev")
    assert r.returncode == 0, r.stderr
    code.write_text(MODEL + "\n# edited after the artifact was made\n")
    _one_line_error(cli("evaluate", s, "--model", spec, "--out-dir", tmp_path / "ev2"),
                    "is not the model file", "sha256")
    _one_line_error(cli("evaluate", s, "--model", "resnet20", "--out-dir", tmp_path / "ev3"),
                    "was made with model code from a file")


def test_info_escapes_control_characters(cli, tmp_path):
    path = save_checkpoint(tmp_path / "w.pt", {"w": torch.ones(1)}, kind="fp", model="vgg_small",
                           dataset="fashion-mnist\x1b[2J\x07")
    r = cli("info", path)
    assert r.returncode == 0 and "\x1b" not in r.stdout and "\x07" not in r.stdout
    assert "\\x1b[2J\\x07" in r.stdout


def test_load_model_never_imports_a_file_the_checkpoint_names(evil):
    from qffs.errors import QffsError
    from qffs.io import load_model

    marker, paths = evil
    with pytest.raises(QffsError, match="never runs code it names"):
        load_model(paths["fp"])
    with pytest.raises(QffsError, match="was made with model code from a file"):
        load_model(paths["fp"], spec="vgg_small")
    assert not marker.exists()


def test_error_messages_escape_control_characters_from_files(cli, tmp_path):
    path = save_checkpoint(tmp_path / "w.pt", {"w": torch.ones(1)}, kind="fp\x1b]0;pwn\x07", model="vgg_small")
    r = cli("info", path)
    assert "\x1b" not in r.stdout and "\\x1b]0;pwn\\x07" in r.stdout
    r = cli("convert", path, "--out", tmp_path / "s.pt")
    assert r.returncode == 2 and "\x1b" not in r.stderr and r.stderr.count("\n") == 1


TWO_FACTORIES = '''
from pathlib import Path
from torch import nn


def net(width=4):
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten(),
                         nn.Linear(width * 49, 10))


def other(**kwargs):
    Path({marker!r}).write_text("the artifact chose the function")
    return net()
'''


@pytest.mark.parametrize("hashed", [True, False])
def test_an_artifact_cannot_choose_which_function_of_a_trusted_file_runs(tmp_path, hashed):
    from qffs.errors import QffsError
    from qffs.trust import SHA_KEY, authorized_spec, file_sha256

    marker = tmp_path / "MARKER"
    code = tmp_path / "trusted.py"
    code.write_text(TWO_FACTORIES.format(marker=str(marker)))
    recorded = {"model": f"{code}:other(width=8)", **({SHA_KEY: file_sha256(f"{code}:net")} if hashed else {})}
    spec = authorized_spec(recorded, f"{code}:net", "a.pt")
    assert spec == f"{code}:net"                                   # the user's function, as the user wrote it
    same = {"model": f"{code}:net(width=8)", **({SHA_KEY: file_sha256(f"{code}:net")} if hashed else {})}
    reused = authorized_spec(same, f"{code}:net", "a.pt")
    assert ("width=8" in reused) == hashed                          # recorded arguments need a recorded hash
    from qffs.models import build_model

    build_model(spec)
    assert not marker.exists()
    with pytest.raises(QffsError, match="never runs code it names"):
        authorized_spec(recorded, None, "a.pt")


def test_quantize_runs_the_users_function_not_the_one_an_artifact_records(cli, tmp_path):
    marker = tmp_path / "MARKER"
    code = tmp_path / "trusted.py"
    code.write_text(TWO_FACTORIES.format(marker=str(marker)))
    loader = importlib.util.spec_from_file_location("trusted_two", code)
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    fp = save_checkpoint(tmp_path / "fp.pt", module.net().state_dict(), kind="fp", model=f"{code}:other()",
                         dataset="fashion-mnist")                 # no hash: written by hand, or by an old qffs
    r = cli("quantize", fp, "--model", f"{code}:net", "--out", tmp_path / "q.pt", "--epochs", "0", *SUBSET)
    assert r.returncode == 0, r.stderr
    assert not marker.exists() and load_checkpoint(tmp_path / "q.pt").meta["model"].startswith(f"{code}:net")
