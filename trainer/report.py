"""The evaluation report: one self-contained HTML file (charts are inline PNGs, no external assets).

It is rendered from the evaluation document (the content of `evaluation.json`), so it can be
re-rendered later with more links (`rewrite_report`) when monitoring reports for the same model
version appear, without scoring the model again. No TensorFlow here.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import types
import urllib.parse
from pathlib import Path
from typing import Any, Mapping, Sequence

from matplotlib.figure import Figure  # the object API: no pyplot global state, no GUI backend

from core.atomic import write_text

_NO_LINKS: Mapping[str, str] = types.MappingProxyType({})
# Report order; counts are shown as integers.
_METRICS = ("auc", "accuracy", "precision", "recall", "f1", "log_loss", "positive_rate", "mean_probability", "count")
_SLICE_COLUMNS = ("auc", "accuracy", "precision", "recall", "f1", "log_loss")
_SAFE_URL_SCHEMES = ("", "http", "https", "file")
_COLORS = ("#1f77b4", "#ff7f0e")

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.blessed { color: #0a6b1f; } .not-blessed { color: #a31515; }
.figures img { max-width: 49%; } .meta td { text-align: left; }
"""


def render_report(document: Mapping[str, Any], related_links: Mapping[str, str] = _NO_LINKS) -> str:
    """The HTML for one evaluation document; `related_links` is title -> URL."""
    model_label = document["model"]["label"]
    baseline = document.get("baseline")
    baseline_label = baseline["label"] if baseline else None
    blessed = bool(document["blessed"])
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Evaluation: {_e(model_label)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Model evaluation: {_e(model_label)}</h1>",
        _meta_table(document),
        '<section id="decision"><h2>Decision</h2>',
        f'<p class="{"blessed" if blessed else "not-blessed"}"><strong>{"BLESSED" if blessed else "NOT BLESSED"}</strong></p>',
        "<ul>" + "".join(f"<li>{_e(reason)}</li>" for reason in document["reasons"]) + "</ul></section>",
        _recent_section(document.get("recent_traffic"), model_label, baseline_label),
        '<section id="metrics"><h2>Overall metrics</h2>',
        _overall_table(document["metrics"], document.get("baseline_metrics"), model_label, baseline_label),
        "</section>",
        '<section id="curves"><h2>ROC, calibration and scores</h2><div class="figures">',
        _img(_roc_figure(document["curves"]), "ROC curve"),
        _img(_calibration_figure(document["curves"]), "Calibration"),
        _img(_histogram_figure(document["curves"]), "Score histogram by actual class"),
        "</div></section>",
        '<section id="slices"><h2>Slices</h2>',
    ]
    baseline_slices = document.get("baseline_slices") or {}
    for name, values in document["slices"].items():
        parts.append(f"<h3>{_e(name)}</h3>")
        parts.append(_img(_slice_figure(name, values, baseline_slices.get(name), model_label, baseline_label), f"AUC by {name}"))
        parts.append(_slice_table(values, baseline_slices.get(name), model_label, baseline_label))
    parts.append("</section>")
    parts.append(_links_section(related_links))
    parts.append("</body></html>")
    return "\n".join(parts)


def _recent_section(recent: Mapping[str, Any] | None, model_label: str, baseline_label: str | None) -> str:
    """The models on the held-out recent labelled production traffic (absent without production data)."""
    if not recent:
        return ""
    parts = ['<section id="recent-traffic"><h2>Held-out recent traffic</h2>',
             f"<p>{recent['rows']} labelled production rows held out of training (eval split, by request id): "
             f"{_e(recent.get('reason', ''))}</p>"]
    if recent["metrics"]:
        metrics = recent["metrics"]
        served = baseline_label if baseline_label in metrics else None
        parts.append(_overall_table(metrics[model_label], metrics.get(served) if served else None, model_label, served))
    parts.append("</section>")
    return "".join(parts)


def write_report(document: Mapping[str, Any], path: Path, related_links: Mapping[str, str] = _NO_LINKS) -> Path:
    """Renders and writes the report atomically (core.atomic: temp file, fsync, rename)."""
    return write_text(path, render_report(document, related_links))


def rewrite_report(evaluation_json: Path, related_links: Mapping[str, str]) -> Path:
    """Re-renders the report next to `evaluation_json` with these links (e.g. monitoring reports)."""
    evaluation_json = Path(evaluation_json)
    document = json.loads(evaluation_json.read_text(encoding="utf-8"))
    return write_report(document, evaluation_json.parent / document["report_html"], related_links)


# --- Pieces ------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any, metric: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if metric == "count":
        return f"{int(value):,}"
    return f"{float(value):.4f}"


def _is_defined(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _meta_table(document: Mapping[str, Any]) -> str:
    baseline = document.get("baseline")
    config = document.get("config", {})
    rows = [
        ("Model", f"{document['model']['label']}: {document['model']['path']}"),
        ("Baseline", f"{baseline['label']}: {baseline['path']}" if baseline else "none (first model)"),
        ("Examples", f"{document['examples']['path']} (split {document['examples']['split']})"),
        ("Rules", ", ".join(f"{key} = {value}" for key, value in config.items())),
        ("Generated", document.get("generated_at", "")),
    ]
    return '<table class="meta">' + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows) + "</table>"


