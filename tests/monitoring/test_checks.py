"""Each check as a plain function on real taxi rows: quiet on undrifted data, firing on real and constructed
drift with the right features named. Statistics are real TFDV statistics (in memory, same generator and
options as the Beam job); the comparators are TFDV's."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from core.errors import DataError
from monitoring import checks, drift
from monitoring.log_statistics import statistics_of_frame
from monitoring.results import Baseline, CheckOutcome, MonitoringResult
from monitoring.served_values import ProbabilityCounts

DAY, HOUR = 24.0, 1.0
TWO_YEARS = 2 * 366 * DAY


def _drift(frame, training_baseline, schema, thresholds, hours=HOUR, baselines=None):
    stats = statistics_of_frame(frame)
    return checks.data_drift(stats, frame, baselines or [training_baseline], schema, thresholds, hours)


def _skew(frame, training_baseline, schema, thresholds, hours=HOUR):
    return checks.training_serving_skew(training_baseline, statistics_of_frame(frame), frame, schema, thresholds, hours)


@pytest.mark.parametrize("size", [120, 500, 3000])
def test_held_out_trips_of_the_training_period_pass_every_distribution_check(size, split_2013_2014, training_baseline,
                                                                              schema, thresholds):
    _, heldout = split_2013_2014
    window = heldout.sample(min(size, len(heldout)), random_state=size)
    for outcome in (_drift(window, training_baseline, schema, thresholds, TWO_YEARS),
                    _skew(window, training_baseline, schema, thresholds, TWO_YEARS)):
        assert outcome.passed, outcome.evidence["drifted_features"]
        assert outcome.evidence["drifted_features"] == []
        assert 0 <= outcome.value < outcome.threshold
    stats = statistics_of_frame(window)
    assert checks.schema_anomalies(stats, schema).passed
    assert checks.missing_values(stats, training_baseline.statistics, thresholds).passed


def test_fares_scaled_by_one_and_a_half_fail_drift_and_skew_naming_fare_only(split_2013_2014, training_baseline, schema,
                                                                           thresholds):
    _, heldout = split_2013_2014
    window = heldout.sample(1000, random_state=1)
    window = window.assign(fare=window["fare"] * 1.5)
    for outcome in (_drift(window, training_baseline, schema, thresholds),
                    _skew(window, training_baseline, schema, thresholds)):
        assert not outcome.passed
        assert outcome.evidence["drifted_features"] == ["fare"]
        fare = outcome.details_json()["baselines"]["training data"]["features"]["fare"]
        assert fare["metric"] == "jensen_shannon_divergence"
        assert fare["value"] > fare["threshold"] >= thresholds.drift.numeric_js
        assert outcome.value == pytest.approx(fare["value"], abs=1e-6)
        assert outcome.evidence["moved"] == {"fare": {"baseline": "training data", "metric": "jensen_shannon_divergence",
                                                      "value": round(fare["value"], 4), "threshold": round(fare["threshold"], 4)}}
        # The evidence carries the distributions behind the number, for the report and the retraining run.
        assert len(fare["baseline"]) == len(fare["current"]) == len(fare["labels"]) > 5
        assert sum(fare["current"][-5:]) > sum(fare["baseline"][-5:])  # mass moved to the top buckets


def test_2016_trips_fail_on_the_payment_mix_they_really_changed(taxi, training_baseline, schema, thresholds):
    window = taxi[taxi["year"] == 2016]
    outcome = _drift(window, training_baseline, schema, thresholds)
    assert not outcome.passed
    assert "payment_type" in outcome.evidence["drifted_features"]
    payment = outcome.details_json()["baselines"]["training data"]["features"]["payment_type"]
    assert payment["metric"] == "l_infinity" and payment["value"] > 0.12
    # Credit cards went from 29% to 43% of trips: the evidence shows the shares that moved.
    shares = dict(zip(payment["labels"], zip(payment["baseline"], payment["current"])))
    assert shares["Credit Card"][1] - shares["Credit Card"][0] > 0.1


def test_a_payment_type_that_disappears_is_named_even_when_it_was_rare(split_2013_2014, training_baseline, schema, thresholds):
    _, heldout = split_2013_2014
    no_cash = heldout[heldout["payment_type"] != "Cash"]
    outcome = _drift(no_cash, training_baseline, schema, thresholds)
    assert outcome.evidence["drifted_features"] == ["payment_type"]
    assert "Cash" in outcome.details_json()["baselines"]["training data"]["category_changes"]["payment_type"]["vanished"]
    assert outcome.evidence["moved"]["payment_type"]["value"] > 0.5

    # "No Charge" is 0.6% of trips: L-infinity barely moves, but 3,000 trips without one is not chance.
    no_charge_gone = heldout[heldout["payment_type"] != "No Charge"]
    outcome = _drift(no_charge_gone, training_baseline, schema, thresholds)
    features = outcome.details_json()["baselines"]["training data"]["features"]
    assert features["payment_type"]["value"] < features["payment_type"]["threshold"]
    assert outcome.evidence["drifted_features"] == ["payment_type"]
    assert "No Charge" in outcome.details_json()["baselines"]["training data"]["category_changes"]["payment_type"]["vanished"]

    # The same rare value missing from a small window is expected: nothing fires.
    small = no_charge_gone.sample(300, random_state=3)
    assert _drift(small, training_baseline, schema, thresholds).passed


def test_a_new_payment_type_is_a_schema_anomaly_and_a_new_category(split_2013_2014, training_baseline, schema, thresholds):
    _, heldout = split_2013_2014
    window = heldout.sample(1000, random_state=4).reset_index(drop=True)
    window.loc[window.index % 10 == 0, "payment_type"] = "Mobile"
    anomalies = checks.schema_anomalies(statistics_of_frame(window), schema)
    assert not anomalies.passed
    assert anomalies.evidence["features"] == ["payment_type"]
    assert "Mobile" in anomalies.evidence["anomalies"]["payment_type"]
    outcome = _drift(window, training_baseline, schema, thresholds)
    assert outcome.details_json()["baselines"]["training data"]["category_changes"]["payment_type"]["new"] == {"Mobile": 0.1}


def test_out_of_range_values_are_schema_anomalies(split_2013_2014, schema):
    _, heldout = split_2013_2014
    window = heldout.sample(500, random_state=5)
    window = window.assign(trip_seconds=window["trip_seconds"] * 1000)  # milliseconds logged as seconds
    outcome = checks.schema_anomalies(statistics_of_frame(window), schema)
    assert outcome.evidence["features"] == ["trip_seconds"]
    assert outcome.value == 1.0 and not outcome.passed


def test_a_higher_missing_rate_fails_for_that_feature_only(split_2013_2014, training_baseline, thresholds):
    _, heldout = split_2013_2014
    window = heldout.sample(1000, random_state=6).reset_index(drop=True)
    window.loc[window.index % 2 == 0, "company"] = None  # 34% missing in training, now about 67%
    outcome = checks.missing_values(statistics_of_frame(window), training_baseline.statistics, thresholds)
    assert not outcome.passed
    assert outcome.evidence["features_exceeded"] == ["company"]
    company = outcome.details_json()["rates"]["company"]
    assert company["training"] == pytest.approx(0.34, abs=0.02)
    assert company["current"] > 0.6 and company["exceeded"]
    assert outcome.value == pytest.approx(company["increase"]) and outcome.threshold == company["margin"]


def test_small_windows_raise_thresholds_to_the_noise_floor_and_tiny_ones_are_not_judged(split_2013_2014, training_baseline,
                                                                                       schema, thresholds):
    _, heldout = split_2013_2014
    window = heldout.sample(150, random_state=7)
    outcome = _drift(window, training_baseline, schema, thresholds)
    company = outcome.details_json()["baselines"]["training data"]["features"]["company"]
    assert company["noise_floor"] > company["configured_threshold"] == thresholds.drift.categorical_linf
    assert company["threshold"] == company["noise_floor"]
    tiny = heldout.sample(thresholds.min_rows - 1, random_state=8)
    skipped = _drift(tiny.assign(fare=tiny["fare"] * 3), training_baseline, schema, thresholds)
    assert skipped.passed and skipped.value is None and skipped.evidence["judged"] is False
    assert f"at least {thresholds.min_rows}" in skipped.evidence["skipped"]


def test_a_time_slice_of_the_training_period_passes_but_a_slice_of_one_neighbourhood_does_not(taxi, training_baseline,
                                                                                           schema, thresholds):
    trips_2014 = taxi[taxi["year"] == 2014]
    assert _drift(trips_2014, training_baseline, schema, thresholds, 366 * DAY).passed
    # The shipped CSV is ordered by place: 300 consecutive rows are a few pick-up areas, and say so.
    consecutive = taxi[taxi["year"] <= 2014].iloc[1600:1900]
    outcome = _drift(consecutive, training_baseline, schema, thresholds, 366 * DAY)
    assert {"pickup_latitude", "pickup_longitude"} <= set(outcome.evidence["drifted_features"])


def test_calendar_features_are_compared_only_when_the_window_covers_their_cycle(split_2013_2014, training_baseline, schema,
                                                                                thresholds):
    _, heldout = split_2013_2014
    night = heldout[heldout["trip_start_hour"] < 3]  # what an hourly window at night holds
    hourly = _drift(night, training_baseline, schema, thresholds, hours=HOUR)
    assert "trip_start_hour" in hourly.evidence["not_compared_for_window_length"]
    assert "trip_start_hour" not in hourly.evidence["drifted_features"]
    over_two_days = _drift(night, training_baseline, schema, thresholds, hours=2 * DAY)
    assert "trip_start_hour" in over_two_days.evidence["drifted_features"]


def test_drift_against_the_previous_window_is_reported_separately(split_2013_2014, training_baseline, schema, thresholds):
    _, heldout = split_2013_2014
    shuffled = heldout.sample(frac=1.0, random_state=16)  # the CSV is ordered by place: slices of it differ
    previous = shuffled.iloc[:1000]
    current = shuffled.iloc[1000:2000]
    previous_baseline = Baseline("previous window", statistics_of_frame(previous), previous)
    outcome = _drift(current, training_baseline, schema, thresholds, baselines=[training_baseline, previous_baseline])
    assert outcome.passed and set(outcome.details_json()["baselines"]) == {"training data", "previous window"}
    surcharge = current.assign(fare=current["fare"] + 5.0)  # a new flat fee on every trip
    outcome = _drift(surcharge, training_baseline, schema, thresholds, baselines=[training_baseline, previous_baseline])
    assert outcome.details_json()["baselines"]["previous window"]["drifted"] == ["fare"]
    assert outcome.evidence["drifted_features"] == ["fare"]


def test_tfdv_drift_comparator_is_what_measures_it(split_2013_2014, training_baseline, schema):
    """The score is TFDV's own Jensen-Shannon divergence on identical buckets, which equals the formula."""
    _, heldout = split_2013_2014
    window = heldout.sample(800, random_state=9)
    window = window.assign(fare=window["fare"] * 1.3)
    scores, _ = drift.compare_statistics(training_baseline.statistics, statistics_of_frame(window), window, schema,
                                         {"fare": 0.1}, reference_frame=training_baseline.frame)
    fare = scores["fare"]
    assert fare.value == pytest.approx(drift.js_divergence(fare.baseline_shares, fare.current_shares), abs=1e-6)


