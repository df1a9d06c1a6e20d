"""Clean: raw tf.Example splits -> cleaned splits plus every rejected row with its reason.

    python -m beam_jobs.clean --input /tmp/ingest/examples --output /tmp/clean --runner=DirectRunner \
        --direct_num_workers=2 --direct_running_mode=multi_processing

Per split, four named steps run in order, each sending the rows it refuses to a `rejected` output:
`ParseExamples` (undecodable records or features of the wrong kind -> `unparseable`),
`DropDuplicates` (exact duplicates -> `duplicate`, one copy kept; found by counting content digests,
so the shuffle carries digests, not rows), `ApplyMissingValuePolicy`
(a `required` feature missing -> `missing_required`) and `CheckValueRanges` (values outside
`valid_min/valid_max`, handled by each feature's `on_invalid`: REJECT -> `out_of_range`, CLIP ->
clipped and counted, NULL -> made missing and counted). The rules all come from
transforms/features.py. Every row read ends up kept or rejected; the job checks that at the end.

Writes `cleaned/Split-<split>/data-*.tfrecord.gz`, `rejected/Split-<split>/rejected-*.jsonl` and
`clean_result.json`.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import logging
import math
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

import apache_beam as beam
import tensorflow as tf
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions
from google.protobuf.message import DecodeError

from beam_jobs import outputs
from beam_jobs.example_codec import (SOURCE_LINE_KEY, SPLITS, TFRECORD_SUFFIX, canonical_row, split_dir, split_pattern,
                                     split_prefix)
from beam_jobs.options import add_job_argument, require_flags, run_program
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


class StageOutput(NamedTuple):
    kept: beam.PCollection
    rejected: beam.PCollection


class CleanOutput(NamedTuple):
    kept: beam.PCollection
    rejected: beam.PCollection  # all four steps' rejections
    adjusted: beam.PCollection  # (CLIPPED | NULLED, feature name), one per changed value


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
# an absent feature reads as None). Worked out once: this runs for every row, twice (clean's dedupe
# reads each split twice).
_DECODE_PLAN = tuple((feature.name, _STORED_LIST[feature.kind], feature.kind,
                      # The observed label is a key only of the rows that carry it (production rows),
                      # so a CSV row reads, and is reported, as it always did.
                      feature.name != OBSERVED_LABEL_KEY) for feature in EXAMPLE_FEATURES)
_KNOWN_NAMES = frozenset(FEATURES_BY_NAME) | {SOURCE_LINE_KEY}


def decode_strict(serialized: bytes) -> dict[str, Any]:
    """Decodes a raw Example into a row, refusing anything the raw format does not allow.

    Unlike example_codec.example_to_row (lenient, for reading trusted output), this rejects unknown
    features, a feature stored as the wrong kind, more than one value, non-finite floats and
    non-UTF-8 text, so that no such value silently reaches training.
    """
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
        if feature_kind is Kind.FLOAT and value is not None and not math.isfinite(value):
            raise _Undecodable(name, f"{name}={value} is not a finite number")
        if feature_kind is Kind.STRING and value is not None:
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise _Undecodable(name, f"{name} is not UTF-8 text: {value[:40]!r}") from None
        row[name] = value
    return row


class ParseExamplesFn(beam.DoFn):
    def process(self, serialized: bytes) -> Iterator[Any]:
        try:
            yield decode_strict(serialized)
        except _Undecodable as err:
            Metrics.counter("clean", f"rejected_{REASON_UNPARSEABLE}").inc()
            yield beam.pvalue.TaggedOutput(_REJECTED, rejection(
                REASON_UNPARSEABLE, err.feature, err.detail, None,
                record_base64=base64.b64encode(serialized).decode("ascii")))


class ParseExamples(beam.PTransform):
    """Serialized tf.Examples -> rows (every raw column present, None = missing)."""

    def expand(self, records: beam.PCollection) -> StageOutput:
        tagged = records | "Decode" >> beam.ParDo(ParseExamplesFn()).with_outputs(_REJECTED, main="kept")
        return StageOutput(tagged.kept, tagged[_REJECTED])


# --- DropDuplicates ---

# 16 bytes of BLAKE2b: what the duplicate count shuffles per row instead of the row (about 500 bytes
# encoded). A collision of two different rows (odds ~2^-64 at 2^32 rows) costs nothing wrong: it
# only sends both rows to the exact comparison below, which tells them apart by their content.
CONTENT_DIGEST_BYTES = 16


def content_digest(row: dict[str, Any]) -> bytes:
    """The row's content (canonical_row: stored values, not its source line) as a 16-byte digest."""
    return hashlib.blake2b(canonical_row(row).encode("utf-8"), digest_size=CONTENT_DIGEST_BYTES).digest()


