"""Ingest: a taxi CSV -> gzip TFRecords of tf.Example, a time window, a deterministic train/eval split.

    python -m beam_jobs.ingest --input data/taxi/data.csv --output /tmp/ingest \
        --start 2013-01-01 --end 2015-01-01 --runner=DirectRunner \
        --direct_num_workers=2 --direct_running_mode=multi_processing

Writes `examples/Split-<split>/data-*.tfrecord.gz`, `rejected/rejected-*.jsonl` (one JSON object per
rejected line, with its 1-based line number and raw text) and `ingest_result.json`.

`--input` may name a folder: its CSV files are read as one input, in name order, each with its own
header (core/input_files.py); a rejected line then names its file too, and an example's source
line carries its file (beam_jobs/source_lines.py).

The file is read in parallel by byte range (beam_jobs/csv_source.py, also used by batch
prediction), lines numbered; each range is one element: its lines are parsed, windowed, split by a
hash of the row and encoded in one call (IngestChunkFn), because per row a Beam element costs more
than the work. The plain lines (most of them) are read as Arrow columns all at once
(beam_jobs/csv_columns.py); the others one by one by the shared rules (csv_source.split_csv_line,
parse_cells), which decide what the columns would. This module then writes the splits and checks
the outcome.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import logging
import sys
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from beam_jobs import csv_source, outputs
from beam_jobs.csv_columns import PlainLines, PlainRowEncoder
from beam_jobs.tfrecord_batches import TFRecordBatchSink
from beam_jobs.example_codec import SOURCE_LINE_KEY, SPLITS, RowEncoder, canonical_row, split_prefix
from beam_jobs.options import add_job_argument, iso_date, require_flags, run_program, utc_midnight
from beam_jobs.progress import JobProgress, ReadCounter, watched
from beam_jobs.source_lines import SourceFiles, write_source_files
from core.atomic import write_json
from core.errors import DataError
from transforms.features import (EXPECTED_BY_KIND, FEATURES_BY_NAME, FLOAT32_MAX, RAW_COLUMNS, RAW_FEATURES, TIMESTAMP_KEY, Kind,
                                 parse_value)

_LOG = logging.getLogger(__name__)

EXAMPLES_DIR = "examples"
REJECTED_DIR = "rejected"
RESULT_FILE = "ingest_result.json"
SUMMARY_FILE = "summary.json"
# How many bad values an error message quotes per column.
_EXAMPLES_PER_COLUMN = 3
# Rejection reason of a row without a timestamp (the others are in beam_jobs/csv_source.py).
REASON_MISSING_TIMESTAMP = "missing_timestamp"
INGEST_REJECTION_REASONS = (*csv_source.ROW_LEVEL_REASONS, csv_source.REASON_UNPARSEABLE_VALUE, REASON_MISSING_TIMESTAMP)


@dataclasses.dataclass(frozen=True)
class IngestResult:
    rows_read: int  # data rows in the CSV (header and blank lines excluded)
    rows_in_window: int  # parsed rows whose trip_start_timestamp is in [start, end)
    rows_outside_window: int
    rows_unparseable: int  # rejected rows: a value not of its declared kind, no timestamp, broken line
    split_counts: dict[str, int]  # {"train": n, "eval": m}, sums to rows_in_window
    unparseable_by_column: dict[str, int]
    rejected_by_reason: dict[str, int] = dataclasses.field(default_factory=dict)
    files: list[str] = dataclasses.field(default_factory=list)  # the names of the files read, in order


@dataclasses.dataclass(frozen=True)
class IngestPlan:
    """Everything the pipeline needs, checked before Beam starts."""

    input: csv_source.CsvInput  # each file's path, header and byte ranges, in reading order
    start_seconds: float
    end_seconds: float
    hash_buckets: int
    eval_buckets: int
    output_dir: str  # where the pipeline writes (a staging folder when run through ingest_csv)
    piece_bytes: int = csv_source.DEFAULT_CHUNK_BYTES  # how much of a range a worker holds at once
    progress: str | None = None  # a progress.JobProgress folder, where the lines read are counted


# --- Checking the file before the pipeline ---


def plan_ingest(
    csv_path: Path,
    output_dir: Path,
    *,
    start: datetime.datetime,
    end: datetime.datetime,
    hash_buckets: int = 3,
    eval_buckets: int = 1,
    chunk_bytes: int = csv_source.DEFAULT_CHUNK_BYTES,
) -> IngestPlan:
    """Checks arguments and the CSV headers, and cuts the files (the one `csv_path` names, or those
    in the folder it names) into line-aligned byte ranges.

    Raises DataError for a missing or empty file, a header without data rows, or missing columns,
    so a bad file fails in a second instead of after a pipeline start-up.
    """
    _check_window(start, end)
    if not 0 < eval_buckets < hash_buckets:
        raise ValueError(f"eval_buckets must be in 1..hash_buckets-1, got {eval_buckets} of {hash_buckets}")
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    return IngestPlan(
        input=csv_source.scan_csv_input(csv_path, RAW_COLUMNS, chunk_bytes=chunk_bytes),
        start_seconds=start.timestamp(),
        end_seconds=end.timestamp(),
        hash_buckets=hash_buckets,
        eval_buckets=eval_buckets,
        output_dir=str(output_dir),
        piece_bytes=chunk_bytes,
    )


def _check_window(start: datetime.datetime, end: datetime.datetime) -> None:
    for name, value in (("start", start), ("end", end)):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{name} must be timezone-aware (UTC), got naive {value.isoformat()}")
    if not start < end:
        raise ValueError(f"the window is empty: start {start.isoformat()} is not before end {end.isoformat()}")


# --- Pipeline parts ---


class Rejection(NamedTuple):
    """A line ingest cannot use: the record written to rejected/, and its bad cells for the summary."""

    record: dict[str, Any]  # line, reason, feature, detail, text, row (see the module docstring)
    bad_cells: tuple[tuple[str, str], ...]  # (column, cell as shown) of every value that did not parse


# A line with any of these needs Python's csv module: a quote, or what csv treats as a line end or refuses.
_NEEDS_CSV_MODULE = ('"', "\r", "\x00")
# Digits of an int that certainly fits an int64 (19 nines do not).
_SAFE_INT_DIGITS = 18


class CsvLineParser:
    """One CSV line -> its values in RAW_COLUMNS order, or a Rejection saying why not.

    Every line goes through a fast path first: a plain split on commas when the line has no
    quote, and per cell the common forms (digits, an ASCII decimal, ASCII text). Whatever that
    path is not sure of (a quoted line, "12.0" as an int, a cell that fails, a missing timestamp) is
    decided by the reference rules: csv_source.split_csv_line and parse_cells / parse_value. The
    fast path only ever returns what the reference would, so outcomes and messages are theirs.
    """

    def __init__(self, columns: Sequence[str]) -> None:
        self._columns = tuple(columns)
        self._index = {name: self._columns.index(name) for name in RAW_COLUMNS}
        self._cells = tuple((self._index[feature.name], feature.kind, feature) for feature in RAW_FEATURES)
        self._timestamp_at = RAW_COLUMNS.index(TIMESTAMP_KEY)

    def parse(self, line_no: int, raw: bytes) -> list[Any] | Rejection:
        text = raw.decode("utf-8", errors="surrogateescape")
        if any(mark in text for mark in _NEEDS_CSV_MODULE):
            return self._parse_reference(line_no, raw)
        fields = text.split(",")
        if len(fields) != len(self._columns):
            return self._parse_reference(line_no, raw)
        if text.isascii() and "_" not in text:
            values = self._parse_plain(fields)
        else:
            values = self._parse_cells(fields)
        if values is None or values[self._timestamp_at] is None:
            return self._parse_reference(line_no, raw)
        return values

    def _parse_plain(self, fields: list[str]) -> list[Any] | None:
        """The values of an ASCII line without "_", or None when a cell needs the reference rules.

        Here parse_value's own checks (ASCII, no "_") hold for every cell, and float() and int()
        ignore surrounding whitespace as parse_value's strip() does, so a number needs no strip.
        """
        values: list[Any] = []
        append = values.append
        for at, kind, _ in self._cells:
            cell = fields[at]
            if not cell:
                append(None)
            elif kind is Kind.STRING:
                append(cell.strip() or None)
            elif kind is Kind.INT:
                if len(cell) > _SAFE_INT_DIGITS:
                    return self._parse_cells(fields)
                try:
                    append(int(cell))
                except ValueError:  # "12.0", or a blank cell: parse_value's rules
                    return self._parse_cells(fields)
            else:
                try:
                    number = float(cell)
                except ValueError:
                    return self._parse_cells(fields)
                if not -FLOAT32_MAX <= number <= FLOAT32_MAX:  # also a NaN
                    return None
                append(number)
        return values

    def _parse_cells(self, fields: list[str]) -> list[Any] | None:
        """The values cell by cell by the fast forms or parse_value, or None when a cell does not parse."""
        values: list[Any] = []
        append = values.append
        for at, kind, feature in self._cells:
            cell = fields[at].strip()
            if not cell:
                append(None)
            elif kind is Kind.FLOAT and cell.isascii() and "_" not in cell and (number := _float32(cell)) is not None:
                append(number)
            elif kind is Kind.INT and cell.isdigit() and cell.isascii() and len(cell) <= _SAFE_INT_DIGITS:
                append(int(cell))
            elif kind is Kind.STRING and cell.isascii():
                append(cell)
            else:
                try:
                    append(parse_value(feature, cell))
                except ValueError:
                    return None
        return values

    def _parse_reference(self, line_no: int, raw: bytes) -> list[Any] | Rejection:
        """The rules as written in csv_source and transforms/features.py, one cell at a time."""
        line = csv_source.split_csv_line(raw, len(self._columns))
        if isinstance(line, csv_source.BadLine):
            return _rejection(line_no, line.reason, None, line.detail, line.text, None, ())
        text, fields = line
        cells = {name: fields[self._index[name]] for name in RAW_COLUMNS}
        row, bad = csv_source.parse_cells(RAW_FEATURES, cells)
        timestamp_unparsed = any(column == TIMESTAMP_KEY for column, _, _ in bad)
        if not timestamp_unparsed and row.get(TIMESTAMP_KEY) is None:
            bad.append((TIMESTAMP_KEY, cells[TIMESTAMP_KEY], "missing; it selects the time window"))
        if bad:
            only_timestamp_missing = len(bad) == 1 and bad[0][0] == TIMESTAMP_KEY and not timestamp_unparsed
            reason = REASON_MISSING_TIMESTAMP if only_timestamp_missing else csv_source.REASON_UNPARSEABLE_VALUE
            detail = "; ".join(f"{column}={cell!r}: {expected}" for column, cell, expected in bad)
            return _rejection(line_no, reason, bad[0][0], detail, text, cells,
                              tuple((column, cell) for column, cell, _ in bad))
        return [row[name] for name in RAW_COLUMNS]


def _float32(cell: str) -> float | None:
    """float(cell) when it is a finite number that fits a float32 (what parse_value accepts), else None."""
    try:
        number = float(cell)
    except ValueError:
        return None
    return number if -FLOAT32_MAX <= number <= FLOAT32_MAX else None  # a NaN fails both comparisons


def _rejection(line_no: int, reason: str, feature: str | None, detail: str, text: str,
               cells: dict[str, str] | None, bad_cells: tuple[tuple[str, str], ...]) -> Rejection:
    record = {"line": line_no, "reason": reason, "feature": feature, "detail": detail, "text": text,
              "row": csv_source.displayable_cells(cells)}
    return Rejection(record, bad_cells)


def split_of(canonical_text: str, hash_buckets: int, eval_buckets: int) -> str:
    """The split of a row, from a stable hash of its canonical_row text, so identical rows share a split.

    md5 rather than Python's hash(): the latter is salted per process, so workers would disagree.
    """
    digest = hashlib.md5(canonical_text.encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "big") % hash_buckets
    return "eval" if bucket >= hash_buckets - eval_buckets else "train"


def split_index(row: dict[str, Any], num_splits: int, hash_buckets: int, eval_buckets: int) -> int:
    """Index into SPLITS of a row (a beam.Partition function): split_of its canonical_row."""
    return SPLITS.index(split_of(canonical_row(row), hash_buckets, eval_buckets))


class IngestChunkFn(beam.DoFn):
    """One byte range of the CSV -> a list of serialized Examples per split (tagged by split),
    rejected records (tag 'rejected') and one summary of the range (tag 'summary', a
    SummarizeIngestFn accumulator).

    A whole range per call, not a line per element: moving an element through Beam costs more
    than parsing the row it carries, so each line is parsed, windowed, split and encoded here, and
    the summary's counts are folded in as they happen and leave once per piece of the range (the
    whole range of a plain CSV; a compressed CSV's one range streams in many), never once per row.
    """

    REJECTED = "rejected"
    SUMMARY = "summary"

    def __init__(self, files: Sequence[tuple[str, Sequence[str]]], start_seconds: float, end_seconds: float,
                 hash_buckets: int, eval_buckets: int, piece_bytes: int = csv_source.DEFAULT_CHUNK_BYTES,
                 progress: str | None = None) -> None:
        """`files`: (path, header) of each file, in the order their ranges' `file` index counts."""
        self._files = tuple((path, tuple(columns)) for path, columns in files)
        self._piece_bytes = piece_bytes
        self._progress = progress
        self._start = start_seconds
        self._end = end_seconds
        self._hash_buckets = hash_buckets
        self._eval_buckets = eval_buckets
        self._lines = Metrics.counter("ingest", "lines_read")
        self._rejected = Metrics.counter("ingest", "rows_unparseable")

    def setup(self) -> None:
        self._readers: dict[int, tuple[CsvLineParser, PlainLines]] = {}
        self._sources = SourceFiles.of_paths([path for path, _ in self._files])
        self._encoder = RowEncoder((*RAW_COLUMNS, SOURCE_LINE_KEY))
        self._plain_encoder = PlainRowEncoder(self._hash_buckets, self._eval_buckets)
        self._read = ReadCounter(self._progress)

    def process(self, chunk: csv_source.CsvChunk) -> Iterator[Any]:
        for lines in csv_source.read_chunk_pieces(self._files[chunk.file][0], chunk, self._piece_bytes):
            yield from self._piece(lines, chunk.file)
            self._read.add(len(lines))

    def finish_bundle(self) -> None:
        self._read.flush()

    def _readers_of(self, file: int) -> tuple[CsvLineParser, PlainLines]:
        """The readers of a file's lines by its header (files may order their columns differently)."""
        if file not in self._readers:
            columns = self._files[file][1]
            self._readers[file] = (CsvLineParser(columns), PlainLines(columns))
        return self._readers[file]

    def _piece(self, lines: list[tuple[int, bytes]], file: int = 0) -> Iterator[Any]:
        """The piece's plain lines in columns (csv_columns), the others one at a time by CsvLineParser;
        each split's examples in line order either way."""
        summary = new_summary()
        summary["read"] = len(lines)
        parser, plain_lines = self._readers_of(file)
        plain = plain_lines.read([raw for _, raw in lines])
        timestamps = plain.timestamps
        inside = (self._start <= timestamps) & (timestamps < self._end)
        numbers = np.fromiter((line_no for line_no, _ in lines), dtype=np.int64, count=len(lines))
        examples, splits = self._plain_encoder.encode(plain.rows(inside), numbers[plain.at[inside]])
        by_split = _InLineOrder(plain.at[inside], examples, splits)
        low = int(timestamps.min()) if len(timestamps) else None
        high = int(timestamps.max()) if len(timestamps) else None
        outside = len(timestamps) - int(inside.sum())
        parse, encode = parser.parse, self._encoder.encode
        start, end = self._start, self._end
        timestamp_at = RAW_COLUMNS.index(TIMESTAMP_KEY)
        others = np.ones(len(lines), dtype=bool)
        others[plain.at] = False
        for index in np.flatnonzero(others).tolist():
            line_no, raw = lines[index]
            values = parse(line_no, raw)
            if isinstance(values, Rejection):
                add_rejection(summary, values)  # by its source line, which orders lines across files
                values.record.update(self._sources.place(line_no))
                yield beam.pvalue.TaggedOutput(self.REJECTED, values.record)
                continue
            timestamp = values[timestamp_at]
            if low is None or timestamp < low:
                low = timestamp
            if high is None or timestamp > high:
                high = timestamp
            if not start <= timestamp < end:
                outside += 1
                continue
            values.append(line_no)
            text, example = encode(values)
            by_split.add(index, example, SPLITS.index(split_of(text, self._hash_buckets, self._eval_buckets)))
        inside_count = summary["read"] - outside - sum(summary["reasons"].values())
        summary.update(in_window=inside_count, outside_window=outside, min_ts=low, max_ts=high)
        batches = by_split.batches()
        summary["splits"] = {split: len(batch) for split, batch in batches.items() if batch}
        for split, batch in batches.items():
            if batch:
                yield beam.pvalue.TaggedOutput(split, batch)
        self._lines.inc(len(lines))
        self._rejected.inc(sum(summary["reasons"].values()))
        yield beam.pvalue.TaggedOutput(self.SUMMARY, summary)


