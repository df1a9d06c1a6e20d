"""A window's value counts made while the Parquet logs stream: the same rows, counts and check outcomes as pandas."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from core.errors import DataError
from monitoring import checks, drift, served_values
from monitoring.log_statistics import statistics_of_frame
from monitoring.results import Baseline
from monitoring.served_values import (
    ProbabilityCounts,
    ServedValues,
    ServedWindow,
    ValueCounts,
    summarize_served_logs,
    summarize_served_window,
)
from serving.prediction_log import REQUESTS_DIR, list_part_files, read_prediction_logs
from tests.monitoring import logs
from transforms.features import SERVING_FEATURES, Kind

START = dt.datetime(2026, 3, 1, 23, 0, tzinfo=dt.timezone.utc)  # the window crosses midnight: two partitions
END = START + dt.timedelta(hours=2)
NUMERIC = [f.name for f in SERVING_FEATURES if f.kind is not Kind.STRING]
CATEGORICAL = [f.name for f in SERVING_FEATURES if f.kind is Kind.STRING]


@pytest.fixture(scope="module")
def logged(taxi, tmp_path_factory):
    """600 served requests in the window with missing fares and companies and 12 null outputs, plus rows that
    must not count: shadow copies, requests after the window, another model's requests."""
    log_dir = tmp_path_factory.mktemp("logs")
    window = taxi[taxi["year"] == 2014].sample(600, random_state=2).reset_index(drop=True)
    window.loc[window.index % 5 == 0, "fare"] = np.nan
    window.loc[window.index % 7 == 0, "company"] = None
    probabilities = [None if i % 50 == 0 else 0.3 for i in range(len(window))]
    logs.write_requests(log_dir, window, probabilities, START, END, model_version=4,
                        shadow_probabilities=np.full(len(window), 0.8), shadow_version=5)
    logs.write_requests_not_to_count(log_dir, taxi, START, END)
    return log_dir, window


def test_streamed_counts_equal_the_counts_of_the_window_read_into_pandas(logged, monkeypatch):
    log_dir, window = logged
    monkeypatch.setattr(served_values, "READ_BATCH_ROWS", 7)  # many batches per file: the merge is what is tested
    streamed = summarize_served_logs(log_dir, START, END, model_name="taxi")
    frame = read_prediction_logs(log_dir, START, END, model_name="taxi", include_shadow=False)
    in_memory = ServedValues.of_frame(frame)
    assert streamed.rows == in_memory.rows == len(window) == 600
    for name in NUMERIC:
        np.testing.assert_array_equal(streamed.numeric[name].values, in_memory.numeric[name].values, err_msg=name)
        np.testing.assert_array_equal(streamed.numeric[name].counts, in_memory.numeric[name].counts, err_msg=name)
    for name in CATEGORICAL:
        pd.testing.assert_series_equal(streamed.categories[name], in_memory.categories[name], check_names=False)
    assert streamed.null_outputs == in_memory.null_outputs == 12
    assert streamed.null_outputs_by_version == in_memory.null_outputs_by_version == {"4": 12}
    # And against the rows that were logged: every non-missing value counted once.
    assert streamed.numeric["fare"].total == int(window["fare"].notna().sum()) == 480
    assert int(streamed.categories["company"].sum()) == int(window["company"].notna().sum())
    expected = window["payment_type"].value_counts()
    assert streamed.categories["payment_type"].to_dict() == expected.to_dict()
    assert list(streamed.categories["payment_type"]) == sorted(expected, reverse=True)  # most frequent first


def test_float_features_are_counted_as_float32_like_the_statistics(logged):
    log_dir, window = logged
    streamed = summarize_served_logs(log_dir, START, END, model_name="taxi", features=["pickup_latitude"])
    raw = window["pickup_latitude"].dropna().to_numpy(dtype=np.float64)
    np.testing.assert_array_equal(streamed.numeric["pickup_latitude"].values,
                                  np.unique(raw.astype(np.float32).astype(np.float64)))


@pytest.mark.parametrize("change", ["none", "fares_scaled", "cash_gone"])
def test_every_check_gives_the_same_outcome_on_counts_as_on_the_frame(change, split_2013_2014, training_baseline, schema,
                                                                      thresholds, tmp_path):
    _, heldout = split_2013_2014
    window = heldout.sample(1200, random_state=3).reset_index(drop=True)
    if change == "fares_scaled":
        window = window.assign(fare=window["fare"] * 1.5)
    elif change == "cash_gone":
        window = window[window["payment_type"] != "Cash"].reset_index(drop=True)
    logs.write_requests(tmp_path, window, np.full(len(window), 0.3), START, END)
    frame = read_prediction_logs(tmp_path, START, END, model_name="taxi", include_shadow=False)
    counts = summarize_served_logs(tmp_path, START, END, model_name="taxi")
    current = statistics_of_frame(window)
    previous = Baseline("previous window", statistics_of_frame(heldout.iloc[:900]), None)
    for hours in (1.0, 24.0):  # a day compares the hour of day too
        for check in (lambda served: checks.data_drift(current, served, [training_baseline, previous], schema, thresholds, hours),
                      lambda served: checks.training_serving_skew(training_baseline, current, served, schema, thresholds, hours),
                      lambda served: checks.null_outputs(served, thresholds)):
            on_frame, on_counts = check(frame), check(counts)
            assert on_counts.to_json() == on_frame.to_json()
            assert on_counts.details_json() == on_frame.details_json()
    drifted = checks.data_drift(current, counts, [training_baseline], schema, thresholds, 1.0)
    assert drifted.passed is (change == "none")
    if change == "cash_gone":
        assert "Cash" in drifted.details["baselines"]["training data"]["category_changes"]["payment_type"]["vanished"]


