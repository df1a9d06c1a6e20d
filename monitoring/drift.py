"""Distribution comparisons: TFDV's drift and skew comparators on histograms that can be compared.

TFDV measures Jensen-Shannon divergence between two numeric histograms by first aligning their
buckets, assuming values are spread uniformly inside each bucket. Two samples of the same taxi
data have different minima and maxima (one 1,000-dollar fare stretches every bucket), so the
aligned histograms differ even when the data does not: on held-out 2013-2014 trips TFDV's own
standard histograms gave fare 0.10 and trip_seconds 0.19, as much as fares scaled by 1.5
(measurements in docs/MONITORING.md).

The fix keeps TFDV's comparators and gives them histograms with identical buckets: the edges are
the baseline's 20 quantiles (from its statistics), and both the baseline's and the current raw
values are counted into them, so TFDV aligns nothing and the divergence is exact on those buckets.
(Counting the baseline again matters for discrete features such as hour of day: TFDV records
each quantile bucket as holding 5% of the values, which is only approximately true when many
values are equal.) Categorical features need no help: L-infinity distance compares exact value
frequencies.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2

from monitoring.served_values import ServedValues, numeric_feature_values, served_values
from monitoring.settings import ComparatorThresholds
from transforms.features import SERVING_FEATURES, Kind

Histogram = statistics_pb2.Histogram
DRIFT, SKEW = "drift", "skew"
JS_METRIC, LINF_METRIC = "jensen_shannon_divergence", "l_infinity"
_MEASUREMENT_NAMES = {
    anomalies_pb2.DriftSkewInfo.Measurement.L_INFTY: LINF_METRIC,
    anomalies_pb2.DriftSkewInfo.Measurement.JENSEN_SHANNON_DIVERGENCE: JS_METRIC,
}
_KINDS = {feature.name: feature.kind for feature in SERVING_FEATURES}
# Categories drawn in reports and kept in evidence; the rest is summed as "(other)".
TOP_CATEGORIES = 12
# Sampling noise: a threshold below what chance alone produces at this window size is raised to
# the noise floor, so a small window cannot fail on noise (docs/MONITORING.md has the numbers).
# JS divergence between two samples of one distribution on B buckets averages about
# (B - 1) / (8 ln 2) * (1/n + 1/N) bits; the floor is this many times that average.
JS_NOISE_FACTOR = 4.0
# L-infinity: this many standard deviations of the largest category's share difference.
LINF_NOISE_SIGMAS = 4.0


@dataclasses.dataclass(frozen=True)
class FeatureScore:
    """One feature's distance between a baseline and the current data."""

    feature: str
    metric: str  # jensen_shannon_divergence | l_infinity
    value: float
    threshold: float  # the one applied: max(configured, noise_floor)
    # Bucket labels and the share of each distribution in them, for plots and evidence.
    labels: tuple[str, ...] = ()
    baseline_shares: tuple[float, ...] = ()
    current_shares: tuple[float, ...] = ()
    configured_threshold: float | None = None  # from thresholds.toml
    noise_floor: float = 0.0  # what sampling noise alone reaches at these sample sizes
    current_count: int = 0
    baseline_count: int = 0

    @property
    def drifted(self) -> bool:
        return self.value > self.threshold

    @property
    def ratio(self) -> float:
        return self.value / self.threshold if self.threshold > 0 else math.inf

    def to_json(self, with_distributions: bool = False) -> dict[str, Any]:
        value: dict[str, Any] = {"metric": self.metric, "value": round(self.value, 6), "threshold": round(self.threshold, 6),
                                 "configured_threshold": self.configured_threshold, "noise_floor": round(self.noise_floor, 6),
                                 "values_compared": self.current_count, "baseline_values": self.baseline_count,
                                 "drifted": self.drifted}
        if with_distributions:
            value.update(labels=list(self.labels), baseline=[round(s, 6) for s in self.baseline_shares],
                         current=[round(s, 6) for s in self.current_shares])
        return value


# --- statistics helpers ----------------------------------------------------------------------


def dataset(statistics: statistics_pb2.DatasetFeatureStatisticsList) -> statistics_pb2.DatasetFeatureStatistics:
    if not statistics.datasets:
        raise ValueError("the statistics hold no dataset")
    return statistics.datasets[0]


def feature_statistics(statistics: statistics_pb2.DatasetFeatureStatisticsList) -> dict[str, statistics_pb2.FeatureNameStatistics]:
    return {".".join(f.path.step) or f.name: f for f in dataset(statistics).features}


