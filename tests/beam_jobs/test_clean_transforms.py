"""The clean job's steps on literal rows and records, with a real Beam TestPipeline."""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import apache_beam as beam
import pytest
import tensorflow as tf
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
from google.protobuf.message import DecodeError

from beam_jobs.clean import CleanSplit
from beam_jobs.clean_rules import (
    CLIPPED,
    NULLED,
    REASON_DUPLICATE,
    REASON_MISSING_REQUIRED,
    REASON_OUT_OF_RANGE,
    REASON_UNPARSEABLE,
    MissingValuePolicyFn,
    ValueRangeFn,
    readable,
    without_source_line,
)
from beam_jobs.example_codec import SOURCE_LINE_KEY, parse_serialized, row_to_example, serialize_row
from tests.beam_jobs._helpers import is_clean, parse_csv_row
from transforms.features import FARE_KEY, RAW_FEATURES, TIPS_KEY, Kind, OnInvalid

# Features picked by their policy, not by retyped names: the tests follow features.py.
NULL_INT_FEATURE = next(f for f in RAW_FEATURES if f.on_invalid is OnInvalid.NULL and f.kind is Kind.INT)
NULL_FLOAT_FEATURE = next(f for f in RAW_FEATURES if f.on_invalid is OnInvalid.NULL and f.kind is Kind.FLOAT)
OPTIONAL_STRING_FEATURE = next(f for f in RAW_FEATURES if f.kind is Kind.STRING and not f.required)
FARE = next(f for f in RAW_FEATURES if f.name == FARE_KEY)


