"""Candidate vs stable on the same requests: the paired comparison of a shadowed (or canaried) version.

The gateway logs a shadowed request twice under one `request_id`: the row the client got
(`is_shadow` false) and a copy asked of the other version (`is_shadow` true, never returned). Under
policy shadow the client got stable and the copy is the candidate's; under policy canary a request
the canary answered (`label` canary) has its copy asked of stable (gateway setting `pair_canary`),
so the canary's own requests are paired too. Comparing the two answers request by request removes the traffic mix from the
comparison: what differs is the model, nothing else. Reported: how often the decisions agree, the
distribution of probability differences, the same per slice (transforms.features.SLICE_FEATURES,
named as the evaluation names them), and, where the client's request got a label back through
feedback, which version was right when they disagreed.

`compare_paired` is a plain function on a frame of pairs; `pairs_from_logs` builds that frame from
the prediction logs. The canary judge (mlops/airflow/tasks.py) stops a rollout whose decisions
diverge on a slice beyond `[paired]` in thresholds.toml; serving/ knows nothing of this.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from core.atomic import write_text
from monitoring.settings import PairedThresholds
from monitoring.sequential import slice_values
from serving.prediction_log import join_feedback
from transforms.features import DECISION_BIG_TIPPER, DECISION_NOT_BIG_TIPPER, DECISION_REFER_TO_HUMAN

# The shape of the difference distribution: the report's histogram bins and the quantiles kept in JSON.
DIFFERENCE_EDGES = tuple(float(x) for x in np.linspace(-1.0, 1.0, 41))
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
# The decisions compared as logged; "none" (shadow automation) is read from the probability (`_decision`).
_POSITIVE, _NEGATIVE, _REFER = DECISION_BIG_TIPPER, DECISION_NOT_BIG_TIPPER, DECISION_REFER_TO_HUMAN
MAX_EVIDENCE_SLICES = 3  # the slices kept in MLMD (PostgreSQL index limit); the report shows all
# The request log's `label` of a request the canary answered (serving/gateway/routing.py CANARY).
CANARY_LABEL = "canary"


def _decision(decisions: pd.Series, probabilities: np.ndarray) -> np.ndarray:
    """The decision each side made: as logged, except that "none" (shadow automation withholds the
    answer) is the decision the probability implies, so a shadow-mode model is still compared."""
    logged = decisions.astype(object).to_numpy()
    implied = np.where(probabilities >= 0.5, _POSITIVE, _NEGATIVE)
    return np.where(np.isin(logged, (_POSITIVE, _NEGATIVE, _REFER)), logged, implied).astype(object)


def pairs_from_logs(requests: pd.DataFrame, feedback: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (request_id, instance_index) answered by both the served version and a shadow copy.

    Columns: the slice features of the request, `stable_version`, `candidate_version`,
    `stable_probability`, `candidate_probability`, `stable_decision`, `candidate_decision`,
    `timestamp`, and `ground_truth` (nullable; from `feedback` joined to the served row).
    Only answers with a probability count: a failed shadow copy is an error, not a disagreement.
    """
    ok = (requests["status_code"] == 200) & requests["probability"].notna()
    served = requests[ok & ~requests["is_shadow"].astype(bool)]
    shadow = requests[ok & requests["is_shadow"].astype(bool)]
    if feedback is not None and not feedback.empty:
        served = join_feedback(served, feedback)
    else:
        served = served.assign(ground_truth=pd.array([pd.NA] * len(served), dtype="Int64"))
    keys = ["request_id", "instance_index"]
    copy = shadow[keys + ["model_version", "probability", "decision"]].drop_duplicates(keys)
    merged = served.merge(copy, on=keys, suffixes=("", "_copy"))
    frame = merged[[c for c in served.columns if c not in ("model_version", "probability", "decision")]].copy()
    # A request the canary answered had its copy asked of stable (the gateway's pair_canary): there
    # the served row is the candidate. Everywhere else the copy is.
    served_is_candidate = (merged["label"] == CANARY_LABEL).to_numpy() if "label" in merged.columns else np.zeros(len(merged), bool)
    for side, from_copy in (("stable", served_is_candidate), ("candidate", ~served_is_candidate)):
        version = np.where(from_copy, merged["model_version_copy"], merged["model_version"])
        probability = np.where(from_copy, merged["probability_copy"], merged["probability"]).astype(float)
        decision = pd.Series(np.where(from_copy, merged["decision_copy"], merged["decision"]), index=merged.index)
        frame[f"{side}_version"] = pd.array(version, dtype="Int64")
        frame[f"{side}_probability"] = probability
        frame[f"{side}_decision"] = _decision(decision, probability)
    return frame.reset_index(drop=True)