class _InLineOrder:
    """Each split's examples of a piece, in the order of their lines: the fast path's, given at once,
    and the reference path's, added one by one."""

    def __init__(self, at: np.ndarray, examples: list[bytes], splits: np.ndarray) -> None:
        self._at, self._examples, self._splits = at, examples, splits
        self._added: list[tuple[int, bytes, int]] = []

    def add(self, index: int, example: bytes, split: int) -> None:
        self._added.append((index, example, split))

    def batches(self) -> dict[str, list[bytes]]:
        at, examples, splits = self._at, self._examples, self._splits
        if self._added:
            added_at, added, added_splits = zip(*self._added)
            at = np.concatenate((at, np.array(added_at, dtype=np.int64)))
            examples = examples + list(added)
            splits = np.concatenate((splits, np.array(added_splits, dtype=np.int64)))
            order = np.argsort(at, kind="stable")
            examples, splits = [examples[i] for i in order.tolist()], splits[order]
        return {split: [examples[i] for i in np.flatnonzero(splits == index).tolist()]
                for index, split in enumerate(SPLITS)}


def new_summary() -> dict[str, Any]:
    """An empty run summary: what SummarizeIngestFn accumulates and summary.json holds."""
    return {"read": 0, "reasons": {}, "bad_counts": {}, "bad_examples": {}, "row_examples": [],
            "in_window": 0, "outside_window": 0, "min_ts": None, "max_ts": None, "splits": {}}


