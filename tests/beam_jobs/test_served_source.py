"""The served source: a real request log (the gateway's own writer) with feedback -> labelled examples, exact counts."""

from __future__ import annotations

import dataclasses
import datetime as dt
import glob
import json

import pytest
import tensorflow as tf

from beam_jobs import served_source
from beam_jobs.example_codec import SPLITS, parse_serialized, split_pattern
from serving.log_writer import open_feedback_log, open_request_log
from serving.prediction_log import FEEDBACK_DIR, REQUESTS_DIR, Feedback, LoggedRequest, list_part_files
from tests.beam_jobs._helpers import BEAM_ARGS
from transforms.features import (
    COMPANY_KEY,
    DECISION_BIG_TIPPER,
    DECISION_NOT_BIG_TIPPER,
    EXAMPLE_COLUMNS,
    FARE_KEY,
    OBSERVED_LABEL_KEY,
    POLICY_GROUND_TRUTH,
    POLICY_GROUND_TRUTH_OR_HUMAN,
    SERVING_COLUMNS,
    SERVING_FEATURES,
    TIPS_KEY,
)

UTC = dt.timezone.utc
DAY = dt.datetime(2026, 11, 10, tzinfo=UTC)
WINDOW = (DAY, DAY + dt.timedelta(days=2))
GROUND_TRUTH_FEED = "ground_truth_feed"
REVIEWER = "reviewer:ana"


def _us(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


def _trip(fare: float) -> dict:
    return {"pickup_community_area": 8, FARE_KEY: fare, "trip_start_month": 11, "trip_start_hour": 14,
            "trip_start_day": 3, "trip_start_timestamp": 1_794_000_000, "pickup_latitude": 41.88,
            "pickup_longitude": -87.63, "dropoff_latitude": None, "dropoff_longitude": None, "trip_miles": 2.5,
            "pickup_census_tract": None, "dropoff_census_tract": None, "payment_type": "Credit Card",
            COMPANY_KEY: "Flash Cab", "trip_seconds": 600, "dropoff_community_area": 32}


def _request(request_id: str, at: dt.datetime, fares: list[float], *, status: int = 200, shadow: bool = False) -> LoggedRequest:
    trips = [_trip(fare) for fare in fares]
    columns = {name: [trip[name] for trip in trips] for name in SERVING_COLUMNS}
    probabilities = [0.7] * len(fares)
    return LoggedRequest(request_id, _us(at), "taxi", 3 if shadow else 2, "shadow" if shadow else "stable",
                         "shadow" if shadow else "blue_green", "full", columns, probabilities, [1] * len(fares),
                         ["none" if shadow else DECISION_BIG_TIPPER] * len(fares), 4.0, status, shadow)


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory):
    """Request "a" (3 instances) served, shadowed and written twice; "b" failed; "c" served; "d" after the window."""
    root = tmp_path_factory.mktemp("gateway-log")
    noon = DAY + dt.timedelta(hours=12)
    requests = open_request_log(root, journal=False, fsync=False)
    for entry in (
        _request("a", noon, [10.0, 11.0, 12.0]),
        _request("a", noon, [10.0, 11.0, 12.0], shadow=True),
        _request("b", noon, [13.0, 14.0], status=500),
        _request("c", noon + dt.timedelta(days=1), [20.0, 21.0]),
        _request("a", noon, [10.0, 11.0, 12.0]),  # the same rows again: one training row each
        _request("d", WINDOW[1] + dt.timedelta(hours=5), [30.0]),
    ):
        assert requests.put(entry)
    requests.close()
    feedback = open_feedback_log(root, journal=False, fsync=False)
    later = _us(WINDOW[1] + dt.timedelta(days=3))  # feedback arrives after the window
    for entry in (
        Feedback("a", 0, later, 0, None, GROUND_TRUTH_FEED),
        Feedback("a", 1, later, 0, None, GROUND_TRUTH_FEED),
        Feedback("a", 1, later + 1000, 1, None, GROUND_TRUTH_FEED),  # a correction: the latest wins
        Feedback("b", 0, later, 1, None, GROUND_TRUTH_FEED),  # an error response never trains
        Feedback("c", 0, later, None, DECISION_BIG_TIPPER, REVIEWER),
        Feedback("c", 1, later, 1, DECISION_NOT_BIG_TIPPER, REVIEWER),  # ground truth beats the reviewer
        Feedback("d", 0, later, 0, None, GROUND_TRUTH_FEED),
    ):
        assert feedback.put(entry)
    feedback.close()
    return root


def _extract(log_dir, output, **options):
    """The files as mlops/production_source.py lists them: requests of the window's days, feedback from its first day on."""
    requests = list_part_files(log_dir / REQUESTS_DIR, WINDOW[0], WINDOW[1])
    feedback = list_part_files(log_dir / FEEDBACK_DIR, WINDOW[0], None)
    return served_source.extract_served_examples(requests, feedback, output, start=WINDOW[0], end=WINDOW[1],
                                                 beam_args=BEAM_ARGS, **options)