# --- outputs, predictions, labels ----------------------------------------------------------


def test_null_outputs_fail_above_the_allowed_share(thresholds):
    served = pd.DataFrame({"probability": [0.2] * 970 + [None] * 30, "model_version": [3] * 1000})
    outcome = checks.null_outputs(served, thresholds)
    assert not outcome.passed and outcome.value == pytest.approx(0.03)
    assert outcome.evidence == {"null": 30, "rows": 1000, "null_by_version": {"3": 30}}
    assert checks.null_outputs(served.fillna(0.5), thresholds).passed


def _labelled(model, frame, labels):
    return pd.DataFrame({"probability": model.predict(frame), "ground_truth": pd.array(labels, dtype="Int64")})


def test_concept_drift_stays_quiet_when_the_meaning_of_labels_holds(rate_model, split_2013_2014, thresholds):
    model, baseline, _, _ = rate_model
    _, heldout = split_2013_2014
    window = heldout.sample(400, random_state=10)
    labels = (window["tips"] > 0.2 * window["fare"]).astype(int)
    outcome = checks.concept_drift(_labelled(model, window, labels), baseline, thresholds.concept)
    assert outcome.passed and outcome.evidence["labels"] == 400 and outcome.evidence["metrics_failed"] == []


def test_concept_drift_fires_when_tipping_norms_change_and_names_the_metrics(rate_model, split_2013_2014, thresholds):
    model, baseline, _, _ = rate_model
    _, heldout = split_2013_2014
    window = heldout.sample(400, random_state=11)
    # Same trips, new meaning: cash tips start being recorded, and cash riders turn out to tip like
    # card riders. Each cash trip takes the real label of the card trip with the nearest fare.
    cards = heldout[heldout["payment_type"] == "Credit Card"].sort_values("fare")
    card_labels = (cards["tips"] > 0.2 * cards["fare"]).to_numpy(dtype=int)
    nearest = np.clip(np.searchsorted(cards["fare"].to_numpy(), window["fare"].to_numpy()), 0, len(cards) - 1)
    labels = np.where(window["payment_type"] == "Cash", card_labels[nearest],
                      (window["tips"] > 0.2 * window["fare"]).astype(int))
    outcome = checks.concept_drift(_labelled(model, window, labels), baseline, thresholds.concept)
    assert not outcome.passed
    assert "accuracy" in outcome.evidence["metrics_failed"]
    accuracy = outcome.evidence["metrics"]["accuracy"]
    assert accuracy["current"] < accuracy["limit"] < accuracy["baseline"]


