"""Progress where nobody watches a terminal: plain lines in a pipe, before a long epoch ends."""

from __future__ import annotations

import os
import subprocess

import pytest

from qffs.errors import QffsError
from qffs.progress import progress_line, status, track
from tests.test_cli import QFFS, SHIPPED


def _piped(monkeypatch) -> None:
    monkeypatch.delenv("QFFS_PROGRESS", raising=False)       # the suite silences progress; a user's pipe does not
    monkeypatch.setenv("QFFS_PROGRESS_SECONDS", "0")


def test_a_progress_line_names_the_pass_its_count_and_the_time_left():
    assert progress_line("epoch 1/3", 120, 360, 31.0) == "epoch 1/3: 120/360 (33%), 0:31 elapsed, eta 1:02"
    assert progress_line("decoding", 7, None, 3725.0) == "decoding: 7, 1:02:05 elapsed"


def test_in_a_pipe_a_pass_prints_lines_as_it_goes_and_a_phase_says_what_it_does(monkeypatch, capsys):
    _piped(monkeypatch)
    seen = []
    for i in track(range(3), "pass"):
        seen.append((i, capsys.readouterr().err))
    assert [i for i, _ in seen] == [0, 1, 2]
    assert "pass: 1/3 (33%)" in seen[1][1] and "pass: 2/3 (66%)" in seen[2][1]   # printed while the pass runs
    assert "pass: 3/3 (100%)" in capsys.readouterr().err
    with status("calibrating"):
        assert capsys.readouterr().err == "calibrating ...\n"
    monkeypatch.setenv("QFFS_PROGRESS", "0")
    assert list(track(range(3), "silent")) == [0, 1, 2] and capsys.readouterr().err == ""


def test_a_malformed_interval_is_refused_by_name(monkeypatch):
    _piped(monkeypatch)
    monkeypatch.setenv("QFFS_PROGRESS_SECONDS", "soon")
    with pytest.raises(QffsError, match="QFFS_PROGRESS_SECONDS"):
        list(track(range(2), "pass"))


@pytest.mark.slow
def test_a_qat_with_piped_output_shows_progress_before_its_first_epoch_ends(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "QFFS_PROGRESS"}
    env.update(QFFS_PROGRESS_SECONDS="0", PYTHONUNBUFFERED="1", COLUMNS="80")
    r = subprocess.run([QFFS, "quantize", str(SHIPPED), "--out", str(tmp_path / "q.pt"), "--epochs", "1",
                        "--limit", "1024", "--test-limit", "128", "--batch-size", "64"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout
    lines = r.stdout.splitlines()
    end = next(i for i, line in enumerate(lines) if line.startswith("epoch 1/1: loss"))
    during = [line for line in lines[:end] if line.startswith("epoch 1/1: ") and "elapsed" in line]
    assert len(during) >= 2 and "(100%)" not in during[0], r.stdout      # lines while the epoch ran
    assert any(line.startswith("calibrating step sizes") for line in lines[:end]), r.stdout
    assert "\x1b[" not in r.stdout                                         # no terminal codes in a log
