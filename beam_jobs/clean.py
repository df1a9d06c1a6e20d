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
transforms/features.py; beam_jobs/clean_rules.py applies them to one row. Every row read ends up kept or rejected; the job checks that at the end.

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
`rejected/Split-<split>/rejected-{once,copies}-*.jsonl` and `clean_result.json`; the digests the
count of copies spills (`digests/`) stay in the staging folder, removed with it.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

import apache_beam as beam
import tensorflow as tf
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.window import GlobalWindows

from beam_jobs import clean_batches, dedupe, outputs
from beam_jobs.clean_rules import (  # noqa: F401 - the reason codes: this job's output, as callers know them
    CLIPPED,
    DECODE_PLAN,
    KNOWN_NAMES,
    NULLED,
    REASON_DUPLICATE,
    REASON_MISSING_REQUIRED,
    REASON_OUT_OF_RANGE,
    REASON_UNPARSEABLE,
    REJECTED,
    REJECTION_REASONS,
    Undecodable,
    apply_range_policy,
    decode_with_example,
    missing_required,
    ranged_features,
    rejection,
    unparseable,
)
from beam_jobs.example_codec import SPLITS, TFRECORD_SUFFIX, split_dir, split_pattern, split_prefix
from beam_jobs.options import add_job_argument, require_flags, run_program
from beam_jobs.progress import JobProgress, watched
from beam_jobs.source_lines import SourceFiles, read_source_files
from beam_jobs.tfrecord_batches import ReadRecordBatches, TFRecordBatchSink
from core.atomic import write_json
from core.errors import DataError
from transforms.features import EXAMPLE_COLUMNS, EXAMPLE_FEATURES, Feature

_LOG = logging.getLogger(__name__)

CLEANED_DIR = "cleaned"
REJECTED_DIR = "rejected"
RESULT_FILE = "clean_result.json"
SUMMARY_FILE = "summary.json"
DIGESTS_DIR = "digests"  # the count of copies' spilled digests, in the staging folder only

@dataclasses.dataclass(frozen=True)
class CleanResult:
    rows_in: dict[str, int]  # per split
    rows_kept: dict[str, int]
    rows_rejected: dict[str, int]
    rejected_by_reason: dict[str, int]  # reason code -> count, all splits
    values_clipped: dict[str, int]  # per feature, in kept rows
    values_nulled: dict[str, int]


# --- The whole cleaning of one split, in flat memory ---


