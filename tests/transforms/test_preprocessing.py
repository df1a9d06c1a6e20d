"""preprocessing_fn on literal rows, analyzed and applied by real TF Transform, with exact expected outputs.

Five training rows chosen so that every analyzer's result can be worked out by hand: fares 1, 3, 7,
15 have log1p = ln2 x (1, 2, 3, 4), so their z-scores are (k - 2.5) / sqrt(1.25) whatever ln2 is.
"""

from __future__ import annotations

import math
import tempfile
from typing import Any

import numpy as np
import pytest
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam

from transforms.feature_spec import raw_feature_spec
from transforms.features import (
    FEATURE_BUCKET_COUNT,
    OOV_SIZE,
    EXAMPLE_COLUMNS,
    RAW_FEATURES,
    transformed_name,
)
from transforms.preprocessing import (
    HOUR_BUCKET,
    HOUR_COS,
    HOUR_SIN,
    LABEL,
    MISSING_BUCKET_ID,
    WEEKEND,
    categorical_outputs,
    dense_outputs,
    missing_indicator_name,
    preprocessing_fn,
    scaled_name,
)

xf = transformed_name


def raw_row(**values: Any) -> dict[str, list[Any]]:
    """An instance dict for VarLen features: [value] when given, [] (missing) otherwise."""
    unknown = set(values) - set(EXAMPLE_COLUMNS)
    assert not unknown, unknown
    return {name: [values[name]] if values.get(name) is not None else [] for name in EXAMPLE_COLUMNS}


TRAIN_ROWS = [
    raw_row(fare=1.0, tips=0.5, trip_miles=0.0, trip_seconds=0, pickup_latitude=41.8, pickup_longitude=-87.7,
            dropoff_latitude=41.85, dropoff_longitude=-87.65, payment_type=b"Cash", company=b"Flash Cab",
            dropoff_census_tract=100, trip_start_hour=0, trip_start_day=1, trip_start_month=1,
            pickup_community_area=8, dropoff_community_area=32, trip_start_timestamp=1_400_000_000),
    raw_row(fare=3.0, tips=0.0, trip_seconds=1, pickup_latitude=41.9, pickup_longitude=-87.6,
            payment_type=b"Cash", dropoff_census_tract=100, trip_start_hour=6, trip_start_day=3,
            trip_start_month=6, pickup_community_area=77, trip_start_timestamp=1_400_000_000),
    raw_row(fare=7.0, trip_miles=1.0, trip_seconds=3, pickup_latitude=41.7, pickup_longitude=-87.8,
            dropoff_latitude=41.95, dropoff_longitude=-87.55, payment_type=b"Credit Card", company=b"Flash Cab",
            trip_start_hour=12, trip_start_day=7, trip_start_month=12, dropoff_community_area=1),
    raw_row(fare=15.0, tips=3.0, trip_miles=3.0, trip_seconds=7, pickup_latitude=42.0, pickup_longitude=-87.9,
            dropoff_latitude=41.75, dropoff_longitude=-87.85, payment_type=b"Cash", company=b"Blue Cab",
            dropoff_census_tract=200, trip_start_hour=23, trip_start_day=5, trip_start_month=3,
            pickup_community_area=1, dropoff_community_area=77),
    # What a serving request may carry: required features missing, values out of range.
    raw_row(tips=1.0, trip_miles=0.0, trip_seconds=15, payment_type=b"Credit Card", trip_start_month=13,
            pickup_community_area=78, dropoff_community_area=0, dropoff_latitude=41.65, dropoff_longitude=-87.75),
]
# Applied with the analyzed graph: values never seen in training.
UNSEEN_ROW = raw_row(payment_type=b"Bitcoin", company=b"New Co", dropoff_census_tract=999,
                     pickup_latitude=40.0, dropoff_latitude=43.0)

Z4 = [-1.5 / math.sqrt(1.25), -0.5 / math.sqrt(1.25), 0.5 / math.sqrt(1.25), 1.5 / math.sqrt(1.25)]

