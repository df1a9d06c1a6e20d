"""Clean's row rules: how one decoded row is judged, and how a refused row reads.

Clean (beam_jobs/clean.py) runs them per split in flat memory; these are the rules themselves, row
by row: the strict decode of a raw record (`decode_strict`: unknown features, a wrong kind, several
values, non-finite floats, non-UTF-8 text -> `unparseable`), the missing-value policy (a required
feature missing -> `missing_required`) and the range policy (each feature's `on_invalid`: REJECT
-> `out_of_range`, CLIP, NULL), all from transforms/features.py, and the rejection record
(`rejected-*.jsonl`, docs/ARCHITECTURE.md "On-disk formats"). clean_batches.BatchScreen decides,
a batch at a time, which rows these rules must see.
"""

from __future__ import annotations

import base64
import math
from typing import Any, Iterator, NamedTuple, Sequence

import apache_beam as beam
import tensorflow as tf
from apache_beam.metrics import Metrics
from google.protobuf.message import DecodeError

from beam_jobs.example_codec import SOURCE_LINE_KEY
from transforms.features import EXAMPLE_FEATURES, FEATURES_BY_NAME, OBSERVED_LABEL_KEY, Feature, Kind, OnInvalid

# Rejection reasons (the "reason" field of rejected-*.jsonl).
REASON_UNPARSEABLE = "unparseable"
REASON_DUPLICATE = "duplicate"
REASON_MISSING_REQUIRED = "missing_required"
REASON_OUT_OF_RANGE = "out_of_range"
REJECTION_REASONS = (REASON_UNPARSEABLE, REASON_DUPLICATE, REASON_MISSING_REQUIRED, REASON_OUT_OF_RANGE)

CLIPPED = "clipped"
NULLED = "nulled"

REJECTED = "rejected"
ADJUSTED = "adjusted"
_STORED_LIST = {Kind.FLOAT: "float_list", Kind.INT: "int64_list", Kind.STRING: "bytes_list"}



# --- How rejected rows read ---


def readable(value: Any) -> Any:
    """Floats come back from float32 as 12.449999809265137; 6 significant digits read like the source."""
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else value
    return value


def _readable_row(row: dict[str, Any]) -> dict[str, Any]:
    return {name: readable(value) for name, value in row.items()}


def _show(feature: Feature, value: Any) -> str:
    if feature.kind is Kind.FLOAT:
        return repr(readable(float(value)))
    return str(int(value)) if float(value).is_integer() else repr(value)


