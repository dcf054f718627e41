"""Resume (qffs.resume): a run interrupted at any moment and continued with ``--resume`` ends with
the weights of a run never interrupted."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from qffs.errors import QffsError
from qffs.io import load_checkpoint
from qffs.resume import TrainState, load_state, resume_path, save_state
from qffs.train import TrainConfig, fit
from tests.test_cli import ENV, QFFS, SHIPPED, _one_line_error


def _task():
    """A model with dropout (global RNG) on shuffled data (the loader's generator)."""
    torch.manual_seed(0)
    x, y = torch.randn(96, 4), torch.randint(0, 3, (96,))
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(1))
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    return model, loader


def test_fit_continued_from_a_saved_state_equals_an_uninterrupted_fit(tmp_path):
    cfg = TrainConfig(epochs=3, lr=0.1)
    model, loader = _task()
    _, best = fit(model, loader, loader, cfg, log=lambda _: None)
    straight = {k: v.clone() for k, v in model.state_dict().items()}

    model, loader = _task()
    states: list[TrainState] = []
    fit(model, loader, loader, TrainConfig(epochs=3, lr=0.1), log=lambda _: None,
        on_state=lambda s: states.append(save_state(tmp_path / f"s{s.epoch}.pt", s)))
    assert len(states) == 3
    torch.randn(1000)                                             # the RNG moves on, as in a new process
    model, loader = _task()
    resumed_history, resumed_best = fit(model, loader, loader, cfg, log=lambda _: None,
                                        start=load_state(tmp_path / "s1.pt"))
    assert [r["epoch"] for r in resumed_history] == [1, 2, 3]
    assert all(torch.equal(model.state_dict()[k], straight[k]) for k in straight)
    assert all(torch.equal(resumed_best[k], best[k]) for k in best)


def test_a_state_from_a_run_with_other_options_is_refused(tmp_path):
    model, loader = _task()
    fit(model, loader, loader, TrainConfig(epochs=1), log=lambda _: None,
        on_state=lambda s: save_state(tmp_path / "s.pt", TrainState(**{**s.__dict__, "job": {"seed": 0, "lr": 0.1}})))
    with pytest.raises(QffsError, match=r"other options \(lr 0.1 → 0.2\)"):
        load_state(tmp_path / "s.pt", {"seed": 0, "lr": 0.2})
    (tmp_path / "bad.pt").write_bytes(b"truncated")
    with pytest.raises(QffsError, match="not a readable qffs resume state"):
        load_state(tmp_path / "bad.pt", {})
    torch.save({"format": "qffs-resume-1", "epoch": 1}, tmp_path / "part.pt")
    with pytest.raises(QffsError, match="incomplete qffs resume state"):
        load_state(tmp_path / "part.pt", {})


def _quantize(out, *extra):
    return [QFFS, "quantize", str(SHIPPED), "--out", str(out), "--epochs", "2", "--limit", "2048",
            "--test-limit", "256", "--batch-size", "64", *extra]


@pytest.mark.slow
def test_quantize_killed_in_epoch_2_and_resumed_equals_an_uninterrupted_run(tmp_path):
    env = {**ENV, "PYTHONUNBUFFERED": "1"}
    straight = tmp_path / "straight.pt"
    r = subprocess.run(_quantize(straight), capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr

    out = tmp_path / "q.pt"
    proc = subprocess.Popen(_quantize(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 300
    while not resume_path(out).exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)                                           # epoch 1 finished and its state saved
    time.sleep(0.5)
    assert proc.poll() is None, "the run ended before it could be killed in epoch 2"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    killed = load_state(resume_path(out))
    assert not out.exists() and killed.epoch == 1
    first_chunk = killed.extra["seconds"]   # the run's time so far, kept across the kill
    assert first_chunk >= killed.history[0]["epoch_seconds"] > 0

    _one_line_error(subprocess.run(_quantize(out), capture_output=True, text=True, env=env, timeout=600),
                    "holds an interrupted run", "--resume")      # never silently started over
    _one_line_error(subprocess.run(_quantize(out, "--seed", "1", "--resume"), capture_output=True, text=True,
                                   env=env, timeout=600), "other options", "seed 0 → 1")
    r = subprocess.run(_quantize(out, "--resume"), capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "1 epoch(s) done" in r.stdout and "epoch 2/2" in r.stdout and "epoch 1/2" not in r.stdout
    a, b = load_checkpoint(straight), load_checkpoint(out)
    assert a.state_dict.keys() == b.state_dict.keys()
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert a.meta["metrics"]["qann_accuracy"] == b.meta["metrics"]["qann_accuracy"]
    assert b.meta["metrics"]["seconds"] > first_chunk   # the whole run's wall time, not the last chunk's
    assert not resume_path(out).exists() and not (tmp_path / "q.partial.pt").exists()


def _old_format(state: TrainState, path) -> None:
    """Write ``state`` as qffs did before the schedule was a LambdaLR: no scheduler state, and
    optimizer groups without ``initial_lr`` whose lr is that of the last step taken (the layout of
    the committed ``models/training/*/qann.resume.pt``)."""
    from dataclasses import asdict

    raw = {"format": "qffs-resume-1", **{k: v for k, v in asdict(state).items() if k != "scheduler"}}
    for group in raw["optimizer"]["param_groups"]:
        group.pop("initial_lr")
        group["lr"] = state.history[-1]["lr"]
    torch.save(raw, path)


@pytest.mark.parametrize("schedule", ["cosine", "exp"])
def test_a_state_saved_before_the_lr_scheduler_resumes_to_the_uninterrupted_result(tmp_path, schedule):
    cfg = TrainConfig(epochs=3, lr=0.1, schedule=schedule, gamma=0.7)
    model, loader = _task()
    history, best = fit(model, loader, loader, cfg, log=lambda _: None,
                        on_state=lambda s: save_state(tmp_path / f"s{s.epoch}.pt", s))
    straight = {k: v.clone() for k, v in model.state_dict().items()}
    saved = load_state(tmp_path / "s1.pt")
    assert saved.scheduler is not None and saved.scheduler["last_epoch"] == saved.step == 6   # 6 batches an epoch

    _old_format(saved, tmp_path / "old.pt")
    old = load_state(tmp_path / "old.pt")
    assert old.scheduler is None and old.step == 6
    torch.randn(1000)                                             # the RNG moves on, as in a new process
    model, loader = _task()
    resumed, resumed_best = fit(model, loader, loader, cfg, log=lambda _: None, start=old)
    timeless = [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in history]
    assert [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in resumed] == timeless
    assert all(torch.equal(model.state_dict()[k], straight[k]) for k in straight)
    assert all(torch.equal(resumed_best[k], best[k]) for k in best)
