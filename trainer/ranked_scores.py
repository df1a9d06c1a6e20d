"""A binary classifier's metrics over millions of rows, in eight bytes per row.

Train and evaluate measure every row of a split (the AUC is compared to the third decimal, so
it is exact, not thresholded). Held as numpy arrays of float64 probabilities and labels, the
metrics' temporaries (ranks, orders, logs) cost 60-160 bytes per row: at 15M input rows that
was 0.8-1 GiB on top of TensorFlow. Here each row is one uint64, the probability's float64 bits
shifted left by one above the label bit (a probability in [0, 1] has no sign bit to lose),
sorted in place, so rows come in (probability, label) order and equal probabilities are
contiguous. Every metric is then one pass over fixed-size chunks; the AUC counts pairs in
integers (exact, whatever the order the rows arrived in).
"""

from __future__ import annotations

import math
from typing import Iterable, Iterator

import numpy as np

CHUNK_ROWS = 1 << 20
# log(0) is infinite: probabilities are clipped this far from 0 and 1 for the log loss (scikit-learn's choice).
LOG_LOSS_EPSILON = 1e-15


def outside_zero_to_one(values: np.ndarray) -> np.ndarray:
    """The indices of the values that are no probability: outside [0, 1], or NaN."""
    return np.flatnonzero(~((values >= 0.0) & (values <= 1.0)))


