"""The monitoring checks on a window of prediction logs.

Every check is a plain function on DataFrames and TFDV statistics (usable from tests and
notebooks) returning a `CheckOutcome` (monitoring/results.py): its value, its threshold, pass/fail
and the evidence (which features moved, how far). `monitoring.monitor.run_monitoring` reads the
window, finds the baselines and runs them (docs/ARCHITECTURE.md, "Monitoring").

Checks (names as in the result):
- data_drift: TFDV drift comparators, window vs the previous window and vs the training data;
- training_serving_skew: TFDV skew comparators, training vs serving statistics;
- schema_anomalies: the serving statistics against the training schema (environment SERVING);
- missing_values: missing rate per feature vs the training rate plus a margin;
- null_outputs: share of served examples the model gave no probability for;
- prediction_drift: predicted probabilities vs the model's evaluation predictions;
- concept_drift: accuracy, AUC and calibration on requests with ground truth from feedback, and the
  labels as a sequence (monitoring/sequential.py) so that a sudden change is seen within hundreds of labels;
- performance_estimate (monitoring/performance_estimate.py): accuracy and AUC estimated without labels.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import numpy as np
import pandas as pd
from tensorflow_metadata.proto.v0 import schema_pb2, statistics_pb2

from core.errors import DataError
from monitoring import drift, sequential
from monitoring.results import (
    CONCEPT_DRIFT,
    DATA_DRIFT,
    MISSING_VALUES,
    NULL_OUTPUTS,
    PREDICTION_DRIFT,
    SCHEMA_ANOMALIES,
    SKEW,
    Baseline,
    CalibrationMap,
    CheckOutcome,
    ConceptBaseline,
    PredictionBaseline,
    finite_or_none,
    skipped_outcome,
)
from monitoring.served_values import ProbabilityCounts, ServedValues, probability_counts, served_values
from monitoring.settings import ComparatorThresholds, ConceptDriftThresholds, MonitoringThresholds
from trainer.ranked_scores import outside_zero_to_one
from transforms.features import SERVING_COLUMNS, SERVING_FEATURES, Kind

log = logging.getLogger(__name__)

# A category counts as vanished when the baseline saw it at least this many times, its share
# predicts at least this many rows in the window, and none came: P(0 | Poisson(10)) = 4.5e-5, so
# noise does not trip it (and a value seen twice in training is no evidence of anything).
VANISHED_MIN_EXPECTED = 10.0
# A value the baseline never had is drift once it holds this share of the window (and 10 rows).
NEW_CATEGORY_MIN_SHARE = 0.05
# Features (and anomaly texts) named in a check's evidence; the full tables are in its details.
MAX_EVIDENCE_FEATURES = 6
MAX_EVIDENCE_TEXT = 200
# A missing rate may exceed the training rate by this many standard deviations of chance.
MISSING_NOISE_SIGMAS = 3.0
_KINDS = {feature.name: feature.kind for feature in SERVING_FEATURES}


def _clip(text: str) -> str:
    return text if len(text) <= MAX_EVIDENCE_TEXT else text[:MAX_EVIDENCE_TEXT - 3] + "..."


# --- distribution checks ---------------------------------------------------------------------


def closed_vocabularies(schema: schema_pb2.Schema) -> list[str]:
    """Categorical features whose schema lists every allowed value (e.g. payment_type, not company)."""
    return [f.name for f in schema.feature if f.HasField("string_domain") or (f.HasField("domain") and f.domain)]


def category_changes(baseline_frame: pd.DataFrame | ServedValues | None, baseline_stats: statistics_pb2.DatasetFeatureStatisticsList,
                     current: pd.DataFrame | ServedValues, features: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per categorical feature: frequent baseline values absent from the window, and new values that took a share.

    L-infinity distance alone misses a rare value that vanishes (a 0.6% payment type gone moves
    the distance by 0.006); a value expected at least 10 times and seen 0 times is not noise.
    Callers pass closed vocabularies only: in an open one (company) values come and go as
    business does (2013's first half lacks companies of 2014), which is not drift.
    """
    changes: dict[str, dict[str, Any]] = {}
    stats = drift.feature_statistics(baseline_stats)
    categorical = [name for name in features if _KINDS.get(name) is Kind.STRING]
    window = served_values(current, categorical)
    for name in categorical:
        now = window.category_counts(name)
        if isinstance(baseline_frame, ServedValues):
            before = baseline_frame.category_counts(name)
        elif baseline_frame is not None and name in baseline_frame.columns:
            before = baseline_frame[name].dropna().astype(str).value_counts()
        elif name in stats:
            before = pd.Series(drift._distribution(stats[name]))  # noqa: SLF001 - same module family
        else:
            continue
        if before.sum() <= 0 or now.sum() <= 0:
            continue
        shares = before / before.sum()
        n = float(now.sum())
        vanished = {value: round(float(share), 4) for value, share in shares.items()
                    if share * n >= VANISHED_MIN_EXPECTED and before[value] >= VANISHED_MIN_EXPECTED and now.get(value, 0) == 0}
        new = {value: round(float(count / n), 4) for value, count in now.items()
               if value not in shares.index and count >= 10 and count / n >= NEW_CATEGORY_MIN_SHARE}
        if vanished or new:
            changes[name] = {"vanished": vanished, "new": new}
    return changes