def add_rejection(summary: dict[str, Any], rejection: Rejection) -> None:
    """Counts a rejected line in the summary and keeps the first lines of each kind of problem."""
    record = rejection.record
    reason, line_no = record["reason"], record["line"]
    summary["reasons"][reason] = summary["reasons"].get(reason, 0) + 1
    if reason in csv_source.ROW_LEVEL_REASONS:
        summary["row_examples"] = _first_lines(summary["row_examples"] + [[line_no, record["text"]]])
    for column, cell in rejection.bad_cells:
        summary["bad_counts"][column] = summary["bad_counts"].get(column, 0) + 1
        summary["bad_examples"][column] = _first_lines(summary["bad_examples"].get(column, []) + [[line_no, cell]])


class SummarizeIngestFn(beam.CombineFn):
    """Merges the summaries of byte ranges into the run's: counts, timestamp range, first bad values."""

    def create_accumulator(self) -> dict[str, Any]:
        return new_summary()

    def add_input(self, acc: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
        return self.merge_accumulators([acc, summary])

    def merge_accumulators(self, accumulators: Any) -> dict[str, Any]:
        merged = self.create_accumulator()
        for acc in accumulators:
            for key in ("read", "in_window", "outside_window"):
                merged[key] += acc[key]
            for key in ("reasons", "bad_counts", "splits"):
                for name, count in acc[key].items():
                    merged[key][name] = merged[key].get(name, 0) + count
            for column, examples in acc["bad_examples"].items():
                merged["bad_examples"][column] = _first_lines(merged["bad_examples"].get(column, []) + examples)
            merged["row_examples"] = _first_lines(merged["row_examples"] + acc["row_examples"])
            for key, pick in (("min_ts", min), ("max_ts", max)):
                values = [v for v in (merged[key], acc[key]) if v is not None]
                merged[key] = pick(values) if values else None
        return merged

    def extract_output(self, acc: dict[str, Any]) -> dict[str, Any]:
        return acc


def _first_lines(examples: list[list[Any]]) -> list[list[Any]]:
    """The examples with the smallest line numbers: deterministic whatever the bundle order."""
    return sorted(examples, key=lambda example: example[0])[:_EXAMPLES_PER_COLUMN]


def build(pipeline: beam.Pipeline, plan: IngestPlan) -> None:
    """Composes the ingest pipeline: SpreadByteRanges -> IngestByteRanges -> WriteSplit[*], WriteRejected, Summarize.

    Writes below plan.output_dir: examples/, rejected/ and SUMMARY_FILE (the run's counts).
    """
    output = Path(plan.output_dir)
    ingested = (
        pipeline
        | "SpreadCsv" >> csv_source.SpreadCsvChunks(plan.input.chunks)
        | "IngestByteRanges" >> beam.ParDo(IngestChunkFn(
            [(layout.csv_path, layout.columns) for layout in plan.input.files], plan.start_seconds, plan.end_seconds,
            plan.hash_buckets, plan.eval_buckets, plan.piece_bytes, plan.progress,
        )).with_outputs(*SPLITS, IngestChunkFn.REJECTED, IngestChunkFn.SUMMARY)
    )
    for split in SPLITS:
        _ = ingested[split] | f"WriteSplit[{split}]" >> beam.io.Write(
            TFRecordBatchSink(split_prefix(output / EXAMPLES_DIR, split)))
    _ = ingested[IngestChunkFn.REJECTED] | "WriteRejected" >> outputs.WriteJsonLines(
        str(output / REJECTED_DIR / "rejected"))
    _ = (
        ingested[IngestChunkFn.SUMMARY]
        | "Summarize" >> beam.CombineGlobally(SummarizeIngestFn())
        | "WriteSummary" >> beam.ParDo(outputs.WriteSummaryFn(str(output / SUMMARY_FILE)))
    )


# --- The step function ---


def ingest_csv(
    csv_path: Path,
    output_dir: Path,
    *,
    start: datetime.datetime,
    end: datetime.datetime,
    hash_buckets: int = 3,
    eval_buckets: int = 1,
    max_unparseable_fraction: float = 0.01,
    beam_args: Sequence[str] = (),
    chunk_bytes: int = csv_source.DEFAULT_CHUNK_BYTES,
    progress: JobProgress | None = None,
) -> IngestResult:
    """Runs the ingest pipeline and checks its outcome; see the module docstring for the layout.
    `progress` (beam_jobs/progress.py) prints how far it has read while it runs.

    Raises DataError (before Beam starts) for a missing/empty file or missing columns, and (after
    the run) when a column has too many unparseable values or the window holds no rows. In the
    latter case the rejected rows are still written to output_dir/rejected so they can be inspected.
    """
    if not 0.0 <= max_unparseable_fraction <= 1.0:
        raise ValueError(f"max_unparseable_fraction must be in [0, 1], got {max_unparseable_fraction}")
    output_dir = Path(output_dir)
    outputs.refuse_existing_outputs(output_dir, (EXAMPLES_DIR, REJECTED_DIR, RESULT_FILE))
    # Plan first: a bad file fails before any output folder is created.
    plan = plan_ingest(csv_path, output_dir, start=start, end=end, hash_buckets=hash_buckets,
                       eval_buckets=eval_buckets, chunk_bytes=chunk_bytes)
    staging = outputs.make_staging_dir(output_dir, "ingest")
    try:
        with watched(progress) as counted_in, beam.Pipeline(options=PipelineOptions(list(beam_args))) as pipeline:
            build(pipeline, dataclasses.replace(plan, output_dir=str(staging), progress=counted_in))
        summary = outputs.read_summary(staging / SUMMARY_FILE)
        result = _result_from_summary(summary, plan)
        _check_counts(plan, result)
        try:
            _check_outcome(plan, summary, result, max_unparseable_fraction, start, end, output_dir)
        except DataError:
            outputs.promote(staging, output_dir, (REJECTED_DIR,))  # keep the evidence
            raise
        write_source_files(staging / EXAMPLES_DIR, plan.input.sources.names)
        outputs.promote(staging, output_dir, (EXAMPLES_DIR, REJECTED_DIR))
        write_json(output_dir / RESULT_FILE, dataclasses.asdict(result))
    finally:
        outputs.discard(staging)
    _LOG.info("ingest %s: %s", plan.input.csv_path, dataclasses.asdict(result))
    return result


def _result_from_summary(summary: dict[str, Any], plan: IngestPlan) -> IngestResult:
    return IngestResult(
        rows_read=summary["read"],
        rows_in_window=summary["in_window"],
        rows_outside_window=summary["outside_window"],
        rows_unparseable=sum(summary["reasons"].values()),
        split_counts={split: summary["splits"].get(split, 0) for split in SPLITS},
        unparseable_by_column={column: summary["bad_counts"][column]
                               for column in RAW_COLUMNS if column in summary["bad_counts"]},
        rejected_by_reason=dict(sorted(summary["reasons"].items())),
        files=list(plan.input.sources.names),
    )


def _check_counts(plan: IngestPlan, result: IngestResult) -> None:
    """Every data line is accounted for exactly once; anything else is a bug, not bad data."""
    accounted = result.rows_in_window + result.rows_outside_window + result.rows_unparseable
    all_lines_seen = result.rows_read == accounted == plan.input.data_rows
    if not all_lines_seen or sum(result.split_counts.values()) != result.rows_in_window:
        raise RuntimeError(
            f"ingest lost track of rows in {plan.input.csv_path}: {plan.input.data_rows} data lines in the input, "
            f"{result.rows_read} read, {accounted} accounted for, splits {result.split_counts}"
        )


def _check_outcome(plan: IngestPlan, summary: dict[str, Any], result: IngestResult, max_fraction: float,
                   start: datetime.datetime, end: datetime.datetime, output_dir: Path) -> None:
    rejected_at = output_dir / REJECTED_DIR
    where = plan.input.sources.where
    problems: list[str] = []
    row_problems = sum(summary["reasons"].get(reason, 0) for reason in csv_source.ROW_LEVEL_REASONS)
    if row_problems / result.rows_read > max_fraction:
        examples = ", ".join(f"{where(line)}: {_clip(text)!r}" for line, text in summary["row_examples"])
        widths = sorted({len(layout.columns) for layout in plan.input.files})
        shape = f"the header's {widths[0]} fields" if len(widths) == 1 else "the fields of their file's header"
        problems.append(
            f"{row_problems} lines ({row_problems / result.rows_read:.2%} of {result.rows_read} rows) are not "
            f"CSV rows of {shape}, e.g. {examples}"
        )
    for column, count in result.unparseable_by_column.items():
        if count / result.rows_read > max_fraction:
            expected = EXPECTED_BY_KIND[FEATURES_BY_NAME[column].kind]
            examples = ", ".join(f"{where(line)}: {_clip(cell)!r}" for line, cell in summary["bad_examples"][column])
            problems.append(
                f"column {column!r} has {count} values that are not {expected} "
                f"({count / result.rows_read:.2%} of {result.rows_read} rows), e.g. {examples}"
            )
    if problems:
        raise DataError(
            f"{plan.input.csv_path}: too many unparseable values (the limit is {max_fraction:.2%} per column):\n  "
            + "\n  ".join(problems)
            + f"\nEvery rejected line, with its reason, is in {rejected_at}/"
        )
    if result.rows_in_window == 0:
        if summary["min_ts"] is None:
            seen = "no row has a parseable trip_start_timestamp"
        else:
            seen = (f"the file's {TIMESTAMP_KEY} values run from {_utc_date(summary['min_ts'])} "
                    f"to {_utc_date(summary['max_ts'])}")
        raise DataError(
            f"{plan.input.csv_path}: no rows have {TIMESTAMP_KEY} in the window "
            f"[{_instant(start)}, {_instant(end)}) UTC; {seen} ({result.rows_outside_window} rows outside the window)"
        )


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _utc_date(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc).date().isoformat()


def _instant(moment: datetime.datetime) -> str:
    utc = moment.astimezone(datetime.timezone.utc)
    return utc.date().isoformat() if utc.time() == datetime.time() else utc.isoformat(timespec="seconds")


# --- The Beam program ---


class IngestOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        add_job_argument(parser, "--input", type=str, default=None,
                         help="The CSV file to ingest, or a folder of CSV files (read in name order).")
        add_job_argument(parser, "--output", type=str, default=None, help="The output directory.")
        add_job_argument(parser, "--start", type=iso_date, default=None,
                         help="First day of the window (YYYY-MM-DD, UTC, inclusive).")
        add_job_argument(parser, "--end", type=iso_date, default=None,
                         help="Day after the window (YYYY-MM-DD, UTC, exclusive).")
        add_job_argument(parser, "--hash_buckets", type=int, default=3,
                         help="Hash buckets for the split; train:eval = (buckets - eval):eval.")
        add_job_argument(parser, "--eval_buckets", type=int, default=1, help="Buckets that go to eval.")
        add_job_argument(parser, "--max_unparseable_fraction", type=float, default=0.01,
                         help="Fail when more than this share of a column does not parse.")


def run(argv: Sequence[str] | None = None) -> IngestResult:
    """Command-line entry: app flags and runner flags in one argv, as Beam programs take them."""
    args = list(sys.argv[1:] if argv is None else argv)
    options = PipelineOptions(args).view_as(IngestOptions)
    require_flags("beam_jobs.ingest", {"--input": options.input, "--output": options.output,
                                       "--start": options.start, "--end": options.end})
    return ingest_csv(
        Path(options.input),
        Path(options.output),
        start=utc_midnight(options.start),
        end=utc_midnight(options.end),
        hash_buckets=options.hash_buckets,
        eval_buckets=options.eval_buckets,
        max_unparseable_fraction=options.max_unparseable_fraction,
        beam_args=args,
    )


def main() -> None:
    run_program(run)


if __name__ == "__main__":
    # Import by package name so DoFns pickle as beam_jobs.ingest.*, importable in worker processes.
    from beam_jobs import ingest

    ingest.main()
