"""The label-free performance estimate on windows whose truth is known: real taxi rows, a real calibrated model.

It must follow the realized metric when the inputs shift, fail the check when that takes performance below
the evaluation's, stay put on calm windows, and (as the docs say) not see a change in what labels mean."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from monitoring.performance_estimate import estimate_performance, expected_auc, performance_estimate
from monitoring.results import CalibrationMap
from monitoring.served_values import ProbabilityCounts
from tests.monitoring.models import labels_of
from trainer.evaluate import auc, binary_metrics
from transforms.features import FARE_KEY, PAYMENT_TYPE_KEY


def _window(traffic: pd.DataFrame, n: int, seed: int, weights: np.ndarray | None = None) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    p = None if weights is None else weights / weights.sum()
    return traffic.iloc[rng.choice(len(traffic), n, replace=True, p=p)].reset_index(drop=True)


def _labelled(model, rows: pd.DataFrame, labels: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"probability": model.predict(rows), "ground_truth": pd.array(labels, dtype="Int64")})


def _realized(model, rows: pd.DataFrame, labels: np.ndarray) -> dict[str, float]:
    return binary_metrics(labels.astype(bool), model.predict(rows), 0.5)


@pytest.mark.parametrize("shift, weight", [("Credit Card", 5.0), ("Cash", 5.0)])
def test_the_estimate_tracks_the_realized_metrics_under_covariate_shift(shift, weight, rate_model, thresholds):
    model, baseline, _, traffic = rate_model
    rows = _window(traffic, 2000, 1, np.where(traffic[PAYMENT_TYPE_KEY] == shift, weight, 1.0))
    labels = labels_of(rows)
    realized = _realized(model, rows, labels)
    estimate = estimate_performance(model.predict(rows), baseline.calibration)
    # The shift really moved performance, and the estimate moved with it, without a single label.
    assert abs(realized["accuracy"] - baseline.accuracy) > 0.05
    assert estimate.accuracy == pytest.approx(realized["accuracy"], abs=0.03)
    # AUC is the harder one: the evaluation's first bin (p < 0.05) mixes cash trips (never big tippers) with a
    # few others, so with five times the cash trips it expects a few positives that never come (0.030 off here).
    assert estimate.auc == pytest.approx(realized["auc"], abs=0.035)
    assert (estimate.accuracy - baseline.accuracy) * (realized["accuracy"] - baseline.accuracy) > 0  # same direction


def test_the_check_fails_when_the_shift_takes_estimated_accuracy_below_the_evaluation_and_shows_realized(rate_model,
                                                                                                      thresholds):
    model, baseline, _, traffic = rate_model
    rows = _window(traffic, 1000, 2, np.where(traffic[PAYMENT_TYPE_KEY] == "Credit Card", 5.0, 1.0))
    labels = labels_of(rows)
    outcome = performance_estimate(model.predict(rows), baseline, thresholds.performance, 0.5,
                                   _labelled(model, rows, labels).iloc[:300])
    assert not outcome.passed and "accuracy" in outcome.evidence["metrics_failed"]
    accuracy = outcome.evidence["metrics"]["accuracy"]
    assert accuracy["estimated"] < accuracy["limit"] < accuracy["baseline"]
    realized_300 = _realized(model, rows.iloc[:300], labels[:300])["accuracy"]
    assert accuracy["realized"] == pytest.approx(realized_300, abs=1e-4) and outcome.evidence["realized_labels"] == 300
    assert accuracy["interval"][0] <= accuracy["estimated"] <= accuracy["interval"][1]


@pytest.mark.parametrize("size", [100, 500, 2000])
def test_calm_windows_pass_and_the_realized_metric_falls_inside_the_interval(size, rate_model, thresholds):
    model, baseline, _, traffic = rate_model
    inside = 0
    for seed in range(10):
        rows = _window(traffic, size, 100 + seed)
        labels = labels_of(rows)
        outcome = performance_estimate(model.predict(rows), baseline, thresholds.performance, 0.5, _labelled(model, rows, labels))
        assert outcome.passed, outcome.evidence
        low, high = outcome.evidence["metrics"]["accuracy"]["interval"]
        inside += low <= _realized(model, rows, labels)["accuracy"] <= high
    assert inside >= 7  # a 90 % interval; the calibration map's own error is not in it


@pytest.mark.parametrize("name", ["20x card trips", "20x long fares", "20x short fares"])
def test_under_strong_covariate_shift_the_interval_still_holds_the_realized_accuracy(name, rate_model):
    """Inside a probability bin the shifted-to requests' own rate can sit off the bin's: the interval
    allows for it (CALIBRATION_MARGIN); the labels drawn from the calibration alone would not."""
    model, baseline, _, traffic = rate_model
    weights = {"20x card trips": traffic[PAYMENT_TYPE_KEY] == "Credit Card", "20x long fares": traffic[FARE_KEY] > 30,
               "20x short fares": traffic[FARE_KEY] < 8}[name].to_numpy()
    inside = without_margin = 0
    for seed in range(20):
        rows = _window(traffic, 500, 300 + seed, np.where(weights, 20.0, 1.0))
        realized = _realized(model, rows, labels_of(rows))["accuracy"]
        widened = estimate_performance(model.predict(rows), baseline.calibration)
        bare = estimate_performance(model.predict(rows), baseline.calibration, margin=0.0)
        inside += widened.accuracy_interval[0] <= realized <= widened.accuracy_interval[1]
        without_margin += bare.accuracy_interval[0] <= realized <= bare.accuracy_interval[1]
    assert inside >= 17, (inside, without_margin)  # a 90 % interval: 18 of 20 expected


def test_the_estimate_cannot_see_concept_drift(rate_model, thresholds):
    """Cash riders start tipping like card riders: the labels move, the probabilities (and so the estimate) do not."""
    model, baseline, _, traffic = rate_model
    rows = _window(traffic, 2000, 3)
    cards = traffic[traffic[PAYMENT_TYPE_KEY] == "Credit Card"].sort_values(FARE_KEY)
    nearest = np.clip(np.searchsorted(cards[FARE_KEY].to_numpy(), rows[FARE_KEY].to_numpy()), 0, len(cards) - 1)
    labels = np.where(rows[PAYMENT_TYPE_KEY] == "Cash", labels_of(cards)[nearest], labels_of(rows))
    outcome = performance_estimate(model.predict(rows), baseline, thresholds.performance, 0.5, _labelled(model, rows, labels))
    accuracy = outcome.evidence["metrics"]["accuracy"]
    assert outcome.passed and accuracy["estimated"] == pytest.approx(baseline.accuracy, abs=0.03)
    assert accuracy["realized"] < accuracy["estimated"] - 0.1


def test_expected_auc_is_the_mean_auc_of_labels_drawn_from_the_calibration():
    rng = np.random.default_rng(5)
    probabilities = np.round(rng.beta(1.2, 2.0, 3000), 2)  # ties on purpose
    chances = np.clip(probabilities * 0.9 + 0.05, 0, 1)
    drawn = [auc(rng.random(chances.size) < chances, probabilities) for _ in range(300)]
    assert expected_auc(probabilities, chances) == pytest.approx(float(np.mean(drawn)), abs=0.003)
    assert expected_auc(np.full(50, 0.3), np.full(50, 0.3)) == pytest.approx(0.5)


def test_without_the_evaluations_histogram_or_enough_requests_nothing_is_judged(rate_model, thresholds):
    model, baseline, _, traffic = rate_model
    rows = _window(traffic, 500, 4)
    bare = performance_estimate(model.predict(rows), dataclasses.replace(baseline, calibration=None), thresholds.performance)
    assert bare.passed and bare.evidence["judged"] is False and "histogram" in bare.evidence["skipped"]
    few = performance_estimate(model.predict(rows)[:thresholds.performance.min_rows - 1], baseline, thresholds.performance)
    assert few.passed and few.evidence["judged"] is False and few.evidence["rows"] == thresholds.performance.min_rows - 1
    assert isinstance(baseline.calibration, CalibrationMap)


@pytest.mark.parametrize("budget", [1, 3 * 5_001, 10**9], ids=["one_draw_at_a_time", "three_at_a_time", "whole_chunks"])
def test_drawing_labels_a_few_draws_at_a_time_gives_the_numbers_of_whole_chunks(budget, monkeypatch):
    """The draws are bounded in memory (10M requests x 50 draws would be 4 GB) without changing a number:
    the reference below is the estimate's draws as whole (50 x requests) arrays, as before the bound."""
    from monitoring import performance_estimate as module

    rng = np.random.default_rng(3)
    probabilities = rng.beta(2.0, 5.0, 5_001)
    calibration = CalibrationMap.from_histogram(list(np.linspace(0, 1, 21)), list(rng.integers(0, 40, 20)),
                                                list(rng.integers(0, 40, 20)), "test")
    predicted = probabilities >= 0.5
    reference_rng, accuracies, positives_seen = np.random.default_rng(0), [], []
    for first in range(0, module.DRAWS, 50):
        chances = calibration.plausible_rates(probabilities, min(50, module.DRAWS - first), reference_rng)
        labels = reference_rng.random(chances.shape) < chances
        accuracies.append(np.mean(labels == predicted, axis=1))
        positives_seen.append(labels.sum(axis=1))
    monkeypatch.setattr(module, "_CHUNK_ELEMENTS", budget)

    drawn_accuracy, drawn_auc = module._drawn_metrics(probabilities, predicted, calibration, module.DRAWS,  # noqa: SLF001
                                                      np.random.default_rng(0))

    np.testing.assert_array_equal(drawn_accuracy, np.concatenate(accuracies))
    assert drawn_auc.shape == (module.DRAWS,) and np.isfinite(drawn_auc).all()
    monkeypatch.setattr(module, "_CHUNK_ELEMENTS", 10**9)
    whole = estimate_performance(probabilities, calibration)
    monkeypatch.setattr(module, "_CHUNK_ELEMENTS", budget)
    assert estimate_performance(probabilities, calibration) == whole


