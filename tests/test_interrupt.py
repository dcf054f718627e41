"""Nothing that looks complete after an interrupt: a training job writes ``net.partial.pt`` while it
runs and moves it onto ``--out`` only when it finishes."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from qffs.io import load_checkpoint
from qffs.train import TrainConfig, fit
from tests.test_cli import ENV, QFFS, SHIPPED


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"),
                                              (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_a_stop_during_qat_keeps_only_a_partial_file_and_resumes(tmp_path, sig, code, word):
    """Ctrl-C, and SIGTERM (timeout, Slurm, systemd), in epoch 2: one line, the partial file, resumable."""
    out = tmp_path / "q.pt"
    command = [QFFS, "quantize", str(SHIPPED), "--out", str(out), "--epochs", "2", "--limit", "2048",
               "--test-limit", "128"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**ENV, "PYTHONUNBUFFERED": "1"})
    lines = []
    deadline = time.monotonic() + 300
    for line in proc.stdout:                       # wait until epoch 1 is done and epoch 2 is running
        lines.append(line)
        if line.startswith("epoch 1/2") or time.monotonic() > deadline:
            break
    time.sleep(1.0)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert any(line.startswith("epoch 1/2") for line in lines), lines
    assert proc.returncode == code, err
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert f"{word}: {out} was not written; the best result so far is in {tmp_path / 'q.partial.pt'}" in err
    assert "add --resume to the same command to continue" in err
    assert not out.exists() and not (tmp_path / "q.pt.metrics.json").exists()
    kept = load_checkpoint(tmp_path / "q.partial.pt")
    assert kept.kind == "qann" and kept.meta["metrics"]["best_epoch"] in (0, 1)
    if sig == signal.SIGTERM:
        again = subprocess.run([*command, "--resume"], capture_output=True, text=True, env=ENV, timeout=300)
        assert again.returncode == 0, again.stderr
        assert "1 epoch(s) done" in again.stdout and "epoch 2/2" in again.stdout and out.is_file()


def test_a_finished_run_leaves_no_partial_file(cli, tmp_path):
    r = cli("quantize", SHIPPED, "--out", tmp_path / "q.pt", "--epochs", "0", "--limit", "128", "--test-limit", "64")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.pt", "q.pt.metrics.json"]
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_an_epoch_worse_than_the_starting_point_is_never_best():
    torch.manual_seed(0)
    x, y = torch.randn(64, 2), torch.randint(0, 3, (64,))
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    model = nn.Linear(2, 3)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    history, best = fit(model, loader, loader, TrainConfig(epochs=2, lr=0.5), log=lambda _: None, baseline=1.0)
    assert len(history) == 2 and not any(r.get("best") for r in history)
    assert all(torch.equal(best[k], start[k]) for k in start)



def test_partial_files_are_outputs_and_stale_ones_are_removed(cli, tmp_path):
    import shutil

    from tests.test_cli import _one_line_error

    shutil.copy(SHIPPED, tmp_path / "fp.partial.pt")            # resuming from a kept partial file
    _one_line_error(cli("quantize", tmp_path / "fp.partial.pt", "--out", tmp_path / "fp.pt", "--epochs", "0"),
                    "would overwrite", "fp.partial.pt")
    (tmp_path / "q.partial.pt").write_bytes(b"an earlier interrupted run")
    r = cli("quantize", SHIPPED, "--out", tmp_path / "q.pt", "--epochs", "0", "--limit", "128", "--test-limit", "64")
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "q.partial.pt").exists() and load_checkpoint(tmp_path / "q.pt").kind == "qann"


def test_interrupted_is_neither_a_value_error_nor_turned_into_a_bare_exit_code():
    from qffs.errors import Interrupted

    assert not issubclass(Interrupted, ValueError) and not issubclass(Interrupted, KeyboardInterrupt)


def test_ctrl_c_outside_a_training_job_exits_130_with_a_message(tmp_path):
    """evaluate: interrupted mid-simulation, exit 130 and one line (it used to exit 0, silently)."""
    q, s = tmp_path / "q.pt", tmp_path / "s.pt"
    assert subprocess.run([QFFS, "quantize", str(SHIPPED), "--out", str(q), "--epochs", "0", "--limit", "128",
                           "--test-limit", "64"], env=ENV, capture_output=True).returncode == 0
    assert subprocess.run([QFFS, "convert", str(q), "--out", str(s)], env=ENV, capture_output=True).returncode == 0
    proc = subprocess.Popen([QFFS, "evaluate", str(s), "-T", "64", "--out-dir", str(tmp_path / "ev")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    time.sleep(15)                                 # well inside the simulation (minutes long)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().startswith("qffs: interrupted") and err.strip().count("\n") == 0
    assert not (tmp_path / "ev").exists()
