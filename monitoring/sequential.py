"""Concept drift judged as a sequence: labelled requests in the order they were served, one label at a time.

A pooled metric over days of labels sees a sudden change only once it dominates those days. Here
each label is held against what the model's evaluation expects for that very prediction: a request
scored p was positive at evaluation with rate r = calibration.rate(p), so if the concept holds its
log loss is expected to be -(r log p + (1 - r) log(1 - p)), and the excess

    x = loss - expected = (r - y) * logit(p),   variance r (1 - r) logit(p)^2 (known without the label)

has mean zero whatever the inputs look like (covariate shift moves the mix of p, not P(y | p)). Two
detectors read it:
- the recent window: the z score of the last `window_labels` excesses, for a sudden change;
- Page's CUSUM: S_t = max(0, S_(t-1) + x_t / sigma - slack), for a slow one that accumulates; where
  its current excursion left zero estimates when the change began.
Where the change sits: the same z score per slice value (payment type, hour of day, company, day of
week) over the labels since that estimated start, with realized against expected accuracy.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pandas as pd

from monitoring.results import CalibrationMap
from trainer.evaluate import HOUR_BUCKET_SLICE, MISSING_SLICE_VALUE
from transforms.features import HOUR_KEY, SLICE_FEATURES, hour_bucket

# Probabilities are read no closer to 0 or 1 than this: one label against a p of 1e-7 would
# otherwise weigh as much as hundreds of ordinary ones (logit 16 against about 1).
PROBABILITY_CLIP = 0.01
# A slice value needs this many labels since the change to be named; fewer are anecdotes.
MIN_SLICE_LABELS = 20
# Slices named in the evidence (it travels in XCom and MLMD properties); the details keep more.
MAX_EVIDENCE_SLICES = 3
MAX_DETAIL_SLICES = 30
# Below this many labels in an excursion the CUSUM's start says little: slices use the recent window.
MIN_EXCURSION_LABELS = 30


@dataclasses.dataclass(frozen=True)
class ExcessLoss:
    """Per label, in request order: the excess log loss, its variance, and right/expected-right."""

    values: np.ndarray
    variances: np.ndarray
    correct: np.ndarray  # the decision (p >= threshold) matched the label
    expected_correct: np.ndarray  # the chance it would, by the calibration

    def __len__(self) -> int:
        return int(self.values.size)


def excess_loss(labels: np.ndarray, probabilities: np.ndarray, calibration: CalibrationMap,
                decision_threshold: float = 0.5) -> ExcessLoss:
    y = np.asarray(labels, dtype=np.float64)
    raw = np.asarray(probabilities, dtype=np.float64)
    p = np.clip(raw, PROBABILITY_CLIP, 1.0 - PROBABILITY_CLIP)
    r = calibration.rate(raw)
    logit = np.log(p) - np.log1p(-p)
    predicted = raw >= decision_threshold
    return ExcessLoss(values=(r - y) * logit, variances=r * (1.0 - r) * logit ** 2,
                      correct=predicted == (y > 0.5), expected_correct=np.where(predicted, r, 1.0 - r))


def z_score(values: np.ndarray, variances: np.ndarray) -> float:
    """How many standard deviations the summed excess lies above zero (0 when nothing varies)."""
    spread = float(np.sum(variances))
    return float(np.sum(values)) / math.sqrt(spread) if spread > 0 else 0.0


@dataclasses.dataclass(frozen=True)
class Cusum:
    path: np.ndarray  # S_t after each label
    scale: float  # the standard deviation one label's excess was divided by
    excursion_start: int  # index of the first label of the current excursion above zero (len when at zero)

    @property
    def statistic(self) -> float:
        return float(self.path[-1]) if self.path.size else 0.0


def cusum(excess: ExcessLoss, slack: float) -> Cusum:
    """Page's one-sided CUSUM of the standardised excess loss, less `slack` per label.

    The scale is the sequence's own typical standard deviation (from its predictions, not its
    labels), so a window of confident predictions is not judged on the spread of uncertain ones.
    """
    n = len(excess)
    scale = math.sqrt(float(np.mean(excess.variances))) if n else 0.0
    if scale <= 0:
        return Cusum(np.zeros(n, dtype=np.float64), scale, n)
    # The reflected walk max(0, S + step) is the cumulative sum less its running minimum (0 included).
    walk = np.cumsum(excess.values / scale - slack)
    path = walk - np.minimum(np.minimum.accumulate(walk), 0.0)
    at_zero = np.flatnonzero(path <= 0.0)
    if path.size and path[-1] <= 0.0:
        start = n
    else:
        start = int(at_zero[-1]) + 1 if at_zero.size else 0
    return Cusum(path, scale, start)


def slice_values(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The slice each labelled request falls in, per slice feature present in `frame`, named as the evaluation names them."""
    found: dict[str, np.ndarray] = {}
    for name in SLICE_FEATURES:
        if name not in frame.columns:
            continue
        column = frame[name]
        if name == HOUR_KEY:
            hours = pd.to_numeric(column, errors="coerce")
            values = [hour_bucket(int(h)) if pd.notna(h) and 0 <= h < 24 else MISSING_SLICE_VALUE for h in hours]
        else:
            values = [MISSING_SLICE_VALUE if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA else str(v)
                      for v in column.tolist()]
        found[HOUR_BUCKET_SLICE if name == HOUR_KEY else name] = np.asarray(values, dtype=object)
    return found


def slice_shifts(excess: ExcessLoss, slices: dict[str, np.ndarray], limit: float) -> list[dict[str, Any]]:
    """Slice values whose labels moved most against what the calibration expects, worst first."""
    found = []
    for feature, values in slices.items():
        for value in pd.unique(values):
            members = values == value
            count = int(members.sum())
            if count < MIN_SLICE_LABELS:
                continue
            z = z_score(excess.values[members], excess.variances[members])
            found.append({"feature": feature, "value": str(value), "labels": count, "z": round(z, 2),
                          "accuracy": round(float(excess.correct[members].mean()), 4),
                          "expected_accuracy": round(float(excess.expected_correct[members].mean()), 4),
                          "moved": z > limit})
    found.sort(key=lambda entry: -entry["z"])
    return found[:MAX_DETAIL_SLICES]


@dataclasses.dataclass(frozen=True)
class SequenceVerdict:
    labels: int
    window: int  # labels in the recent window
    window_z: float
    cusum: float
    cusum_peak: float
    excursion_labels: int  # labels since the CUSUM last left zero
    excursion_start: int  # their first index in the sequence
    recent_accuracy: float
    recent_expected_accuracy: float


def judge_sequence(excess: ExcessLoss, window_labels: int, slack: float) -> SequenceVerdict:
    n = len(excess)
    window = min(window_labels, n)
    recent = slice(n - window, n)
    path = cusum(excess, slack)
    return SequenceVerdict(
        labels=n, window=window, window_z=z_score(excess.values[recent], excess.variances[recent]),
        cusum=path.statistic, cusum_peak=float(path.path.max()) if n else 0.0,
        excursion_labels=n - path.excursion_start, excursion_start=path.excursion_start,
        recent_accuracy=float(excess.correct[recent].mean()) if window else math.nan,
        recent_expected_accuracy=float(excess.expected_correct[recent].mean()) if window else math.nan)
