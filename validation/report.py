"""Statistics as one self-contained HTML page for people: a table and a chart per feature.

TFDV's own visualization (Facets) needs IPython and a browser loading remote scripts; this page
has neither dependency: plain HTML, inline CSS, charts as base64 PNGs drawn with matplotlib, so
it can be attached to an Airflow run, mailed, or opened from an artifact store offline.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Iterable

from matplotlib.figure import Figure
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2

from beam_jobs.statistics import load_statistics
from core.atomic import write_text
from transforms.features import EXAMPLE_COLUMNS, FEATURES_BY_NAME
from validation.schema import load_schema
from validation.validate import DATASET_KEY, anomalies_by_feature

# How many string values the table lists and the bar chart draws.
TABLE_TOP_VALUES = 10
CHART_TOP_VALUES = 15

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin: 0 0 .3em 0; }
section.feature { border: 1px solid #ccc; border-radius: 6px; padding: 1em; margin: 1em 0;
  display: flex; gap: 2em; flex-wrap: wrap; }
section.feature.anomalous { border-color: #c0392b; background: #fdf2f1; }
table { border-collapse: collapse; font-size: .9em; }
td, th { padding: .15em .6em; text-align: left; border-bottom: 1px solid #eee; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
p.anomaly { color: #c0392b; font-weight: 600; }
p.meta { color: #555; font-size: .9em; margin: 0 0 .5em 0; }
"""


def _number(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:,.4g}" if abs(value) >= 1e4 or abs(value) < 1e-3 else f"{value:,.4f}".rstrip("0").rstrip(".")


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _histogram_chart(numeric: statistics_pb2.NumericStatistics) -> str | None:
    """Bars of the equal-width histogram; None when TFDV kept no histogram (no values)."""
    standard = [h for h in numeric.histograms if h.type == statistics_pb2.Histogram.STANDARD]
    buckets = [b for b in standard[0].buckets] if standard else []
    if not buckets:
        return None
    # Figure (not pyplot): no global state, no GUI backend, safe in worker threads.
    figure = Figure(figsize=(4.2, 2.2))
    axes = figure.subplots()
    lows = [b.low_value for b in buckets]
    widths = [max(b.high_value - b.low_value, 1e-9) for b in buckets]
    axes.bar(lows, [b.sample_count for b in buckets], width=widths, align="edge", color="#4a7ab5", edgecolor="white")
    axes.set_ylabel("examples")
    axes.tick_params(labelsize=8)
    return _png(figure)


def _top_values_chart(values: list[tuple[str, float]]) -> str | None:
    if not values:
        return None
    shown = values[:CHART_TOP_VALUES][::-1]  # largest at the top
    figure = Figure(figsize=(4.2, 0.3 * len(shown) + 0.6))
    axes = figure.subplots()
    axes.barh([label[:40] for label, _ in shown], [count for _, count in shown], color="#4a7ab5")
    axes.set_xlabel("examples")
    axes.tick_params(labelsize=8)
    return _png(figure)


def _rows(pairs: Iterable[tuple[str, str]]) -> str:
    return "".join(f"<tr><th>{html.escape(k)}</th><td class=\"num\">{html.escape(v)}</td></tr>" for k, v in pairs)


def _common(stats: statistics_pb2.FeatureNameStatistics) -> statistics_pb2.CommonStatistics:
    if stats.HasField("num_stats"):
        return stats.num_stats.common_stats
    return stats.string_stats.common_stats


def _feature_table(stats: statistics_pb2.FeatureNameStatistics, num_examples: int) -> tuple[str, str | None]:
    """(HTML table, base64 PNG chart or None) for one feature's statistics."""
    common = _common(stats)
    present = common.num_non_missing
    missing_share = 100.0 * (num_examples - present) / num_examples if num_examples else 0.0
    pairs = [("count", _number(present)), ("missing", f"{missing_share:.1f}%")]
    if stats.HasField("num_stats"):
        numeric = stats.num_stats
        zeros = 100.0 * numeric.num_zeros / present if present else 0.0
        pairs += [
            ("mean", _number(numeric.mean)),
            ("std", _number(numeric.std_dev)),
            ("zeros", f"{zeros:.1f}%"),
            ("min", _number(numeric.min)),
            ("median", _number(numeric.median)),
            ("max", _number(numeric.max)),
        ]
        return f"<table>{_rows(pairs)}</table>", _histogram_chart(numeric)
    strings = stats.string_stats
    top = [(v.value, v.frequency) for v in strings.top_values]
    pairs += [("unique", _number(strings.unique)), ("avg length", _number(strings.avg_length))]
    pairs += [(f"#{i + 1} {value}", _number(count)) for i, (value, count) in enumerate(top[:TABLE_TOP_VALUES])]
    return f"<table>{_rows(pairs)}</table>", _top_values_chart(top)