@dataclasses.dataclass(frozen=True)
class SliceDelta:
    feature: str
    value: str
    pairs: int
    agreement: float
    mean_difference: float  # candidate - stable probability
    positive_rate_delta: float  # candidate's share of big_tipper decisions - stable's
    labels: int
    accuracy_delta: float | None  # candidate - stable accuracy on the labelled pairs; None without labels
    diverged: bool


@dataclasses.dataclass(frozen=True)
class PairedComparison:
    """The comparison of one candidate against stable on the requests both answered."""

    pairs: int
    stable_versions: tuple[int, ...]
    candidate_versions: tuple[int, ...]
    judged: bool
    agreement: float  # share of pairs whose decisions are equal (NaN without pairs)
    difference_quantiles: Mapping[str, float]  # candidate - stable probability
    mean_difference: float
    mean_abs_difference: float
    difference_histogram: tuple[int, ...]  # counts on DIFFERENCE_EDGES
    slices: tuple[SliceDelta, ...]  # worst agreement first
    labelled_disagreements: int  # disagreements whose served request has ground truth
    stable_right: int  # of those, stable's decision matched the label and the candidate's did not
    candidate_right: int
    neither_right: int  # a referral on one side and the other wrong, or both referred
    thresholds: PairedThresholds
    reasons: tuple[str, ...]  # why it diverged (empty: it did not) or why it was not judged

    @property
    def diverged(self) -> bool:
        return self.judged and bool(self.reasons)

    @property
    def diverged_slices(self) -> list[SliceDelta]:
        return [s for s in self.slices if s.diverged]

    def to_json(self, max_slices: int | None = None) -> dict[str, Any]:
        """Plain JSON; `max_slices` keeps the worst few (MLMD); the report and result files keep all."""
        value = dataclasses.asdict(self)
        value["diverged"] = self.diverged
        value["slices"] = value["slices"][:max_slices] if max_slices is not None else value["slices"]
        value["difference_edges"] = list(DIFFERENCE_EDGES)
        return _finite(value)


    def summary(self) -> dict[str, Any]:
        """Small enough for an MLMD property (PostgreSQL indexes entries up to ~2.7 kB): the worst slices only."""
        return _finite({
            "pairs": self.pairs, "judged": self.judged, "diverged": self.diverged, "agreement": self.agreement,
            "candidate_versions": list(self.candidate_versions), "stable_versions": list(self.stable_versions),
            "mean_difference": self.mean_difference,
            "difference_p5_p50_p95": [self.difference_quantiles.get(k) for k in ("p5", "p50", "p95")],
            "labelled_disagreements": self.labelled_disagreements, "stable_right": self.stable_right,
            "candidate_right": self.candidate_right, "reasons": list(self.reasons)[:MAX_EVIDENCE_SLICES + 1],
            "slices": [{"slice": f"{s.feature}={s.value}", "pairs": s.pairs, "agreement": s.agreement}
                       for s in self.slices[:MAX_EVIDENCE_SLICES]]})


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 5) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _right(decisions: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return ((decisions == _POSITIVE) & (labels == 1)) | ((decisions == _NEGATIVE) & (labels == 0))


def _slice_deltas(pairs: pd.DataFrame, agree: np.ndarray, thresholds: PairedThresholds) -> list[SliceDelta]:
    difference = pairs["candidate_probability"].to_numpy() - pairs["stable_probability"].to_numpy()
    stable_positive = pairs["stable_decision"].to_numpy() == _POSITIVE
    candidate_positive = pairs["candidate_decision"].to_numpy() == _POSITIVE
    labels = pairs["ground_truth"].to_numpy(dtype=float, na_value=np.nan)
    stable_right = _right(pairs["stable_decision"].to_numpy(), labels)
    candidate_right = _right(pairs["candidate_decision"].to_numpy(), labels)
    found = []
    for feature, values in slice_values(pairs).items():
        for value in pd.unique(values):
            members = values == value
            count = int(members.sum())
            labelled = members & ~np.isnan(labels)
            agreement = float(agree[members].mean())
            found.append(SliceDelta(
                feature=feature, value=str(value), pairs=count, agreement=agreement,
                mean_difference=float(difference[members].mean()),
                positive_rate_delta=float(candidate_positive[members].mean() - stable_positive[members].mean()),
                labels=int(labelled.sum()),
                accuracy_delta=(float(candidate_right[labelled].mean() - stable_right[labelled].mean())
                                if labelled.any() else None),
                diverged=count >= thresholds.min_slice_pairs and 1.0 - agreement > thresholds.max_slice_disagreement))
    return sorted(found, key=lambda s: (s.pairs < thresholds.min_slice_pairs, s.agreement, -s.pairs))


def compare_paired(pairs: pd.DataFrame, thresholds: PairedThresholds) -> PairedComparison:
    """Agreement, probability differences, per-slice deltas and who was right, judged against `thresholds`."""
    n = len(pairs)
    stable_p = pairs["stable_probability"].to_numpy(dtype=float)
    candidate_p = pairs["candidate_probability"].to_numpy(dtype=float)
    difference = candidate_p - stable_p
    stable_d, candidate_d = pairs["stable_decision"].to_numpy(), pairs["candidate_decision"].to_numpy()
    agree = stable_d == candidate_d
    labels = pairs["ground_truth"].to_numpy(dtype=float, na_value=np.nan) if n else np.array([])
    disagreed = ~agree & ~np.isnan(labels)
    stable_right = _right(stable_d, labels) & disagreed
    candidate_right = _right(candidate_d, labels) & disagreed
    slices = _slice_deltas(pairs, agree, thresholds) if n else []
    agreement = float(agree.mean()) if n else math.nan
    reasons: list[str] = []
    judged = n >= thresholds.min_pairs
    if not judged:
        reasons.append(f"{n} paired requests, fewer than the {thresholds.min_pairs} needed to judge")
    else:
        if 1.0 - agreement > thresholds.max_disagreement:
            reasons.append(f"decisions differ on {1 - agreement:.1%} of {n} paired requests "
                           f"(limit {thresholds.max_disagreement:.0%})")
        for entry in (s for s in slices if s.diverged):
            reasons.append(f"decisions differ on {1 - entry.agreement:.1%} of the {entry.pairs} paired requests with "
                           f"{entry.feature}={entry.value} (limit {thresholds.max_slice_disagreement:.0%}; "
                           f"mean probability {entry.mean_difference:+.3f})")
    return PairedComparison(
        pairs=n,
        stable_versions=tuple(sorted(int(v) for v in pd.unique(pairs["stable_version"].dropna()))) if n else (),
        candidate_versions=tuple(sorted(int(v) for v in pd.unique(pairs["candidate_version"].dropna()))) if n else (),
        judged=judged, agreement=agreement,
        difference_quantiles={f"p{round(q * 100)}": float(np.quantile(difference, q)) if n else math.nan for q in QUANTILES},
        mean_difference=float(difference.mean()) if n else math.nan,
        mean_abs_difference=float(np.abs(difference).mean()) if n else math.nan,
        difference_histogram=tuple(int(c) for c in np.histogram(np.clip(difference, -1, 1), DIFFERENCE_EDGES)[0]),
        slices=tuple(slices), labelled_disagreements=int(disagreed.sum()),
        stable_right=int((stable_right & ~candidate_right).sum()),
        candidate_right=int((candidate_right & ~stable_right).sum()),
        neither_right=int((disagreed & ~stable_right & ~candidate_right).sum()),
        thresholds=thresholds, reasons=tuple(reasons))


def compare_logged(log_dir: Path, start: Any, end: Any, thresholds: PairedThresholds, *,
                   model_name: str | None = None) -> PairedComparison:
    """The comparison of the shadow pairs logged in [start, end), with the feedback received since `start`."""
    from serving.prediction_log import read_feedback, read_prediction_logs

    requests = read_prediction_logs(log_dir, start, end, model_name=model_name)
    feedback = read_feedback(log_dir, start, None)
    return compare_paired(pairs_from_logs(requests, feedback), thresholds)


def render_paired_report(comparison: PairedComparison, title: str) -> str:
    """One self-contained page (inline PNG, no scripts): verdict, agreement, differences, slices, who was right."""
    from matplotlib.figure import Figure

    from monitoring.report import STYLE, e, fmt, png, table

    c = comparison
    verdict = ("not judged: " + "; ".join(c.reasons)) if not c.judged else \
        ("Diverged: " + "; ".join(c.reasons) if c.diverged else "Decisions agree within the limits")
    css = "skip" if not c.judged else ("fail" if c.diverged else "pass")
    figure = Figure(figsize=(6.4, 2.6))
    axes = figure.add_subplot()
    edges = DIFFERENCE_EDGES
    axes.bar(edges[:-1], c.difference_histogram, width=edges[1] - edges[0], align="edge", color="#e07b39")
    axes.set(xlabel="candidate - stable probability (same request)", ylabel="requests", xlim=(-1, 1))
    plot = png(figure, "distribution of probability differences")
    summary = [("paired requests", c.pairs), ("stable versions", list(c.stable_versions)),
               ("candidate versions", list(c.candidate_versions)), ("decisions agree", fmt(c.agreement, 4)),
               ("mean difference", fmt(c.mean_difference, 4)), ("mean |difference|", fmt(c.mean_abs_difference, 4)),
               *((f"difference {k}", fmt(v, 4)) for k, v in c.difference_quantiles.items())]
    rows = [("fail" if s.diverged else "", [f"{e(s.feature)} = {e(s.value)}", s.pairs, fmt(s.agreement, 3), fmt(s.mean_difference, 3),
                                              fmt(s.positive_rate_delta, 3), s.labels, fmt(s.accuracy_delta, 3)])
            for s in c.slices]
    slices = table(("slice", "pairs", "agreement", "mean difference", "positive rate delta", "labels", "accuracy delta"), rows)
    t = c.thresholds
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{STYLE}</style></head><body>", f"<h1>{e(title)}</h1>",
        f'<p class="verdict {css}" id="verdict">{e(verdict)}</p>',
        '<table class="meta">' + "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in summary) + "</table>",
        f'<p class="meta">Limits: decisions may differ on {t.max_disagreement:.0%} of all pairs and {t.max_slice_disagreement:.0%} '
        f"of a slice value's (judged from {t.min_slice_pairs} pairs; the whole from {t.min_pairs}).</p>",
        '<section id="differences"><h2>Probability differences</h2>', plot, "</section>",
        '<section id="who-was-right"><h2>When they disagreed and the label came back</h2>',
        f"<p>{c.labelled_disagreements} labelled disagreements: stable right {c.stable_right}, candidate right "
        f"{c.candidate_right}, neither (a referral) {c.neither_right}.</p></section>",
        '<section id="slices"><h2>Per slice (least agreement first)</h2>' + slices + "</section>",
        "</body></html>"])


def write_paired_report(path: Path, comparison: PairedComparison, title: str) -> Path:
    """Renders and writes the page atomically (core.atomic)."""
    return write_text(path, render_paired_report(comparison, title))


def write_comparison(directory: Path, comparison: PairedComparison, title: str) -> Path:
    """`paired.json` (every slice) and `report.html` in `directory`; returns the page's path."""
    from core.atomic import write_json

    write_json(directory / "paired.json", comparison.to_json(), allow_nan=False)
    return write_paired_report(directory / "report.html", comparison, title)
