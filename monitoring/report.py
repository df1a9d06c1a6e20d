"""The monitoring report: one self-contained HTML page per check run (inline PNGs, no scripts, no network).

What a person opening it needs, top to bottom: the verdict and which checks failed; per feature,
the training (and previous window) distribution next to the window's, with the drift score
against its threshold; missing-value rates; schema anomalies; the distribution of predicted
probabilities; estimated (label-free) and realized performance; a timeline across windows; concept-drift metrics and the
sequential detectors with the slices that moved; agreement with the people reviewing the model's cases (per degree of
automation and per slice) and the readiness verdict for the next degree; links to the model's evaluation report.
"""

from __future__ import annotations

import base64
import html
import io
import math
import urllib.parse
from pathlib import Path
from typing import Any, Mapping, Sequence

from matplotlib.figure import Figure  # the object API: no pyplot global state, no GUI backend

from core.atomic import write_text
from monitoring import results
from monitoring.drift import FeatureScore
from transforms.features import SERVING_COLUMNS

_SAFE_SCHEMES = ("", "http", "https", "file")
MAX_REPORT_SLICES = 10
_COLORS = {"training": "#4a7ab5", "previous": "#9b9b9b", "current": "#e07b39"}
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; }
h1 { font-size: 1.5em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5em 0 1.2em; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .2em .55em; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.pass { color: #0a6b1f; font-weight: 600; } .fail { color: #a31515; font-weight: 600; } .skip { color: #777; }
.verdict { font-size: 1.2em; padding: .5em .8em; border-radius: 6px; display: inline-block; }
.verdict.pass { background: #e7f5ea; } .verdict.fail { background: #fbeaea; }
.features { display: flex; flex-wrap: wrap; gap: 1em; }
.feature { border: 1px solid #ccc; border-radius: 6px; padding: .6em; width: 530px; }
.feature table { font-size: .82em; width: 100%; }
.feature.drifted { border-color: #a31515; background: #fdf4f4; }
.feature h3 { margin: 0 0 .3em; font-size: 1em; }
.meta { color: #555; font-size: .9em; }
img { max-width: 100%; }
"""


def e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def png(figure: Figure, alt: str) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img class="plot" alt="{e(alt)}" src="data:image/png;base64,{encoded}">'


def table(headers: Sequence[str], rows: Sequence[tuple[str, Sequence[Any]]]) -> str:
    """A table of (css class, cells) rows; text cells are escaped HTML already; all but the first column right-aligned."""
    lines = ["<tr>" + "".join(f"<th>{e(h)}</th>" for h in headers) + "</tr>"]
    for css, cells in rows:
        tds = "".join(f'<td class="num">{c}</td>' if i else f"<td>{c}</td>" for i, c in enumerate(cells))
        lines.append((f'<tr class="{css}">' if css else "<tr>") + tds + "</tr>")
    return "<table>" + "".join(lines) + "</table>"


def _status(outcome: results.CheckOutcome) -> str:
    if outcome.evidence.get("judged") is False:
        return '<span class="skip">not judged</span>'
    return '<span class="pass">passed</span>' if outcome.passed else '<span class="fail">FAILED</span>'


def _summary(outcome: results.CheckOutcome) -> str:
    evidence = outcome.evidence
    if evidence.get("judged") is False:
        return e(evidence.get("skipped", ""))
    if outcome.name in (results.DATA_DRIFT, results.SKEW):
        moved = evidence.get("drifted_features") or []
        return "features moved: " + e(", ".join(moved)) if moved else "no feature moved beyond its threshold"
    if outcome.name == results.SCHEMA_ANOMALIES:
        found = (outcome.details or {}).get("anomalies") or evidence.get("anomalies") or {}
        return e("; ".join(f"{k}: {v}" for k, v in found.items())) or "none"
    if outcome.name == results.MISSING_VALUES:
        exceeded = evidence.get("features_exceeded") or []
        return "missing more often than in training: " + e(", ".join(exceeded)) if exceeded else "as in training"
    if outcome.name == results.NULL_OUTPUTS:
        return f"{evidence.get('null')} of {evidence.get('rows')} predictions were null"
    if outcome.name == results.PREDICTION_DRIFT:
        return (f"mean probability {fmt(evidence.get('mean_probability'))} "
                f"(evaluation {fmt(evidence.get('baseline_mean_probability'))})")
    if outcome.name == results.CONCEPT_DRIFT:
        failed = (evidence.get("metrics_failed") or []) + (evidence.get("detectors_failed") or [])
        moved = [f"{s['feature']}={s['value']} ({s['labels']} labels)" for s in
                 ((evidence.get("sequential") or {}).get("slices") or []) if s.get("moved")]
        return (f"{evidence.get('labels')} labels; " +
                ("worse than the evaluation: " + e(", ".join(failed)) if failed else "in line with the evaluation") +
                ("; moved most in " + e(", ".join(moved)) if moved else ""))
    if outcome.name == results.PERFORMANCE_ESTIMATE:
        metrics = evidence.get("metrics") or {}
        failed = evidence.get("metrics_failed") or []
        text = "; ".join(f"{name} estimated {fmt(m.get('estimated'), 3)} (evaluation {fmt(m.get('baseline'), 3)})"
                         for name, m in metrics.items())
        return e(text) + (" - below the evaluation beyond the limit: " + e(", ".join(failed)) if failed else "")
    return ""


def _checks_table(result: results.MonitoringResult) -> str:
    rows = ["<tr><th>check</th><th>status</th><th>value</th><th>threshold</th><th>evidence</th></tr>"]
    for outcome in result.checks:
        rows.append(f'<tr id="check-{e(outcome.name)}"><td>{e(outcome.name)}</td><td>{_status(outcome)}</td>'
                    f'<td class="num">{fmt(outcome.value)}</td><td class="num">{fmt(outcome.threshold)}</td>'
                    f"<td>{_summary(outcome)}</td></tr>")
    return '<table class="checks">' + "".join(rows) + "</table>"


def _distribution_figure(name: str, score: FeatureScore, baseline_label: str, colour_key: str) -> Figure:
    """Bars of the shares per bucket (numeric: the baseline's quantile buckets) or per value: baseline vs window."""
    labels = list(score.labels)
    figure = Figure(figsize=(6.4, 2.5))
    axes = figure.add_subplot()
    positions = range(len(labels))
    axes.bar([p - 0.2 for p in positions], score.baseline_shares, width=0.4, color=_COLORS[colour_key], label=baseline_label)
    axes.bar([p + 0.2 for p in positions], score.current_shares, width=0.4, color=_COLORS["current"], label="this window")
    axes.set_xticks(list(positions))
    axes.set_xticklabels([label[:18] for label in labels], rotation=60, ha="right", fontsize=7)
    axes.set_ylabel("share")
    axes.set_title(f"{name}: {baseline_label} vs this window", fontsize=9)
    axes.legend(fontsize=7)
    return figure


def _feature_sections(result: results.MonitoringResult) -> str:
    try:
        drift = result.check(results.DATA_DRIFT)
        skew = result.check(results.SKEW)
    except KeyError:
        return ""
    if drift.evidence.get("judged") is False:
        return f"<p>{e(drift.evidence.get('skipped'))}</p>"
    details: Mapping[str, Mapping[str, FeatureScore]] = (drift.details or {}).get("scores") or {}
    labels = list(details)
    training_label = labels[0] if labels else None
    previous_label = labels[1] if len(labels) > 1 else None
    skew_scores: Mapping[str, FeatureScore] = next(iter(((skew.details or {}).get("scores") or {}).values()), {})
    drifted = set(drift.evidence.get("drifted_features") or []) | set(skew.evidence.get("drifted_features") or [])
    rates = (result.check(results.MISSING_VALUES).details or {}).get("rates") or {}
    sections = []
    names = [n for n in SERVING_COLUMNS if any(n in scores for scores in details.values())]
    for name in sorted(names, key=lambda n: (n not in drifted, SERVING_COLUMNS.index(n))):
        training = details.get(training_label, {}).get(name) if training_label else None
        previous = details.get(previous_label, {}).get(name) if previous_label else None
        if training is None and previous is None:
            continue
        # Each comparison has its own buckets (the baseline's quantiles), so each gets its own plot.
        plots = "".join(png(_distribution_figure(name, score, label, key), f"distribution of {name}: {label} vs this window")
                        for label, score, key in (("training", training, "training"), ("previous window", previous, "previous"))
                        if score is not None)
        rows = []
        for label, score in (("drift vs training", training), ("drift vs previous window", previous),
                             ("skew vs training", skew_scores.get(name))):
            if score is None:
                continue
            status = '<span class="fail">over</span>' if score.drifted else '<span class="pass">within</span>'
            metric = "JS divergence" if score.metric == "jensen_shannon_divergence" else "L-infinity"
            rows.append(f"<tr><td>{e(label)}</td><td>{e(metric)}</td><td class=\"num\">{fmt(score.value)}</td>"
                        f"<td class=\"num\">{fmt(score.threshold)}</td><td>{status}</td></tr>")
        changes = {}
        for baseline in ((drift.details or {}).get("baselines") or {}).values():
            changes.update((baseline.get("category_changes") or {}).get(name) or {})
        change_text = ""
        if changes.get("vanished") or changes.get("new"):
            change_text = (f'<p class="fail">vanished: {e(changes.get("vanished") or "none")}; '
                           f'new: {e(changes.get("new") or "none")}</p>')
        rate = rates.get(name)
        missing = (f'<p class="meta">missing: {fmt(rate["current"] * 100, 1)}% (training {fmt(rate["training"] * 100, 1)}%)</p>'
                   if rate else "")
        css = "feature drifted" if name in drifted else "feature"
        sections.append(
            f'<div class="{css}" id="feature-{e(name)}"><h3>{e(name)}</h3>'
            f'<table><tr><th>comparison</th><th>metric</th><th>score</th><th>threshold</th><th></th></tr>{"".join(rows)}</table>'
            f"{change_text}{missing}{plots}</div>")
    return '<div class="features">' + "".join(sections) + "</div>"


def _missing_section(result: results.MonitoringResult) -> str:
    outcome = result.check(results.MISSING_VALUES)
    rates = (outcome.details or {}).get("rates") or {}
    if not rates:
        return f"<p>{e(outcome.evidence.get('skipped', 'no rates'))}</p>"
    rows = ["<tr><th>feature</th><th>training</th><th>this window</th><th>allowed increase</th><th></th></tr>"]
    for name, rate in rates.items():
        status = '<span class="fail">too many missing</span>' if rate["exceeded"] else ""
        rows.append(f"<tr><td>{e(name)}</td><td class=\"num\">{fmt(rate['training'] * 100, 1)}%</td>"
                    f"<td class=\"num\">{fmt(rate['current'] * 100, 1)}%</td><td class=\"num\">{fmt(rate['margin'] * 100, 1)} pts</td>"
                    f"<td>{status}</td></tr>")
    figure = Figure(figsize=(7.5, 2.6))
    axes = figure.add_subplot()
    names = list(rates)
    axes.bar([i - 0.2 for i in range(len(names))], [rates[n]["training"] for n in names], width=0.4,
             color=_COLORS["training"], label="training")
    axes.bar([i + 0.2 for i in range(len(names))], [rates[n]["current"] for n in names], width=0.4,
             color=_COLORS["current"], label="this window")
    axes.set_xticks(range(len(names)))
    axes.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    axes.set_ylabel("missing share")
    axes.legend(fontsize=7)
    return "<table>" + "".join(rows) + "</table>" + png(figure, "missing-value rates")


def _prediction_section(result: results.MonitoringResult) -> str:
    outcome = result.check(results.PREDICTION_DRIFT)
    if not outcome.details:
        return f"<p>{e(outcome.evidence.get('skipped', ''))}</p>"
    edges = outcome.details["edges"]
    widths = [b - a for a, b in zip(edges[:-1], edges[1:])]
    figure = Figure(figsize=(6.4, 2.8))
    axes = figure.add_subplot()
    axes.bar(edges[:-1], outcome.details["baseline"], width=widths, align="edge", alpha=0.6,
             color=_COLORS["training"], label="evaluation (baseline)")
    axes.bar(edges[:-1], outcome.details["current"], width=widths, align="edge", alpha=0.6,
             color=_COLORS["current"], label="this window")
    axes.set(xlabel="predicted probability of a big tipper", ylabel="share", xlim=(0, 1))
    axes.legend(fontsize=8)
    text = (f"<p>Jensen-Shannon divergence {fmt(outcome.value)} (threshold {fmt(outcome.threshold)}); "
            f"{_summary(outcome)}.</p>")
    return text + png(figure, "distribution of predicted probabilities")


def _concept_section(result: results.MonitoringResult, history: Sequence[Mapping[str, Any]]) -> str:
    outcome = result.check(results.CONCEPT_DRIFT)
    parts = []
    metrics = outcome.evidence.get("metrics") or {}
    if metrics:
        rows = ["<tr><th>metric</th><th>labelled traffic</th><th>evaluation</th><th>limit</th></tr>"]
        for name, values in metrics.items():
            rows.append(f"<tr><td>{e(name)}</td><td class=\"num\">{fmt(values['current'])}</td>"
                        f"<td class=\"num\">{fmt(values['baseline'])}</td><td class=\"num\">{fmt(values['limit'])}</td></tr>")
        parts.append("<table>" + "".join(rows) + "</table>")
    else:
        parts.append(f"<p>{e(outcome.evidence.get('skipped', ''))}</p>")
    parts.append(_sequence_section(outcome))
    points = [h for h in history if h.get("labels")]
    if points:
        figure = Figure(figsize=(6.4, 2.8))
        axes = figure.add_subplot()
        x = list(range(len(points)))
        for key, color in (("auc", "#1f77b4"), ("accuracy", "#2ca02c"), ("ece", "#d62728")):
            axes.plot(x, [p.get(key) if p.get(key) is not None else float("nan") for p in points], marker="o", color=color, label=key)
        axes.set_xticks(x)
        axes.set_xticklabels([str(p.get("window_end", ""))[:16] for p in points], rotation=30, ha="right", fontsize=7)
        axes.set(ylim=(0, 1), ylabel="metric", title="concept-drift metrics per check (labelled traffic)")
        axes.legend(fontsize=8)
        parts.append(png(figure, "concept-drift metrics over time"))
    return "".join(parts)


def _sequence_section(outcome: results.CheckOutcome) -> str:
    sequence = outcome.evidence.get("sequential") or {}
    if not sequence or sequence.get("judged") is False:
        return f"<p class=\"meta\">Sequential detectors: not judged ({e(sequence.get('why', ''))}).</p>" if sequence else ""
    rows = ["<tr><th>detector</th><th>value</th><th>limit</th><th></th></tr>"]
    for name, value, limit in (("recent window: z of the last %s labels' excess loss" % sequence.get("window_labels"),
                                sequence.get("window_z"), sequence.get("window_z_limit")),
                               ("CUSUM of the excess loss", sequence.get("cusum"), sequence.get("cusum_limit"))):
        status = '<span class="fail">over</span>' if value is not None and limit is not None and value > limit else \
            '<span class="pass">within</span>'
        rows.append(f"<tr><td>{e(name)}</td><td class=\"num\">{fmt(value, 2)}</td><td class=\"num\">{fmt(limit, 2)}</td>"
                    f"<td>{status}</td></tr>")
    text = (f"<p>Labels in request order. Recent accuracy {fmt(sequence.get('recent_accuracy'), 3)} where the evaluation's "
            f"calibration expects {fmt(sequence.get('recent_expected_accuracy'), 3)}; "
            f"{e(sequence.get('labels_since_change'))} labels since the CUSUM last stood at zero"
            + (f" (from {e(sequence['change_began'])})" if sequence.get("change_began") else "") + ".</p>")
    slices = ((outcome.details or {}).get("slices") or sequence.get("slices") or [])[:MAX_REPORT_SLICES]
    table = ""
    if slices:
        lines = ["<tr><th>slice</th><th>labels</th><th>accuracy</th><th>expected</th><th>z</th></tr>"]
        for entry in slices:
            css = ' class="fail"' if entry.get("moved") else ""
            lines.append(f"<tr{css}><td>{e(entry['feature'])} = {e(entry['value'])}</td><td class=\"num\">{e(entry['labels'])}</td>"
                         f"<td class=\"num\">{fmt(entry['accuracy'], 3)}</td><td class=\"num\">{fmt(entry['expected_accuracy'], 3)}</td>"
                         f"<td class=\"num\">{fmt(entry['z'], 2)}</td></tr>")
        table = (f"<p class=\"meta\">Slices that moved most over the last {e(sequence.get('slices_over_labels'))} labels "
                 "(z: excess loss in standard deviations):</p><table>" + "".join(lines) + "</table>")
    return "<table>" + "".join(rows) + "</table>" + text + table


def _performance_section(result: results.MonitoringResult) -> str:
    try:
        outcome = result.check(results.PERFORMANCE_ESTIMATE)
    except KeyError:
        return "<p>Not estimated in this run.</p>"
    metrics = outcome.evidence.get("metrics") or {}
    if not metrics:
        return f"<p>{e(outcome.evidence.get('skipped', ''))}</p>"
    rows = ["<tr><th>metric</th><th>estimated (no labels)</th><th>interval</th><th>realized (labels)</th>"
            "<th>evaluation</th><th>limit</th></tr>"]
    for name, m in metrics.items():
        interval = m.get("interval") or [None, None]
        rows.append(f"<tr><td>{e(name)}</td><td class=\"num\">{fmt(m.get('estimated'))}</td>"
                    f"<td class=\"num\">{fmt(interval[0])} to {fmt(interval[1])}</td>"
                    f"<td class=\"num\">{fmt(m.get('realized'))}</td><td class=\"num\">{fmt(m.get('baseline'))}</td>"
                    f"<td class=\"num\">{fmt(m.get('limit'))}</td></tr>")
    return ("<table>" + "".join(rows) + "</table>"
            f"<p class=\"meta\">Estimated from the {e(outcome.evidence.get('rows'))} served probabilities through the "
            f"evaluation's calibration; realized from the {e(outcome.evidence.get('realized_labels'))} labels of this window "
            "(shown from 30). The interval is where the realized metric falls if the concept holds. The estimate follows "
            "covariate shift but cannot see concept drift: a change in what the labels mean leaves the probabilities, and so "
            "the estimate, unchanged.</p>")


def _timeline_figure(timeline: Any) -> Figure:
    """Four panels over the windows, sharing the x axis; failed windows shaded, retraining marked."""
    points = timeline.points
    x = list(range(len(points)))
    figure = Figure(figsize=(9.5, 7.6))
    panels = figure.subplots(4, 1, sharex=True)

    def series(name: str) -> list[float]:
        return [getattr(p, name) if getattr(p, name) is not None else float("nan") for p in points]

    drift, accuracy, agreement, referrals = panels
    drift.plot(x, series("data_drift"), marker="o", color="#e07b39", label="worst feature's drift score")
    accuracy.plot(x, series("estimated_accuracy"), marker="o", color="#4a7ab5", label="accuracy estimated (no labels)")
    accuracy.plot(x, series("realized_accuracy"), marker="s", linestyle="none", color="#2ca02c", label="accuracy realized (labels)")
    accuracy.plot(x, series("baseline_accuracy"), linestyle=":", color="#555", label="evaluation accuracy")
    accuracy.plot(x, series("estimated_auc"), marker="^", color="#17becf", label="AUC estimated")
    accuracy.plot(x, series("realized_auc"), marker="v", linestyle="none", color="#bcbd22", label="AUC realized")
    agreement.plot(x, series("agreement"), marker="o", color="#9467bd", label="candidate agrees with stable")
    referrals.plot(x, series("referrals"), marker="o", color="#8c564b", label="referred to a person")
    for axes, limit, text in ((drift, timeline.drift_threshold, "threshold"), (accuracy, timeline.accuracy_limit, "accuracy limit"),
                              (agreement, timeline.agreement_floor, "limit")):
        if limit is not None:
            axes.axhline(limit, color="#a31515", linestyle="--", linewidth=1, label=text)
    for axes, label in zip(panels, ("data drift", "performance", "agreement", "referral share")):
        for i, point in enumerate(points):
            if point.failed_checks:
                axes.axvspan(i - 0.4, i + 0.4, color="#a31515", alpha=0.12, linewidth=0)
            if point.retraining:
                axes.axvline(i, color="#7b2cbf" if point.retraining.startswith("triggered") else "#999",
                             linestyle="-" if point.retraining.startswith("triggered") else "--", linewidth=2.5)
        axes.set_ylabel(label, fontsize=8)
        axes.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    referrals.set_xticks(x)
    referrals.set_xticklabels([p.window_end[:16] for p in points], rotation=30, ha="right", fontsize=7)
    drift.set_title("per window: shaded = a check failed; purple line = retraining triggered, grey dashed = refused",
                    fontsize=9)
    return figure


def _timeline_section(timeline: Any) -> str:
    if timeline is None or not timeline.points:
        return "<p>No earlier windows recorded for this model version.</p>"
    rows = [("fail" if p.failed_checks else "", [e(p.window_end[:19]), p.rows, fmt(p.data_drift, 3),
                                                 f"{fmt(p.estimated_accuracy, 3)} / {fmt(p.realized_accuracy, 3)}",
                                                 f"{fmt(p.estimated_auc, 3)} / {fmt(p.realized_auc, 3)}",
                                                 f"{fmt(p.agreement, 3)} ({p.pairs})", fmt(p.referrals, 3),
                                                 e(", ".join(p.failed_checks)), e(p.retraining or "")])
            for p in timeline.points]
    headers = ("window end", "requests", "data drift", "accuracy: estimated / realized", "AUC: estimated / realized",
               "agreement (pairs)", "referrals",
               "failed checks", "retraining")
    return png(_timeline_figure(timeline), "timeline across windows") + table(headers, rows)


def render_timeline_page(timeline: Any, title: str) -> str:
    """The timeline alone, as one self-contained page (`mlops monitor timeline --html`)."""
    return "\n".join(["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
                      f"<title>{e(title)}</title><style>{STYLE}</style></head><body>", f"<h1>{e(title)}</h1>",
                      '<section id="timeline">', _timeline_section(timeline), "</section></body></html>"])


def _agreement_section(result: results.MonitoringResult) -> str:
    """Per version and degree the agreement, kappa and rates; per slice the judged version's agreement; the readiness verdict."""
    agreement, readiness = result.agreement, result.readiness
    if agreement is None or not agreement.groups:
        return "<p>No served requests of this model in the evidence window.</p>"
    rows = []
    for group in agreement.groups:
        who = group.disagreements
        rows.append(("", [e(group.model_version), e(group.automation), e(group.served), e(group.reviewed),
                          fmt(group.agreement, 3), fmt(group.kappa, 3), fmt(group.referral_rate, 3),
                          fmt(group.override_rate, 3), fmt(group.band_agreement, 3),
                          e(f"{who.cases} ({who.model_right} / {who.human_right} of {who.with_ground_truth})"),
                          e(group.cannot_tell if agreement.ledger else "-"), e(group.unanswered if agreement.ledger else "-")]))
    undecided = (f"\"Cannot tell\" and unanswered cases are counted from the review ledger {e(agreement.ledger)}."
                 if agreement.ledger else "No review ledger was found: \"cannot tell\" and unanswered cases are not counted.")
    parts = [f'<p class="meta">Requests served {e(agreement.window_start.isoformat())} to '
             f"{e(agreement.window_end.isoformat())}, with the reviews received by then. In shadow mode and for a referred "
             f"case the model's decision is its class. {undecided}</p>",
             table(["version", "degree", "served", "reviewed", "agreement", "kappa", "referral rate", "override rate",
                    "agreement in the band", "disagreements (model / human right of labelled)", "cannot tell",
                    "unanswered"], rows)]
    judged = readiness.evidence if readiness is not None else None
    if judged is not None and judged.slices:
        slices = sorted(judged.slices, key=lambda s: (s.feature, -s.reviewed))
        parts.append(f"<h3>Per slice: {e(result.model_name)}:{e(judged.model_version)} in {e(judged.automation)}</h3>")
        parts.append(table(["slice", "reviewed", "agreed", "agreement"],
                           [("", [e(f"{s.feature} = {s.value}"), e(s.reviewed), e(s.agreed), fmt(s.agreement, 3)])
                            for s in slices]))
        figure = Figure(figsize=(6.4, 0.3 * len(slices) + 1))
        axes = figure.add_subplot()
        axes.barh([f"{s.feature} = {s.value}" for s in slices], [s.agreement for s in slices], color=_COLORS["current"])
        axes.set(xlabel="agreement with the reviewers", xlim=(0, 1))
        axes.invert_yaxis()
        parts.append(png(figure, "agreement per slice"))
    if readiness is not None:
        lines = "".join(f"<li>{e(line.strip())}</li>" for line in readiness.describe().splitlines())
        parts.append(f'<h3>Readiness</h3><ul id="readiness">{lines}</ul>')
    return "".join(parts)


def _links(links: Mapping[str, str]) -> str:
    items = []
    for title, url in links.items():
        if urllib.parse.urlsplit(url).scheme not in _SAFE_SCHEMES:
            raise ValueError(f"link {title!r}: {url!r} must be relative or http(s)/file")
        items.append(f'<li><a href="{e(url)}">{e(title)}</a></li>')
    return "<ul>" + "".join(items) + "</ul>" if items else "<p>No related reports.</p>"


def render_report(result: results.MonitoringResult, inputs: Mapping[str, Any], history: Sequence[Mapping[str, Any]],
                  links: Mapping[str, str], run_id: str = "", timeline: Any = None) -> str:
    """The HTML of one monitoring run (see the module docstring)."""
    verdict_class = "pass" if result.passed else "fail"
    verdict = "All checks passed" if result.passed else "Checks failed: " + ", ".join(c.name for c in result.failed)
    model = f"{result.model_name}:{result.model_version}"
    baselines = inputs.get("baselines") or {}
    meta = [
        ("Model", model),
        ("Window", f"{result.window_start.isoformat()} to {result.window_end.isoformat()}"),
        ("Served requests", f"{result.rows:,} (versions: {inputs.get('versions', {})})"),
        ("Run", run_id),
        ("Training statistics", baselines.get("training_statistics", "")),
        ("Previous window", baselines.get("previous_window", "")),
        ("Prediction baseline", baselines.get("prediction_baseline", "")),
        ("Labels in the concept window",
         f"{inputs.get('labels_in_concept_window', 0)} (last {inputs.get('concept_window_days', '')} days)"),
    ]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Monitoring: {e(model)} {e(result.window_start.isoformat())}</title><style>{STYLE}</style></head><body>",
        f"<h1>Monitoring report: {e(model)}</h1>",
        f'<p class="verdict {verdict_class}" id="verdict">{e(verdict)}</p>',
        '<table class="meta">' + "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in meta) + "</table>",
        '<section id="checks"><h2>Checks</h2>', _checks_table(result), "</section>",
        '<section id="timeline"><h2>Timeline across windows</h2>', _timeline_section(timeline), "</section>",
        '<section id="features"><h2>Features: training vs this window</h2>',
        '<p class="meta">Numeric features are drawn on the training data\'s quantile buckets (the buckets the '
        "Jensen-Shannon divergence is measured on); categorical features show their most frequent values.</p>",
        _feature_sections(result), "</section>",
        '<section id="missing"><h2>Missing values</h2>', _missing_section(result), "</section>",
        '<section id="schema"><h2>Schema anomalies (serving environment)</h2>',
        "<p>" + _summary(result.check(results.SCHEMA_ANOMALIES)) + "</p></section>",
        '<section id="predictions"><h2>Predictions</h2>', _prediction_section(result), "</section>",
        '<section id="performance"><h2>Performance: estimated before labels, realized with them</h2>',
        _performance_section(result), "</section>",
        '<section id="concept"><h2>Concept drift (labelled feedback)</h2>', _concept_section(result, history), "</section>",
        '<section id="agreement"><h2>Agreement: model vs reviewers</h2>', _agreement_section(result), "</section>",
        '<section id="links"><h2>Related reports</h2>', _links(links), "</section>",
        "</body></html>",
    ]
    return "\n".join(parts)


def write_report(path: Path, result: results.MonitoringResult, inputs: Mapping[str, Any],
                 history: Sequence[Mapping[str, Any]], links: Mapping[str, str], run_id: str = "",
                 timeline: Any = None) -> Path:
    """Renders and writes the report atomically (core.atomic: temp file, fsync, rename).

    `timeline` is a monitoring.timeline.Timeline (typed loosely: timeline.py imports this module's helpers)."""
    return write_text(path, render_report(result, inputs, history, links, run_id, timeline))