def _compare(check: str, kind: str, baselines: Sequence[Baseline], current_stats: statistics_pb2.DatasetFeatureStatisticsList,
             current: pd.DataFrame | ServedValues, schema: schema_pb2.Schema, thresholds: ComparatorThresholds,
             window_hours: float, min_rows: int) -> CheckOutcome:
    rows = current.rows if isinstance(current, ServedValues) else len(current)
    if rows < min_rows:
        return skipped_outcome(check, f"only {rows} rows in the window; at least {min_rows} are needed to tell drift from noise",
                        rows=rows, min_rows=min_rows)
    features = drift.compared_features(thresholds, window_hours)
    current = served_values(current, features)  # counted once for every baseline
    skipped = {f.name: f"compared only for windows of at least {thresholds.for_feature(f.name).min_window_hours:g} hours "
                       f"(this one: {window_hours:g})"
               for f in SERVING_FEATURES
               if thresholds.for_feature(f.name).enabled and f.name not in features}
    disabled = sorted(f.name for f in SERVING_FEATURES if not thresholds.for_feature(f.name).enabled)
    per_baseline: dict[str, Any] = {}
    scores_by_baseline: dict[str, dict[str, drift.FeatureScore]] = {}
    drifted_all: set[str] = set()
    moved: list[tuple[float, str, dict[str, Any]]] = []
    worst: drift.FeatureScore | None = None
    closed = set(closed_vocabularies(schema))
    for baseline in baselines:
        scores, not_compared = drift.compare_statistics(baseline.statistics, current_stats, current, schema, features,
                                                        kind, reference_frame=baseline.frame)
        changes = category_changes(baseline.frame, baseline.statistics, current, [f for f in features if f in closed])
        drifted = sorted({name for name, score in scores.items() if score.drifted} | set(changes))
        drifted_all.update(drifted)
        for name, score in scores.items():
            if worst is None or score.ratio > worst.ratio:
                worst = score
            if score.drifted or name in changes:
                entry = {"baseline": baseline.label, "metric": score.metric, "value": round(score.value, 4),
                         "threshold": round(score.threshold, 4)}
                if name in changes:
                    entry.update(vanished=sorted(changes[name]["vanished"]), new=sorted(changes[name]["new"]))
                moved.append((score.ratio if score.drifted else score.ratio + 1.0, name, entry))
        per_baseline[baseline.label] = {
            "rows": int(drift.dataset(baseline.statistics).num_examples),
            "drifted": drifted,
            "features": {name: scores[name].to_json(with_distributions=True) for name in sorted(scores)},
            "category_changes": changes,
            "not_compared": not_compared,
        }
        scores_by_baseline[baseline.label] = scores
    # Evidence travels far (Airflow XCom, the retraining run's conf, an MLMD property): the worst
    # few features with their numbers; every feature's table and distributions are in `details`.
    evidence_moved: dict[str, Any] = {}
    for _, name, entry in sorted(moved, key=lambda item: -item[0]):
        if name not in evidence_moved and len(evidence_moved) < MAX_EVIDENCE_FEATURES:
            evidence_moved[name] = entry
    evidence = {
        "drifted_features": sorted(drifted_all),
        "moved": evidence_moved,
        "compared_with": [baseline.label for baseline in baselines],
        "rows": rows,
        "window_hours": round(window_hours, 3),
        "not_compared_for_window_length": sorted(skipped),
        "disabled": disabled,
    }
    details = {"baselines": per_baseline, "scores": scores_by_baseline, "not_compared_for_window_length": skipped}
    return CheckOutcome(check, not drifted_all, worst.value if worst else None, worst.threshold if worst else None,
                        evidence, details)