def test_a_logged_probability_outside_zero_to_one_is_named_not_counted_silently(rate_model, split_2013_2014, thresholds):
    model, baseline, _, _ = rate_model
    _, heldout = split_2013_2014
    window = heldout.sample(400, random_state=14)
    labelled = _labelled(model, window, (window["tips"] > 0.2 * window["fare"]).astype(int))
    labelled.loc[labelled.index[7], "probability"] = 1.5
    with pytest.raises(DataError, match=r"probability must be in \[0, 1\], got 1.5 \(1 of 400 labelled rows\)"):
        checks.concept_drift(labelled, baseline, thresholds.concept)


def test_below_the_minimum_label_count_only_the_sequential_detectors_judge(rate_model, split_2013_2014, thresholds):
    model, baseline, _, _ = rate_model
    _, heldout = split_2013_2014
    window = heldout.sample(thresholds.concept.min_labels - 1, random_state=12)
    inverted = 1 - (window["tips"] > 0.2 * window["fare"]).astype(int)  # every label wrong
    outcome = checks.concept_drift(_labelled(model, window, inverted), baseline, thresholds.concept)
    # Pooled metrics of 199 labels are shown, not judged; every label wrong is no chance, and the sequence says so.
    assert outcome.evidence["pooled_metrics_judged"] is False and outcome.evidence["metrics_failed"] == []
    assert not outcome.passed and set(outcome.evidence["detectors_failed"]) >= {"recent_window"}
    # Without the evaluation's calibration there is nothing to expect labels from: not judged at all.
    bare = dataclasses.replace(baseline, calibration=None)
    outcome = checks.concept_drift(_labelled(model, window, inverted), bare, thresholds.concept)
    assert outcome.passed and outcome.value is None
    assert outcome.evidence["judged"] is False and outcome.evidence["labels"] == thresholds.concept.min_labels - 1
    # Unlabelled rows do not count toward the minimum.
    more = _labelled(model, heldout.sample(500, random_state=13), [None] * 500)
    assert checks.concept_drift(pd.concat([_labelled(model, window, inverted), more]), bare,
                                thresholds.concept).evidence["labels"] == thresholds.concept.min_labels - 1
    few = window.iloc[:thresholds.concept.min_sequence_labels - 1]
    assert checks.concept_drift(_labelled(model, few, inverted[:len(few)]), baseline,
                                thresholds.concept).evidence["judged"] is False


