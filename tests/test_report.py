"""Report measures (SPEC §6) and the files a user gets."""

from __future__ import annotations

import csv
import json

import pytest
from PIL import Image

from qffs.report import energy_estimate, latency_to_lossless, percentiles, write_report


def test_latency_to_lossless_uses_a_tenth_of_a_point():
    curve = [0.10, 0.80, 0.9189, 0.9190, 0.9200]
    assert latency_to_lossless(curve, 0.9200) == 4        # 91.90 >= 92.00 - 0.10
    assert latency_to_lossless(curve, 0.9300) is None      # never within 0.1 pp
    assert latency_to_lossless(curve, None) is None
    assert latency_to_lossless([0.5], 0.3) == 1


def test_percentiles_nearest_rank():
    p = percentiles(list(range(1, 101)))
    assert p == {"mean": 50.5, "max": 100.0, "p50": 50.0, "p90": 90.0, "p99": 99.0}
    assert percentiles([]) == {}


def test_energy_defaults_are_horowitz_45nm():
    e = energy_estimate(sops=1000, macs=1000)
    assert e["snn_pj"] == pytest.approx(900.0) and e["ann_pj"] == pytest.approx(4600.0)
    assert e["ratio"] == pytest.approx(0.9 / 4.6)
    assert energy_estimate(10, 5, e_ac=1.0, e_mac=2.0)["ratio"] == pytest.approx(1.0)


def test_write_report_files(tmp_path):
    report = {"timesteps": [1, 2, 3], "snn_accuracy": [0.2, 0.7, 0.9], "tied": [0.1, 0.0, 0.0],
              "qann_accuracy": 0.9, "fp_accuracy": 0.92, "latency_to_lossless": 3, "title": "t"}
    paths = write_report(report, tmp_path / "out")
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [r["t"] for r in rows] == ["1", "2", "3"]
    assert float(rows[0]["conversion_loss"]) == pytest.approx(0.7)
    data = json.loads(paths["json"].read_text())
    assert data["snn_accuracy"] == [0.2, 0.7, 0.9] and data["environment"]["torch"]
    with Image.open(paths["png"]) as img:
        img.verify()
        assert img.format == "PNG"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["curve.csv", "curve.json", "curve.png"]


def test_fp_reference_names_its_sample_count_only_when_it_differs():
    from qffs.report import fp_label

    assert fp_label({"fp_accuracy": 0.9341, "fp_samples": 10_000, "samples": 10_000}) == "FP 93.41%"
    assert fp_label({"fp_accuracy": 0.9341, "fp_samples": 10_000, "samples": 512}) == "FP 93.41% (10,000 test images)"
    assert fp_label({"fp_accuracy": 0.9341}) == "FP 93.41%"   # QANNs written before fp_samples existed


def test_the_terminal_report_escapes_what_came_from_a_file(capsys):
    from qffs.cli.render import console, print_report

    report = {"timesteps": [1], "snn_accuracy": [0.5], "tied": [0.0], "qann_accuracy": 0.5, "samples": 4,
              "title": "/tmp/\x1b[2J\x1b]0;pwn\x07[bold red]x[/]/model.py:net on fashion-mnist",
              "spikes_per_neuron_per_sample": 0.1, "synops_per_sample": 1.0, "ann_macs_per_sample": 1.0}
    with console.capture() as captured:
        print_report(report)
    text = captured.get()
    assert "\x1b]0;" not in text and "\x07" not in text and "\x1b[2J" not in text
    assert "\\x1b[2J\\x1b]0;pwn\\x07[bold red]x[/]" in text            # shown escaped, markup as written
