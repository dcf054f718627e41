"""qffs ablate on a tiny subset (64 images): every setting's row, and the mechanisms' effect on neuron levels."""

from __future__ import annotations

import csv
import json

import pytest

from tests.test_cli import SHIPPED, qffs


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ablate")
    for name, bits in (("q3.pt", "3"), ("q0.pt", "0")):   # calibrated only: 3-bit and analog output
        r = qffs("quantize", SHIPPED, "--epochs", "0", "--limit", "256", "--test-limit", "256", "--output-bits", bits,
                 "--out", folder / name)
        assert r.returncode == 0, r.stderr
    r = qffs("ablate", folder / "q3.pt", "--also", folder / "q0.pt", "--limit", "64", "-T", "16", "--double",
             "--out-dir", folder / "out")
    assert r.returncode == 0, r.stderr
    return folder / "out", r.stdout


def test_the_table_has_every_setting_and_the_files_appear_together(ablation):
    out, stdout = ablation
    assert sorted(p.name for p in out.iterdir()) == ["ablation.csv", "ablation.json", "ablation.png"]
    rows = list(csv.DictReader((out / "ablation.csv").open()))
    assert [r["setting"] for r in rows] == ["QFFS", "no negative spikes", "stopped at T_in", "naive max pooling",
                                           "no pre-charge", "QFFS, analog output"]
    assert "acc_t8" in rows[0] and "acc_t16" in rows[0] and "results:" in stdout and "no negative spikes" in stdout


def test_full_qffs_is_exact_and_each_ablation_leaves_neurons_off_their_level(ablation):
    out, _ = ablation
    result = json.loads((out / "ablation.json").read_text())
    rows = {r["setting"]: r for r in result["rows"]}
    full = rows["QFFS"]
    assert full["unconverged"] == 0 and full["off_level_fraction"] == 0
    assert full["snn_accuracy"][-1] == full["qann_accuracy"]
    assert full["latency_to_lossless"] is not None
    for name in ("no negative spikes", "naive max pooling", "no pre-charge"):
        assert rows[name]["off_level_fraction"] > 0, name
    stopped = rows["stopped at T_in"]
    window = stopped["steps_simulated"]
    assert window == stopped["input_window"] == 3 and full["steps_simulated"] == 16
    assert stopped["snn_accuracy"][window:] == [stopped["snn_accuracy"][window - 1]] * (16 - window)   # frozen
    analog = rows["QFFS, analog output"]
    assert analog["off_level_fraction"] == 0 and analog["qann"].startswith("q0.pt")


def test_rows_of_another_layout_name_what_differs():
    from qffs.artifacts import QuantConfig
    from qffs.jobs.ablate import _output_label

    assert _output_label(QuantConfig(bits=2, output_bits=3)) == "3-bit output"
    assert _output_label(QuantConfig(bits=2, output_bits=None), 2) == "analog output"
    assert _output_label(QuantConfig(bits=3, output_bits=3), 2) == "3-bit hidden / 3-bit output"