def test_prediction_drift_compares_predicted_probabilities_with_the_evaluation(rate_model, split_2013_2014, thresholds):
    model, _, predictions, _ = rate_model
    _, heldout = split_2013_2014
    same = checks.prediction_drift(model.predict(heldout.sample(500, random_state=14)), predictions, thresholds)
    assert same.passed and same.value < same.threshold
    cards_only = heldout[heldout["payment_type"] == "Credit Card"].sample(500, random_state=15)
    moved = checks.prediction_drift(model.predict(cards_only), predictions, thresholds)
    assert not moved.passed and moved.value > thresholds.prediction_js
    assert moved.evidence["mean_probability"] > moved.evidence["baseline_mean_probability"] + 0.2
    few = checks.prediction_drift(model.predict(cards_only.iloc[:10]), predictions, thresholds)
    assert few.passed and few.evidence["judged"] is False


def test_prediction_drift_of_probabilities_counted_on_the_grid_is_that_of_every_request(rate_model, split_2013_2014,
                                                                                       thresholds):
    """run_monitoring passes counts on a 1e-6 grid: the evaluation's linspace edges (0.15000000000000002) are grid
    points up to rounding, so every request stays in its bin, even one an ulp either side of an edge, but for the
    double just below such an edge."""
    model, _, predictions, _ = rate_model
    _, heldout = split_2013_2014
    rng = np.random.default_rng(16)
    edges = np.asarray(predictions.edges)
    grid_points = np.round(edges * 1e6) / 1e6
    below_their_edge = grid_points[grid_points < edges]  # 0.15 < 0.15000000000000002, 0.3, 0.35, ... (7 of 21)
    near_edges = np.setdiff1d(np.concatenate([np.nextafter(edges, 0.0), edges, np.nextafter(edges, 1.0)]), below_their_edge)
    for probabilities in (model.predict(heldout.sample(500, random_state=14)),
                          model.predict(heldout[heldout["payment_type"] == "Credit Card"].sample(500, random_state=15)),
                          np.concatenate([rng.beta(0.5, 0.5, 5_000), near_edges, [np.nan, -0.1, 1.2]])):
        per_request = checks.prediction_drift(probabilities, predictions, thresholds)
        counted = checks.prediction_drift(ProbabilityCounts.gridded(probabilities), predictions, thresholds)
        assert counted.details_json() == per_request.details_json()
        # The mean is the grid steps' middles: within half a step of the requests' (and <0, >1 count as 0 and 1).
        finite = np.clip(probabilities[np.isfinite(probabilities)], 0.0, 1.0)
        assert ProbabilityCounts.gridded(probabilities).mean() == pytest.approx(float(finite.mean()), abs=0.5e-6)
        counted_json, per_request_json = counted.to_json(), per_request.to_json()
        assert counted_json["evidence"].pop("mean_probability") == pytest.approx(
            per_request_json["evidence"].pop("mean_probability"), abs=1e-4)
        assert counted_json == per_request_json
        np.testing.assert_array_equal(checks.probability_histogram(ProbabilityCounts.gridded(probabilities), edges),
                                      checks.probability_histogram(probabilities[np.isfinite(probabilities)], edges))
    # What the grid cannot keep: those doubles (a probability between a grid point and an edge that rounding put
    # above it) count in the bin above. One double per edge, 7 in [0, 1].
    assert below_their_edge.size == 7 and below_their_edge[0] == 0.15 and edges[3] == np.nextafter(0.15, 1.0)
    for value in below_their_edge:
        gridded = checks.probability_histogram(ProbabilityCounts.gridded(np.array([value])), edges)
        assert np.argmax(gridded) == np.argmax(checks.probability_histogram(np.array([value]), edges)) + 1, value