def data_drift(current_stats: statistics_pb2.DatasetFeatureStatisticsList, current: pd.DataFrame | ServedValues,
               baselines: Sequence[Baseline], schema: schema_pb2.Schema, thresholds: MonitoringThresholds,
               window_hours: float) -> CheckOutcome:
    """TFDV drift comparators (JS divergence numeric, L-infinity categorical) against each baseline.

    `current` is the window's served requests, as a frame or as their counts (monitoring/served_values.py).
    """
    return _compare(DATA_DRIFT, drift.DRIFT, baselines, current_stats, current, schema, thresholds.drift,
                    window_hours, thresholds.min_rows)


def training_serving_skew(training: Baseline, serving_stats: statistics_pb2.DatasetFeatureStatisticsList,
                          serving: pd.DataFrame | ServedValues, schema: schema_pb2.Schema, thresholds: MonitoringThresholds,
                          window_hours: float) -> CheckOutcome:
    """TFDV skew comparators between the model's training data and what it is served."""
    return _compare(SKEW, drift.SKEW, [training], serving_stats, serving, schema, thresholds.skew,
                    window_hours, thresholds.min_rows)


def schema_anomalies(serving_stats: statistics_pb2.DatasetFeatureStatisticsList, schema: schema_pb2.Schema) -> CheckOutcome:
    """The serving data against the training schema in the SERVING environment (no label there):
    new categories of closed vocabularies, out-of-range values, wrong types, missing required values."""
    import tensorflow_data_validation as tfdv

    from validation.validate import anomalies_by_feature

    anomalies = tfdv.validate_statistics(serving_stats, schema, environment="SERVING")
    found = anomalies_by_feature(anomalies)
    shown = dict(sorted(found.items())[:MAX_EVIDENCE_FEATURES])
    return CheckOutcome(SCHEMA_ANOMALIES, not found, float(len(found)), 0.0,
                        {"features": sorted(found), "anomalies": {k: _clip(v) for k, v in shown.items()}},
                        {"anomalies": found})


def missing_values(current_stats: statistics_pb2.DatasetFeatureStatisticsList,
                   training_stats: statistics_pb2.DatasetFeatureStatisticsList, thresholds: MonitoringThresholds) -> CheckOutcome:
    """Missing rate per serving feature against the training rate plus the feature's margin."""
    rows = int(drift.dataset(current_stats).num_examples)
    if rows < thresholds.min_rows:
        return skipped_outcome(MISSING_VALUES, f"only {rows} rows in the window; at least {thresholds.min_rows} are needed",
                        rows=rows, min_rows=thresholds.min_rows)
    features: dict[str, dict[str, Any]] = {}
    worst_name, worst_excess = None, -math.inf
    for name in SERVING_COLUMNS:
        before, now = drift.missing_rate(training_stats, name), drift.missing_rate(current_stats, name)
        if before is None or now is None:
            continue
        configured = thresholds.missing_values.margin_for(name)
        training_rows = int(drift.dataset(training_stats).num_examples)
        floor = MISSING_NOISE_SIGMAS * math.sqrt(before * (1.0 - before) * (1.0 / rows + 1.0 / max(training_rows, 1)))
        margin = max(configured, floor)
        increase = now - before
        features[name] = {"training": round(before, 4), "current": round(now, 4), "increase": round(increase, 4),
                          "margin": round(margin, 4), "configured_margin": configured, "noise_floor": round(floor, 4),
                          "exceeded": increase > margin}
        if increase - margin > worst_excess:
            worst_name, worst_excess = name, increase - margin
    exceeded = sorted(name for name, values in features.items() if values["exceeded"])
    value = features[worst_name]["increase"] if worst_name else None
    threshold = features[worst_name]["margin"] if worst_name else None
    shown = {name: {k: features[name][k] for k in ("training", "current", "margin")} for name in exceeded[:MAX_EVIDENCE_FEATURES]}
    return CheckOutcome(MISSING_VALUES, not exceeded, value, threshold,
                        {"features_exceeded": exceeded, "rows": rows, "exceeded": shown}, {"rates": features})


