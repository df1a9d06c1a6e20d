"""Clean's batch screen (beam_jobs/clean_batches.py): a row it lets pass is one the per-row steps
would keep exactly as stored; it lets the plain rows pass."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import tensorflow as tf

from beam_jobs import clean, clean_rules
from beam_jobs.example_codec import SOURCE_LINE_KEY, serialize_row
from tests.beam_jobs._helpers import is_clean, parse_csv_row
from transforms.features import (EXAMPLE_FEATURES, FARE_KEY, OBSERVED_LABEL_KEY, PAYMENT_TYPE_KEY, TIPS_KEY,
                                 OnInvalid)

# features.py has no CLIP feature: the screen must also send a clipped value to the rules.
_CLIP_MILES = tuple(dataclasses.replace(f, on_invalid=OnInvalid.CLIP) if f.name == "trip_miles" else f
                    for f in EXAMPLE_FEATURES)


def _kept_as_stored(features: tuple, serialized: bytes) -> bool:
    """What the per-row steps do with a record: keep it unchanged (True), or anything else."""
    try:
        row = clean_rules.decode_strict(serialized)
    except clean_rules.Undecodable:
        return False
    required = [feature for feature in features if feature.required]
    if clean_rules.missing_required(required, row) is not None:
        return False
    outcome = clean_rules.apply_range_policy(clean_rules.ranged_features(features), row)
    return outcome.rejected is None and not outcome.changed


def _example(row: dict[str, Any], line: int) -> tf.train.Example:
    return tf.train.Example.FromString(serialize_row({**row, SOURCE_LINE_KEY: line}))


def _set(example: tf.train.Example, name: str) -> tf.train.Feature:
    features = example.features.feature
    if name in features:
        del features[name]
    return features[name]


def _odd_records(rows: list[dict[str, Any]]) -> list[bytes]:
    """Each way a record can need the per-row steps, and production rows that may not."""
    changes = [
        lambda e: _set(e, FARE_KEY).float_list.value.append(-3.0),  # REJECT
        lambda e: _set(e, "trip_miles").float_list.value.append(900.5),  # NULL (CLIP in _CLIP_MILES)
        lambda e: _set(e, "pickup_community_area").int64_list.value.append(99),  # NULL
        lambda e: _set(e, PAYMENT_TYPE_KEY),  # required, an empty Feature
        lambda e: _set(e, PAYMENT_TYPE_KEY).bytes_list.SetInParent(),  # required, an empty list
        lambda e: e.features.feature.__delitem__(TIPS_KEY),  # required, absent
        lambda e: (e.features.feature.__delitem__(TIPS_KEY),  # a production row: kept
                   _set(e, OBSERVED_LABEL_KEY).int64_list.value.append(1)),
        lambda e: _set(e, OBSERVED_LABEL_KEY).int64_list.value.append(7),  # out of range
        lambda e: e.features.feature["trip_start_month"].int64_list.value.append(3),  # two values
        lambda e: _set(e, FARE_KEY).float_list.value.append(float("inf")),
        lambda e: _set(e, "trip_miles").float_list.value.append(float("nan")),  # not ranged-REJECT, still refused
        lambda e: _set(e, "trip_seconds").int64_list.value.append(2**62),
        lambda e: _set(e, "trip_seconds").int64_list.value.append(-(2**63)),
        lambda e: _set(e, "dropoff_census_tract").SetInParent(),  # an empty optional Feature: kept
    ]
    records = []
    for index, change in enumerate(changes):
        example = _example(rows[index % len(rows)], 1000 + index)
        change(example)
        records.append(example.SerializeToString())
    return records


def _needing(screen, records: list[bytes]) -> list[bool]:
    return [content is None for content in screen.contents_kept_as_stored(records)]


@pytest.fixture(scope="module")
def plain_records(taxi_rows: list[dict[str, str]]) -> list[bytes]:
    rows = [parse_csv_row(r) for r in taxi_rows[:300]]
    return [serialize_row({**row, SOURCE_LINE_KEY: line}) for line, row in enumerate(rows, start=2) if is_clean(row)]


@pytest.mark.parametrize("features", [EXAMPLE_FEATURES, _CLIP_MILES], ids=["features.py", "with-a-clip-feature"])
def test_a_row_passes_the_screen_only_when_the_per_row_steps_keep_it_as_stored(plain_records, features):
    rows = [clean_rules.decode_strict(record) for record in plain_records[:20]]
    odd = _odd_records(rows)
    mixed = [record for pair in zip(plain_records, odd) for record in pair] + plain_records[len(odd):]
    needing = _needing(clean.batch_screen(features), mixed)
    let_through = [record for record, flagged in zip(mixed, needing) if not flagged]
    assert all(_kept_as_stored(features, record) for record in let_through)
    # Every odd record but the kept production row and the empty optional Feature is sent to the rules.
    assert sum(bool(flag) for record, flag in zip(mixed, needing) if record in odd) >= len(odd) - 2
    # The plain rows pass: the screen does its work.
    assert all(not flag for record, flag in zip(mixed, needing) if record in plain_records)


@pytest.mark.parametrize("spoiler", [
    b"not an example \xff",  # the decoder refuses the batch
    "two-kinds",  # one feature stored as two kinds in one batch
    "not-utf-8",  # text that is not UTF-8
])
def test_a_batch_the_screen_cannot_read_goes_whole_to_the_rules(plain_records, spoiler):
    example = tf.train.Example.FromString(plain_records[0])
    if spoiler == "not-utf-8":
        _set(example, "company").bytes_list.value.append(b"\xff\xfe")
        spoiler = example.SerializeToString()
    elif spoiler == "two-kinds":
        _set(example, "trip_seconds").float_list.value.append(5.0)
        spoiler = example.SerializeToString()
    needing = _needing(clean.batch_screen(EXAMPLE_FEATURES), plain_records[1:50] + [spoiler])
    assert all(needing)


def test_a_row_with_a_feature_no_rule_knows_goes_to_the_rules_and_the_others_pass(plain_records):
    example = tf.train.Example.FromString(plain_records[0])
    _set(example, "surge").float_list.value.append(1.0)
    needing = _needing(clean.batch_screen(EXAMPLE_FEATURES), plain_records[1:50] + [example.SerializeToString()])
    assert needing == [False] * 49 + [True]
