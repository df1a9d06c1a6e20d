"""Concept drift as a sequence, on real taxi rows scored by a real (TensorFlow-free) model: quiet on calm labels
however many, quick on a sudden change, patient with a slow one, blind to covariate shift, and saying where."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from monitoring import checks, sequential
from monitoring.results import CalibrationMap
from tests.monitoring.models import labels_of
from transforms.features import COMPANY_KEY, HOUR_KEY, PAYMENT_TYPE_KEY


def _stream(model, rows: pd.DataFrame, labels: np.ndarray, start: str = "2026-11-20") -> pd.DataFrame:
    """What Monitor.labelled_requests gives the check: one row per labelled request, with its request time."""
    return pd.DataFrame({
        "timestamp": pd.date_range(start, periods=len(rows), freq="min", tz="UTC"),
        "probability": model.predict(rows), "ground_truth": pd.array(labels, dtype="Int64"),
        PAYMENT_TYPE_KEY: rows[PAYMENT_TYPE_KEY].to_numpy(), HOUR_KEY: rows[HOUR_KEY].to_numpy(),
        COMPANY_KEY: rows[COMPANY_KEY].to_numpy()})


def _resampled(traffic: pd.DataFrame, n: int, seed: int, weights: np.ndarray | None = None) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    p = None if weights is None else weights / weights.sum()
    return traffic.iloc[rng.choice(len(traffic), n, replace=True, p=p)].reset_index(drop=True)


def _card_riders_stop_tipping(rows: pd.DataFrame, labels: np.ndarray) -> np.ndarray:
    changed = labels.copy()
    changed[(rows[PAYMENT_TYPE_KEY] == "Credit Card").to_numpy()] = 0
    return changed


def _first_failure(model, baseline, thresholds, rows, labels, start: int, step: int = 10) -> int | None:
    """Labels after `start` until the check fails, running it every `step` labels as hourly runs would."""
    stream = _stream(model, rows, labels)
    for end in range(start + step, len(rows) + 1, step):
        if not checks.concept_drift(stream.iloc[:end], baseline, thresholds.concept).passed:
            return end - start
    return None


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_calm_labels_pass_however_long_the_stream(seed, rate_model, thresholds):
    model, baseline, _, traffic = rate_model
    rows = _resampled(traffic, 6000, seed)
    stream = _stream(model, rows, labels_of(rows))
    for end in range(500, 6001, 500):
        outcome = checks.concept_drift(stream.iloc[:end], baseline, thresholds.concept)
        sequence = outcome.evidence["sequential"]
        assert outcome.passed, (end, sequence)
        assert sequence["window_z"] < thresholds.concept.window_z and sequence["cusum"] < thresholds.concept.cusum_threshold


def test_a_sudden_change_fails_within_300_labels_while_the_pooled_metrics_still_pass(rate_model, thresholds):
    model, baseline, _, traffic = rate_model
    rows = _resampled(traffic, 4000, 7)
    labels = labels_of(rows)
    history = 3000
    labels[history:] = _card_riders_stop_tipping(rows.iloc[history:], labels[history:])
    delay = _first_failure(model, baseline, thresholds, rows, labels, history)
    assert delay is not None and delay <= 300
    outcome = checks.concept_drift(_stream(model, rows, labels).iloc[:history + delay], baseline, thresholds.concept)
    # What the check did before: 3,000 calm labels drown the new ones in the pool.
    assert outcome.evidence["metrics_failed"] == []
    assert outcome.evidence["detectors_failed"]


def test_the_evidence_names_the_slice_where_the_change_sits_with_counts(rate_model, thresholds):
    model, baseline, _, traffic = rate_model
    rows = _resampled(traffic, 2400, 8)
    labels = labels_of(rows)
    labels[2000:] = _card_riders_stop_tipping(rows.iloc[2000:], labels[2000:])
    outcome = checks.concept_drift(_stream(model, rows, labels), baseline, thresholds.concept)
    sequence = outcome.evidence["sequential"]
    top = sequence["slices"][0]
    assert (top["feature"], top["value"]) == (PAYMENT_TYPE_KEY, "Credit Card") and top["moved"]
    cards_after = int((rows.iloc[2000:][PAYMENT_TYPE_KEY] == "Credit Card").sum())
    # The labels since the CUSUM left zero: about the 400 changed ones (it may start a little early or late).
    assert 300 <= sequence["slices_over_labels"] <= 600
    assert abs(top["labels"] - cards_after * sequence["slices_over_labels"] / 400) < 0.35 * cards_after
    assert top["accuracy"] < top["expected_accuracy"] - 0.1
    assert sequence["change_began"].startswith("2026-11-21")  # request 2000 of one a minute from 2026-11-20
    # The evidence rides in XCom and the retraining run's MLMD trigger (PostgreSQL indexes 2.7 kB): a few slices;
    # the details keep the rest for the report.
    assert len(json.dumps(outcome.to_json())) < 1500
    assert len(outcome.details["slices"]) > len(sequence["slices"]) == sequential.MAX_EVIDENCE_SLICES


def test_a_slow_change_accumulates_in_the_cusum_before_its_ramp_ends(rate_model, thresholds):
    model, baseline, _, traffic = rate_model
    rows = _resampled(traffic, 9000, 9)
    labels = labels_of(rows)
    rng = np.random.default_rng(9)
    # From label 3000 on, a growing share of requests (0 -> 10 % over 6,000 labels) gets the wrong label.
    share = np.clip((np.arange(len(rows)) - 3000) / 6000, 0, 1) * 0.10
    flipped = rng.random(len(rows)) < share
    labels[flipped] = 1 - labels[flipped]
    stream = _stream(model, rows, labels)
    for end in range(3100, len(rows) + 1, 100):
        outcome = checks.concept_drift(stream.iloc[:end], baseline, thresholds.concept)
        if "cusum" in outcome.evidence["detectors_failed"]:
            break
    else:
        pytest.fail("the CUSUM never fired on the slow change")
    assert end - 3000 < 3000  # before half the ramp: under 5 % of labels wrong
    # Its excursion began after the calm part: the evidence dates the change to the ramp, not before.
    assert outcome.evidence["sequential"]["labels_since_change"] <= end - 3000 + 300
    assert outcome.evidence["metrics_failed"] == []  # the pooled metrics have not noticed


def test_covariate_shift_with_unchanged_labels_does_not_fire(rate_model, thresholds):
    """Card trips five times as common: accuracy falls (card tips are harder to call), the concept holds."""
    model, baseline, _, traffic = rate_model
    weights = np.where(traffic[PAYMENT_TYPE_KEY] == "Credit Card", 5.0, 1.0)
    rows = _resampled(traffic, 3000, 10, weights)
    outcome = checks.concept_drift(_stream(model, rows, labels_of(rows)), baseline, thresholds.concept)
    assert outcome.evidence["detectors_failed"] == []
    assert outcome.evidence["sequential"]["recent_accuracy"] < baseline.accuracy - 0.05


def test_labels_are_judged_in_request_order_however_late_they_came(rate_model, thresholds):
    model, baseline, _, traffic = rate_model
    rows = _resampled(traffic, 2300, 11)
    labels = labels_of(rows)
    labels[2000:] = _card_riders_stop_tipping(rows.iloc[2000:], labels[2000:])
    stream = _stream(model, rows, labels)
    # Feedback arrives in any order (the changed requests' labels first, say): the check sorts by request time.
    shuffled = stream.sample(frac=1.0, random_state=1)
    ordered = checks.concept_drift(stream, baseline, thresholds.concept)
    assert checks.concept_drift(shuffled, baseline, thresholds.concept).evidence == ordered.evidence
    assert not ordered.passed


def test_the_excess_loss_has_mean_zero_and_the_stated_variance_when_labels_follow_the_calibration():
    rng = np.random.default_rng(0)
    edges = np.linspace(0, 1, 21)
    probabilities = rng.beta(0.7, 1.5, 200_000)
    labels = rng.random(probabilities.size) < probabilities
    calibration = CalibrationMap.from_histogram(edges, np.histogram(probabilities[labels], edges)[0],
                                                np.histogram(probabilities[~labels], edges)[0], "synthetic")
    excess = sequential.excess_loss(labels.astype(int), probabilities, calibration)
    standardised = excess.values / np.sqrt(excess.variances.mean())
    assert abs(standardised.mean()) < 0.01
    # Bins are coarse near 0 (the first centre is 0.025): the stated variance errs a little high, the safe side.
    assert excess.values.var() <= excess.variances.mean() <= 1.15 * excess.values.var()
    assert excess.expected_correct.mean() == pytest.approx(excess.correct.mean(), abs=0.005)


def test_the_calibration_map_pools_bins_that_fall_and_reads_between_centres():
    edges = [0.0, 0.25, 0.5, 0.75, 1.0]
    # Observed rates 0.1, 0.5, 0.3 (falls: pooled with the bin before), 0.9.
    calibration = CalibrationMap.from_histogram(edges, [10, 50, 30, 90], [90, 50, 70, 10], "literal")
    assert calibration.rates[1] == calibration.rates[2] == pytest.approx((50.5 + 30.5) / 202)
    assert list(calibration.rates) == sorted(calibration.rates)
    assert calibration.rate(np.array([0.0, 0.125, 1.0])).tolist() == pytest.approx([10.5 / 101, 10.5 / 101, 90.5 / 101])
    with pytest.raises(Exception, match="2 positive"):
        CalibrationMap.from_histogram(edges, [1, 2], [3, 4], "short")