def _examples(output) -> dict[str, list[dict]]:
    rows = {}
    for split in SPLITS:
        rows[split] = [parse_serialized(record.numpy(), EXAMPLE_COLUMNS)
                       for path in sorted(glob.glob(split_pattern(output / served_source.EXAMPLES_DIR, split)))
                       for record in tf.data.TFRecordDataset(path, compression_type="GZIP")]
    return rows


def _labels_by_fare(examples: dict[str, list[dict]]) -> dict[float, int]:
    return {row[FARE_KEY]: row[OBSERVED_LABEL_KEY] for rows in examples.values() for row in rows}


def test_ground_truth_policy_keeps_served_rows_with_ground_truth_and_counts_the_rest(log_dir, tmp_path):
    result = _extract(log_dir, tmp_path)
    assert (result.rows_read, result.rows_outside_window, result.rows_shadow, result.rows_error,
            result.rows_duplicate, result.rows_served) == (14, 1, 3, 2, 3, 5)
    assert (result.rows_labelled, result.rows_unlabelled, result.rows_capped) == (3, 2, 0)
    assert result.by_label_source == {"ground_truth": 3}
    assert result.by_feedback_source == {GROUND_TRUTH_FEED: 2, REVIEWER: 1}
    assert result.rows_by_partition == {"2026-11-10": 2, "2026-11-11": 1}
    assert result.feedback_rows_read == 7
    assert sorted({name.split("/")[0] for name in result.request_files}) == ["date=2026-11-10", "date=2026-11-11", "date=2026-11-12"]
    assert result.label_policy == POLICY_GROUND_TRUTH and result.features_not_retained == []
    examples = _examples(tmp_path)
    assert _labels_by_fare(examples) == {10.0: 0, 11.0: 1, 21.0: 1}
    assert {split: len(rows) for split, rows in examples.items()} == result.split_counts
    # The format ingest writes, no tips faked: every served feature, the observed label, no tips.
    for row in (row for rows in examples.values() for row in rows):
        assert row[TIPS_KEY] is None and row[COMPANY_KEY] == "Flash Cab" and row["trip_seconds"] == 600
        assert row["dropoff_latitude"] is None  # missing stays missing
    assert json.loads((tmp_path / served_source.RESULT_FILE).read_text()) == dataclasses.asdict(result)


def test_the_human_decision_policy_also_counts_reviewers_and_one_request_stays_in_one_split(log_dir, tmp_path):
    result = _extract(log_dir, tmp_path, label_policy=POLICY_GROUND_TRUTH_OR_HUMAN)
    assert (result.rows_served, result.rows_labelled, result.rows_unlabelled) == (5, 4, 1)
    assert result.by_label_source == {"ground_truth": 3, "human_decision": 1}
    assert result.by_feedback_source == {GROUND_TRUTH_FEED: 2, REVIEWER: 2}
    examples = _examples(tmp_path)
    assert _labels_by_fare(examples) == {10.0: 0, 11.0: 1, 20.0: 1, 21.0: 1}
    split_of = {row[FARE_KEY]: split for split, rows in examples.items() for row in rows}
    assert split_of[10.0] == split_of[11.0] and split_of[20.0] == split_of[21.0]  # by request id


def test_a_feature_marked_not_retained_is_never_copied(log_dir, tmp_path):
    private = tuple(dataclasses.replace(f, retained=False) if f.name == COMPANY_KEY else f for f in SERVING_FEATURES)
    result = _extract(log_dir, tmp_path, features=private)
    assert result.features_not_retained == [COMPANY_KEY] and result.rows_labelled == 3
    rows = [row for rows in _examples(tmp_path).values() for row in rows]
    assert len(rows) == 3 and all(row[COMPANY_KEY] is None and row["payment_type"] == "Credit Card" for row in rows)


def test_bad_arguments_fail_before_the_pipeline(log_dir, tmp_path):
    files = list_part_files(log_dir / REQUESTS_DIR)
    with pytest.raises(ValueError, match="label_policy must be one of ground_truth, ground_truth_or_human"):
        served_source.plan_served_source(files, [], tmp_path, start=WINDOW[0], end=WINDOW[1], label_policy="guess")
    with pytest.raises(ValueError, match="the window is empty"):
        served_source.plan_served_source(files, [], tmp_path, start=WINDOW[1], end=WINDOW[0])
    with pytest.raises(served_source.DataError, match="log files not found: .*nowhere.parquet"):
        served_source.plan_served_source([tmp_path / "nowhere.parquet"], [], tmp_path, start=WINDOW[0], end=WINDOW[1])


def test_a_window_without_traffic_writes_no_examples_and_says_so(tmp_path):
    result = served_source.extract_served_examples([], [], tmp_path, start=WINDOW[0], end=WINDOW[1], beam_args=BEAM_ARGS)
    assert (result.rows_read, result.rows_served, result.rows_labelled) == (0, 0, 0)
    assert result.split_counts == {"train": 0, "eval": 0} and _examples(tmp_path) == {"train": [], "eval": []}