def _schema_line(feature: schema_pb2.Feature | None) -> str:
    if feature is None:
        return "not in the schema"
    parts = [schema_pb2.FeatureType.Name(feature.type)]
    if feature.presence.min_fraction >= 1.0:
        parts.append("required")
    domain = feature.WhichOneof("domain_info")
    if domain == "int_domain":
        parts.append(f"range [{feature.int_domain.min}, {feature.int_domain.max}]")
    elif domain == "float_domain":
        parts.append(f"range [{_number(feature.float_domain.min)}, {_number(feature.float_domain.max)}]")
    elif domain == "string_domain":
        parts.append(f"{len(feature.string_domain.value)} allowed values")
    if feature.not_in_environment:
        parts.append("not in " + ", ".join(feature.not_in_environment))
    return "schema: " + ", ".join(parts)


def _ordered_names(names: Iterable[str]) -> list[str]:
    """Raw features in their features.py order, then anything else alphabetically."""
    known = set(names)
    return [n for n in EXAMPLE_COLUMNS if n in known] + sorted(known - set(EXAMPLE_COLUMNS))


def _dataset_html(
    dataset: statistics_pb2.DatasetFeatureStatistics,
    schema: schema_pb2.Schema | None,
    problems: dict[str, str],
) -> str:
    by_name = {".".join(f.path.step) or f.name: f for f in dataset.features}
    schema_features = {f.name: f for f in schema.feature} if schema is not None else {}
    sections = []
    for name in _ordered_names([*by_name, *schema_features, *problems.keys() - {DATASET_KEY}]):
        stats = by_name.get(name)
        if stats is not None:
            table, chart = _feature_table(stats, dataset.num_examples)
        else:
            table, chart = "<p>No values in this dataset (missing in every example).</p>", None
        declared = FEATURES_BY_NAME.get(name)
        meta = [html.escape(declared.description) if declared else "not declared in transforms/features.py"]
        if schema is not None:
            meta.append(html.escape(_schema_line(schema_features.get(name))))
        anomaly = f"<p class=\"anomaly\">Anomaly: {html.escape(problems[name])}</p>" if name in problems else ""
        image = f"<img alt=\"distribution of {html.escape(name)}\" src=\"data:image/png;base64,{chart}\">" if chart else ""
        css = "feature anomalous" if name in problems else "feature"
        sections.append(
            f"<section class=\"{css}\" id=\"feature-{html.escape(name)}\"><div><h2>{html.escape(name)}</h2>"
            f"<p class=\"meta\">{' &middot; '.join(meta)}</p>{anomaly}{table}</div>{image}</section>"
        )
    title = html.escape(dataset.name or "dataset")
    dataset_problem = problems.get(DATASET_KEY)
    banner = f"<p class=\"anomaly\">Dataset anomaly: {html.escape(dataset_problem)}</p>" if dataset_problem else ""
    summary = f"{_number(dataset.num_examples)} examples, {len(by_name)} features with values"
    return f"<h2>{title}</h2><p>{summary}</p>{banner}{''.join(sections)}"


def render_statistics_html(
    stats_path: Path,
    output_html: Path,
    schema_path: Path | None = None,
    anomalies: anomalies_pb2.Anomalies | None = None,
    *,
    title: str = "Data statistics",
    preface: str = "",
) -> Path:
    """Writes a single self-contained HTML page of the statistics in `stats_path` (FeatureStats.pb).

    With a schema, each feature shows its declared type, presence and range, and features the
    schema declares but the data lacks get a section too. With anomalies, affected features are
    highlighted with TFDV's description. `preface` (plain text, e.g. what cleaning rejected) is shown
    above the features. Written atomically; returns `output_html`.
    """
    statistics = load_statistics(stats_path)
    schema = load_schema(schema_path) if schema_path is not None else None
    problems = anomalies_by_feature(anomalies) if anomalies is not None else {}
    body = "".join(_dataset_html(dataset, schema, problems) for dataset in statistics.datasets)
    if not statistics.datasets:
        body = "<p>The statistics file holds no dataset.</p>"
    count = f"{len(problems)} anomalies" if anomalies is not None else "anomalies not checked"
    preface_html = f"<pre class=\"preface\">{html.escape(preface)}</pre>" if preface else ""
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>Statistics: {html.escape(str(stats_path))}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p class=\"meta\">{html.escape(str(stats_path))}"
        f"{' &middot; schema ' + html.escape(str(schema_path)) if schema_path is not None else ''}"
        f" &middot; {count}</p>{preface_html}{body}</body></html>\n"
    )
    write_text(output_html, page)
    return Path(output_html)
