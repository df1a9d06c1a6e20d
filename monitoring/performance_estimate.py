"""The served model's accuracy and AUC estimated before any label arrives (confidence-based performance estimation).

A calibrated probability says how often the prediction will turn out right: a request scored p is
positive with chance c = calibration.rate(p) (the evaluation's P(label | p), monitoring/results.py
`CalibrationMap`). So over a window of served requests, without labels:
- expected accuracy = mean of c where the decision is positive, 1 - c where it is not;
- expected AUC = expected (positive, negative) pairs ranked right / expected pairs, each request
  counting c of a positive and 1 - c of a negative (NannyML's CBPE does the same with its ROC).
The interval is where the realized metric of these very requests would fall if the concept held:
labels are drawn as Bernoulli(c) many times, c itself drawn from what the evaluation's counts allow
per bin, and each draw's metric computed; widened on both sides by CALIBRATION_MARGIN, because the
calibration is per probability bin only: when traffic moves toward one kind of request, that kind's
own rate inside a bin can sit off the bin's (20x long fares: estimate 0.029 too high), which no
draw of labels from c shows.

What it sees: covariate shift, i.e. requests moving toward inputs the model is less (or more) sure
about. What it cannot see: concept drift. If P(label | input) changes, the probabilities do not,
and neither does the estimate; only labels show that (monitoring/sequential.py).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pandas as pd

from monitoring.results import PERFORMANCE_ESTIMATE, CalibrationMap, CheckOutcome, ConceptBaseline, skipped_outcome
from monitoring.served_values import ProbabilityCounts, probability_counts
from monitoring.settings import PerformanceEstimateThresholds

DRAWS = 200
# Added to each side of the accuracy and AUC intervals (see above). Measured on windows of 500
# requests under 20x covariate shifts (benchmarks/detection_benchmark.py): without it the realized
# accuracy fell inside the 90 % interval in 45-92 % of windows; with 0.025, in 93-100 %.
CALIBRATION_MARGIN = 0.025
# The estimated accuracy of a small window moves by chance (which requests came): a drop counts
# only beyond this many standard deviations of that chance, as the data-drift thresholds do.
NOISE_SIGMAS = 4.0
# Realized metrics of the window are shown from this many labels on; fewer say little.
MIN_REALIZED_LABELS = 30
# From this many requests on, the drawn labels' sums come from their normal limit (`_moment_metrics`):
# the same mean and covariance, at a cost that no longer grows with draws x requests.
NORMAL_LABELS_FROM = 100_000
_CHUNK = 50  # draws per table draw: the random stream, and so every interval, depends on it
# Draws x requests held at once. Labels are drawn a few draws at a time within a chunk, in the order
# one (draws x requests) array would take them from the generator, so the numbers do not depend on
# it; only memory does (10M requests x 50 draws would be 4 GB per array).
_CHUNK_ELEMENTS = 4_000_000


@dataclasses.dataclass(frozen=True)
class PerformanceEstimate:
    rows: int
    accuracy: float
    auc: float
    accuracy_interval: tuple[float, float]
    auc_interval: tuple[float, float]
    accuracy_sd: float = math.nan  # how much the estimate itself moves between samples of n requests

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "accuracy": round(self.accuracy, 4), "auc": round(self.auc, 4),
                "accuracy_interval": [round(v, 4) for v in self.accuracy_interval],
                "auc_interval": [round(v, 4) for v in self.auc_interval]}


def expected_auc(probabilities: np.ndarray, chances: np.ndarray, counts: np.ndarray | None = None) -> float:
    """E[pairs ranked right] / E[pairs]: every request is c of a positive and 1 - c of a negative.

    `counts`: how many requests each (probability, chance) stands for (None: one each).
    """
    p, c = np.asarray(probabilities, dtype=np.float64), np.asarray(chances, dtype=np.float64)
    m = np.ones_like(p) if counts is None else np.asarray(counts, dtype=np.float64)
    # Requests of one probability are tied: per probability, the expected positives, negatives and
    # sum of c (1 - c) (a request is never its own negative).
    distinct, group = np.unique(p, return_inverse=True)
    positives = np.bincount(group, weights=m * c, minlength=distinct.size)
    negatives = np.bincount(group, weights=m * (1.0 - c), minlength=distinct.size)
    own = np.bincount(group, weights=m * c * (1.0 - c), minlength=distinct.size)
    below = np.cumsum(negatives) - negatives
    # A positive beats the negatives ranked below it, and half of the others tied with it.
    pairs = float(np.dot(positives, below) + 0.5 * (np.dot(positives, negatives) - own.sum()))
    total = float(positives.sum()) * float(negatives.sum()) - float(own.sum())
    return pairs / total if total > 0 else math.nan


def _drawn_metrics(probabilities: np.ndarray, predicted: np.ndarray, calibration: CalibrationMap, draws: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy and AUC of the requests under labels drawn from calibrations the evaluation allows."""
    ranks = pd.Series(probabilities).rank(method="average").to_numpy(dtype=np.float64)
    left, weight = calibration.interpolation(probabilities)
    rows = max(1, _CHUNK_ELEMENTS // max(probabilities.size, 1))
    accuracies, aucs = [], []
    for first in range(0, draws, _CHUNK):
        tables = calibration.plausible_tables(min(_CHUNK, draws - first), rng)
        for row in range(0, len(tables), rows):
            chances = calibration.rates_under(tables[row:row + rows], left, weight)
            labels = rng.random(chances.shape) < chances
            accuracies.append(np.mean(labels == predicted, axis=1))
            positives = labels.sum(axis=1).astype(np.float64)
            negatives = probabilities.size - positives
            rank_sums = labels @ ranks
            with np.errstate(invalid="ignore", divide="ignore"):
                aucs.append((rank_sums - positives * (positives + 1) / 2) / (positives * negatives))
    return np.concatenate(accuracies), np.concatenate(aucs)


def _moment_metrics(counted: ProbabilityCounts, predicted: np.ndarray, calibration: CalibrationMap, draws: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`_drawn_metrics` for large windows: the same calibration tables, and the labels' noise drawn
    from its normal limit instead of one Bernoulli per request.

    Given a table T, a request's chance is linear in T (c_i = T[l_i] (1 - w_i) + T[l_i + 1] w_i),
    so every sum the metrics need (right answers, positives, their rank sum, and the variances and
    covariance of the drawn labels) is a product of T with per-bin sums made once over the requests.
    Each draw then costs the table's length, not the window's: 10M requests x 200 draws were 2e9
    Bernoulli labels. The central limit theorem makes the normal limit exact for these sums at the
    sizes it is used from (NORMAL_LABELS_FROM; tests compare both ways). The sums are made over
    the distinct probabilities (`counted`), each weighted by its requests, so nothing here is per
    request; `predicted` is per distinct probability.
    """
    values, m = counted.values, counted.counts.astype(np.float64)
    n = float(m.sum())
    ranks = np.cumsum(m) - (m - 1.0) / 2.0  # the average rank of each value's requests: ties share it
    left, weight = calibration.interpolation(values)
    size = len(calibration.centres)

    def linear(per_request: np.ndarray) -> np.ndarray:
        # sum_i c_i v_i = T @ linear(v)
        weighted = m * per_request
        return (np.bincount(left, weights=(1.0 - weight) * weighted, minlength=size)
                + np.r_[0.0, np.bincount(left, weights=weight * weighted, minlength=size)[:-1]])

    def quadratic(per_request: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # sum_i c_i^2 v_i = sum_k T_k^2 a_k + 2 T_k T_(k+1) b_k + T_(k+1)^2 c_k, over k < size - 1
        return tuple(np.bincount(left, weights=part * m * per_request, minlength=size)[:-1]
                     for part in ((1.0 - weight) ** 2, weight * (1.0 - weight), weight ** 2))

    def squares(tables: np.ndarray, parts: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
        low, high = tables[:, :-1], tables[:, 1:]
        return (low ** 2) @ parts[0] + 2.0 * (low * high) @ parts[1] + (high ** 2) @ parts[2]

    ones = np.ones(values.size)
    signs = np.where(predicted, 1.0, -1.0)
    sum_c, sum_sc, sum_cr, sum_crr = linear(ones), linear(signs), linear(ranks), linear(ranks ** 2)
    square_c, square_cr, square_crr = quadratic(ones), quadratic(ranks), quadratic(ranks ** 2)
    predicted_negative = float(m[~predicted].sum())
    accuracies, aucs = [], []
    for first in range(0, draws, _CHUNK):
        tables = calibration.plausible_tables(min(_CHUNK, draws - first), rng)
        positives_mean, rank_mean = tables @ sum_c, tables @ sum_cr
        # Var of a sum of Bernoulli(c_i) v_i = sum c_i (1 - c_i) v_i^2.
        var_labels = positives_mean - squares(tables, square_c)
        var_ranks = tables @ sum_crr - squares(tables, square_crr)
        covariance = rank_mean - squares(tables, square_cr)
        spread = np.sqrt(np.maximum(var_labels, 0.0))
        noise = rng.standard_normal((len(tables), 3))
        # Right answers = predicted negatives + sum_i s_i label_i (s_i = +-1): the labels' own variance.
        # Only each metric's own interval is reported, so its noise is drawn on its own.
        accuracies.append((predicted_negative + tables @ sum_sc + spread * noise[:, 2]) / n)
        positives = positives_mean + spread * noise[:, 0]
        with np.errstate(invalid="ignore", divide="ignore"):
            slope = np.where(var_labels > 0, covariance / var_labels, 0.0)
            rest = np.sqrt(np.maximum(var_ranks - slope * covariance, 0.0))
            rank_sums = rank_mean + slope * (positives - positives_mean) + rest * noise[:, 1]
            aucs.append((rank_sums - positives * (positives + 1) / 2) / (positives * (n - positives)))
    return np.concatenate(accuracies), np.concatenate(aucs)


def _widened(bounds: np.ndarray, margin: float) -> tuple[float, float]:
    return float(max(0.0, bounds[0] - margin)), float(min(1.0, bounds[1] + margin))


def _per_request(probabilities: np.ndarray | ProbabilityCounts) -> np.ndarray:
    """One finite probability per request: as given, or the counted ones in ascending order."""
    if isinstance(probabilities, ProbabilityCounts):
        return probabilities.expanded()
    p = np.asarray(probabilities, dtype=np.float64)
    return p[np.isfinite(p)]


def estimate_performance(probabilities: np.ndarray | ProbabilityCounts, calibration: CalibrationMap,
                         decision_threshold: float = 0.5, interval: float = 0.9, draws: int = DRAWS, seed: int = 0,
                         margin: float = CALIBRATION_MARGIN) -> PerformanceEstimate:
    """The estimate of the requests scored `probabilities`: one per request (non-finite ones dropped), or counted
    (monitoring/served_values.py `ProbabilityCounts`, what run_monitoring passes: memory flat in the window's length).

    Expected accuracy and AUC are computed over the distinct probabilities, each weighted by its
    requests. The interval's labels are drawn per request below NORMAL_LABELS_FROM requests: in the
    order given, or for counts in ascending order of probability, which only moves which random
    draw lands on which request (the same distribution; tests compare both).
    """
    counted = probability_counts(probabilities)
    n = counted.total
    values, weights = counted.values, counted.counts.astype(np.float64)
    threshold = counted.boundaries(decision_threshold)
    chances = calibration.rate(values)
    predicted = values >= threshold
    right = np.where(predicted, chances, 1.0 - chances)
    accuracy = float(np.dot(weights, right) / n) if n else math.nan
    auc = expected_auc(values, chances, weights) if n > 1 else math.nan
    if n < 2:
        return PerformanceEstimate(n, accuracy, auc, (math.nan, math.nan), (math.nan, math.nan))
    accuracy_sd = math.sqrt(float(np.dot(weights, (right - accuracy) ** 2)) / (n - 1)) / math.sqrt(n)
    rng = np.random.default_rng(seed)
    if n >= NORMAL_LABELS_FROM:
        drawn_accuracy, drawn_auc = _moment_metrics(counted, predicted, calibration, draws, rng)
    else:
        per_request = _per_request(probabilities)
        drawn_accuracy, drawn_auc = _drawn_metrics(per_request, per_request >= threshold, calibration, draws, rng)
    tail = (1.0 - interval) / 2 * 100
    finite_auc = drawn_auc[np.isfinite(drawn_auc)]
    auc_interval = (_widened(np.percentile(finite_auc, [tail, 100 - tail]), margin)
                    if finite_auc.size else (math.nan, math.nan))
    return PerformanceEstimate(n, accuracy, auc, _widened(np.percentile(drawn_accuracy, [tail, 100 - tail]), margin),
                               auc_interval, accuracy_sd)


def realized_performance(labelled: pd.DataFrame, decision_threshold: float = 0.5) -> dict[str, Any]:
    """Accuracy and AUC of the window's requests whose labels came back, with their count."""
    from trainer.evaluate import binary_metrics

    probabilities = pd.to_numeric(labelled["probability"], errors="coerce") if len(labelled) else pd.Series([], dtype=float)
    # A probability outside [0, 1] is no model's answer: not counted, like a missing one.
    usable = (labelled[probabilities.between(0.0, 1.0) & labelled["ground_truth"].notna()]
              if len(labelled) else labelled)
    count = int(len(usable))
    if count < MIN_REALIZED_LABELS:
        return {"labels": count, "accuracy": None, "auc": None}
    metrics = binary_metrics(usable["ground_truth"].astype("int64").to_numpy() == 1,
                             pd.to_numeric(usable["probability"]).to_numpy(dtype=np.float64), decision_threshold)
    return {"labels": count, "accuracy": round(metrics["accuracy"], 4),
            "auc": None if math.isnan(metrics["auc"]) else round(metrics["auc"], 4)}


def performance_estimate(probabilities: np.ndarray | ProbabilityCounts, baseline: ConceptBaseline | None,
                         thresholds: PerformanceEstimateThresholds, decision_threshold: float = 0.5,
                         labelled: pd.DataFrame | None = None) -> CheckOutcome:
    """Fails when the label-free estimate of accuracy or AUC is below the evaluation's by more than allowed.

    `probabilities` as `estimate_performance` takes them. `labelled` (the window's requests with
    feedback, `probability` and `ground_truth`) only adds the realized metrics next to the
    estimate; it does not change the verdict.
    """
    values = probabilities if isinstance(probabilities, ProbabilityCounts) else _per_request(probabilities)
    rows = values.total if isinstance(values, ProbabilityCounts) else int(values.size)
    if baseline is None or baseline.calibration is None:
        return skipped_outcome(PERFORMANCE_ESTIMATE, "the model's evaluation kept no score histogram to calibrate with",
                               rows=rows)
    if rows < thresholds.min_rows:
        return skipped_outcome(PERFORMANCE_ESTIMATE, f"only {rows} predictions; at least {thresholds.min_rows} are needed",
                               rows=rows, min_rows=thresholds.min_rows)
    estimate = estimate_performance(values, baseline.calibration, decision_threshold, thresholds.interval)
    realized = realized_performance(labelled, decision_threshold) if labelled is not None else {"labels": 0}
    accuracy_floor = NOISE_SIGMAS * estimate.accuracy_sd
    allowed_accuracy_drop = max(thresholds.max_accuracy_drop, accuracy_floor)
    drops = {"accuracy": (baseline.accuracy - estimate.accuracy, allowed_accuracy_drop),
             "auc": (baseline.auc - estimate.auc, thresholds.max_auc_drop)}
    judged = {name: pair for name, pair in drops.items() if math.isfinite(pair[0])}
    failed = sorted(name for name, (drop, allowed) in judged.items() if drop > allowed)
    if not judged:
        return skipped_outcome(PERFORMANCE_ESTIMATE, "no metric could be compared (the evaluation has neither)",
                               rows=rows)
    worst = max(judged, key=lambda name: judged[name][0] - judged[name][1])
    evidence = {
        "rows": estimate.rows,
        "metrics_failed": failed,
        "worst_metric": worst,
        "metrics": {
            "accuracy": {"estimated": round(estimate.accuracy, 4), "interval": [round(v, 4) for v in estimate.accuracy_interval],
                         "baseline": round(baseline.accuracy, 4), "limit": round(baseline.accuracy - allowed_accuracy_drop, 4),
                         "configured_drop": thresholds.max_accuracy_drop, "noise_floor": round(accuracy_floor, 4),
                         "realized": realized.get("accuracy")},
            "auc": {"estimated": round(estimate.auc, 4), "interval": [round(v, 4) for v in estimate.auc_interval],
                    "baseline": round(baseline.auc, 4), "limit": round(baseline.auc - thresholds.max_auc_drop, 4),
                    "realized": realized.get("auc")},
        },
        "realized_labels": realized.get("labels", 0),
        "calibration_source": baseline.calibration.source,
    }
    return CheckOutcome(PERFORMANCE_ESTIMATE, not failed, judged[worst][0], judged[worst][1], evidence,
                        {"estimate": estimate.to_json(), "realized": realized})
