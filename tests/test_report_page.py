"""The report of a run: figures drawn from its JSON, one self-contained HTML page, and that page in Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import torch
from PIL import Image

from qffs.errors import QffsError
from qffs.evaluate import evaluate_snn
from qffs.figures import FIGURE_FILES
from qffs.probe import probe_samples
from qffs.report import ENERGY_PRESETS, parse_energy
from qffs.report_page import REPORT_PAGE
from tests.conftest import calibrated_shipped_qann
from tests.test_cli import SHIPPED, qffs

#: The headings of a run folder with an ablation and an export check beside its evaluation.
SECTIONS = ["Command", "Latency–accuracy", "Layers", "Samples", "Energy", "Ablation", "Export checks",
            "Configuration", "Environment"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A small run: a calibrated QANN, its SNN, an ablation, an ONNX export and an evaluation with --report."""
    from qffs.cli.main import main

    folder = tmp_path_factory.mktemp("report")
    out = folder / "out"
    steps = [("quantize", SHIPPED, "--epochs", "0", "--limit", "256", "--val-size", "64", "--test-limit", "64",
              "--out", folder / "q.pt"),
             ("convert", folder / "q.pt", "--out", folder / "snn.pt"),
             ("ablate", folder / "q.pt", "--limit", "64", "-T", "6", "--out-dir", out),
             ("export", folder / "snn.pt", "--to", "nir", "--out", out / "snn.nir")]
    for step in steps:                  # in-process (start-up time); the evaluation as a user runs it
        assert main([str(a) for a in step]) == 0, step[0]
    r = qffs("evaluate", folder / "snn.pt", "-T", "6", "--limit", "64", "--report", "--examples", "2",
             "--energy", "int8-45nm", "--out-dir", out)
    assert r.returncode == 0, r.stderr
    return out, r.stdout


def test_evaluate_report_writes_every_figure_and_a_page_that_needs_no_network(run_dir):
    out, stdout = run_dir
    assert all((out / name).is_file() for name in (*FIGURE_FILES, REPORT_PAGE, "snn.nir.json"))
    page = (out / REPORT_PAGE).read_text()
    assert re.findall(r"<h2>(.*?)</h2>", page) == SECTIONS
    sources = re.findall(r'<img[^>]* src="([^"]*)"', page)
    assert len(sources) == 1 + len(FIGURE_FILES) + 1            # the curve, the figures, the ablation's plot
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r'(src|href)="(https?:)?//', page) and "<script" not in page and "<link" not in page
    report = json.loads((out / "curve.json").read_text())
    assert report["environment"]["command"].startswith("qffs evaluate ") and "--report" in report["environment"][
        "command"]
    assert "qffs evaluate " in page                              # the page names its command
    # --energy int8-45nm: the constants are recorded, used, and printed
    e = report["energy"]
    assert (e["e_ac_pj"], e["e_mac_pj"]) == ENERGY_PRESETS["int8-45nm"]
    assert e["snn_pj"] == pytest.approx(report["synops_per_sample"] * 0.03)
    assert "0.03 pJ per accumulate, 0.23 pJ per MAC" in stdout
    probe = report["probe"]
    assert probe["samples"] == 64 and len(probe["examples"]) == 2 and report["class_names"][0] == "T-shirt/top"


def test_qffs_report_draws_the_figures_again_and_refuses_a_folder_without_a_report(run_dir, tmp_path, cli):
    out, _ = run_dir
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for name in (*FIGURE_FILES, REPORT_PAGE):
        (copy / name).unlink()
    r = cli("report", copy)
    assert r.returncode == 0, r.stderr
    assert all((copy / name).is_file() for name in (*FIGURE_FILES, REPORT_PAGE))
    r = cli("report", tmp_path / "empty")
    assert r.returncode == 2 and "has no curve.json" in r.stderr


def test_the_probe_ends_where_the_evaluation_does_and_its_raster_adds_up_to_the_counts():
    from torch.utils.data import DataLoader, TensorDataset

    from qffs.data import load_dataset, make_loader
    from qffs.snn.convert import convert

    qann = calibrated_shipped_qann(256).double()
    snn = convert(qann).double()
    x, y = next(iter(make_loader(load_dataset("fashion-mnist", "test", limit=48), 48)))
    x = x.double()
    probe = probe_samples(snn, x, y, 7, qann=qann, examples=3, chunk=20)    # chunks of 20, 20, 8 samples
    report = evaluate_snn(snn, DataLoader(TensorDataset(x, y), batch_size=16), 7, qann=qann, dtype=torch.float64)
    for layer in report.layers:            # after T the fraction off level is the evaluation's mismatch
        assert probe["off_level"][layer.name][-1] == pytest.approx(layer.mismatch_fraction, abs=1e-12)
    result = snn.simulate(x[:3], 7, record_counts=True)
    counts = {r.name: r.counts.reshape(3, -1) for r in result.neurons}
    for b, example in enumerate(probe["examples"]):
        assert example["label"] == int(y[b])
        for name, raster in example["raster"].items():
            finals = [sum(row) for row in raster["spikes"]]
            assert finals == counts[name][b, raster["neurons"]].round().long().tolist()
            assert raster["active_neurons"] >= len(raster["neurons"])
        trace = torch.tensor(example["output_trace"])            # [classes, T]
        membrane = result.readouts["count"]                      # the same run: its counts × s at T
        assert trace.shape == (membrane.shape[-1], 7)


def test_energy_presets_and_pairs_are_parsed_and_nonsense_is_refused():
    assert parse_energy("fp32-45nm") == (0.9, 4.6)
    assert parse_energy("0.5,2") == (0.5, 2.0)
    for bad in ("int4", "1", "0,1", "-1,2", "a,b", "nan,1"):
        with pytest.raises(QffsError, match="--energy"):
            parse_energy(bad)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

#: Run in the page once it has loaded: what the images and headings are, written where --dump-dom shows it.
CHECKER = ("<script>addEventListener('load',()=>{const i=[...document.images];const b=document.body;"
           "b.dataset.images=i.length;b.dataset.broken=i.filter(m=>!(m.complete&&m.naturalWidth>0)).length;"
           "b.dataset.headings=[...document.querySelectorAll('h2')].map(h=>h.textContent).join('|')});</script>")


def _chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (make setup installs Debian's chromium)")
def test_the_page_renders_in_chromium_with_every_section_and_every_image(run_dir, tmp_path):
    out, _ = run_dir
    page = (out / REPORT_PAGE).read_text()
    checked = tmp_path / "checked.html"
    checked.write_text(page.replace("</body>", CHECKER + "</body>"))
    dom = _chromium("--virtual-time-budget=10000", "--dump-dom", checked.as_uri()).stdout
    body = re.search(r"<body([^>]*)>", dom)
    assert body, dom[:500]
    attrs = dict(re.findall(r'data-(\w+)="([^"]*)"', body.group(1)))
    assert attrs["headings"].split("|") == SECTIONS
    assert int(attrs["images"]) == len(re.findall(r"<img", page)) and attrs["broken"] == "0"
    shot = tmp_path / "report.png"
    r = _chromium("--window-size=1200,2400", f"--screenshot={shot}", (out / REPORT_PAGE).as_uri())
    assert shot.is_file(), r.stderr[-2000:]
    image = Image.open(shot).convert("L")
    histogram = image.histogram()
    not_white = 1 - histogram[255] / sum(histogram)
    assert image.size == (1200, 2400) and not_white > 0.05       # text, tables and plots, not a blank page