class _CheckAndEncodeFn(beam.DoFn):
    """ApplyMissingValuePolicy and CheckValueRanges of a decoded row, then its encoding; counts the
    run's facts per bundle and emits them at the bundle's end (FACTS): ("in"|"kept", split),
    ("rejected", split, reason), ("clipped"|"nulled", feature)."""

    FACTS = "facts"

    def __init__(self, features: Sequence[Feature], split: str, source_files: Sequence[str] = ()) -> None:
        self._required = tuple(feature for feature in features if feature.required)
        self._checked = ranged_features(features)
        self._split = split
        self._sources = SourceFiles(source_files)
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
        record.update(self._sources.place(record["line"]))
        return beam.pvalue.TaggedOutput(REJECTED, record)

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
    return clean_batches.BatchScreen({name: kind for name, _, kind, _ in DECODE_PLAN}, KNOWN_NAMES,
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

    def __init__(self, features: Sequence[Feature], split: str, source_files: Sequence[str] = ()) -> None:
        super().__init__(features, split, source_files)
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
        kept: list[bytes] = []
        kept_as_stored = 0
        for serialized, content in zip(records, self._screen.contents_kept_as_stored(records)):
            if content is not None:
                # Decodes as decode_strict would, nothing missing, nothing out of range: kept as it is
                # stored, unless its content has copies.
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
            example, row = decode_with_example(serialized)
        except Undecodable as err:
            yield self._rejected(unparseable(serialized, err))
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
        kept, copies, detail = dedupe.pick_kept_copy(list(rows), self._sources.where)
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
    return BranchOutput(tagged.kept, tagged[REJECTED], tagged[_CheckAndEncodeFn.FACTS])


class CleanSplit(beam.PTransform):
    """Serialized raw Examples -> the cleaned Examples, rejected records and counts of both branches.

    `reread`: a source of the same records (e.g. a second read of the split), from which the copies
    are counted, so that no stage has to hold the records while that count is made. Without it
    (records from memory, tests) the records themselves are counted. `batched`: the records (and
    the reread's) come as lists (tfrecord_batches.ReadRecordBatches), else one record an element.
    `digests_dir`: where the count of copies spills its digests (dedupe.CountContentCopies).
    `source_files`: the names of the CSV files the rows came from, when several (source_lines).
    """

    def __init__(self, features: Sequence[Feature] = EXAMPLE_FEATURES, reread: beam.PTransform | None = None,
                 split: str = "", batched: bool = False, digests_dir: str | None = None,
                 source_files: Sequence[str] = ()) -> None:
        super().__init__()
        self._features = tuple(features)
        self._source_files = tuple(source_files)
        self._reread = reread
        self._split = split
        self._batched = batched
        self._digests_dir = digests_dir

    def expand(self, records: beam.PCollection) -> CleanOutput:
        counted = records if self._reread is None else records.pipeline | "ReadAgain" >> self._reread
        if not self._batched:
            records = records | "OneRecordBatches" >> beam.Map(clean_batches.one_record_batch)
            counted = counted | "OneRecordBatchesCounted" >> beam.Map(clean_batches.one_record_batch)
        copies = counted | "CountContentCopies" >> dedupe.CountContentCopies(
            self._digests_dir, batch_screen(self._features).decoded_kinds)
        once = records | "CleanRecords" >> beam.ParDo(
            CleanRecordFn(self._features, self._split, self._source_files),
            beam.pvalue.AsSingleton(copies)).with_outputs(
            REJECTED, CleanRecordFn.WITH_COPIES, CleanRecordFn.FACTS, main="kept")
        kept_copies = (
            once[CleanRecordFn.WITH_COPIES]
            | "GroupByContent" >> beam.GroupByKey()
            | "KeepOneCopy" >> beam.ParDo(KeepOneCopyFn(self._features, self._split, self._source_files)).with_outputs(
                REJECTED, KeepOneCopyFn.FACTS, main="kept")
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
    progress: str | None = None  # a progress.JobProgress folder: each split is read twice
    source_files: tuple[str, ...] = ()  # the CSV files the examples came from, when several


def _read_split(examples_dir: str, split: str, progress: str | None) -> beam.PTransform:
    return ReadRecordBatches(tf.io.gfile.glob(split_pattern(examples_dir, split)), progress=progress)


def build(pipeline: beam.Pipeline, plan: CleanPlan, features: Sequence[Feature] = EXAMPLE_FEATURES) -> None:
    """Per split: ReadSplit -> CleanSplit -> per branch WriteCleaned / WriteRejected; plus SUMMARY_FILE."""
    output = Path(plan.output_dir)
    facts = []
    for split in plan.splits:
        records = pipeline | f"ReadSplit[{split}]" >> _read_split(plan.examples_dir, split, plan.progress)
        cleaned = records | f"CleanSplit[{split}]" >> CleanSplit(
            features, reread=_read_split(plan.examples_dir, split, plan.progress), split=split, batched=True,
            digests_dir=str(split_dir(output / DIGESTS_DIR, split)), source_files=plan.source_files)
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
    progress: JobProgress | None = None,
) -> CleanResult:
    """Cleans each split of examples_dir into output_dir; see the module docstring for the rules.
    `progress` (beam_jobs/progress.py) prints how far it has read while it runs.

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
        # Each split is read twice: once to count copies, once to clean.
        with watched(progress, passes=2) as counted_in, beam.Pipeline(options=PipelineOptions(list(beam_args))) as pipeline:
            build(pipeline, CleanPlan(str(examples_dir), str(staging), splits, counted_in,
                                      read_source_files(examples_dir)))
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