def test_counting_distinct_values_with_their_counts_gives_the_histogram_of_the_values(split_2013_2014, training_baseline):
    _, heldout = split_2013_2014
    for name in ("fare", "trip_miles", "trip_start_hour", "pickup_latitude"):
        values = drift.feature_values(heldout, name)
        quantiles = drift.feature_statistics(training_baseline.statistics)[name].num_stats.histograms
        buckets = drift.canonical_buckets(next(h for h in quantiles if h.type == drift.Histogram.QUANTILES), values)
        counted = ValueCounts.of(values)
        assert counted.values.size < values.size  # repeated values: the counts are smaller than the rows
        assert drift.count_into(buckets, counted.values, counted.counts) == drift.count_into(buckets, values)


def test_merging_counts_adds_the_counts_of_equal_values():
    merged = ValueCounts.of(np.array([3.0, 1.0, 3.0])).merged(ValueCounts.of(np.array([2.0, 3.0]))).merged(ValueCounts.empty())
    np.testing.assert_array_equal(merged.values, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(merged.counts, [1, 1, 3])
    assert merged.total == 5


def test_bad_input_is_a_clear_error_naming_what_is_wrong(logged, tmp_path, split_2013_2014, training_baseline, schema,
                                                        thresholds):
    log_dir, _ = logged
    with pytest.raises(DataError, match="'tip_share'.*not serving features"):
        summarize_served_logs(log_dir, START, END, features=["fare", "tip_share"])
    with pytest.raises(DataError, match="window is empty"):
        summarize_served_logs(log_dir, END, START)
    only_fare = summarize_served_logs(log_dir, START, END, model_name="taxi", features=["fare"])
    with pytest.raises(DataError, match=r"numeric feature '\w+' was not summarized for this window \(summarized: \['fare'\]\)"):
        checks.data_drift(statistics_of_frame(split_2013_2014[1]), only_fare, [training_baseline], schema, thresholds, 1.0)
    # A log file without a column the counts need names the file and the column.
    source = list_part_files(log_dir / REQUESTS_DIR, START, END)[0]
    broken = tmp_path / REQUESTS_DIR / source.parent.name / source.name
    broken.parent.mkdir(parents=True)
    pq.write_table(pq.read_table(source).drop(["fare"]), broken)
    with pytest.raises(DataError, match=r"part-.*missing columns \['fare'\]"):
        summarize_served_logs(tmp_path, START, END)
    with pytest.raises(DataError, match="needs the logged `probability` column"):
        checks.null_outputs(pd.DataFrame({"fare": [1.0]}), thresholds)


def test_categories_of_equal_share_are_kept_by_name_not_by_the_hash_seed():
    """The outcome of one window must not depend on the process (the benchmark compares readers across processes)."""
    labels = [f"company {i:02d}" for i in range(20)]
    baseline = {label: 10.0 for label in reversed(labels)}
    current = {label: 5.0 for label in labels[::3]}
    kept, _, _ = drift._shares(baseline, current, categorical=True)  # noqa: SLF001 - the ranking itself
    shown = drift.TOP_CATEGORIES
    assert list(kept) == labels[::3] + sorted(set(labels) - set(labels[::3]))[:shown - len(labels[::3])] + ["(other)"]


def test_the_streamed_window_has_the_versions_degrees_and_probability_counts_of_the_frame(logged, monkeypatch):
    log_dir, window = logged
    monkeypatch.setattr(served_values, "READ_BATCH_ROWS", 7)
    streamed = summarize_served_window(log_dir, START, END, model_name="taxi")
    frame = read_prediction_logs(log_dir, START, END, model_name="taxi", include_shadow=False)
    in_memory = ServedWindow.of_frame(frame)
    assert streamed.rows == in_memory.rows == 600 and not streamed.empty
    assert streamed.versions.to_dict() == in_memory.versions.to_dict() == {"4": 600}  # the shadow version 5 is not served
    assert streamed.judged_version() == in_memory.judged_version() == 4
    assert streamed.automation_of(4) == in_memory.automation_of(4) == frame["automation"].value_counts().idxmax()
    assert streamed.automation_of(5) is None and streamed.probabilities_of(5).total == 0
    # Every finite probability counted at its grid point (the 12 null outputs are counted in `values`), both ways.
    logged_probabilities = pd.to_numeric(frame["probability"]).to_numpy(dtype=float)
    expected = ProbabilityCounts.gridded(logged_probabilities)
    for counted in (streamed.probabilities_of(4), in_memory.probabilities_of(4)):
        np.testing.assert_array_equal(counted.values, expected.values)
        np.testing.assert_array_equal(counted.counts, expected.counts)
        assert counted.on_grid and counted.total == 588 == int(np.isfinite(logged_probabilities).sum())
    assert streamed.values.null_outputs == 12


def test_many_batches_of_distinct_probabilities_are_counted_as_one_array_would_be_on_the_grid():
    """The streamed counter (a count per grid point, merged batch by batch) against the frame path's np.unique."""
    rng = np.random.default_rng(9)
    batches = [rng.random(1_000) * 0.6, np.array([np.nan, 0.5, np.nextafter(0.5, 0), 1.0, 0.0]), rng.beta(0.3, 0.3, 3_000)]
    counter = served_values._GridCounter()  # noqa: SLF001 - the streamed path's accumulator itself
    for batch in batches:
        counter.add(batch)
    streamed, whole = counter.result(), ProbabilityCounts.gridded(np.concatenate(batches))
    np.testing.assert_array_equal(streamed.values, whole.values)
    np.testing.assert_array_equal(streamed.counts, whole.counts)
    assert streamed.total == 4_004 and streamed.values.size <= served_values.GRID_STEPS + 1


def test_a_probability_on_the_grid_stays_on_its_side_of_every_threshold_on_the_grid_and_within_one_step_above_it():
    rng = np.random.default_rng(4)
    # p * GRID_STEPS rounds onto the next integer just below 5e-6 and 1e-5, and below it at 0.000249 and 0.000251.
    boundaries = [0.5, 0.37, 0.15, 0.05, 1e-6, 0.999999, 0.123457, 5e-6, 1e-5, 0.000249, 0.000251]
    near = np.concatenate([[np.nextafter(t, 0.0), t, np.nextafter(t, 1.0), t - 1e-7, t + 1e-7] for t in boundaries])
    probabilities = np.concatenate([near, rng.random(100_000), [0.0, 1.0]])
    points = served_values.grid_indices(probabilities) / served_values.GRID_STEPS
    assert (points <= probabilities).all() and (probabilities - points < 1.0 / served_values.GRID_STEPS).all()
    for t in boundaries:
        np.testing.assert_array_equal(points >= t, probabilities >= t, err_msg=str(t))
    # Outside [0, 1] is no probability: counted at the nearest end, as the histograms clip it.
    np.testing.assert_array_equal(served_values.grid_indices(np.array([-0.2, 1.5])), [0, served_values.GRID_STEPS])


def test_the_judged_version_is_the_one_that_served_most_and_the_highest_among_equals():
    def window(versions: list) -> ServedWindow:
        frame = pd.DataFrame({"model_version": pd.array(versions, dtype="Int64"), "automation": ["full"] * len(versions),
                              "probability": [0.5] * len(versions)})
        return ServedWindow.of_frame(frame)

    assert window([1, 2, 2, None, None, None]).judged_version() == 2  # missing versions are not a model
    assert window([3, 1, 1, 3]).judged_version() == 3
    with pytest.raises(DataError, match="no model_version"):
        window([None, None]).judged_version()


def test_a_previous_window_as_counts_is_the_same_reference_as_its_rows(split_2013_2014, training_baseline, schema,
                                                                        thresholds):
    """The previous window is a drift baseline: its counts must move the checks exactly as its rows did."""
    _, heldout = split_2013_2014
    before = heldout.iloc[:900].reset_index(drop=True)
    now = heldout.iloc[900:2100].reset_index(drop=True)
    now = now[now["payment_type"] != "Cash"].assign(fare=now["fare"] * 1.5).reset_index(drop=True)  # drifted
    as_rows = Baseline("previous window", statistics_of_frame(before), before)
    as_counts = Baseline("previous window", as_rows.statistics, ServedValues.of_frame(before))
    stats = statistics_of_frame(now)
    with_rows = checks.data_drift(stats, now, [training_baseline, as_rows], schema, thresholds, 24.0)
    with_counts = checks.data_drift(stats, now, [training_baseline, as_counts], schema, thresholds, 24.0)
    assert (with_counts.passed, with_counts.value, with_counts.evidence) == (with_rows.passed, with_rows.value, with_rows.evidence)
    assert with_counts.details_json() == with_rows.details_json()
    assert not with_rows.passed and "previous window" in with_rows.details["baselines"]
    assert "Cash" in with_counts.details["baselines"]["previous window"]["category_changes"]["payment_type"]["vanished"]