def _key_by_content(row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return canonical_row(row), row


def _has_copies(digest_count: tuple[bytes, int]) -> bool:
    return digest_count[1] > 1


class RouteByCopiesFn(beam.DoFn):
    """Rows whose content occurs once pass straight on; rows with copies go to the exact comparison."""

    WITH_COPIES = "with_copies"

    def process(self, row: dict[str, Any], counts_with_copies: dict[bytes, int]) -> Iterator[Any]:
        if counts_with_copies and content_digest(row) in counts_with_copies:
            yield beam.pvalue.TaggedOutput(self.WITH_COPIES, row)
        else:
            yield row


class KeepOneCopyFn(beam.DoFn):
    """Keeps the first row of a group of identical rows; the copies are rejected.

    The group's rows are equal value for value, so which copy is kept cannot change the output:
    the choice is deterministic by construction.
    """

    def process(self, keyed: tuple[str, Iterable[dict[str, Any]]]) -> Iterator[Any]:
        _, rows = keyed
        # The copy from the earliest line is kept, so the rejected lines are the same on every run.
        rows = sorted(rows, key=_source_line_order)
        kept = rows[0]
        yield kept
        of_line = f" of line {kept[SOURCE_LINE_KEY]}" if kept.get(SOURCE_LINE_KEY) is not None else ""
        for copy in rows[1:]:
            Metrics.counter("clean", f"rejected_{REASON_DUPLICATE}").inc()
            yield beam.pvalue.TaggedOutput(_REJECTED, rejection(
                REASON_DUPLICATE, None, f"exact duplicate{of_line}: {len(rows)} identical rows in this split, 1 kept", copy))


def _source_line_order(row: dict[str, Any]) -> tuple[bool, int]:
    line = row.get(SOURCE_LINE_KEY)
    return (line is None, line or 0)


def without_source_line(row: dict[str, Any]) -> dict[str, Any]:
    """The row's features only: what the cleaned examples hold."""
    if SOURCE_LINE_KEY not in row:
        return row
    return {name: value for name, value in row.items() if name != SOURCE_LINE_KEY}


class CountContentCopies(beam.PTransform):
    """Rows -> (content digest, count) for each content seen more than once.

    A combiner counts: the shuffle carries 16-byte digests and counts, summed per bundle before it,
    never the rows; what comes out is as large as the duplicated contents, not as the data.
    """

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        return (
            rows
            | "ContentDigest" >> beam.Map(content_digest)
            | "CountPerDigest" >> beam.combiners.Count.PerElement()
            | "OnlyWithCopies" >> beam.Filter(_has_copies)
        )


class DropDuplicates(beam.PTransform):
    """Exact duplicate rows (same stored values) -> one kept, the others rejected as `duplicate`.

    The shuffle carries digests, not rows: the contents with copies are counted first (CountContentCopies), and
    each row is then routed by that count, a side input as large as the duplicated contents. Rows
    seen once (almost all of real data) are kept as they stream by; only the rows with copies are
    grouped by their full content and reduced to the copy of the earliest line (KeepOneCopyFn), so
    the kept rows and the rejected records are those of grouping every row by its content.

    Not yet flat in memory on the in-memory runner: it materializes the `GatherKept` Flatten of the
    two branches (every kept row, encoded) before the steps after it run (docs/SCALE.md).

    `copies`: CountContentCopies of the same rows read a second time (CleanSplit does that). Without
    it the counts come from `rows` themselves, and a runner keeps all the rows (a PCollection read
    by two stages is materialized) until the counting is done.
    """

    def __init__(self, copies: beam.PCollection | None = None) -> None:
        super().__init__()
        self._copies = copies

    def expand(self, rows: beam.PCollection) -> StageOutput:
        copies = self._copies if self._copies is not None else rows | "CountContentCopies" >> CountContentCopies()
        routed = rows | "RouteByCopies" >> beam.ParDo(RouteByCopiesFn(), beam.pvalue.AsDict(copies)).with_outputs(
            RouteByCopiesFn.WITH_COPIES, main="once")
        grouped = (
            routed[RouteByCopiesFn.WITH_COPIES]
            | "KeyByContent" >> beam.Map(_key_by_content)
            | "GroupByContent" >> beam.GroupByKey()
            | "KeepOneCopy" >> beam.ParDo(KeepOneCopyFn()).with_outputs(_REJECTED, main="kept")
        )
        kept = (routed.once, grouped.kept) | "GatherKept" >> beam.Flatten()
        return StageOutput(kept, grouped[_REJECTED])


# --- ApplyMissingValuePolicy ---


class MissingValuePolicyFn(beam.DoFn):
    def __init__(self, features: Sequence[Feature]) -> None:
        self._required = tuple(feature for feature in features if feature.required)

    def process(self, row: dict[str, Any]) -> Iterator[Any]:
        # A label source stands in for another (features.Feature.required_unless): a production
        # row with its observed label needs no tips.
        missing = [feature.name for feature in self._required if feature.missing_in(row)]
        if not missing:
            yield row
            return
        Metrics.counter("clean", f"rejected_{REASON_MISSING_REQUIRED}").inc()
        yield beam.pvalue.TaggedOutput(_REJECTED, rejection(
            REASON_MISSING_REQUIRED, missing[0], f"missing required feature(s): {', '.join(missing)}", row))


class ApplyMissingValuePolicy(beam.PTransform):
    """Rows missing a `required=True` feature (and what may stand in for it) -> rejected as `missing_required`; others pass unchanged."""

    def __init__(self, features: Sequence[Feature] = EXAMPLE_FEATURES) -> None:
        super().__init__()
        self._features = tuple(features)

    def expand(self, rows: beam.PCollection) -> StageOutput:
        tagged = rows | "RejectMissingRequired" >> beam.ParDo(
            MissingValuePolicyFn(self._features)).with_outputs(_REJECTED, main="kept")
        return StageOutput(tagged.kept, tagged[_REJECTED])


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


class ValueRangeFn(beam.DoFn):
    """Applies each feature's on_invalid policy to values outside its valid range.

    A row with any REJECT violation is rejected whole and nothing of it is counted as clipped or
    nulled, so the counters describe exactly the kept data.
    """

    def __init__(self, features: Sequence[Feature]) -> None:
        self._checked = tuple(f for f in features
                              if f.kind is not Kind.STRING and (f.valid_min is not None or f.valid_max is not None))

    def process(self, row: dict[str, Any]) -> Iterator[Any]:
        problems = [(feature, problem) for feature in self._checked
                    if row.get(feature.name) is not None
                    and (problem := _range_problem(feature, row[feature.name])) is not None]
        if not problems:
            yield row
            return
        fatal = [(f, p) for f, p in problems if f.on_invalid is OnInvalid.REJECT]
        # Nulling a required feature would leave a row the missing-value policy refuses.
        fatal += [(f, f"{p}, and {f.name} is required so it cannot be nulled")
                  for f, p in problems if f.on_invalid is OnInvalid.NULL and f.required]
        if fatal:
            Metrics.counter("clean", f"rejected_{REASON_OUT_OF_RANGE}").inc()
            yield beam.pvalue.TaggedOutput(_REJECTED, rejection(
                REASON_OUT_OF_RANGE, fatal[0][0].name, "; ".join(p for _, p in fatal), row))
            return
        cleaned = dict(row)
        for feature, _ in problems:
            if feature.on_invalid is OnInvalid.CLIP:
                cleaned[feature.name] = _clipped(feature, row[feature.name])
                adjustment = CLIPPED
            else:
                cleaned[feature.name] = None
                adjustment = NULLED
            Metrics.counter("clean", f"{adjustment}_{feature.name}").inc()
            yield beam.pvalue.TaggedOutput(_ADJUSTED, (adjustment, feature.name))
        yield cleaned


class CheckValueRanges(beam.PTransform):
    """Values outside [valid_min, valid_max]: REJECT -> `out_of_range`, CLIP -> clipped, NULL -> missing."""

    def __init__(self, features: Sequence[Feature] = EXAMPLE_FEATURES) -> None:
        super().__init__()
        self._features = tuple(features)

    def expand(self, rows: beam.PCollection) -> CleanOutput:
        tagged = rows | "ApplyRangePolicy" >> beam.ParDo(
            ValueRangeFn(self._features)).with_outputs(_REJECTED, _ADJUSTED, main="kept")
        return CleanOutput(tagged.kept, tagged[_REJECTED], tagged[_ADJUSTED])


# --- The whole cleaning of one split ---


def _decoded_or_nothing(serialized: bytes) -> Iterator[dict[str, Any]]:
    """The second read's rows, for counting copies: the first read rejects (and reports) the rest."""
    try:
        yield decode_strict(serialized)
    except _Undecodable:
        pass


class CleanSplit(beam.PTransform):
    """Serialized raw Examples -> kept rows, rejected records and value adjustments.

    `reread`: a source of the same records (e.g. a second ReadFromTFRecord of the split), from which
    DropDuplicates counts the copies, so that no stage has to hold the rows while that count is made.
    Without it (records from memory, tests) the records themselves are counted.
    """

    def __init__(self, features: Sequence[Feature] = EXAMPLE_FEATURES, reread: beam.PTransform | None = None) -> None:
        super().__init__()
        self._features = tuple(features)
        self._reread = reread

    def expand(self, records: beam.PCollection) -> CleanOutput:
        parsed = records | "ParseExamples" >> ParseExamples()
        copies = None
        if self._reread is not None:
            copies = (
                records.pipeline
                | "ReadAgain" >> self._reread
                | "DecodeAgain" >> beam.FlatMap(_decoded_or_nothing)
                | "CountContentCopies" >> CountContentCopies()
            )
        unique = parsed.kept | "DropDuplicates" >> DropDuplicates(copies)
        complete = unique.kept | "ApplyMissingValuePolicy" >> ApplyMissingValuePolicy(self._features)
        in_range = complete.kept | "CheckValueRanges" >> CheckValueRanges(self._features)
        rejected = (
            (parsed.rejected, unique.rejected, complete.rejected, in_range.rejected)
            | "GatherRejected" >> beam.Flatten()
        )
        kept = in_range.kept | "DropSourceLine" >> beam.Map(without_source_line)
        return CleanOutput(kept, rejected, in_range.adjusted)


# Facts of a run, counted by CountFactsFn: ("in"|"kept", split), ("rejected", split, reason),
# ("clipped"|"nulled", feature). Plain module functions: Beam infers type hints from signatures.
def _in_fact(record: bytes, split: str) -> tuple[str, str]:
    return ("in", split)


def _kept_fact(row: dict[str, Any], split: str) -> tuple[str, str]:
    return ("kept", split)


def _rejected_fact(record: dict[str, Any], split: str) -> tuple[str, str, str]:
    return ("rejected", split, record["reason"])


class CountFactsFn(beam.CombineFn):
    """Counts equal facts; the output, [[*fact, count], ...], is the run summary.

    One combine over all facts instead of a Count per split and outcome: each Count is a shuffle
    stage of its own, and stages, not rows, dominate the run time of a small job.
    """

    def create_accumulator(self) -> dict[tuple, int]:
        return {}

    def add_input(self, counts: dict[tuple, int], fact: tuple) -> dict[tuple, int]:
        counts[fact] = counts.get(fact, 0) + 1
        return counts

    def merge_accumulators(self, accumulators: Iterable[dict[tuple, int]]) -> dict[tuple, int]:
        merged: dict[tuple, int] = {}
        for counts in accumulators:
            for fact, count in counts.items():
                merged[fact] = merged.get(fact, 0) + count
        return merged

    def extract_output(self, counts: dict[tuple, int]) -> list[list[Any]]:
        return sorted([*fact, count] for fact, count in counts.items())


@dataclasses.dataclass(frozen=True)
class CleanPlan:
    examples_dir: str
    output_dir: str  # where the pipeline writes (a staging folder when run through clean_examples)
    splits: tuple[str, ...]


def _read_split(examples_dir: str, split: str) -> beam.PTransform:
    return beam.io.ReadFromTFRecord(split_pattern(examples_dir, split), compression_type=CompressionTypes.GZIP)


def build(pipeline: beam.Pipeline, plan: CleanPlan, features: Sequence[Feature] = EXAMPLE_FEATURES) -> None:
    """Per split: ReadSplit -> CleanSplit (the four steps) -> WriteCleaned / WriteRejected; plus SUMMARY_FILE."""
    output = Path(plan.output_dir)
    facts = []
    for split in plan.splits:
        records = pipeline | f"ReadSplit[{split}]" >> _read_split(plan.examples_dir, split)
        cleaned = records | f"CleanSplit[{split}]" >> CleanSplit(features, reread=_read_split(plan.examples_dir, split))
        _ = cleaned.kept | f"WriteCleaned[{split}]" >> outputs.WriteExamples(split_prefix(output / CLEANED_DIR, split))
        _ = cleaned.rejected | f"WriteRejected[{split}]" >> outputs.WriteJsonLines(
            str(split_dir(output / REJECTED_DIR, split) / "rejected"))
        facts += [
            records | f"InFact[{split}]" >> beam.Map(_in_fact, split),
            cleaned.kept | f"KeptFact[{split}]" >> beam.Map(_kept_fact, split),
            cleaned.rejected | f"RejectedFact[{split}]" >> beam.Map(_rejected_fact, split),
            cleaned.adjusted,
        ]
    _ = (
        facts
        | "GatherFacts" >> beam.Flatten()
        | "Summarize" >> beam.CombineGlobally(CountFactsFn())
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