def missing_rate(statistics: statistics_pb2.DatasetFeatureStatisticsList, name: str) -> float | None:
    """Share of examples without a value for `name`; 1.0 when the feature never appears; None for no examples."""
    data = dataset(statistics)
    if data.num_examples == 0:
        return None
    stats = feature_statistics(statistics).get(name)
    if stats is None:
        return 1.0
    common = stats.num_stats.common_stats if stats.HasField("num_stats") else stats.string_stats.common_stats
    return 1.0 - common.num_non_missing / data.num_examples


def _quantile_histogram(stats: statistics_pb2.FeatureNameStatistics) -> Histogram | None:
    if not stats.HasField("num_stats"):
        return None
    for histogram in stats.num_stats.histograms:
        if histogram.type == Histogram.QUANTILES and histogram.buckets:
            return histogram
    return None


def feature_values(frame: pd.DataFrame, name: str) -> np.ndarray:
    """The non-missing values of a numeric column as float64 (null and NaN are missing).

    FLOAT features are rounded to float32 first: that is what a tf.Example holds and what TFDV's
    bucket edges are made of, so a logged 41.880994471 meets the training data's point bucket at
    float32(41.880994471) instead of missing it by 2e-6 (pick-up coordinates are a few hundred
    distinct centroids, so most of their buckets are such points).
    """
    if name not in frame.columns:
        return np.array([], dtype=np.float64)
    return numeric_feature_values(frame[name], name)


def canonical_buckets(reference: Histogram, extra_values: np.ndarray | None = None) -> Histogram:
    """The reference's quantile buckets with duplicate point buckets merged (sample counts summed).

    TFDV writes one point bucket per quantile that falls on the same value (20% zeros in
    trip_miles give four [0, 0] buckets); merged, each value has one bucket to be counted in.
    If every bucket is a point and `extra_values` hold other values, a span bucket above the last
    point keeps them visible (a new value must count as drift, not vanish into a neighbour).
    """
    merged = Histogram(type=Histogram.QUANTILES)
    seen_points: dict[float, Histogram.Bucket] = {}
    for bucket in reference.buckets:
        if bucket.low_value == bucket.high_value:
            if bucket.low_value in seen_points:
                seen_points[bucket.low_value].sample_count += bucket.sample_count
                continue
            new = merged.buckets.add(low_value=bucket.low_value, high_value=bucket.high_value,
                                     sample_count=bucket.sample_count)
            seen_points[bucket.low_value] = new
        else:
            merged.buckets.add(low_value=bucket.low_value, high_value=bucket.high_value, sample_count=bucket.sample_count)
    if all(b.low_value == b.high_value for b in merged.buckets) and extra_values is not None and extra_values.size:
        points = np.array(sorted(seen_points))
        outside = extra_values[~np.isin(extra_values, points)]
        if outside.size:
            top = float(points[-1]) if points.size else 0.0
            merged.buckets.add(low_value=top, high_value=max(float(outside.max()), top + 1.0), sample_count=0.0)
    return merged


