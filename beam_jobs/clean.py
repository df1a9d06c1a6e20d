"""Clean: raw tf.Example splits -> cleaned splits plus every rejected row with its reason.

    python -m beam_jobs.clean --input /tmp/ingest/examples --output /tmp/clean --runner=DirectRunner \
        --direct_num_workers=2 --direct_running_mode=multi_processing

Per split, four named steps run in order, each sending the rows it refuses to a `rejected` output:
`ParseExamples` (undecodable records or features of the wrong kind -> `unparseable`),
`DropDuplicates` (exact duplicates -> `duplicate`, one copy kept; found by counting content digests
of a second read, so no stage holds the rows: beam_jobs/dedupe.py), `ApplyMissingValuePolicy`
(a `required` feature missing -> `missing_required`) and `CheckValueRanges` (values outside
`valid_min/valid_max`, handled by each feature's `on_invalid`: REJECT -> `out_of_range`, CLIP ->
clipped and counted, NULL -> made missing and counted). The rules all come from
transforms/features.py. Every row read ends up kept or rejected; the job checks that at the end.

In flat memory: one DoFn (`CleanRecordFn`) takes each record through the four steps and encodes it,
so a row is decoded once (the second read only digests) and written, when kept unchanged, as its
stored Example without the source line; rows seen once stream from the read to the write. The few rows with
copies take their own branch (grouped by content, one copy kept, then the same checks) and write
their own files beside the others, so no runner has to gather the two branches' rows (a Flatten the
in-memory runner would hold); the run's counts are summed per bundle, not sent one per row.

In batches (beam_jobs/clean_batches.py): each split is read as lists of 2,048 records, and each list is
decoded at once in C++ (tfx_bsl, into Arrow columns) and screened by column operations; only the rows
a rule or decode_strict may act on take the per-row steps, so their rejections, details and counts
are the per-row steps' own. The kept rows of a list leave as one element (written by
tfrecord_batches.TFRecordBatchSink).

Writes `cleaned/Split-<split>/data-{once,copies}-*.tfrecord.gz` (readers glob `data-*`),
`rejected/Split-<split>/rejected-{once,copies}-*.jsonl` and `clean_result.json`.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import math
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

import apache_beam as beam
import tensorflow as tf
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.window import GlobalWindows
from google.protobuf.message import DecodeError

from beam_jobs import clean_batches, dedupe, outputs
from beam_jobs.example_codec import SOURCE_LINE_KEY, SPLITS, TFRECORD_SUFFIX, split_dir, split_pattern, split_prefix
from beam_jobs.options import add_job_argument, require_flags, run_program
from beam_jobs.tfrecord_batches import ReadRecordBatches, TFRecordBatchSink
from core.atomic import write_json
from core.errors import DataError
from transforms.features import EXAMPLE_COLUMNS, EXAMPLE_FEATURES, FEATURES_BY_NAME, OBSERVED_LABEL_KEY, Feature, Kind, OnInvalid

_LOG = logging.getLogger(__name__)

CLEANED_DIR = "cleaned"
REJECTED_DIR = "rejected"
RESULT_FILE = "clean_result.json"
SUMMARY_FILE = "summary.json"

# Rejection reasons (the "reason" field of rejected-*.jsonl).
REASON_UNPARSEABLE = "unparseable"
REASON_DUPLICATE = "duplicate"
REASON_MISSING_REQUIRED = "missing_required"
REASON_OUT_OF_RANGE = "out_of_range"
REJECTION_REASONS = (REASON_UNPARSEABLE, REASON_DUPLICATE, REASON_MISSING_REQUIRED, REASON_OUT_OF_RANGE)

CLIPPED = "clipped"
NULLED = "nulled"

_REJECTED = "rejected"
_ADJUSTED = "adjusted"
_STORED_LIST = {Kind.FLOAT: "float_list", Kind.INT: "int64_list", Kind.STRING: "bytes_list"}


@dataclasses.dataclass(frozen=True)
class CleanResult:
    rows_in: dict[str, int]  # per split
    rows_kept: dict[str, int]
    rows_rejected: dict[str, int]
    rejected_by_reason: dict[str, int]  # reason code -> count, all splits
    values_clipped: dict[str, int]  # per feature, in kept rows
    values_nulled: dict[str, int]


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


class _Undecodable(Exception):
    def __init__(self, feature: str | None, detail: str) -> None:
        super().__init__(detail)
        self.feature = feature
        self.detail = detail


# Per feature, what decode_strict checks: (name, the list it must be stored as, its kind, whether
# an absent feature reads as None). Worked out once: this runs for every row.
_DECODE_PLAN = tuple((feature.name, _STORED_LIST[feature.kind], feature.kind,
                      # The observed label is a key only of the rows that carry it (production rows),
                      # so a CSV row reads, and is reported, as it always did.
                      feature.name != OBSERVED_LABEL_KEY) for feature in EXAMPLE_FEATURES)
_KNOWN_NAMES = frozenset(FEATURES_BY_NAME) | {SOURCE_LINE_KEY}


def _decode(serialized: bytes) -> tuple[tf.train.Example, dict[str, Any]]:
    """decode_strict, also returning the parsed Example (clean writes a row it keeps unchanged as
    the Example's dedupe.content_bytes: no second encoding)."""
    try:
        example = tf.train.Example.FromString(serialized)
    except DecodeError as err:
        raise _Undecodable(None, f"not a serialized tf.train.Example ({len(serialized)} bytes): {err}") from None
    # One pass over the map into a dict: each lookup in the protobuf map builds a wrapper object.
    stored = dict(example.features.feature.items())
    if not _KNOWN_NAMES.issuperset(stored):
        unknown = sorted(name for name in stored if name not in _KNOWN_NAMES)
        raise _Undecodable(unknown[0], f"unknown feature(s) {', '.join(unknown)} (not in transforms/features.py)")
    row: dict[str, Any] = {}
    source_line = stored.get(SOURCE_LINE_KEY)
    if source_line is not None and source_line.int64_list.value:
        row[SOURCE_LINE_KEY] = source_line.int64_list.value[0]
    for name, expected, feature_kind, absent_is_none in _DECODE_PLAN:
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
            raise _Undecodable(name, f"{name} is stored as {kind}, expected {expected}")
        values = getattr(feature, kind).value
        if len(values) > 1:
            raise _Undecodable(name, f"{name} has {len(values)} values, expected at most 1")
        value = values[0] if values else None
        if value is None:
            row[name] = None
            continue
        if feature_kind is Kind.FLOAT and not math.isfinite(value):
            raise _Undecodable(name, f"{name}={value} is not a finite number")
        if feature_kind is Kind.STRING:
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise _Undecodable(name, f"{name} is not UTF-8 text: {value[:40]!r}") from None
        row[name] = value
    return example, row


def decode_strict(serialized: bytes) -> dict[str, Any]:
    """Decodes a raw Example into a row, refusing anything the raw format does not allow.

    Unlike example_codec.example_to_row (lenient, for reading trusted output), this rejects unknown
    features, a feature stored as the wrong kind, more than one value, non-finite floats and
    non-UTF-8 text, so that no such value silently reaches training.
    """
    return _decode(serialized)[1]


def _unparseable(serialized: bytes, err: _Undecodable) -> dict[str, Any]:
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
        yield beam.pvalue.TaggedOutput(_REJECTED, refused)


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
            yield beam.pvalue.TaggedOutput(_REJECTED, outcome.rejected)
            return
        for adjustment, name in outcome.adjusted:
            Metrics.counter("clean", f"{adjustment}_{name}").inc()
            yield beam.pvalue.TaggedOutput(_ADJUSTED, (adjustment, name))
        yield outcome.row


# --- The whole cleaning of one split, in flat memory ---


class _CheckAndEncodeFn(beam.DoFn):
    """ApplyMissingValuePolicy and CheckValueRanges of a decoded row, then its encoding; counts the
    run's facts per bundle and emits them at the bundle's end (FACTS): ("in"|"kept", split),
    ("rejected", split, reason), ("clipped"|"nulled", feature)."""

    FACTS = "facts"

    def __init__(self, features: Sequence[Feature], split: str) -> None:
        self._required = tuple(feature for feature in features if feature.required)
        self._checked = ranged_features(features)
        self._split = split
        self._facts: dict[tuple, int] = {}

    def start_bundle(self) -> None:
        self._facts = {}

    def finish_bundle(self) -> Iterator[Any]:
        if self._facts:
            yield beam.pvalue.TaggedOutput(self.FACTS, GlobalWindows.windowed_value(self._facts))
        self._facts = {}

    def _count(self, fact: tuple) -> None:
        self._count_many(fact, 1)

    def _count_many(self, fact: tuple, count: int) -> None:
        if count:
            self._facts[fact] = self._facts.get(fact, 0) + count

    def _rejected(self, record: dict[str, Any]) -> beam.pvalue.TaggedOutput:
        Metrics.counter("clean", f"rejected_{record['reason']}").inc()
        self._count(("rejected", self._split, record["reason"]))
        return beam.pvalue.TaggedOutput(_REJECTED, record)

    def _check_and_encode(self, row: dict[str, Any], content: bytes) -> Iterator[Any]:
        """`content`: the row's dedupe.content_bytes, which is what a row kept unchanged is written as."""
        refused = missing_required(self._required, row)
        if refused is not None:
            yield self._rejected(refused)
            return
        outcome = apply_range_policy(self._checked, row)
        if outcome.rejected is not None:
            yield self._rejected(outcome.rejected)
            return
        for adjustment, name in outcome.adjusted:
            Metrics.counter("clean", f"{adjustment}_{name}").inc()
            self._count((adjustment, name))
        self._count(("kept", self._split))
        yield dedupe.row_content_bytes(outcome.row) if outcome.changed else content


def batch_screen(features: Sequence[Feature]) -> clean_batches.BatchScreen:
    """The screen of decode_strict and the rules of `features` (what CleanRecordFn batches with)."""
    return clean_batches.BatchScreen({name: kind for name, _, kind, _ in _DECODE_PLAN}, _KNOWN_NAMES,
                                     [feature for feature in features if feature.required], ranged_features(features))


class CleanRecordFn(_CheckAndEncodeFn):
    """A raw record through ParseExamples, DropDuplicates' routing, ApplyMissingValuePolicy and
    CheckValueRanges -> its cleaned Example (serialized), its rejection, or, when its content has
    copies (the side input), (content, row) to WITH_COPIES for the exact comparison.

    Records are taken in batches (beam_jobs/clean_batches.py): each batch is decoded at once in C++
    and the rules run as column operations, which find the rows that need them; only those rows
    (and every row of a batch the decoder refuses) go through the per-row steps. The kept rows of a
    batch leave as one list (the main output: lists of serialized Examples)."""

    WITH_COPIES = "with_copies"
    BATCH_ROWS = clean_batches.BATCH_ROWS

    def __init__(self, features: Sequence[Feature], split: str) -> None:
        super().__init__(features, split)
        self._screen = batch_screen(features)
        self._batch: list[bytes] = []
        self._copies: frozenset[int] = frozenset()

    def start_bundle(self) -> None:
        super().start_bundle()
        self._batch = []

    def process(self, records: list[bytes], contents_with_copies: frozenset[int]) -> Iterator[Any]:
        self._copies = contents_with_copies
        self._batch.extend(records)
        if len(self._batch) >= self.BATCH_ROWS:
            yield from self._clean_batch()

    def finish_bundle(self) -> Iterator[Any]:
        # Outside process, outputs carry their window: the rest of the bundle's batch, then its facts.
        for output in self._clean_batch():
            if isinstance(output, beam.pvalue.TaggedOutput):
                yield beam.pvalue.TaggedOutput(output.tag, GlobalWindows.windowed_value(output.value))
            else:
                yield GlobalWindows.windowed_value(output)
        yield from super().finish_bundle()

    def _clean_batch(self) -> Iterator[Any]:
        records, self._batch = self._batch, []
        if not records:
            return
        needs_rules = self._screen.rows_needing_rules(records)
        kept: list[bytes] = []
        kept_as_stored = 0
        for serialized, by_rules in zip(records, needs_rules):
            if not by_rules:
                # Decodes as decode_strict would, nothing missing, nothing out of range: kept as it is
                # stored, unless its content has copies.
                content = dedupe.content_bytes(tf.train.Example.FromString(serialized))
                if not (self._copies and dedupe.content_digest(content) in self._copies):
                    kept.append(content)
                    kept_as_stored += 1
                    continue
            for output in self._clean_record(serialized):
                if isinstance(output, bytes):
                    kept.append(output)
                else:
                    yield output
        self._count_many(("in", self._split), len(records))
        self._count_many(("kept", self._split), kept_as_stored)  # the others by _check_and_encode
        if kept:
            yield kept

    def _clean_record(self, serialized: bytes) -> Iterator[Any]:
        """One record through the per-row steps (its "in" is counted by the batch, its "kept" here)."""
        try:
            example, row = _decode(serialized)
        except _Undecodable as err:
            yield self._rejected(_unparseable(serialized, err))
            return
        content = dedupe.content_bytes(example)
        if self._copies and dedupe.content_digest(content) in self._copies:
            yield beam.pvalue.TaggedOutput(self.WITH_COPIES, (content, row))
            return
        yield from self._check_and_encode(row, content)


class KeepOneCopyFn(_CheckAndEncodeFn):
    """Rows of one content -> the copy kept (dedupe.pick_kept_copy), checked and encoded like any
    other row (the main output, as CleanRecordFn's: a list of serialized Examples, here of one); the
    other copies rejected as `duplicate`."""

    def process(self, keyed: tuple[bytes, Iterable[dict[str, Any]]]) -> Iterator[Any]:
        content, rows = keyed
        kept, copies, detail = dedupe.pick_kept_copy(list(rows))
        for copy in copies:
            yield self._rejected(rejection(REASON_DUPLICATE, None, detail, copy))
        for output in self._check_and_encode(kept, content):
            yield [output] if isinstance(output, bytes) else output


class BranchOutput(NamedTuple):
    kept: beam.PCollection  # lists of serialized cleaned Examples
    rejected: beam.PCollection
    facts: beam.PCollection  # {fact: count}, one per bundle


class CleanOutput(NamedTuple):
    """Two branches, each written to its own files: the rows whose content was seen once, and those
    with copies (kept copies and rejected duplicates). Never flattened: see the module docstring."""

    once: BranchOutput
    copies: BranchOutput


BRANCHES = ("once", "copies")


def _tagged_branch(tagged: Any) -> BranchOutput:
    return BranchOutput(tagged.kept, tagged[_REJECTED], tagged[_CheckAndEncodeFn.FACTS])


class CleanSplit(beam.PTransform):
    """Serialized raw Examples -> the cleaned Examples, rejected records and counts of both branches.

    `reread`: a source of the same records (e.g. a second read of the split), from which the copies
    are counted, so that no stage has to hold the records while that count is made. Without it
    (records from memory, tests) the records themselves are counted. `batched`: the records (and
    the reread's) come as lists (tfrecord_batches.ReadRecordBatches), else one record an element.
    """

    def __init__(self, features: Sequence[Feature] = EXAMPLE_FEATURES, reread: beam.PTransform | None = None,
                 split: str = "", batched: bool = False) -> None:
        super().__init__()
        self._features = tuple(features)
        self._reread = reread
        self._split = split
        self._batched = batched

    def expand(self, records: beam.PCollection) -> CleanOutput:
        counted = records if self._reread is None else records.pipeline | "ReadAgain" >> self._reread
        if not self._batched:
            records = records | "OneRecordBatches" >> beam.Map(clean_batches.one_record_batch)
            counted = counted | "OneRecordBatchesCounted" >> beam.Map(clean_batches.one_record_batch)
        copies = counted | "CountContentCopies" >> dedupe.CountContentCopies()
        once = records | "CleanRecords" >> beam.ParDo(
            CleanRecordFn(self._features, self._split), beam.pvalue.AsSingleton(copies)).with_outputs(
            _REJECTED, CleanRecordFn.WITH_COPIES, CleanRecordFn.FACTS, main="kept")
        kept_copies = (
            once[CleanRecordFn.WITH_COPIES]
            | "GroupByContent" >> beam.GroupByKey()
            | "KeepOneCopy" >> beam.ParDo(KeepOneCopyFn(self._features, self._split)).with_outputs(
                _REJECTED, KeepOneCopyFn.FACTS, main="kept")
        )
        return CleanOutput(_tagged_branch(once), _tagged_branch(kept_copies))


class SumFactsFn(beam.CombineFn):
    """Sums the per-bundle {fact: count}; the output, [[*fact, count], ...], is the run summary."""

    def create_accumulator(self) -> dict[tuple, int]:
        return {}

    def add_input(self, counts: dict[tuple, int], bundle_counts: dict[tuple, int]) -> dict[tuple, int]:
        for fact, count in bundle_counts.items():
            counts[fact] = counts.get(fact, 0) + count
        return counts

    def merge_accumulators(self, accumulators: Iterable[dict[tuple, int]]) -> dict[tuple, int]:
        merged: dict[tuple, int] = {}
        for counts in accumulators:
            self.add_input(merged, counts)
        return merged

    def extract_output(self, counts: dict[tuple, int]) -> list[list[Any]]:
        return sorted([*fact, count] for fact, count in counts.items())


@dataclasses.dataclass(frozen=True)
class CleanPlan:
    examples_dir: str
    output_dir: str  # where the pipeline writes (a staging folder when run through clean_examples)
    splits: tuple[str, ...]


def _read_split(examples_dir: str, split: str) -> beam.PTransform:
    return ReadRecordBatches(tf.io.gfile.glob(split_pattern(examples_dir, split)))


def build(pipeline: beam.Pipeline, plan: CleanPlan, features: Sequence[Feature] = EXAMPLE_FEATURES) -> None:
    """Per split: ReadSplit -> CleanSplit -> per branch WriteCleaned / WriteRejected; plus SUMMARY_FILE."""
    output = Path(plan.output_dir)
    facts = []
    for split in plan.splits:
        records = pipeline | f"ReadSplit[{split}]" >> _read_split(plan.examples_dir, split)
        cleaned = records | f"CleanSplit[{split}]" >> CleanSplit(
            features, reread=_read_split(plan.examples_dir, split), split=split, batched=True)
        for branch, out in zip(BRANCHES, cleaned):
            _ = out.kept | f"WriteCleaned[{split},{branch}]" >> beam.io.Write(
                TFRecordBatchSink(f"{split_prefix(output / CLEANED_DIR, split)}-{branch}"))
            _ = out.rejected | f"WriteRejected[{split},{branch}]" >> outputs.WriteJsonLines(
                str(split_dir(output / REJECTED_DIR, split) / f"rejected-{branch}"))
            facts.append(out.facts)
    _ = (
        facts
        | "GatherFacts" >> beam.Flatten()  # one small dict per bundle
        | "Summarize" >> beam.CombineGlobally(SumFactsFn())
        | "WriteSummary" >> beam.ParDo(outputs.WriteSummaryFn(str(output / SUMMARY_FILE)))
    )


# --- The step function ---


def clean_examples(
    examples_dir: Path,
    output_dir: Path,
    *,
    splits: Sequence[str] = SPLITS,
    beam_args: Sequence[str] = (),
) -> CleanResult:
    """Cleans each split of examples_dir into output_dir; see the module docstring for the rules.

    Raises DataError when a split has no data files, and RuntimeError if a row were lost between
    reading and writing (rows_in must equal rows_kept + rows_rejected in every split).
    """
    splits = tuple(splits)
    if not splits or len(set(splits)) != len(splits):
        raise ValueError(f"splits must be a non-empty list of distinct names, got {list(splits)}")
    examples_dir, output_dir = Path(examples_dir), Path(output_dir)
    for split in splits:
        if not any(split_dir(examples_dir, split).glob(f"data-*{TFRECORD_SUFFIX}")):
            raise DataError(
                f"{split_dir(examples_dir, split)}: no files match data-*{TFRECORD_SUFFIX} "
                f"(expected the raw examples of split {split!r}, as the ingest job writes them)"
            )
    outputs.refuse_existing_outputs(output_dir, (CLEANED_DIR, REJECTED_DIR, RESULT_FILE))
    staging = outputs.make_staging_dir(output_dir, "clean")
    try:
        with beam.Pipeline(options=PipelineOptions(list(beam_args))) as pipeline:
            build(pipeline, CleanPlan(str(examples_dir), str(staging), splits))
        result = result_from_facts(outputs.read_summary(staging / SUMMARY_FILE), splits)
        check_accounted(result, examples_dir)
        outputs.promote(staging, output_dir, (CLEANED_DIR, REJECTED_DIR))
        write_json(output_dir / RESULT_FILE, dataclasses.asdict(result))
    finally:
        outputs.discard(staging)
    _LOG.info("clean %s: %s", examples_dir, dataclasses.asdict(result))
    return result


def result_from_facts(facts: list[list[Any]], splits: Sequence[str]) -> CleanResult:
    rows_in = {split: 0 for split in splits}
    rows_kept = {split: 0 for split in splits}
    rows_rejected = {split: 0 for split in splits}
    by_reason: dict[str, int] = {}
    adjusted: dict[str, dict[str, int]] = {CLIPPED: {}, NULLED: {}}
    for fact in facts:
        kind = fact[0]
        if kind == "in":
            rows_in[fact[1]] += fact[2]
        elif kind == "kept":
            rows_kept[fact[1]] += fact[2]
        elif kind == "rejected":
            _, split, reason, count = fact
            rows_rejected[split] += count
            by_reason[reason] = by_reason.get(reason, 0) + count
        elif kind in adjusted:
            _, feature, count = fact
            adjusted[kind][feature] = adjusted[kind].get(feature, 0) + count
        else:
            raise RuntimeError(f"unknown clean summary fact {fact!r}")

    def in_feature_order(counts: dict[str, int]) -> dict[str, int]:
        return {name: counts[name] for name in EXAMPLE_COLUMNS if name in counts}

    return CleanResult(rows_in, rows_kept, rows_rejected, dict(sorted(by_reason.items())),
                       in_feature_order(adjusted[CLIPPED]), in_feature_order(adjusted[NULLED]))


def check_accounted(result: CleanResult, examples_dir: Path) -> None:
    """Every row read is kept or rejected, never dropped: the promise the rejected output makes."""
    lost = {split: (result.rows_in[split], result.rows_kept[split], result.rows_rejected[split])
            for split in result.rows_in
            if result.rows_in[split] != result.rows_kept[split] + result.rows_rejected[split]}
    if lost:
        raise RuntimeError(f"clean lost track of rows from {examples_dir}: (in, kept, rejected) per split {lost}")


# --- The Beam program ---


class CleanOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        add_job_argument(parser, "--input", type=str, default=None,
                         help="Directory holding Split-<split>/data-*.tfrecord.gz.")
        add_job_argument(parser, "--output", type=str, default=None, help="The output directory.")
        add_job_argument(parser, "--splits", type=str, default=",".join(SPLITS),
                         help="Comma-separated splits to clean.")


def run(argv: Sequence[str] | None = None) -> CleanResult:
    """Command-line entry: app flags and runner flags in one argv, as Beam programs take them."""
    args = list(sys.argv[1:] if argv is None else argv)
    options = PipelineOptions(args).view_as(CleanOptions)
    require_flags("beam_jobs.clean", {"--input": options.input, "--output": options.output})
    splits = [split.strip() for split in options.splits.split(",") if split.strip()]
    return clean_examples(Path(options.input), Path(options.output), splits=splits, beam_args=args)


def main() -> None:
    run_program(run)


if __name__ == "__main__":
    # Import by package name so DoFns pickle as beam_jobs.clean.*, importable in worker processes.
    from beam_jobs import clean

    clean.main()