def _overall_table(metrics: Mapping[str, Any], baseline: Mapping[str, Any] | None, model_label: str, baseline_label: str | None) -> str:
    header = f"<tr><th>metric</th><th>{_e(model_label)}</th>"
    if baseline is not None:
        header += f"<th>{_e(baseline_label)}</th><th>difference</th>"
    rows = [header + "</tr>"]
    for metric in _METRICS:
        if metric not in metrics:
            continue
        row = f"<tr><td>{metric}</td><td>{_number(metrics[metric], metric)}</td>"
        if baseline is not None:
            ours, theirs = metrics[metric], baseline.get(metric)
            diff = ours - theirs if _is_defined(ours) and _is_defined(theirs) else None
            row += f"<td>{_number(theirs, metric)}</td><td>{_number(diff, metric) if metric != 'count' else ''}</td>"
        rows.append(row + "</tr>")
    return "<table>" + "".join(rows) + "</table>"


def _slice_table(values: Mapping[str, Mapping[str, Any]], baseline: Mapping[str, Mapping[str, Any]] | None, model_label: str, baseline_label: str | None) -> str:
    header = "<tr><th>value</th><th>count</th><th>positive_rate</th>" + "".join(f"<th>{c}</th>" for c in _SLICE_COLUMNS)
    if baseline is not None:
        header += f"<th>auc ({_e(baseline_label)})</th>"
    rows = [header + "</tr>"]
    for value, metrics in values.items():
        row = f"<tr><td>{_e(value)}</td><td>{_number(metrics['count'], 'count')}</td><td>{_number(metrics['positive_rate'])}</td>"
        row += "".join(f"<td>{_number(metrics[c])}</td>" for c in _SLICE_COLUMNS)
        if baseline is not None:
            row += f"<td>{_number((baseline.get(value) or {}).get('auc'))}</td>"
        rows.append(row + "</tr>")
    caption = f"<caption>{_e(model_label)}; n/a = undefined (a single class in the slice)</caption>"
    return "<table>" + caption + "".join(rows) + "</table>"


def _links_section(related_links: Mapping[str, str]) -> str:
    items = []
    for title, url in related_links.items():
        if urllib.parse.urlsplit(url).scheme not in _SAFE_URL_SCHEMES:
            raise ValueError(f"related link {title!r}: {url!r} must be relative or http(s)/file, nothing that runs script")
        items.append(f'<li><a href="{_e(url)}">{_e(title)}</a></li>')
    body = "<ul>" + "".join(items) + "</ul>" if items else "<p>No related reports yet.</p>"
    return f'<section id="links"><h2>Related reports</h2>{body}</section>'


# --- Figures ------------------------------------------------------------------------------------


def _img(figure: Figure, alt: str) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{encoded}">'


def _roc_figure(curves: Mapping[str, Any]) -> Figure:
    figure = Figure(figsize=(5, 4.2))
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey", label="chance")
    for color, (label, curve) in zip(_COLORS, curves.items()):
        if curve["roc"]["fpr"]:
            axes.plot(curve["roc"]["fpr"], curve["roc"]["tpr"], color=color, label=label)
    axes.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC", xlim=(0, 1), ylim=(0, 1.01))
    axes.legend(loc="lower right")
    return figure


def _calibration_figure(curves: Mapping[str, Any]) -> Figure:
    figure = Figure(figsize=(5, 4.2))
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey", label="perfect")
    for color, (label, curve) in zip(_COLORS, curves.items()):
        bins = curve["calibration"]
        axes.plot(bins["mean_predicted"], bins["observed_rate"], marker="o", color=color, label=label)
    axes.set(xlabel="mean predicted probability", ylabel="observed big-tipper rate", title="Calibration", xlim=(0, 1), ylim=(0, 1.01))
    axes.legend(loc="upper left")
    return figure


def _histogram_figure(curves: Mapping[str, Any]) -> Figure:
    figure = Figure(figsize=(5 * len(curves), 3.6))
    for index, (label, curve) in enumerate(curves.items()):
        axes = figure.add_subplot(1, len(curves), index + 1)
        histogram = curve["histogram"]
        edges = histogram["edges"]
        widths = [right - left for left, right in zip(edges[:-1], edges[1:])]
        axes.bar(edges[:-1], histogram["negatives"], width=widths, align="edge", alpha=0.6, label="actual negative")
        axes.bar(edges[:-1], histogram["positives"], width=widths, align="edge", alpha=0.6, label="actual positive")
        axes.set(xlabel="predicted probability", ylabel="rows", title=f"Scores: {label}", xlim=(0, 1))
        axes.legend()
    return figure


def _slice_figure(
    name: str,
    values: Mapping[str, Mapping[str, Any]],
    baseline: Mapping[str, Mapping[str, Any]] | None,
    model_label: str,
    baseline_label: str | None,
) -> Figure:
    keys: Sequence[str] = list(values)
    figure = Figure(figsize=(max(5.0, 0.9 * len(keys) + 2), 3.6))
    axes = figure.add_subplot()
    series = [(model_label, values)] + ([(baseline_label, baseline)] if baseline is not None else [])
    width = 0.8 / len(series)
    for index, (label, metrics) in enumerate(series):
        aucs = [((metrics or {}).get(key) or {}).get("auc") for key in keys]
        positions = [k + index * width for k in range(len(keys))]
        axes.bar(positions, [float(a) if _is_defined(a) else 0.0 for a in aucs], width=width, color=_COLORS[index], label=label)
        for position, value in zip(positions, aucs):
            if not _is_defined(value):  # a bar of height 0 would read as "AUC 0"
                axes.text(position, 0.02, "n/a", ha="center", fontsize=8)
    axes.set_xticks([k + width * (len(series) - 1) / 2 for k in range(len(keys))])
    axes.set_xticklabels(keys, rotation=30, ha="right")
    axes.set(ylabel="AUC", title=f"AUC by {name} (n/a: one class only)", ylim=(0, 1))
    axes.legend()
    return figure