def rejection(reason: str, feature: str | None, detail: str, row: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    """One line of rejected-*.jsonl (docs/ARCHITECTURE.md, "On-disk formats"): `line` is the CSV line
    the row came from (None when the record itself could not be read)."""
    line = None if row is None else row.get(SOURCE_LINE_KEY)
    record = {"line": line, "reason": reason, "feature": feature, "detail": detail,
              "row": None if row is None else _readable_row(without_source_line(row))}
    record.update(extra)
    return record


# --- ParseExamples ---


class Undecodable(Exception):
    def __init__(self, feature: str | None, detail: str) -> None:
        super().__init__(detail)
        self.feature = feature
        self.detail = detail


# Per feature, what decode_strict checks: (name, the list it must be stored as, its kind, whether
# an absent feature reads as None). Worked out once: this runs for every row.
DECODE_PLAN = tuple((feature.name, _STORED_LIST[feature.kind], feature.kind,
                      # The observed label is a key only of the rows that carry it (production rows),
                      # so a CSV row reads, and is reported, as it always did.
                      feature.name != OBSERVED_LABEL_KEY) for feature in EXAMPLE_FEATURES)
KNOWN_NAMES = frozenset(FEATURES_BY_NAME) | {SOURCE_LINE_KEY}


def decode_with_example(serialized: bytes) -> tuple[tf.train.Example, dict[str, Any]]:
    """decode_strict, also returning the parsed Example (clean writes a row it keeps unchanged as
    the Example's dedupe.content_bytes: no second encoding)."""
    try:
        example = tf.train.Example.FromString(serialized)
    except DecodeError as err:
        raise Undecodable(None, f"not a serialized tf.train.Example ({len(serialized)} bytes): {err}") from None
    # One pass over the map into a dict: each lookup in the protobuf map builds a wrapper object.
    stored = dict(example.features.feature.items())
    if not KNOWN_NAMES.issuperset(stored):
        unknown = sorted(name for name in stored if name not in KNOWN_NAMES)
        raise Undecodable(unknown[0], f"unknown feature(s) {', '.join(unknown)} (not in transforms/features.py)")
    row: dict[str, Any] = {}
    source_line = stored.get(SOURCE_LINE_KEY)
    if source_line is not None and source_line.int64_list.value:
        row[SOURCE_LINE_KEY] = source_line.int64_list.value[0]
    for name, expected, feature_kind, absent_is_none in DECODE_PLAN:
        feature = stored.get(name)
        if feature is None:
            if absent_is_none:
                row[name] = None
            continue
        kind = feature.WhichOneof("kind")
        if kind is None:
            row[name] = None
            continue
        if kind != expected:
            raise Undecodable(name, f"{name} is stored as {kind}, expected {expected}")
        values = getattr(feature, kind).value
        if len(values) > 1:
            raise Undecodable(name, f"{name} has {len(values)} values, expected at most 1")
        value = values[0] if values else None
        if value is None:
            row[name] = None
            continue
        if feature_kind is Kind.FLOAT and not math.isfinite(value):
            raise Undecodable(name, f"{name}={value} is not a finite number")
        if feature_kind is Kind.STRING:
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise Undecodable(name, f"{name} is not UTF-8 text: {value[:40]!r}") from None
        row[name] = value
    return example, row


def decode_strict(serialized: bytes) -> dict[str, Any]:
    """Decodes a raw Example into a row, refusing anything the raw format does not allow.

    Unlike example_codec.example_to_row (lenient, for reading trusted output), this rejects unknown
    features, a feature stored as the wrong kind, more than one value, non-finite floats and
    non-UTF-8 text, so that no such value silently reaches training.
    """
    return decode_with_example(serialized)[1]


def unparseable(serialized: bytes, err: Undecodable) -> dict[str, Any]:
    return rejection(REASON_UNPARSEABLE, err.feature, err.detail, None,
                     record_base64=base64.b64encode(serialized).decode("ascii"))


def without_source_line(row: dict[str, Any]) -> dict[str, Any]:
    """The row's features only: what the cleaned examples hold."""
    if SOURCE_LINE_KEY not in row:
        return row
    return {name: value for name, value in row.items() if name != SOURCE_LINE_KEY}


# --- ApplyMissingValuePolicy ---


def missing_required(required: Sequence[Feature], row: dict[str, Any]) -> dict[str, Any] | None:
    """The rejection of a row lacking a required feature, or None."""
    # A label source stands in for another (features.Feature.required_unless): a production
    # row with its observed label needs no tips.
    missing = [feature.name for feature in required if feature.missing_in(row)]
    if not missing:
        return None
    return rejection(REASON_MISSING_REQUIRED, missing[0], f"missing required feature(s): {', '.join(missing)}", row)


class MissingValuePolicyFn(beam.DoFn):
    """The step alone, on rows (the job runs it inside CleanRecordFn)."""

    def __init__(self, features: Sequence[Feature]) -> None:
        self._required = tuple(feature for feature in features if feature.required)

    def process(self, row: dict[str, Any]) -> Iterator[Any]:
        refused = missing_required(self._required, row)
        if refused is None:
            yield row
            return
        Metrics.counter("clean", f"rejected_{REASON_MISSING_REQUIRED}").inc()
        yield beam.pvalue.TaggedOutput(REJECTED, refused)


# --- CheckValueRanges ---


def _range_problem(feature: Feature, value: Any) -> str | None:
    if feature.valid_min is not None and value < feature.valid_min:
        return f"{feature.name}={_show(feature, value)} below minimum {_show(feature, feature.valid_min)}"
    if feature.valid_max is not None and value > feature.valid_max:
        return f"{feature.name}={_show(feature, value)} above maximum {_show(feature, feature.valid_max)}"
    return None


def _clipped(feature: Feature, value: Any) -> Any:
    low = feature.valid_min if feature.valid_min is not None else value
    high = feature.valid_max if feature.valid_max is not None else value
    bounded = min(max(value, low), high)
    return int(bounded) if feature.kind is Kind.INT else float(bounded)


class RangeOutcome(NamedTuple):
    row: dict[str, Any] | None  # the row kept (`changed` tells whether a value was clipped or nulled)
    rejected: dict[str, Any] | None
    adjusted: tuple[tuple[str, str], ...]  # (CLIPPED | NULLED, feature name) per changed value
    changed: bool


def ranged_features(features: Sequence[Feature]) -> tuple[tuple[Feature, float, float], ...]:
    """(feature, low, high) of each feature with a valid range, for apply_range_policy."""
    return tuple((f, -math.inf if f.valid_min is None else f.valid_min, math.inf if f.valid_max is None else f.valid_max)
                 for f in features if f.kind is not Kind.STRING and (f.valid_min is not None or f.valid_max is not None))


def apply_range_policy(checked: Sequence[tuple[Feature, float, float]], row: dict[str, Any]) -> RangeOutcome:
    """Applies each feature's on_invalid policy to values outside its valid range.

    A row with any REJECT violation is rejected whole and nothing of it is counted as clipped or
    nulled, so the counters describe exactly the kept data.
    """
    # The bounds first, as plain comparisons: almost every row is in range.
    outside = [feature for feature, low, high in checked
               if (value := row.get(feature.name)) is not None and not low <= value <= high]
    problems = [(feature, problem) for feature in outside
                if (problem := _range_problem(feature, row[feature.name])) is not None]
    if not problems:
        return RangeOutcome(row, None, (), False)
    fatal = [(f, p) for f, p in problems if f.on_invalid is OnInvalid.REJECT]
    # Nulling a required feature would leave a row the missing-value policy refuses.
    fatal += [(f, f"{p}, and {f.name} is required so it cannot be nulled")
              for f, p in problems if f.on_invalid is OnInvalid.NULL and f.required]
    if fatal:
        return RangeOutcome(None, rejection(REASON_OUT_OF_RANGE, fatal[0][0].name, "; ".join(p for _, p in fatal), row),
                            (), False)
    cleaned = dict(row)
    adjusted = []
    for feature, _ in problems:
        if feature.on_invalid is OnInvalid.CLIP:
            cleaned[feature.name] = _clipped(feature, row[feature.name])
            adjusted.append((CLIPPED, feature.name))
        else:
            cleaned[feature.name] = None
            adjusted.append((NULLED, feature.name))
    return RangeOutcome(cleaned, None, tuple(adjusted), True)


class ValueRangeFn(beam.DoFn):
    """The step alone, on rows: apply_range_policy per row (the job runs it inside CleanRecordFn)."""

    def __init__(self, features: Sequence[Feature]) -> None:
        self._checked = ranged_features(features)

    def process(self, row: dict[str, Any]) -> Iterator[Any]:
        outcome = apply_range_policy(self._checked, row)
        if outcome.rejected is not None:
            Metrics.counter("clean", f"rejected_{REASON_OUT_OF_RANGE}").inc()
            yield beam.pvalue.TaggedOutput(REJECTED, outcome.rejected)
            return
        for adjustment, name in outcome.adjusted:
            Metrics.counter("clean", f"{adjustment}_{name}").inc()
            yield beam.pvalue.TaggedOutput(ADJUSTED, (adjustment, name))
        yield outcome.row