def count_into(buckets: Histogram, values: np.ndarray, weights: np.ndarray | None = None) -> Histogram:
    """A histogram of `values` with exactly the buckets of `buckets` (canonical: one bucket per point).

    `weights` are how often each value occurs (1 each when None): distinct values with their
    counts (monitoring/served_values.py) give the same histogram as the values themselves.

    A value equal to a point bucket's value goes there; any other value goes to the first span
    bucket whose upper edge is >= the value; values beyond the outermost edges go to the outermost
    span buckets, so a shift out of the baseline's range shows up as mass piling up at an end.
    """
    lows = np.array([b.low_value for b in buckets.buckets], dtype=np.float64)
    highs = np.array([b.high_value for b in buckets.buckets], dtype=np.float64)
    counts = np.zeros(lows.size, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    weights = np.ones(values.size, dtype=np.float64) if weights is None else np.asarray(weights, dtype=np.float64)
    finite = np.isfinite(values)
    values, weights = values[finite], weights[finite]
    is_point = lows == highs
    at_point = np.zeros(values.size, dtype=bool)
    if is_point.any() and values.size:
        point_index = np.flatnonzero(is_point)
        point_values = lows[point_index]
        order = np.argsort(point_values)
        sorted_points, sorted_index = point_values[order], point_index[order]
        position = np.clip(np.searchsorted(sorted_points, values), 0, sorted_points.size - 1)
        at_point = sorted_points[position] == values
        np.add.at(counts, sorted_index[position[at_point]], weights[at_point])
    span_index = np.flatnonzero(~is_point)
    rest, rest_weights = values[~at_point], weights[~at_point]
    if span_index.size and rest.size:
        position = np.clip(np.searchsorted(highs[span_index], rest, side="left"), 0, span_index.size - 1)
        np.add.at(counts, span_index[position], rest_weights)
    elif rest.size:  # only point buckets and values elsewhere: canonical_buckets adds a span for them
        raise ValueError("values outside every point bucket and no span bucket to hold them")
    result = Histogram(type=Histogram.QUANTILES)
    for low, high, count in zip(lows, highs, counts):
        result.buckets.add(low_value=float(low), high_value=float(high), sample_count=float(count))
    return result


def _replace_quantiles(stats: statistics_pb2.FeatureNameStatistics, histogram: Histogram) -> None:
    kept = [h for h in stats.num_stats.histograms if h.type != Histogram.QUANTILES]
    del stats.num_stats.histograms[:]
    stats.num_stats.histograms.extend(kept)
    stats.num_stats.histograms.add().CopyFrom(histogram)


def comparable_statistics(
    reference: statistics_pb2.DatasetFeatureStatisticsList,
    current: statistics_pb2.DatasetFeatureStatisticsList,
    current_frame: pd.DataFrame | ServedValues,
    features: Iterable[str],
    reference_frame: pd.DataFrame | ServedValues | None = None,
) -> tuple[statistics_pb2.DatasetFeatureStatisticsList, statistics_pb2.DatasetFeatureStatisticsList]:
    """Copies of (reference, current) whose numeric `features` share the reference's quantile buckets.

    The current counts come from `current_frame` (the raw values behind `current`, or their
    counts, monitoring/served_values.py), the
    reference counts from `reference_frame` when given, else from the reference's own quantile
    counts (approximate for discrete features, see the module docstring). Features the reference
    has no quantiles for (never present there) are left as they are: TFDV then cannot compare
    them, which the caller reports.
    """
    reference_copy = statistics_pb2.DatasetFeatureStatisticsList()
    reference_copy.CopyFrom(reference)
    current_copy = statistics_pb2.DatasetFeatureStatisticsList()
    current_copy.CopyFrom(current)
    reference_stats = feature_statistics(reference_copy)
    current_stats = feature_statistics(current_copy)
    features = list(features)
    numeric = [name for name in features if _KINDS.get(name) is not Kind.STRING]
    current_values = served_values(current_frame, numeric)
    for name in features:
        if _KINDS.get(name) is Kind.STRING or name not in reference_stats or name not in current_stats:
            continue
        quantiles = _quantile_histogram(reference_stats[name])
        if quantiles is None or not current_stats[name].HasField("num_stats"):
            continue
        current_counts = current_values.numeric_values(name)
        values = current_counts.values
        reference_values, reference_weights = _reference_values(reference_frame, name)
        both = values if reference_values is None else np.concatenate([values, reference_values])
        buckets = canonical_buckets(quantiles, both)
        _replace_quantiles(reference_stats[name], buckets if reference_values is None
                           else count_into(buckets, reference_values, reference_weights))
        _replace_quantiles(current_stats[name], count_into(buckets, values, current_counts.counts))
    return reference_copy, current_copy


def _reference_values(reference: pd.DataFrame | ServedValues | None,
                      name: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(values, how often each occurs; None = once each) of a reference's numeric feature: raw rows or counts alike."""
    if reference is None:
        return None, None
    if isinstance(reference, ServedValues):
        counts = reference.numeric_values(name)
        return counts.values, counts.counts
    return feature_values(reference, name), None


# --- comparators -----------------------------------------------------------------------------


def compared_features(thresholds: ComparatorThresholds, window_hours: float) -> dict[str, float]:
    """Feature -> threshold for the features this window can be compared on."""
    chosen: dict[str, float] = {}
    for feature in SERVING_FEATURES:
        setting = thresholds.for_feature(feature.name)
        if setting.enabled and window_hours >= setting.min_window_hours:
            chosen[feature.name] = setting.threshold
    return chosen


def comparator_schema(schema: schema_pb2.Schema, thresholds: Mapping[str, float], kind: str) -> schema_pb2.Schema:
    """A copy of `schema` whose drift (or skew) comparators are exactly `thresholds`.

    Numeric features get Jensen-Shannon divergence on quantile buckets (see the module
    docstring), categorical ones L-infinity distance; every other comparator is removed so that
    TFDV measures only what is asked.
    """
    if kind not in (DRIFT, SKEW):
        raise ValueError(f"kind must be {DRIFT!r} or {SKEW!r}, got {kind!r}")
    copy = schema_pb2.Schema()
    copy.CopyFrom(schema)
    for feature in copy.feature:
        feature.ClearField("drift_comparator")
        feature.ClearField("skew_comparator")
        if feature.name not in thresholds:
            continue
        comparator = feature.drift_comparator if kind == DRIFT else feature.skew_comparator
        if _KINDS.get(feature.name) is Kind.STRING:
            comparator.infinity_norm.threshold = thresholds[feature.name]
        else:
            comparator.jensen_shannon_divergence.threshold = thresholds[feature.name]
            comparator.jensen_shannon_divergence.source.type = schema_pb2.HistogramSelection.QUANTILES
    copy.ClearField("dataset_constraints")
    return copy


def _distribution(stats: statistics_pb2.FeatureNameStatistics | None) -> dict[str, float]:
    """Label -> count of one feature (quantile buckets for numbers, values for strings)."""
    if stats is None:
        return {}
    if stats.HasField("string_stats"):
        ranks = stats.string_stats.rank_histogram.buckets
        if ranks:
            return {b.label: b.sample_count for b in ranks}
        return {v.value: v.frequency for v in stats.string_stats.top_values}
    quantiles = _quantile_histogram(stats)
    if quantiles is None:
        return {}
    distribution: dict[str, float] = {}
    for bucket in quantiles.buckets:
        label = (f"={_short(bucket.low_value)}" if bucket.low_value == bucket.high_value
                 else f"({_short(bucket.low_value)}, {_short(bucket.high_value)}]")
        distribution[label] = distribution.get(label, 0.0) + bucket.sample_count
    return distribution


def _short(value: float) -> str:
    return f"{value:.6g}"


def _shares(baseline: Mapping[str, float], current: Mapping[str, float], categorical: bool) -> tuple[tuple[str, ...], tuple[float, ...], tuple[float, ...]]:
    total_b = sum(baseline.values()) or 1.0
    total_c = sum(current.values()) or 1.0
    if not categorical:
        labels = list(baseline)
        labels += [label for label in current if label not in baseline]
    else:
        # Ties by label: a set's order changes with the process's string hash seed, and so would the
        # categories kept and those summed as "(other)".
        ranked = sorted(set(baseline) | set(current),
                        key=lambda label: (-max(baseline.get(label, 0.0) / total_b, current.get(label, 0.0) / total_c), label))
        labels = ranked[:TOP_CATEGORIES]
    b_shares = [baseline.get(label, 0.0) / total_b for label in labels]
    c_shares = [current.get(label, 0.0) / total_c for label in labels]
    if categorical and len(labels) < len(set(baseline) | set(current)):
        labels.append("(other)")
        b_shares.append(max(0.0, 1.0 - sum(b_shares)))
        c_shares.append(max(0.0, 1.0 - sum(c_shares)))
    return tuple(labels), tuple(b_shares), tuple(c_shares)


def noise_floor(name: str, baseline: Mapping[str, float], current: Mapping[str, float]) -> float:
    """The score sampling noise alone reaches for two samples of one distribution with these sizes."""
    n, big_n = sum(current.values()), sum(baseline.values())
    if n <= 0 or big_n <= 0:
        return 0.0
    inverse = 1.0 / n + 1.0 / big_n
    if _KINDS.get(name) is Kind.STRING:
        # The category whose share is closest to one half varies the most between samples.
        variance = max((count / big_n) * (1.0 - count / big_n) for count in baseline.values())
        return LINF_NOISE_SIGMAS * math.sqrt(variance * inverse)
    buckets = sum(1 for label in set(baseline) | set(current) if baseline.get(label, 0) or current.get(label, 0))
    return js_noise_floor(buckets, n, big_n)


def js_noise_floor(buckets: int, n: float, big_n: float) -> float:
    """The Jensen-Shannon floor for two samples of sizes n and N on `buckets` buckets (see JS_NOISE_FACTOR)."""
    if n <= 0 or big_n <= 0:
        return 0.0
    return JS_NOISE_FACTOR * max(buckets - 1, 1) / (8.0 * math.log(2.0)) * (1.0 / n + 1.0 / big_n)


def compare_statistics(
    reference: statistics_pb2.DatasetFeatureStatisticsList,
    current: statistics_pb2.DatasetFeatureStatisticsList,
    current_frame: pd.DataFrame | ServedValues,
    schema: schema_pb2.Schema,
    thresholds: Mapping[str, float],
    kind: str = DRIFT,
    reference_frame: pd.DataFrame | None = None,
) -> tuple[dict[str, FeatureScore], dict[str, str]]:
    """TFDV's comparator per feature: (scores, features that could not be compared -> why).

    Drift: `validate_statistics(current, previous_statistics=reference)`; skew:
    `validate_statistics(reference, serving_statistics=current)`, as TFDV defines them.
    """
    if not thresholds:
        return {}, {}
    reference_cmp, current_cmp = comparable_statistics(reference, current, current_frame, thresholds, reference_frame)
    reference_stats, current_stats = feature_statistics(reference_cmp), feature_statistics(current_cmp)
    distributions = {name: (_distribution(reference_stats.get(name)), _distribution(current_stats.get(name)))
                     for name in thresholds}
    floors = {name: noise_floor(name, *distributions[name]) for name in thresholds}
    applied = {name: max(float(thresholds[name]), floors[name]) for name in thresholds}
    # A feature with no values on one side has no histogram: TFDV would only warn and skip it.
    comparing = comparator_schema(schema, {name: value for name, value in applied.items()
                                           if distributions[name][0] and distributions[name][1]}, kind)
    if kind == DRIFT:
        anomalies = tfdv.validate_statistics(current_cmp, comparing, environment="SERVING", previous_statistics=reference_cmp)
    else:
        anomalies = tfdv.validate_statistics(reference_cmp, comparing, environment="TRAINING", serving_statistics=current_cmp)
    scores: dict[str, FeatureScore] = {}
    for info in anomalies.drift_skew_info:
        name = ".".join(info.path.step)
        measurements = info.drift_measurements if kind == DRIFT else info.skew_measurements
        for measurement in measurements:
            metric = _MEASUREMENT_NAMES.get(measurement.type)
            if metric is None or name not in thresholds:
                continue
            before, now = distributions[name]
            labels, base, current_shares = _shares(before, now, _KINDS.get(name) is Kind.STRING)
            scores[name] = FeatureScore(name, metric, float(measurement.value), applied[name], labels, base, current_shares,
                                        configured_threshold=float(thresholds[name]), noise_floor=floors[name],
                                        current_count=int(sum(now.values())), baseline_count=int(sum(before.values())))
    not_compared: dict[str, str] = {}
    for name in thresholds:
        if name in scores:
            continue
        if name not in reference_stats or not distributions[name][0]:
            not_compared[name] = "no values in the baseline"
        elif name not in current_stats or not distributions[name][1]:
            not_compared[name] = "no values in the current data"
        else:
            not_compared[name] = "TFDV could not compare the two distributions"
    return scores, not_compared


# --- prediction and label metrics ------------------------------------------------------------


def js_divergence(p_counts: Sequence[float], q_counts: Sequence[float]) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) of two histograms on the same buckets, as TFDV computes it."""
    p = np.asarray(p_counts, dtype=np.float64)
    q = np.asarray(q_counts, dtype=np.float64)
    if p.shape != q.shape:
        raise ValueError(f"histograms must have the same buckets, got {p.size} and {q.size}")
    if p.sum() <= 0 or q.sum() <= 0:
        raise ValueError("cannot compare an empty histogram")
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        mask = a > 0
        return float(np.sum(a[mask] * np.log2(a[mask] / m[mask])))

    return min((kl(p) + kl(q)) / 2, 1.0)


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> float:
    """Sum over equal-width probability bins of |mean predicted - observed rate|, weighted by rows."""
    labels = np.asarray(labels, dtype=np.float64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if labels.size == 0:
        return math.nan
    index = np.minimum((probabilities * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            total += members.sum() * abs(probabilities[members].mean() - labels[members].mean())
    return float(total / labels.size)


def calibration_error_from_bins(mean_predicted: Sequence[float], observed_rate: Sequence[float], count: Sequence[float]) -> float:
    """The same error from an evaluation's calibration table (trainer/evaluate.py `calibration`)."""
    counts = np.asarray(count, dtype=np.float64)
    if counts.sum() <= 0:
        return math.nan
    gaps = np.abs(np.asarray(mean_predicted, dtype=np.float64) - np.asarray(observed_rate, dtype=np.float64))
    return float(np.sum(counts * gaps) / counts.sum())