def null_outputs(served: pd.DataFrame | ServedValues, thresholds: MonitoringThresholds) -> CheckOutcome:
    """Share of served examples whose logged probability is null (the model gave none, or NaN)."""
    if isinstance(served, pd.DataFrame) and "probability" not in served.columns:
        raise DataError(f"null_outputs needs the logged `probability` column; the window has {sorted(served.columns)}")
    window = served_values(served, features=())
    rows = window.rows
    if rows == 0:
        return skipped_outcome(NULL_OUTPUTS, "no served examples", rows=0)
    nulls = window.null_outputs
    share = nulls / rows
    by_version = dict(window.null_outputs_by_version)
    return CheckOutcome(NULL_OUTPUTS, share <= thresholds.max_null_output_fraction, share,
                        thresholds.max_null_output_fraction, {"null": nulls, "rows": rows, "null_by_version": by_version})


def probability_histogram(probabilities: np.ndarray | ProbabilityCounts, edges: Sequence[float]) -> np.ndarray:
    """Requests per bin of `edges` (the outer bins take what lies beyond them), from per-request or counted probabilities."""
    if isinstance(probabilities, ProbabilityCounts):
        bins = probabilities.boundaries(edges)  # a linspace edge a rounding off a grid point is that grid point
        values, weights = np.clip(probabilities.values, bins[0], bins[-1]), probabilities.counts
    else:
        bins = np.asarray(edges, dtype=np.float64)
        values, weights = np.clip(np.asarray(probabilities, dtype=np.float64), bins[0], bins[-1]), None
    return np.histogram(values, bins=bins, weights=weights)[0].astype(np.float64)


def prediction_drift(probabilities: np.ndarray | ProbabilityCounts, baseline: PredictionBaseline,
                     thresholds: MonitoringThresholds) -> CheckOutcome:
    """JS divergence between the window's predicted probabilities and the evaluation's, on the same bins.

    `probabilities`: one per request (non-finite ones dropped), or counted (monitoring/served_values.py
    `ProbabilityCounts`, what run_monitoring passes).
    """
    counted = probability_counts(probabilities)
    rows = counted.total
    if rows < thresholds.min_rows:
        return skipped_outcome(PREDICTION_DRIFT, f"only {rows} predictions; at least {thresholds.min_rows} are needed",
                        rows=rows, min_rows=thresholds.min_rows)
    current = probability_histogram(counted, baseline.edges)
    value = drift.js_divergence(baseline.counts, current)
    used = sum(1 for b, c in zip(baseline.counts, current) if b or c)
    floor = drift.js_noise_floor(used, float(rows), float(sum(baseline.counts)))
    threshold = max(thresholds.prediction_js, floor)
    base = np.asarray(baseline.counts) / max(sum(baseline.counts), 1.0)
    now = current / current.sum()
    baseline_mean = float(np.sum(base * (np.asarray(baseline.edges[:-1]) + np.asarray(baseline.edges[1:])) / 2))
    evidence = {"rows": rows, "mean_probability": round(counted.mean(), 4),
                "baseline_mean_probability": round(baseline_mean, 4), "baseline_source": baseline.source,
                "configured_threshold": thresholds.prediction_js, "noise_floor": round(floor, 6)}
    details = {"edges": list(baseline.edges), "baseline": base.tolist(), "current": now.tolist()}
    return CheckOutcome(PREDICTION_DRIFT, value <= threshold, value, threshold, evidence, details)


