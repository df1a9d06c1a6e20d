"""RankedScores against straightforward numpy on whole arrays: the same metrics from eight bytes a
row, chunk by chunk, whatever the chunk size, the ties, or the order the rows arrive in."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainer import ranked_scores
from trainer.ranked_scores import RankedScores, pack


def pair_counting_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    positives, negatives = scores[labels], scores[~labels]
    wins = (positives[:, None] > negatives[None, :]).sum()
    ties = (positives[:, None] == negatives[None, :]).sum()
    return (wins + 0.5 * ties) / (positives.size * negatives.size)


def whole_array_roc(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    thresholds = np.unique(scores)[::-1]
    tp = np.array([np.sum(labels & (scores >= t)) for t in thresholds])
    fp = np.array([np.sum(~labels & (scores >= t)) for t in thresholds])
    return np.r_[0.0, fp / (~labels).sum()], np.r_[0.0, tp / labels.sum()]


@pytest.fixture(params=[7, 64, 1 << 20], ids=lambda rows: f"chunks-of-{rows}")
def chunk_rows(request, monkeypatch):
    """Small chunks put runs of equal scores across chunk edges, and runs longer than a chunk."""
    monkeypatch.setattr(ranked_scores, "CHUNK_ROWS", request.param)
    return request.param


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_metric_equals_the_whole_array_computation(chunk_rows, seed):
    generator = np.random.default_rng(seed)
    rows = 900
    labels = generator.random(rows) < 0.35
    # Many ties (a coarse grid), exact 0 and 1, and the threshold itself.
    scores = np.round(generator.beta(2, 3, rows) * 40) / 40
    scores[:5] = [0.0, 1.0, 0.5, 0.5, 1.0]
    ranked = RankedScores.from_arrays(labels, scores)
    metrics = ranked.metrics(0.5)
    predicted = scores >= 0.5
    clipped = np.clip(scores, 1e-15, 1 - 1e-15)
    assert metrics["auc"] == pytest.approx(pair_counting_auc(labels, scores), abs=1e-15)
    assert metrics["accuracy"] == np.mean(predicted == labels)
    assert metrics["precision"] == np.sum(predicted & labels) / np.sum(predicted)
    assert metrics["recall"] == np.sum(predicted & labels) / np.sum(labels)
    assert metrics["log_loss"] == pytest.approx(-np.mean(np.where(labels, np.log(clipped), np.log1p(-clipped))), rel=1e-12)
    assert metrics["mean_probability"] == pytest.approx(scores.mean(), rel=1e-12)
    assert (metrics["count"], metrics["positive_rate"]) == (rows, labels.mean())
    fpr, tpr = ranked.roc_curve()
    expected_fpr, expected_tpr = whole_array_roc(labels, scores)
    np.testing.assert_array_equal(fpr, expected_fpr)
    np.testing.assert_array_equal(tpr, expected_tpr)
    thin_fpr, thin_tpr = ranked.roc_curve(max_points=9)
    keep = np.unique(np.linspace(0, expected_fpr.size - 1, 9).round().astype(int))
    np.testing.assert_array_equal(thin_fpr, expected_fpr[keep])
    np.testing.assert_array_equal(thin_tpr, expected_tpr[keep])
    histogram = ranked.histogram(20)
    edges = np.linspace(0, 1, 21)
    assert histogram["positives"] == np.histogram(scores[labels], edges)[0].tolist()
    assert histogram["negatives"] == np.histogram(scores[~labels], edges)[0].tolist()
    calibration = ranked.calibration(10)
    index = np.minimum((scores * 10).astype(int), 9)
    held = [b for b in range(10) if np.any(index == b)]
    assert calibration["count"] == [float(np.sum(index == b)) for b in held]
    assert calibration["observed_rate"] == pytest.approx([labels[index == b].mean() for b in held], rel=1e-12)
    assert calibration["mean_predicted"] == pytest.approx([scores[index == b].mean() for b in held], rel=1e-12)


def test_the_order_and_batching_of_the_rows_change_nothing(chunk_rows):
    generator = np.random.default_rng(11)
    labels = generator.random(500) < 0.5
    scores = generator.integers(0, 30, 500) / 29.0
    whole = RankedScores.from_arrays(labels, scores)
    order = generator.permutation(500)
    batched = RankedScores.from_batches((labels[order][i:i + 37], scores[order][i:i + 37]) for i in range(0, 500, 37))
    np.testing.assert_array_equal(whole.keys, batched.keys)
    assert whole.metrics(0.3) == batched.metrics(0.3)


def test_a_run_of_one_score_longer_than_a_chunk(chunk_rows):
    labels = np.array([True, False] * 50 + [True] * 10 + [False] * 3)
    scores = np.r_[np.full(100, 0.5), np.full(10, 0.9), np.full(3, 0.1)]
    assert RankedScores.from_arrays(labels, scores).auc() == pytest.approx(pair_counting_auc(labels, scores))


def test_single_class_and_empty_rows_are_undefined_not_errors():
    one_class = RankedScores.from_arrays(np.ones(4, bool), np.array([0.1, 0.2, 0.3, 0.4]))
    assert math.isnan(one_class.auc()) and one_class.roc_curve()[0].size == 0
    empty = RankedScores.from_batches([])
    assert empty.count == 0 and math.isnan(empty.metrics(0.5)["auc"]) and math.isnan(empty.metrics(0.5)["log_loss"])


def test_negative_zero_sorts_with_zero_and_a_probability_outside_zero_to_one_is_refused():
    ranked = RankedScores.from_arrays(np.array([True, False, False]), np.array([-0.0, 0.0, 0.25]))
    assert ranked.auc() == pytest.approx(0.25)  # the positive ties with one negative at 0, loses to 0.25
    for bad in (math.nan, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"probability .* at row 1 is not in \[0, 1\]"):
            pack(np.array([True, False]), np.array([0.5, bad]))
    with pytest.raises(ValueError, match="2 labels for 3 probabilities"):
        pack(np.array([True, False]), np.array([0.5, 0.5, 0.5]))