@pytest.mark.parametrize("shape", [(2.0, 5.0), (0.3, 0.3)], ids=["mostly_low", "at_both_ends"])
def test_large_windows_draw_the_labels_sums_from_their_normal_limit_with_the_same_spread(shape, monkeypatch):
    """From NORMAL_LABELS_FROM requests on, the labels' noise comes from per-bin sums instead of one
    Bernoulli per request: over many draws both ways give the same distribution of each metric."""
    from monitoring import performance_estimate as module

    rng = np.random.default_rng(5)
    probabilities = rng.beta(*shape, 20_000)
    calibration = CalibrationMap.from_histogram(list(np.linspace(0, 1, 21)), list(rng.integers(0, 400, 20)),
                                                list(rng.integers(0, 400, 20)), "test")
    predicted = probabilities >= 0.5
    per_request = module._drawn_metrics(probabilities, predicted, calibration, 2_000, np.random.default_rng(0))  # noqa: SLF001
    from_sums = module._moment_metrics(ProbabilityCounts.exact(probabilities), predicted[np.argsort(probabilities)],  # noqa: SLF001
                                       calibration, 2_000, np.random.default_rng(1))
    for exact, normal in zip(per_request, from_sums):
        np.testing.assert_allclose(np.percentile(normal, [5, 50, 95]), np.percentile(exact, [5, 50, 95]), atol=0.003)
        assert np.std(normal) == pytest.approx(np.std(exact), rel=0.08)
    # The estimate takes that path from the threshold on, and the interval it reports moves only by draw
    # noise (a 5 % point of 200 draws moves by ~0.15 of the metric's spread, ~0.003 here, each way).
    below = estimate_performance(probabilities, calibration)
    monkeypatch.setattr(module, "NORMAL_LABELS_FROM", probabilities.size)
    above = estimate_performance(probabilities, calibration)
    assert (above.accuracy, above.auc) == (below.accuracy, below.auc)
    np.testing.assert_allclose(above.accuracy_interval + above.auc_interval, below.accuracy_interval + below.auc_interval,
                               atol=0.012)
    assert above.accuracy_interval != below.accuracy_interval