def test_result_json_is_strict_json(thresholds):
    import json

    outcome = CheckOutcome("null_outputs", True, math.nan, 0.01, {"x": math.inf, "y": [np.float64(0.5)]})
    result = MonitoringResult([outcome], pd.Timestamp("2026-01-01", tz="UTC").to_pydatetime(),
                                     pd.Timestamp("2026-01-02", tz="UTC").to_pydatetime(), "taxi", 3, 10, None, None)
    text = json.dumps(result.to_json(), allow_nan=False)
    assert json.loads(text)["checks"][0] == {"name": "null_outputs", "passed": True, "value": None, "threshold": 0.01,
                                             "evidence": {"x": None, "y": [0.5]}}
    assert result.passed and result.failed == []


def test_evidence_stays_small_enough_for_xcom_and_mlmd_however_much_moved(split_2013_2014, training_baseline, schema,
                                                                         thresholds):
    """The evidence rides in Airflow XCom and in the retraining run's MLMD trigger property, which
    PostgreSQL indexes (at most 2.7 kB): the worst features are named with their numbers, the rest is in details."""
    import json

    _, heldout = split_2013_2014
    window = heldout.sample(1000, random_state=17)
    numeric = ["fare", "trip_miles", "trip_seconds", "pickup_latitude", "dropoff_latitude", "pickup_longitude",
               "dropoff_longitude", "pickup_community_area", "dropoff_community_area", "dropoff_census_tract"]
    window = window.assign(**{name: window[name] * 3 for name in numeric}, payment_type="Credit Card")
    stats = statistics_of_frame(window)
    outcome = _drift(window, training_baseline, schema, thresholds)
    assert len(outcome.evidence["drifted_features"]) >= 10
    assert len(outcome.evidence["moved"]) == checks.MAX_EVIDENCE_FEATURES
    assert len(json.dumps(outcome.to_json())) < 1500
    anomalies = checks.schema_anomalies(stats, schema)
    assert len(anomalies.evidence["features"]) >= 5 and len(json.dumps(anomalies.to_json())) < 1700
    assert len(outcome.details_json()["baselines"]["training data"]["features"]) >= 10  # nothing lost