@pytest.fixture(scope="module")
def clean_rows(taxi_rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Valid taxi rows as the clean job sees them: decoded from their stored (float32) form."""
    rows = [parse_serialized(serialize_row(parse_csv_row(r))) for r in taxi_rows[:400]]
    rows = [row for row in rows if is_clean(row) and row[OPTIONAL_STRING_FEATURE.name] is not None]
    assert len(rows) >= 3
    return rows


def with_values(row: dict[str, Any], **values: Any) -> dict[str, Any]:
    return {**row, **values}


def reason_and_feature(record: dict[str, Any]) -> tuple[str, str | None]:
    return record["reason"], record["feature"]


def gathered(cleaned: Any, part: str) -> beam.PCollection:
    """One output of both branches of a CleanSplit (the job writes each branch to its own files); the
    kept Examples come in lists (a batch each), taken apart here."""
    both = (cleaned.once._asdict()[part], cleaned.copies._asdict()[part]) | f"Gather{part}" >> beam.Flatten()
    return both | f"Unbatch{part}" >> beam.FlatMap(lambda records: records) if part == "kept" else both


def kept_rows(cleaned: Any) -> beam.PCollection:
    return gathered(cleaned, "kept") | "ParseKept" >> beam.Map(parse_serialized)


def _sum_facts(bundles: list[dict[tuple, int]]) -> dict[tuple, int]:
    total: dict[tuple, int] = {}
    for counts in bundles:
        for fact, count in counts.items():
            total[fact] = total.get(fact, 0) + count
    return total


def summed_facts(cleaned: Any) -> beam.PCollection:
    return gathered(cleaned, "facts") | "SumFacts" >> beam.combiners.ToList() | beam.Map(_sum_facts)


def test_parse_examples_rejects_what_is_not_a_raw_example(clean_rows):
    good = clean_rows[0]
    garbage = b"\xff\xff\xff\xff not a protocol buffer"
    with pytest.raises(DecodeError):
        tf.train.Example.FromString(garbage)  # the premise: this really does not decode
    wrong_kind = row_to_example(good)
    del wrong_kind.features.feature[FARE_KEY].float_list.value[:]
    wrong_kind.features.feature[FARE_KEY].bytes_list.value.append(b"12.5")
    two_values = row_to_example(good)
    two_values.features.feature[FARE_KEY].float_list.value.append(1.0)
    not_finite = row_to_example(with_values(good, **{FARE_KEY: float("nan")}))
    unknown = row_to_example(good)
    unknown.features.feature["surprise_feature"].int64_list.value.append(1)
    inputs = [serialize_row(good), garbage] + [e.SerializeToString() for e in (wrong_kind, two_values, not_finite, unknown)]

    with test_pipeline.TestPipeline() as pipeline:
        parsed = pipeline | beam.Create(inputs) | CleanSplit()
        assert_that(kept_rows(parsed), equal_to([good]), label="KeptOnlyTheValidExample")
        rejected = gathered(parsed, "rejected")
        assert_that(
            rejected | "Reasons" >> beam.Map(reason_and_feature),
            equal_to([(REASON_UNPARSEABLE, None)] + [(REASON_UNPARSEABLE, FARE_KEY)] * 3
                     + [(REASON_UNPARSEABLE, "surprise_feature")]),
            label="RejectedWithReasons",
        )
        # The undecodable bytes are kept, so no data is lost.
        assert_that(
            rejected
            | "Undecodable" >> beam.Filter(lambda r: r["feature"] is None)
            | "OriginalBytes" >> beam.Map(lambda r: base64.b64decode(r["record_base64"])),
            equal_to([garbage]),
            label="GarbageKeptVerbatim",
        )


def test_drop_duplicates_keeps_exactly_one_copy(clean_rows):
    first, second = clean_rows[0], clean_rows[1]
    with test_pipeline.TestPipeline() as pipeline:
        deduped = pipeline | beam.Create([serialize_row(r) for r in (first, first, second, first)]) | CleanSplit()
        assert_that(kept_rows(deduped), equal_to([first, second]), label="OneOfEach")
        assert_that(deduped.once.kept | "UnbatchOnce" >> beam.FlatMap(lambda records: records)
                    | "ParseOnce" >> beam.Map(parse_serialized), equal_to([second]), label="SeenOnce")
        assert_that(
            gathered(deduped, "rejected") | beam.Map(lambda r: (r["reason"], r["row"])),
            equal_to([(REASON_DUPLICATE, {k: readable(v) for k, v in first.items()})] * 2),
            label="CopiesRejected",
        )


def test_missing_required_feature_is_rejected_but_missing_optional_is_kept(clean_rows):
    good = clean_rows[0]
    no_fare = with_values(good, **{FARE_KEY: None})
    no_fare_no_tips = with_values(good, **{FARE_KEY: None, TIPS_KEY: None})
    no_optional = with_values(good, **{OPTIONAL_STRING_FEATURE.name: None})
    with test_pipeline.TestPipeline() as pipeline:
        checked = pipeline | beam.Create([good, no_fare, no_fare_no_tips, no_optional]) | beam.ParDo(
            MissingValuePolicyFn(RAW_FEATURES)).with_outputs("rejected", main="kept")
        assert_that(checked.kept, equal_to([good, no_optional]), label="Kept")
        assert_that(
            checked.rejected | beam.Map(lambda r: (r["reason"], r["feature"], r["detail"])),
            equal_to([
                (REASON_MISSING_REQUIRED, FARE_KEY, f"missing required feature(s): {FARE_KEY}"),
                (REASON_MISSING_REQUIRED, FARE_KEY, f"missing required feature(s): {FARE_KEY}, {TIPS_KEY}"),
            ]),
            label="Rejected",
        )


def test_value_ranges_reject_clip_and_null(clean_rows):
    good = clean_rows[0]
    # features.py has no CLIP feature today; the policy is exercised on a copy with one.
    clip_feature = dataclasses.replace(NULL_FLOAT_FEATURE, on_invalid=OnInvalid.CLIP)
    features = tuple(clip_feature if f.name == clip_feature.name else f for f in RAW_FEATURES)
    negative_fare = with_values(good, **{FARE_KEY: -3.0})
    too_far = with_values(good, **{clip_feature.name: clip_feature.valid_max + 400.0})
    bad_area = with_values(good, **{NULL_INT_FEATURE.name: int(NULL_INT_FEATURE.valid_max) + 22})
    # A REJECT violation wins: the row goes whole, and its NULL violation is not counted.
    both = with_values(negative_fare, **{NULL_INT_FEATURE.name: int(NULL_INT_FEATURE.valid_max) + 22})

    with test_pipeline.TestPipeline() as pipeline:
        checked = pipeline | beam.Create([good, negative_fare, too_far, bad_area, both]) | beam.ParDo(
            ValueRangeFn(features)).with_outputs("rejected", "adjusted", main="kept")
        assert_that(
            checked.kept,
            equal_to([
                good,
                with_values(good, **{clip_feature.name: float(clip_feature.valid_max)}),
                with_values(good, **{NULL_INT_FEATURE.name: None}),
            ]),
            label="KeptClippedAndNulled",
        )
        assert_that(
            checked.rejected | beam.Map(lambda r: (r["reason"], r["feature"], r["detail"])),
            equal_to([(REASON_OUT_OF_RANGE, FARE_KEY, f"{FARE_KEY}=-3.0 below minimum {FARE.valid_min!r}")] * 2),
            label="RejectedOutOfRange",
        )
        assert_that(
            checked.adjusted,
            equal_to([(CLIPPED, clip_feature.name), (NULLED, NULL_INT_FEATURE.name)]),
            label="AdjustmentsCounted",
        )


def test_out_of_range_rows_read_like_the_source_data(clean_rows):
    """float32 values (12.449999809265137) are shown with 6 significant digits in rejected rows."""
    stored = parse_serialized(serialize_row(with_values(clean_rows[0], **{FARE_KEY: -12.45})))
    assert stored[FARE_KEY] != -12.45  # the premise: float32 does not hold -12.45 exactly
    with test_pipeline.TestPipeline() as pipeline:
        checked = pipeline | beam.Create([stored]) | beam.ParDo(ValueRangeFn(RAW_FEATURES)).with_outputs("rejected", main="kept")
        assert_that(
            checked.rejected | beam.Map(lambda r: (r["detail"], r["row"][FARE_KEY])),
            equal_to([(f"{FARE_KEY}=-12.45 below minimum {FARE.valid_min!r}", -12.45)]),
        )


def test_clean_split_accounts_for_every_row(clean_rows):
    good = clean_rows[:3]
    nulled = with_values(good[2], **{NULL_INT_FEATURE.name: 0})
    records = [serialize_row(r) for r in good] + [
        serialize_row(good[0]),  # duplicate
        b"\xff\xff\xff\xff",  # unparseable
        serialize_row(with_values(good[1], **{TIPS_KEY: None})),  # missing required
        serialize_row(with_values(good[2], **{FARE_KEY: -1.0})),  # out of range
        serialize_row(nulled),  # nulled, kept
    ]
    with test_pipeline.TestPipeline() as pipeline:
        cleaned = pipeline | beam.Create(records) | CleanSplit(split="train")
        assert_that(kept_rows(cleaned), equal_to(good + [with_values(nulled, **{NULL_INT_FEATURE.name: None})]),
                    label="Kept")
        assert_that(
            gathered(cleaned, "rejected") | beam.Map(lambda r: r["reason"]),
            equal_to([REASON_DUPLICATE, REASON_UNPARSEABLE, REASON_MISSING_REQUIRED, REASON_OUT_OF_RANGE]),
            label="OneOfEachReason",
        )
        # The counts the summary is made of, each row once: 8 in = 4 kept + 4 rejected.
        assert_that(summed_facts(cleaned), equal_to([{
            ("in", "train"): 8, ("kept", "train"): 4, (NULLED, NULL_INT_FEATURE.name): 1,
            **{("rejected", "train", reason): 1
               for reason in (REASON_DUPLICATE, REASON_UNPARSEABLE, REASON_MISSING_REQUIRED, REASON_OUT_OF_RANGE)}}]),
            label="Facts")


def test_a_row_kept_unchanged_is_written_as_stored_and_a_changed_one_re_encoded(clean_rows):
    """A kept row is written from its stored Example (no re-encoding) unless a policy changed a value;
    either way it holds exactly the row's values and no source line."""
    good = with_values(clean_rows[0], **{SOURCE_LINE_KEY: 7})
    nulled = with_values(clean_rows[1], **{SOURCE_LINE_KEY: 8, NULL_INT_FEATURE.name: 0})
    with test_pipeline.TestPipeline() as pipeline:
        cleaned = pipeline | beam.Create([serialize_row(good), serialize_row(nulled)]) | CleanSplit()
        assert_that(gathered(cleaned, "kept"), equal_to([
            row_to_example(without_source_line(good)).SerializeToString(deterministic=True),
            row_to_example(without_source_line(with_values(nulled, **{NULL_INT_FEATURE.name: None}))).SerializeToString(
                deterministic=True)]))


def test_clean_split_of_empty_input_produces_nothing():
    with test_pipeline.TestPipeline() as pipeline:
        cleaned = pipeline | beam.Create([], reshuffle=False).with_output_types(bytes) | CleanSplit()
        assert_that(gathered(cleaned, "kept"), equal_to([]), label="NoKept")
        assert_that(gathered(cleaned, "rejected"), equal_to([]), label="NoRejected")
        assert_that(gathered(cleaned, "facts"), equal_to([]), label="NoFacts")
