"""One self-contained HTML page per run folder: what was run, the curve, the figures, the tables.

``qffs report RUN_DIR`` (and ``qffs run``, ``qffs evaluate --report``): reads the folder's
``curve.json``, draws the figures it has data for (:mod:`qffs.figures`), and writes
``report.html`` with every image embedded (base64) and no script or style from elsewhere, so it
opens anywhere without a network. An ``ablation.json`` (``qffs ablate``) and export checks
(``*.onnx.json``, ``*.nir.json`` from ``qffs export``) in the folder get sections of their own.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from qffs.errors import QffsError
from qffs.figures import FIGURES, draw_figures
from qffs.files import atomic_path
from qffs.report import EXIT_PLOT

#: The page's file in the run folder.
REPORT_PAGE = "report.html"

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}td,th{border:1px solid #ddd;padding:.2em .5em}
td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#f4f4f4}
img{max-width:100%;display:block;margin:.6em 0}pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.8em}
figcaption{font-size:.85em;color:#555}.note{color:#555;font-size:.9em}"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _numeric(value: Any) -> bool:
    """Whether a cell is a number (right-aligned): 12, 0.345, 3,268,943, +0.09, 92.1%."""
    text = str(value).replace(",", "").replace(".", "").replace("%", "").lstrip("+-−")
    return isinstance(value, (int, float)) or text.isdigit()


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="n">{_e(v)}</td>' if _numeric(v) else f"<td>{_e(v)}</td>"
                                    for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _image(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{_e(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def _section(title: str, *parts: str) -> str:
    return f"<section><h2>{_e(title)}</h2>{''.join(parts)}</section>"


def _curve_section(report: dict[str, Any], folder: Path) -> str:
    curves = report.get("snn_accuracy_by_readout") or {"count": report["snn_accuracy"]}
    qann = report.get("qann_accuracy")
    rows = [[t, *(_pct(c[i]) for c in curves.values()), "" if qann is None else
             f"{100 * (qann - report['snn_accuracy'][i]):+.2f}"] for i, t in enumerate(report["timesteps"])]
    table = _table(["t", *(f"{name} %" for name in curves), "QANN − SNN (pp)"], rows)
    image = _image(folder / "curve.png", "SNN accuracy against time step") if (folder / "curve.png").exists() else ""
    return _section("Latency–accuracy", image, table)


def _layer_section(report: dict[str, Any], images: str) -> str:
    rows = [[r["name"], r["neurons"], f"{r['pos_spikes_per_neuron']:.4f}", f"{r['neg_spikes_per_neuron']:.4f}",
             f"{r['spike_rate']:.4f}", "—" if r.get("mismatch_fraction") is None else
             f"{100 * r['mismatch_fraction']:.3f}%"] for r in report["layers"]]
    table = _table(["IF layer", "neurons/sample", "+spikes/neuron", "−spikes/neuron", "spike rate", "off level at T"],
                   rows)
    return _section("Layers", f'<p class="note">{report["samples"]:,} test images, T={report["timesteps"][-1]}.</p>',
                    table, images)


def _count(x: float) -> str:
    """A count or energy for a table: thousands separated from 100 up, three significant digits below."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _energy_section(report: dict[str, Any], images: str) -> str:
    e = report["energy"]
    rows = [[r["name"], _count(r["macs"]), _count(r["synops_per_sample"]), _count(r["input_events_per_sample"]),
             _count(r["synops_per_sample"] * e["e_ac_pj"] / 1e3), _count(r["macs"] * e["e_mac_pj"] / 1e3)]
            for r in report["synapses"]]
    note = (f'<p class="note">SNN = SOPs × E_AC, ANN = MACs × E_MAC with E_AC = {e["e_ac_pj"]:g} pJ, E_MAC = '
            f'{e["e_mac_pj"]:g} pJ per operation (presets from Horowitz, ISSCC 2014, 45 nm: docs/cli.md). Per sample: '
            f'SNN {e["snn_pj"] / 1e6:.4g} µJ, ANN {e["ann_pj"] / 1e6:.4g} µJ, ratio {e["ratio"]:.3g}.</p>')
    table = _table(["weighted layer", "ANN MACs", "SOPs/sample", "input events/sample", "SNN nJ", "ANN nJ"], rows)
    return _section("Energy", note, images, table)