EXPECTED: dict[str, list[float]] = {
    LABEL: [1, 0, 0, 0, 0],  # 0.5 > 0.2; tips missing -> 0; 3.0 is exactly 20% of 15 -> not big
    xf("fare"): [*Z4, 0.0],
    missing_indicator_name("fare"): [0, 0, 0, 0, 1],
    # log1p: 0, -, ln2, 2 ln2, 0 -> mean 0.75 ln2, std sqrt(0.6875) ln2; missing -> 0 (the mean)
    xf("trip_miles"): [-0.75 / math.sqrt(0.6875), 0.0, 0.25 / math.sqrt(0.6875), 1.25 / math.sqrt(0.6875),
                       -0.75 / math.sqrt(0.6875)],
    missing_indicator_name("trip_miles"): [0, 1, 0, 0, 0],
    xf("trip_seconds"): [(k - 2) / math.sqrt(2) for k in range(5)],
    missing_indicator_name("trip_seconds"): [0, 0, 0, 0, 0],
    scaled_name("pickup_latitude"): [-0.5 / math.sqrt(1.25), 0.5 / math.sqrt(1.25), -1.5 / math.sqrt(1.25),
                                     1.5 / math.sqrt(1.25), 0.0],
    missing_indicator_name("pickup_latitude"): [0, 0, 0, 0, 1],
    missing_indicator_name("dropoff_latitude"): [0, 1, 0, 0, 0],
    # Vocabularies by frequency, shifted by one; 0 = missing.
    xf("payment_type"): [1, 1, 2, 1, 2],  # Cash x3, Credit Card x2
    xf("company"): [1, 0, 1, 2, 0],  # Flash Cab x2, Blue Cab x1
    xf("dropoff_census_tract"): [1, 1, 0, 2, 0],  # integer vocabulary: 100 x2, 200 x1
    # Integer categoricals: value - valid_min + 1; 0 = missing or out of range.
    xf("trip_start_hour"): [1, 7, 13, 24, 0],
    xf("trip_start_day"): [1, 3, 7, 5, 0],
    xf("trip_start_month"): [1, 6, 12, 3, 0],
    xf("pickup_community_area"): [8, 77, 0, 1, 0],
    xf("dropoff_community_area"): [32, 0, 1, 77, 0],
    HOUR_SIN: [0.0, 1.0, 0.0, math.sin(23 * 2 * math.pi / 24), 0.0],
    HOUR_COS: [1.0, 0.0, -1.0, math.cos(23 * 2 * math.pi / 24), 0.0],
    HOUR_BUCKET: [1, 2, 3, 4, 0],  # night, morning, afternoon, evening, missing
    WEEKEND: [1, 0, 1, 0, 0],  # Sunday, Tuesday, Saturday, Thursday, missing
}


def analyze_and_transform(spec: dict[str, Any], rows: list[dict[str, list[Any]]]) -> tuple[list[dict], list[dict]]:
    """Training rows through AnalyzeAndTransformDataset, UNSEEN_ROW through TransformDataset."""
    names = set(spec)
    rows = [{k: v for k, v in row.items() if k in names} for row in rows]
    unseen = [{k: v for k, v in UNSEEN_ROW.items() if k in names}]
    metadata = tft.DatasetMetadata.from_feature_spec(spec)
    with tempfile.TemporaryDirectory() as temp_dir, tft_beam.Context(temp_dir=temp_dir):
        (transformed, _), transform_fn = (rows, metadata) | tft_beam.AnalyzeAndTransformDataset(preprocessing_fn)
        transformed_unseen, _ = ((unseen, metadata), transform_fn) | tft_beam.TransformDataset()
    return transformed, transformed_unseen


@pytest.fixture(scope="module")
def with_tips() -> tuple[list[dict], list[dict]]:
    return analyze_and_transform(raw_feature_spec(include_label_source=True), TRAIN_ROWS)


def column(rows: list[dict], name: str) -> list[float]:
    return [float(row[name]) for row in rows]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_output_value_is_exactly_as_worked_out(with_tips, name):
    transformed, _ = with_tips
    np.testing.assert_allclose(column(transformed, name), EXPECTED[name], rtol=0, atol=2e-4, err_msg=name)