def pack(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """One unsorted uint64 per row: the probability's bits, then the label bit. ValueError if a
    probability is not in [0, 1] (NaN included): such a row has no place in the order."""
    labels = np.asarray(labels).reshape(-1).astype(bool)
    values = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if labels.size != values.size:
        raise ValueError(f"{labels.size} labels for {values.size} probabilities")
    outside = outside_zero_to_one(values)
    if outside.size:
        raise ValueError(f"probability {values[outside[0]]!r} at row {int(outside[0])} is not in [0, 1]")
    keys = values + 0.0  # the one copy, worked on in place; -0.0 becomes 0.0 (its sign bit would sort it last)
    keys = keys.view(np.uint64)
    keys <<= np.uint64(1)
    keys |= labels
    return keys


class RankedScores:
    """Rows of (label, probability), sorted by probability then label, as packed uint64 keys."""

    def __init__(self, keys: np.ndarray):
        self.keys = keys  # sorted, from pack()
        self.count = int(keys.size)
        self.positives = sum(int(np.count_nonzero(chunk & np.uint64(1))) for chunk in self._raw_chunks())
        self.negatives = self.count - self.positives

    @classmethod
    def from_arrays(cls, labels: np.ndarray, probabilities: np.ndarray) -> RankedScores:
        keys = pack(labels, probabilities)
        keys.sort()
        return cls(keys)

    @classmethod
    def from_batches(cls, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> RankedScores:
        """From (labels, probabilities) batches, packed one batch at a time (16 bytes per row at the peak)."""
        keys = np.concatenate([pack(labels, probabilities) for labels, probabilities in batches] or [np.zeros(0, np.uint64)])
        keys.sort()
        return cls(keys)

    def _raw_chunks(self) -> Iterator[np.ndarray]:
        for start in range(0, self.count, CHUNK_ROWS):
            yield self.keys[start:start + CHUNK_ROWS]

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(labels as bool, probabilities as float64), CHUNK_ROWS rows at a time in ascending order."""
        for chunk in self._raw_chunks():
            yield (chunk & np.uint64(1)).astype(bool), (chunk >> np.uint64(1)).view(np.float64)

    def _runs(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Runs of equal probability in ascending order, a chunk of them at a time: for each run,
        (positives in it, negatives in it, positives below it, negatives below it). A run never
        straddles two chunks."""
        start = pos_below = neg_below = 0
        while start < self.count:
            end = min(start + CHUNK_ROWS, self.count)
            if end < self.count:
                run_key = (self.keys[end] >> np.uint64(1)) << np.uint64(1)
                cut = int(np.searchsorted(self.keys, run_key, side="left"))
                end = cut if cut > start else int(np.searchsorted(self.keys, run_key | np.uint64(1), side="right"))
            chunk = self.keys[start:end]
            values = chunk >> np.uint64(1)
            firsts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
            sizes = np.diff(np.r_[firsts, chunk.size])
            positives = np.add.reduceat((chunk & np.uint64(1)).astype(np.int64), firsts)
            negatives = sizes - positives
            yield (positives, negatives, pos_below + np.cumsum(positives) - positives,
                   neg_below + np.cumsum(negatives) - negatives)
            pos_below += int(positives.sum())
            neg_below += int(negatives.sum())
            start = end

    def auc(self) -> float:
        """Area under the ROC curve (Mann-Whitney U, ties counted one half); NaN on a single class,
        where it is undefined (a slice with no positives must not pretend to be perfect)."""
        if not self.positives or not self.negatives:
            return math.nan
        doubled_wins = 0  # each positive's negatives below it, twice, plus its ties once: integers, exact
        for positives, negatives, _, negatives_below in self._runs():
            doubled_wins += int(np.sum(positives * (2 * negatives_below + negatives)))
        return doubled_wins / (2 * self.positives * self.negatives)

    def distinct_probabilities(self) -> int:
        return sum(int(positives.size) for positives, *_ in self._runs())

    def roc_curve(self, max_points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(false positive rates, true positive rates) from (0, 0) to (1, 1), one point per distinct
        probability taken as the threshold (or `max_points` of them evenly spaced, ends included).
        Empty arrays on a single class: nothing to draw."""
        if not self.positives or not self.negatives:
            return np.array([]), np.array([])
        distinct = self.distinct_probabilities()
        points = distinct + 1  # (0, 0), then one per threshold from the highest probability down
        if max_points is None or points <= max_points:
            keep = np.arange(points)
        else:
            keep = np.unique(np.linspace(0, points - 1, max_points).round().astype(np.int64))
        fpr, tpr = np.zeros(keep.size), np.zeros(keep.size)
        run_index = 0  # ascending: run r (0-based) is point `distinct - r`
        for positives, _, positives_below, negatives_below in self._runs():
            point = distinct - run_index - np.arange(positives.size)
            wanted = np.isin(point, keep)
            at = np.searchsorted(keep, point[wanted])
            # At threshold = this run's probability, predicted positive = this run and every run above.
            fpr[at] = (self.negatives - negatives_below[wanted]) / self.negatives
            tpr[at] = (self.positives - positives_below[wanted]) / self.positives
            run_index += positives.size
        return fpr, tpr

    def metrics(self, threshold: float) -> dict[str, float]:
        """auc, accuracy, precision, recall and f1 at `threshold` (positive when probability >=
        threshold), log_loss, count, positive_rate, mean_probability. Precision with no predicted
        positive (recall with no actual positive) is 0, as in scikit-learn, so F1 stays defined."""
        if not self.count:
            return {"auc": math.nan, "accuracy": math.nan, "precision": 0.0, "recall": 0.0, "f1": 0.0,
                    "log_loss": math.nan, "count": 0.0, "positive_rate": math.nan, "mean_probability": math.nan}
        true_positives = predicted_positives = correct = 0
        log_likelihood = probability_sum = 0.0
        for labels, probabilities in self.chunks():
            predicted = probabilities >= threshold
            true_positives += int(np.count_nonzero(predicted & labels))
            predicted_positives += int(np.count_nonzero(predicted))
            correct += int(np.count_nonzero(predicted == labels))
            clipped = np.clip(probabilities, LOG_LOSS_EPSILON, 1.0 - LOG_LOSS_EPSILON)
            log_likelihood += float(np.sum(np.where(labels, np.log(clipped), np.log1p(-clipped))))
            probability_sum += float(probabilities.sum())
        precision = true_positives / predicted_positives if predicted_positives else 0.0
        recall = true_positives / self.positives if self.positives else 0.0
        return {
            "auc": self.auc(),
            "accuracy": correct / self.count,
            "precision": precision,
            "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "log_loss": -log_likelihood / self.count,
            "count": float(self.count),
            "positive_rate": self.positives / self.count,
            "mean_probability": probability_sum / self.count,
        }

    def calibration(self, bins: int) -> dict[str, list[float]]:
        """Per equal-width probability bin holding rows: mean predicted probability, observed positive rate, rows."""
        counts, probability_sums, positive_counts = np.zeros(bins), np.zeros(bins), np.zeros(bins)
        for labels, probabilities in self.chunks():
            index = np.minimum((probabilities * bins).astype(np.int64), bins - 1)
            counts += np.bincount(index, minlength=bins)
            probability_sums += np.bincount(index, weights=probabilities, minlength=bins)
            positive_counts += np.bincount(index, weights=labels, minlength=bins)
        held = counts > 0
        return {"mean_predicted": (probability_sums[held] / counts[held]).tolist(),
                "observed_rate": (positive_counts[held] / counts[held]).tolist(),
                "count": counts[held].tolist()}

    def histogram(self, bins: int) -> dict[str, list[float]]:
        """Rows per equal-width probability bin on [0, 1], separately for actual positives and negatives."""
        edges = np.linspace(0.0, 1.0, bins + 1)
        positives, negatives = np.zeros(bins), np.zeros(bins)
        for labels, probabilities in self.chunks():
            positives += np.histogram(probabilities[labels], bins=edges)[0]
            negatives += np.histogram(probabilities[~labels], bins=edges)[0]
        return {"edges": edges.tolist(), "positives": positives.tolist(), "negatives": negatives.tolist()}