def _summary(report: dict[str, Any]) -> str:
    conv = report.get("convergence") or {}
    fp = report.get("fp_accuracy")
    items = [f"{report['samples']:,} test images; readout {report.get('readout', 'count')}",
             f"FP {_pct(fp)}%" + (f" ({report['fp_samples']:,} test images)" if fp is not None and
                                   report.get("fp_samples") not in (None, report["samples"]) else ""),
             f"QANN {_pct(report.get('qann_accuracy'))}% (epoch chosen on the "
             f"{report.get('qann_selected_on') or 'unrecorded'} set)",
             f"SNN at T={report['timesteps'][-1]}: {_pct(report['snn_accuracy'][-1])}%",
             "latency to lossless (≥ QANN − 0.1 pp): " + (f"t = {report['latency_to_lossless']}"
                                                          if report.get("latency_to_lossless") else "not reached")]
    if conv.get("mean") is not None:
        items.append(f"convergence step mean {conv['mean']:.2f}, p99 {conv['p99']:.0f}; not quiet by T: "
                     f"{conv['unconverged']}")
    if report.get("finetune"):
        items.append("fine-tuned SNN: it no longer equals its QANN (invariant E left on purpose)")
    return "<ul>" + "".join(f"<li>{_e(i)}</li>" for i in items) + "</ul>"


def _json_section(title: str, value: Any) -> str:
    return _section(title, f"<pre>{_e(json.dumps(value, indent=2, default=str))}</pre>")


def _extras(folder: Path) -> list[str]:
    """Sections for an ablation and export checks found in ``folder``."""
    parts = []
    ablation = folder / "ablation.json"
    if ablation.exists():
        result = json.loads(ablation.read_text())
        rows = [[r["setting"], _pct(r["qann_accuracy"]), _pct(r["snn_accuracy"][-1]),
                 r["latency_to_lossless"] or "—"] for r in result.get("rows", [])]
        image = _image(folder / "ablation.png", "ablation curves") if (folder / "ablation.png").exists() else ""
        parts.append(_section("Ablation", f"<p>{_e(result.get('title', ''))}</p>", image,
                              _table(["setting", "QANN %", f"SNN at T={len(result['timesteps'])} %", "lossless at"],
                                     rows)))
    checks = sorted([*folder.glob("*.onnx.json"), *folder.glob("*.nir.json")])
    if checks:
        parts.append(_section("Export checks", *(f"<h3>{_e(p.name[:-5])}</h3><pre>{_e(p.read_text())}</pre>"
                                                 for p in checks)))
    return parts


def render_page(report: dict[str, Any], folder: Path) -> str:
    """The page of the report ``report`` whose files (figures, curve.png) are in ``folder``."""
    figures = {f.file: _image(folder / f.file, f.caption) for f in FIGURES if (folder / f.file).exists()}
    env = report.get("environment") or {}
    body = [f"<h1>{_e(report.get('title', 'latency–accuracy'))}</h1>",
            _section("Command", f"<pre>{_e(env.get('command', 'not recorded'))}</pre>", _summary(report)),
            _curve_section(report, folder),
            _layer_section(report, figures.get("layers.png", "") + figures.get("off_level.png", "")),
            _section("Samples", *(figures.get(k, "") for k in ("convergence.png", "per_class.png", "examples.png"))),
            _energy_section(report, figures.get("energy.png", ""))]
    if (folder / EXIT_PLOT).exists():
        body.append(_section("Early exit", _image(folder / EXIT_PLOT, "early-exit trade-off")))
    body += _extras(folder)
    body += [_json_section("Configuration", {"config": report.get("config"), "conversion": report.get("conversion"),
                                             "quantize": report.get("quantize")}),
             _json_section("Environment", env)]
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(report.get('title', 'qffs'))}"
            f"</title><style>{STYLE}</style></head><body>{''.join(body)}</body></html>")


def write_page(folder: str | Path, *, draw: bool = True) -> Path:
    """Write ``report.html`` into the run folder ``folder`` from its ``curve.json`` (``draw``: draw
    the figures first, from the same JSON). Atomic: a reader never sees half a page."""
    folder = Path(folder)
    source = folder / "curve.json"
    if not source.is_file():
        raise QffsError(f"{folder} has no curve.json: point qffs report at the --out-dir of qffs evaluate or qffs run")
    try:
        report = json.loads(source.read_text())
    except json.JSONDecodeError as err:
        raise QffsError(f"{source} is not a report's JSON ({err})") from None
    if draw:
        draw_figures(report, folder)
    page = folder / REPORT_PAGE
    with atomic_path(page) as tmp:
        Path(tmp).write_text(render_page(report, folder), encoding="utf-8")
    return page


__all__ = ["REPORT_PAGE", "render_page", "write_page"]
