"""torchrun (issue 14): two processes give the single-process results, train the same weights,
write one set of files, and stop together on an error.

Each test starts ``torchrun --nproc-per-node 2`` (gloo on CPU) on a small subset.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qffs.distributed import ShardSampler
from qffs.io import save_checkpoint
from qffs.split import validation_split
from tests.conftest import calibrated_shipped_qann
from tests.test_cli import ENV, QFFS, SHIPPED

pytestmark = pytest.mark.slow
TORCHRUN = Path(sys.executable).with_name("torchrun")
SPEC = "vgg_small(num_classes=10, in_channels=1)"
#: Fields that say how a run was made, not what it measured.
HOW = ("world_size", "seconds", "environment")


def torchrun(*args, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([TORCHRUN, "--nproc-per-node", "2", "--no-python", QFFS, *map(str, args)],
                          capture_output=True, text=True, env=ENV, cwd=cwd, timeout=timeout)


@pytest.mark.parametrize("length, world", [(51, 2), (7, 3), (2, 2), (5, 1)])
def test_shards_hold_every_sample_once(length, world):
    shards = [list(ShardSampler(length, r, world)) for r in range(world)]
    assert sorted(i for shard in shards for i in shard) == list(range(length))
    assert all(len(s) == len(ShardSampler(length, r, world)) for r, s in enumerate(shards))


@pytest.fixture(scope="module")
def snn_artifact(tmp_path_factory) -> Path:
    from qffs.jobs.convert import convert_checkpoint

    folder = tmp_path_factory.mktemp("dist")
    save_checkpoint(folder / "qann.pt", calibrated_shipped_qann(256).state_dict(), kind="qann", model=SPEC,
                    dataset="fashion-mnist",
                    bits=2, output_bits=3)
    convert_checkpoint(folder / "qann.pt", folder / "snn.pt")
    return folder / "snn.pt"


def test_evaluate_on_two_processes_reports_what_one_process_does(cli, snn_artifact, tmp_path):
    args = ("evaluate", snn_artifact, "-T", "8", "--limit", "51", "--batch-size", "16", "--double")
    one = cli(*args, "--out-dir", tmp_path / "one")
    assert one.returncode == 0, one.stderr
    two = torchrun(*args, "--out-dir", tmp_path / "two", cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-2000:]
    assert two.stdout.count("results:") == 1          # rank 0 alone prints the report
    a = json.loads((tmp_path / "one" / "curve.json").read_text())
    b = json.loads((tmp_path / "two" / "curve.json").read_text())
    assert (a["world_size"], b["world_size"], b["environment"]["world_size"]) == (1, 2, 2)
    assert b["samples"] == 51                            # 26 + 25: none dropped, none repeated
    assert {k: v for k, v in a.items() if k not in HOW} == {k: v for k, v in b.items() if k not in HOW}
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["curve.csv", "curve.json", "curve.png"]


def test_an_exit_on_two_processes_answers_what_one_process_does(cli, snn_artifact, tmp_path):
    args = ("evaluate", snn_artifact, "-T", "8", "--limit", "51", "--batch-size", "16", "--double",
            "--exit", "confidence:0.6@0.5")
    one = cli(*args, "--out-dir", tmp_path / "one")
    assert one.returncode == 0, one.stderr
    two = torchrun(*args, "--out-dir", tmp_path / "two", cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = (json.loads((tmp_path / d / "curve.json").read_text())["exit"] for d in ("one", "two"))
    timing = ("seconds_fixed", "seconds_exit")
    assert a["test"]["samples"] == 51 and a["test"]["sample_steps"] < 51 * 8
    assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}


def test_quantize_on_two_processes_trains_one_set_of_weights(tmp_path):
    from qffs.artifacts import load_qann

    r = torchrun("quantize", SHIPPED, "--out", tmp_path / "q.pt", "--epochs", "1", "--limit", "512",
                 "--test-limit", "128", "--batch-size", "64", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.pt", "q.pt.metrics.json"]   # rank 0 alone writes
    metrics = json.loads((tmp_path / "q.pt.metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert [e["replicas_identical"] for e in metrics["history"]] == [True]   # both ranks: bit-identical weights
    # the validation split is the single-process one, and its shards hold each held-out image once
    assert metrics["selection"]["validation"] == validation_split(512, 51, 0).record()
    assert metrics["history"][0]["val_samples"] == 51
    qann, meta = load_qann(tmp_path / "q.pt")
    x = torch.zeros(2, 1, 28, 28)
    assert qann(x).shape == (2, 10) and meta["world_size"] == 2


def test_an_error_stops_both_processes_with_one_line_each(snn_artifact, tmp_path):
    r = torchrun("evaluate", snn_artifact, "--limit", "1", "--out-dir", tmp_path / "r", cwd=tmp_path, timeout=120)
    assert r.returncode != 0
    errors = [line for line in r.stderr.splitlines() if line.startswith("qffs: error")]
    why = "1 test samples cannot be shared by 2 processes: run fewer processes or more samples"
    assert sorted(errors) == [f"qffs: error (rank 1 of 2): {why}", f"qffs: error: {why}"]
    frames = [line for line in r.stderr.splitlines() if line.strip().startswith('File "')]
    assert not [f for f in frames if "/qffs/" in f]        # torchrun's own report only: no qffs traceback
    assert not (tmp_path / "r").exists() or not list((tmp_path / "r").iterdir())


def _launch(*args, cwd: Path, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "qffs.launch", "--nproc-per-node", "2", "--no-python", QFFS,
                             *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**ENV, "PYTHONUNBUFFERED": "1"}, cwd=cwd, **popen)


def test_ctrl_c_under_qffs_torchrun_ends_with_one_line_per_process_and_130(tmp_path):
    import os
    import signal
    import time

    proc = _launch("quantize", SHIPPED, "--out", tmp_path / "q.pt", "--epochs", "2", "--limit", "2048",
                   "--test-limit", "128", "--batch-size", "64", cwd=tmp_path, start_new_session=True)
    deadline = time.monotonic() + 240
    for line in proc.stdout:                     # rank 0's first epoch is done: the job is well under way
        if line.startswith("epoch 1/2") or time.monotonic() > deadline:
            break
    os.killpg(proc.pid, signal.SIGINT)           # what a terminal's Ctrl-C sends: the whole group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    mine = [line for line in err.splitlines() if line.startswith(("qffs:", "qffs-torchrun:"))]
    assert mine[-1].startswith("qffs-torchrun: interrupted: every process was stopped"), err[-2000:]
    assert any(line.startswith("qffs: interrupted") for line in mine[:-1]), err[-2000:]
    assert not (tmp_path / "q.pt").exists()


def test_a_failing_worker_under_qffs_torchrun_gives_its_own_exit_code(snn_artifact, tmp_path):
    proc = _launch("evaluate", snn_artifact, "--limit", "1", "--out-dir", tmp_path / "r", cwd=tmp_path)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("qffs-torchrun: ")


REDUCE_WORKER = '''
import torch, torch.distributed as dist
from qffs.distributed import init_distributed, rank
from qffs.measures import Classification, Measure, reduce_measures

class Rows(Measure):
    def __init__(self):
        super().__init__()
        self.add_state("totals", (2, 3))

init_distributed()
calls = []
reduce = dist.all_reduce
dist.all_reduce = lambda t, *a, **k: (calls.append(t.numel()), reduce(t, *a, **k))[1]
a, b = Classification(), Rows()
a.update(torch.eye(3)[[rank()]], torch.tensor([0]))          # rank 0 right, rank 1 wrong
b.totals += rank() + 0.5
reduce_measures(a, b)
assert calls == [4 + 6], calls                                # one all-reduce of every state
assert a.compute()["accuracy"] == 0.5 and a.compute()["samples"] == 2
assert b.totals.tolist() == [[2.0] * 3] * 2 and b.totals.dtype == torch.float64
print("reduced")
'''


def test_measures_are_summed_over_processes_with_one_all_reduce(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(REDUCE_WORKER)
    r = subprocess.run([TORCHRUN, "--nproc-per-node", "2", str(script)], capture_output=True, text=True, env=ENV,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("reduced") == 2
