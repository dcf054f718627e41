"""Outputs are never mixed, clobbered or left half-written: locks, file sets, orphaned temporary
files, and errors from the user's own model code while it runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from qffs.errors import QffsError
from qffs.files import atomic_files, atomic_path, exclusive, write_text_atomic
from tests.test_cli import ENV, QFFS, _one_line_error


def test_a_second_run_writing_the_same_output_is_refused_until_the_first_ends(tmp_path):
    out = tmp_path / "runs" / "x"
    with exclusive(out, "--out-dir"):
        with pytest.raises(QffsError,
                           match="another qffs run is writing .*runs/x: wait .* or choose another --out-dir"):
            with exclusive(tmp_path / "runs" / ".." / "runs" / "x", "--out-dir"):   # the same path, spelled otherwise
                pass
        with exclusive(tmp_path / "runs" / "y", "--out-dir"):   # another output: independent
            pass
    with exclusive(out, "--out-dir"):   # released
        pass
    assert not (tmp_path / "runs").exists()   # nothing is created beside the output


def test_the_lock_is_held_across_processes_and_dies_with_its_holder(tmp_path):
    hold = ("import sys, time; from qffs.files import exclusive\n"
            "with exclusive(sys.argv[1], '--out'):\n    print('held', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path / "q.pt")], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        _one_line_error(subprocess.run([QFFS, "quantize", "x.pt", "--out", str(tmp_path / "q.pt")], capture_output=True,
                                       text=True, env=ENV, cwd=tmp_path), "another qffs run is writing")
    finally:
        proc.kill()
        proc.wait()
    with exclusive(tmp_path / "q.pt", "--out"):   # a killed holder leaves no stale lock
        pass


def test_the_lock_is_a_filelock_on_a_file_named_by_the_output_and_only_rank_0_takes_it(tmp_path, monkeypatch):
    import hashlib

    import filelock

    from qffs.files import lock_file, lock_folder

    out = tmp_path / "runs" / "x"
    key = hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:32]
    assert lock_file(out) == lock_folder() / f"{key}.lock"
    with exclusive(out, "--out-dir"):
        with pytest.raises(filelock.Timeout):   # the same OS lock filelock takes: a second holder is refused
            filelock.FileLock(lock_file(out), timeout=0).acquire()
        with pytest.raises(QffsError, match=r"^another qffs run is writing .*runs/x: wait for it to finish, or "
                                            r"choose another --out-dir$"):
            with exclusive(out, "--out-dir"):
                pass
        monkeypatch.setenv("RANK", "1")
        with exclusive(out, "--out-dir"):   # a torchrun rank other than 0 writes nothing and takes no lock
            pass
        monkeypatch.delenv("RANK")
    held = filelock.FileLock(lock_file(out), timeout=0)
    held.acquire()                          # released: anyone may take it, and qffs refuses while they hold it
    try:
        with pytest.raises(QffsError, match="another qffs run is writing"):
            with exclusive(out, "--out"):
                pass
    finally:
        held.release()


@pytest.mark.parametrize("existing", [False, True])
def test_a_failed_atomic_write_leaves_no_temporary_file_and_the_old_file_whole(tmp_path, monkeypatch, existing):
    import errno

    import qffs.files

    target = tmp_path / "curve.csv"
    if existing:
        target.write_text("the earlier run")

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(qffs.files.os, "replace", full)
    with pytest.raises(QffsError, match=f"cannot write {target}: the disk is full"):
        write_text_atomic(target, "t,acc\n")
    with pytest.raises(QffsError, match="cannot write"):
        with atomic_files([target, tmp_path / "curve.json"]) as temps:
            for tmp in temps:
                tmp.write_text("new")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["curve.csv"] if existing else [])
    if existing:
        assert target.read_text() == "the earlier run"


def test_a_set_of_files_appears_together_or_not_at_all(tmp_path):
    paths = [tmp_path / "curve.csv", tmp_path / "curve.json"]
    with pytest.raises(RuntimeError):
        with atomic_files(paths) as (csv, _):
            csv.write_text("new")
            raise RuntimeError("the plot failed")
    assert list(tmp_path.iterdir()) == []
    with atomic_files(paths) as (csv, js):
        csv.write_text("a")
        js.write_text("b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curve.csv", "curve.json"]


def test_temporary_files_of_killed_runs_are_removed_by_the_next_write(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = tmp_path / f".net.pt.{int(dead.stdout)}.abcd1234.tmp"     # a SIGKILLed run's leftover
    orphan.write_bytes(b"half a checkpoint")
    alive = tmp_path / f".net.pt.{os.getppid()}.efgh5678.tmp"          # a running process's: kept
    alive.write_bytes(b"being written")
    other = tmp_path / f".other.pt.{int(dead.stdout)}.ijkl9012.tmp"     # another file's: not this write's business
    other.write_bytes(b"x")
    write_text_atomic(tmp_path / "net.pt", "done")
    assert not orphan.exists() and alive.exists() and other.exists()
    with atomic_path(tmp_path / "net.pt") as tmp:
        assert tmp.name.startswith(f".net.pt.{os.getpid()}.")


def test_ctrl_c_while_the_cli_is_still_importing_exits_130_with_one_line(tmp_path):
    proc = subprocess.Popen([QFFS, "info", "x.pt"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            cwd=tmp_path)
    time.sleep(0.4)                       # inside `import torch` (importing takes seconds)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().count("\n") == 0 and "Traceback" not in err and "interrupted" in err


RUNTIME_ERROR = '''
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))

    def forward(self, x):
        return self.body(x.view(x.shape[0], 3, -1))   # the model's own bug: 784 is not divisible by 3


def net():
    return Net()
'''


def test_an_error_in_the_users_forward_names_its_file_and_line(tmp_path):
    import torch

    from qffs.io import save_checkpoint

    code = tmp_path / "mynet.py"
    code.write_text(RUNTIME_ERROR)
    save_checkpoint(tmp_path / "fp.pt", {"body.1.weight": torch.zeros(10, 784), "body.1.bias": torch.zeros(10)},
                    kind="fp", model=f"{code}:net", dataset="fashion-mnist")
    r = subprocess.run([QFFS, "quantize", str(tmp_path / "fp.pt"), "--model", f"{code}:net", "--out",
                        str(tmp_path / "q.pt"), "--epochs", "0", "--limit", "64", "--test-limit", "64"],
                       capture_output=True, text=True, env=ENV)
    _one_line_error(r, f"{code}:11 (in forward)", "RuntimeError")


def test_outputs_get_the_usual_permissions_not_private_ones(tmp_path):
    mask = os.umask(0o022)
    os.umask(mask)
    path = write_text_atomic(tmp_path / "curve.csv", "t,acc\n")
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
