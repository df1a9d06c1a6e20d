"""Clean on production rows: a row that carries its observed label needs no tips; one without either is rejected."""

from __future__ import annotations

import apache_beam as beam

from beam_jobs import clean, clean_rules
from beam_jobs.example_codec import canonical_row, serialize_row
from transforms.features import EXAMPLE_FEATURES, OBSERVED_LABEL_KEY, TIPS_KEY

BASE = {"fare": 10.0, "trip_start_month": 5, "trip_start_hour": 12, "trip_start_day": 3,
        "trip_start_timestamp": 1_700_000_000, "payment_type": "Cash"}


def _policy(row: dict) -> list:
    return list(clean_rules.MissingValuePolicyFn(EXAMPLE_FEATURES).process(row))


def test_a_labelled_production_row_without_tips_is_kept():
    row = clean_rules.decode_strict(serialize_row({**BASE, OBSERVED_LABEL_KEY: 1}))
    assert row[OBSERVED_LABEL_KEY] == 1 and row[TIPS_KEY] is None
    assert _policy(row) == [row]


def test_a_row_with_neither_tips_nor_an_observed_label_is_rejected_for_tips():
    row = clean_rules.decode_strict(serialize_row(BASE))
    assert OBSERVED_LABEL_KEY not in row  # a CSV row reads (and is reported) as before
    [rejected] = _policy(row)
    assert isinstance(rejected, beam.pvalue.TaggedOutput)
    assert rejected.value["reason"] == clean.REASON_MISSING_REQUIRED and rejected.value["feature"] == TIPS_KEY


def test_an_observed_label_outside_0_1_is_rejected_and_a_csv_rows_identity_is_unchanged():
    [rejected] = list(clean_rules.ValueRangeFn(EXAMPLE_FEATURES).process({**BASE, OBSERVED_LABEL_KEY: 2}))
    assert rejected.value["reason"] == clean.REASON_OUT_OF_RANGE and rejected.value["feature"] == OBSERVED_LABEL_KEY
    # The observed label is part of a production row's identity, and absent from a CSV row's.
    assert canonical_row({**BASE, OBSERVED_LABEL_KEY: None}) == canonical_row(BASE)
    assert canonical_row({**BASE, OBSERVED_LABEL_KEY: 1}) != canonical_row({**BASE, OBSERVED_LABEL_KEY: 0})