def test_expected_auc_counts_every_pair_and_half_the_ties_per_request_or_per_counted_value():
    """Against the definition, pair by pair: sum over i != j of c_i (1 - c_j) [p_i > p_j, 1/2 if equal] / sum of c_i (1 - c_j)."""
    rng = np.random.default_rng(8)
    probabilities = np.round(rng.random(400), 1)  # eleven values: mostly ties
    chances = rng.random(400)  # chances need not follow the probability
    right = np.where(probabilities[:, None] > probabilities[None, :], 1.0,
                     np.where(probabilities[:, None] == probabilities[None, :], 0.5, 0.0))
    weights = chances[:, None] * (1.0 - chances[None, :])
    np.fill_diagonal(weights, 0.0)
    assert expected_auc(probabilities, chances) == pytest.approx(float(np.sum(weights * right) / np.sum(weights)), rel=1e-12)
    # A probability counted m times is m requests of that probability and chance.
    counted = ProbabilityCounts.exact(probabilities)
    chance_of = np.clip(counted.values * 0.8 + 0.1, 0, 1)
    assert expected_auc(counted.values, chance_of, counted.counts) == pytest.approx(
        expected_auc(counted.expanded(), np.clip(counted.expanded() * 0.8 + 0.1, 0, 1)), rel=1e-12)