def test_outputs_are_the_declared_model_inputs_plus_label(with_tips):
    transformed, _ = with_tips
    declared = set(dense_outputs()) | set(categorical_outputs(lambda filename: 1)) | {LABEL}
    assert set(transformed[0]) == declared
    not_model_inputs = {f.name for f in RAW_FEATURES if not f.model_input}
    assert not {xf(name) for name in not_model_inputs} & set(transformed[0])


def test_coordinates_bucketize_in_order_and_missing_has_its_own_bucket(with_tips):
    transformed, unseen = with_tips
    buckets = column(transformed, xf("pickup_latitude"))
    # latitudes 41.8, 41.9, 41.7, 42.0, missing
    assert buckets[2] < buckets[0] < buckets[1] < buckets[3] < FEATURE_BUCKET_COUNT
    assert buckets[4] == MISSING_BUCKET_ID == FEATURE_BUCKET_COUNT
    assert column(transformed, xf("dropoff_longitude"))[1] == MISSING_BUCKET_ID
    # Beyond the training range: the first and the last real bucket, never the missing one.
    assert float(unseen[0][xf("pickup_latitude")]) == 0
    dropoff_buckets = column(transformed, xf("dropoff_latitude"))
    assert float(unseen[0][xf("dropoff_latitude")]) == max(b for b in dropoff_buckets if b != MISSING_BUCKET_ID)


def test_unseen_values_hash_into_oov_ids_after_the_vocabulary(with_tips):
    _, unseen = with_tips
    # vocabulary sizes: payment_type 2, company 2, dropoff_census_tract 2 -> OOV ids are 3 .. 3 + OOV_SIZE - 1
    for key in ("payment_type", "company", "dropoff_census_tract"):
        assert 3 <= int(unseen[0][xf(key)]) < 3 + OOV_SIZE, key


def test_unseen_row_missing_everything_else_gets_the_missing_encodings(with_tips):
    _, unseen = with_tips
    row = unseen[0]
    assert float(row[xf("fare")]) == 0.0 and float(row[missing_indicator_name("fare")]) == 1.0
    assert int(row[xf("trip_start_hour")]) == 0 and int(row[HOUR_BUCKET]) == 0
    assert int(row[LABEL]) == 0


def test_without_tips_the_same_features_come_out_and_no_label():
    """The serving graph has no tips: preprocessing_fn must not need them, and nothing else changes."""
    transformed, _ = analyze_and_transform(raw_feature_spec(include_label_source=False), TRAIN_ROWS)
    assert LABEL not in transformed[0]
    for name, expected in EXPECTED.items():
        if name != LABEL:
            np.testing.assert_allclose(column(transformed, name), expected, rtol=0, atol=2e-4, err_msg=name)


def test_categorical_id_counts_cover_every_id_emitted(with_tips):
    transformed, unseen = with_tips
    counts = categorical_outputs(lambda filename: 2)  # each literal vocabulary has 2 entries
    for name, count in counts.items():
        values = column(transformed, name) + column(unseen, name)
        assert all(0 <= v < count for v in values), (name, values, count)
    assert counts[xf("trip_start_hour")] == 25  # 24 hours + missing
    assert counts[xf("payment_type")] == 1 + 2 + OOV_SIZE


def test_a_production_row_takes_its_observed_label_and_a_csv_row_derives_it_from_tips():
    """Labelled production rows have no tips: the label they carry is the label, never a faked tip."""
    rows = [
        raw_row(fare=10.0, tips=5.0, payment_type=b"Cash"),  # CSV row: 5 > 2 -> 1
        raw_row(fare=10.0, tips=0.0, payment_type=b"Cash"),  # CSV row: 0
        raw_row(fare=10.0, observed_big_tipper=1, payment_type=b"Cash"),  # production, ground truth 1
        raw_row(fare=10.0, observed_big_tipper=0, payment_type=b"Cash"),  # production, ground truth 0
        raw_row(fare=10.0, tips=5.0, observed_big_tipper=0, payment_type=b"Cash"),  # observed wins
    ]
    transformed, unseen = analyze_and_transform(raw_feature_spec(include_label_source=True), rows)
    assert column(transformed, LABEL) == [1, 0, 1, 0, 0]
    assert LABEL in unseen[0] and float(unseen[0][LABEL]) == 0  # no label source at all: 0, as before