def concept_metrics(labels: np.ndarray, probabilities: np.ndarray, decision_threshold: float, bins: int) -> dict[str, float]:
    """Accuracy and AUC as trainer/evaluate.py defines them, and expected calibration error."""
    from trainer.evaluate import binary_metrics

    metrics = binary_metrics(np.asarray(labels, dtype=bool), np.asarray(probabilities, dtype=np.float64), decision_threshold)
    return {"auc": metrics["auc"], "accuracy": metrics["accuracy"], "positive_rate": metrics["positive_rate"],
            "mean_probability": metrics["mean_probability"],
            "ece": drift.expected_calibration_error(labels, probabilities, bins)}


def concept_drift(labelled: pd.DataFrame, baseline: ConceptBaseline, thresholds: ConceptDriftThresholds,
                  decision_threshold: float = 0.5) -> CheckOutcome:
    """Labelled requests against the evaluation: pooled metrics, and the labels as a sequence.

    `labelled` needs `probability` and `ground_truth` (0/1) columns; rows missing either are not
    counted. With a `timestamp` column the rows are taken in request order (labels however late
    they came), else in the order given; slice feature columns, when present, locate the change.
    Pooled accuracy, AUC and calibration are judged from `min_labels` labels on (a few unlucky
    labels are not a change of concept); the sequential detectors (monitoring/sequential.py)
    from `min_sequence_labels`, when the evaluation kept a score histogram to expect labels from.
    """
    probabilities = pd.to_numeric(labelled["probability"], errors="coerce")
    usable = labelled[probabilities.notna() & labelled["ground_truth"].notna()]
    if "timestamp" in usable.columns:
        order = [c for c in ("timestamp", "request_id", "instance_index") if c in usable.columns]
        usable = usable.sort_values(order, kind="mergesort")
    labels = usable["ground_truth"].astype("int64").to_numpy()
    count = int(labels.size)
    sequential_possible = baseline.calibration is not None and count >= thresholds.min_sequence_labels
    if count < thresholds.min_labels and not sequential_possible:
        return skipped_outcome(CONCEPT_DRIFT, f"{count} labelled predictions; at least {thresholds.min_labels} are needed",
                               labels=count, min_labels=thresholds.min_labels)
    if not set(np.unique(labels)) <= {0, 1}:
        raise DataError(f"ground_truth must be 0 or 1, got values {sorted(set(np.unique(labels).tolist()) - {0, 1})}")
    probabilities = pd.to_numeric(usable["probability"]).to_numpy(dtype=np.float64)
    outside = outside_zero_to_one(probabilities)
    if outside.size:
        raise DataError(f"probability must be in [0, 1], got {probabilities[outside[0]]!r} "
                        f"({outside.size} of {count} labelled rows)")
    metrics = concept_metrics(labels, probabilities, decision_threshold, thresholds.calibration_bins)
    baseline_values = {"auc": baseline.auc, "accuracy": baseline.accuracy, "ece": baseline.ece}
    # metric -> (current, limit, movement in the bad direction, allowed movement)
    limits = {
        "auc": (metrics["auc"], baseline.auc - thresholds.max_auc_drop, baseline.auc - metrics["auc"], thresholds.max_auc_drop),
        "accuracy": (metrics["accuracy"], baseline.accuracy - thresholds.max_accuracy_drop,
                     baseline.accuracy - metrics["accuracy"], thresholds.max_accuracy_drop),
        "ece": (metrics["ece"], baseline.ece + thresholds.max_ece_increase, metrics["ece"] - baseline.ece,
                thresholds.max_ece_increase),
    }
    # AUC is undefined when every label is one class; a metric the evaluation lacks cannot be compared.
    # Pooled metrics of fewer than min_labels labels are shown, never judged.
    judged = {name: (values[2], values[3]) for name, values in limits.items()
              if not math.isnan(values[2]) and count >= thresholds.min_labels}
    failed = sorted(judged_name for judged_name, (movement, allowed) in judged.items() if movement > allowed)
    evidence: dict[str, Any] = {
        "labels": count,
        "metrics_failed": failed,
        "metrics": {name: {"current": finite_or_none(round(current, 4)), "baseline": finite_or_none(round(baseline_values[name], 4)),
                           "limit": finite_or_none(round(limit, 4))}
                    for name, (current, limit, _, _) in limits.items()},
        "positive_rate": round(metrics["positive_rate"], 4),
        "baseline_source": baseline.source,
    }
    if count < thresholds.min_labels:
        evidence["pooled_metrics_judged"] = False
    detectors: dict[str, tuple[float, float]] = {}
    shifts: list[dict[str, Any]] = []
    if sequential_possible:
        sequence, detectors, shifts = _sequence_evidence(usable, labels, probabilities, baseline.calibration, thresholds,
                                                 decision_threshold)
        evidence["sequential"] = sequence
    else:
        evidence["sequential"] = {"judged": False, "why": "the evaluation kept no score histogram" if baseline.calibration is None
                                  else f"{count} labels; at least {thresholds.min_sequence_labels} are needed"}
    detectors_failed = sorted(name for name, (value, limit) in detectors.items() if value > limit)
    evidence["detectors_failed"] = detectors_failed
    if not judged and not detectors:
        return skipped_outcome(CONCEPT_DRIFT, "no metric could be compared (single-class labels, no evaluation metrics)",
                               labels=count)
    # The worst of everything judged, by how far past (or short of) its limit it is.
    scores = {**judged, **detectors}
    worst = max(scores, key=lambda name: scores[name][0] / scores[name][1] if scores[name][1] > 0 else math.inf)
    evidence["worst_metric"] = worst
    return CheckOutcome(CONCEPT_DRIFT, not failed and not detectors_failed, scores[worst][0], scores[worst][1], evidence,
                        {"metrics": metrics, "slices": shifts})