@pytest.mark.parametrize("shape", [(2.0, 5.0), (0.3, 0.3)], ids=["mostly_low", "at_both_ends"])
def test_probabilities_counted_on_the_grid_give_the_estimate_of_every_request(shape, monkeypatch):
    """run_monitoring passes each version's probabilities counted on a 1e-6 grid (monitoring/served_values.py), not
    per request. Expected accuracy and AUC move by the grid's quantization only (measured: < 1e-6 here); below
    NORMAL_LABELS_FROM the labels are drawn for the requests in ascending order instead of as given, which moves the
    interval by draw noise only; from it on (sums over distinct values) by the quantization only."""
    from monitoring import performance_estimate as module

    rng = np.random.default_rng(6)
    probabilities = rng.beta(*shape, 20_000)
    calibration = CalibrationMap.from_histogram(list(np.linspace(0, 1, 21)), list(rng.integers(0, 400, 20)),
                                                list(rng.integers(0, 400, 20)), "test")
    gridded = ProbabilityCounts.gridded(probabilities)
    per_request, counted = estimate_performance(probabilities, calibration), estimate_performance(gridded, calibration)
    assert counted.rows == per_request.rows == 20_000
    for name in ("accuracy", "auc", "accuracy_sd"):
        assert getattr(counted, name) == pytest.approx(getattr(per_request, name), abs=1e-6), name
    np.testing.assert_allclose(counted.accuracy_interval + counted.auc_interval,
                               per_request.accuracy_interval + per_request.auc_interval, atol=0.012)
    assert counted.accuracy_interval != per_request.accuracy_interval  # the draws did land elsewhere
    # The same requests counted exactly (no grid): only the draws' order differs from per request, and from the grid
    # only the quantization: the same draws, the same interval to 1e-5.
    exact = estimate_performance(ProbabilityCounts.exact(probabilities), calibration)
    assert (exact.accuracy, exact.auc) == pytest.approx((per_request.accuracy, per_request.auc), abs=1e-12)
    np.testing.assert_allclose(exact.accuracy_interval + exact.auc_interval, counted.accuracy_interval + counted.auc_interval,
                               atol=1e-5)
    monkeypatch.setattr(module, "NORMAL_LABELS_FROM", probabilities.size)
    normal_per_request, normal_counted = estimate_performance(probabilities, calibration), estimate_performance(gridded, calibration)
    assert (normal_counted.accuracy, normal_counted.auc) == (counted.accuracy, counted.auc)
    np.testing.assert_allclose(normal_counted.accuracy_interval + normal_counted.auc_interval,
                               normal_per_request.accuracy_interval + normal_per_request.auc_interval, atol=1e-5)


def test_the_checks_verdicts_and_shown_numbers_are_those_of_per_request_probabilities(rate_model, thresholds):
    """The windows above, counted on the grid as run_monitoring counts them: same verdict, same accuracy and AUC shown."""
    model, baseline, _, traffic = rate_model
    windows = [_window(traffic, size, seed, weights) for size, seed, weights in [
        (2000, 1, np.where(traffic[PAYMENT_TYPE_KEY] == "Credit Card", 5.0, 1.0)),
        (1000, 2, np.where(traffic[PAYMENT_TYPE_KEY] == "Cash", 5.0, 1.0)), (500, 3, None), (2000, 4, None)]]
    for rows in windows:
        probabilities = model.predict(rows)
        per_request = performance_estimate(probabilities, baseline, thresholds.performance)
        counted = performance_estimate(ProbabilityCounts.gridded(probabilities), baseline, thresholds.performance)
        assert counted.passed == per_request.passed and counted.evidence["rows"] == per_request.evidence["rows"]
        for metric in ("accuracy", "auc"):
            shown, before = counted.evidence["metrics"][metric], per_request.evidence["metrics"][metric]
            assert (shown["estimated"], shown["limit"]) == (before["estimated"], before["limit"]), metric
            np.testing.assert_allclose(shown["interval"], before["interval"], atol=0.012)
    assert {performance_estimate(model.predict(rows), baseline, thresholds.performance).passed for rows in windows} == {True, False}