def _sequence_evidence(usable: pd.DataFrame, labels: np.ndarray, probabilities: np.ndarray, calibration: CalibrationMap,
                       thresholds: ConceptDriftThresholds, decision_threshold: float
                       ) -> tuple[dict[str, Any], dict[str, tuple[float, float]], list[dict[str, Any]]]:
    """The sequential detectors' verdict, and the slices the labels moved in since the change began."""
    excess = sequential.excess_loss(labels, probabilities, calibration, decision_threshold)
    verdict = sequential.judge_sequence(excess, thresholds.window_labels, thresholds.cusum_slack)
    # Where the change sits: the labels since the CUSUM left zero, or the recent window when that says little.
    since = verdict.excursion_start if verdict.excursion_labels >= sequential.MIN_EXCURSION_LABELS else verdict.labels - verdict.window
    part = slice(since, verdict.labels)
    part_excess = sequential.ExcessLoss(excess.values[part], excess.variances[part], excess.correct[part],
                                        excess.expected_correct[part])
    shifts = sequential.slice_shifts(part_excess, sequential.slice_values(usable.iloc[part]), thresholds.window_z)
    evidence: dict[str, Any] = {
        "window_labels": verdict.window,
        "window_z": round(verdict.window_z, 3),
        "window_z_limit": thresholds.window_z,
        "cusum": round(verdict.cusum, 3),
        "cusum_limit": thresholds.cusum_threshold,
        "cusum_peak": round(verdict.cusum_peak, 3),
        "labels_since_change": verdict.excursion_labels,
        "recent_accuracy": round(verdict.recent_accuracy, 4),
        "recent_expected_accuracy": round(verdict.recent_expected_accuracy, 4),
        "slices_over_labels": verdict.labels - since,
        "slices": shifts[:sequential.MAX_EVIDENCE_SLICES],
    }
    if "timestamp" in usable.columns and verdict.excursion_labels:
        evidence["change_began"] = str(pd.Timestamp(usable["timestamp"].iloc[verdict.excursion_start]).isoformat())
    detectors = {"recent_window": (verdict.window_z, thresholds.window_z), "cusum": (verdict.cusum, thresholds.cusum_threshold)}
    return evidence, detectors, shifts
