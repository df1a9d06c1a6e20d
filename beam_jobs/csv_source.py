"""Reading a CSV of taxi trips in parallel, each line with its number: shared by ingest and batch prediction.

Why not ReadFromText: a rejected row must carry its line number so a user can open the file at that
line, and ReadFromText does not give line numbers. Before the pipeline starts, `scan_csv` makes one
sequential pass over the file: it checks the header and cuts the file into byte ranges that start
on line boundaries, each with the number of its first line. `ReadCsvLines` `Create`s those ranges,
reshuffles them across workers, and each worker seeks to its range through Beam's FileSystems and
numbers the lines itself. That stays correct on any runner and parallel for large files; the
driver holds only the offsets, never the data. The price is that the input must not change while
the job runs (checked: a range that reads short fails the run) and that a quoted CSV field spanning
lines is not supported (such a row is rejected as `wrong_field_count`, never merged). Blank lines
are skipped and not counted as rows; line numbers count them, as an editor does. When the input is
several files (ingest reads a folder), each is scanned by itself, and its ranges and their line
numbers carry its index (beam_jobs/source_lines.py).

A CSV compressed with gzip, bzip2 or xz (named .gz, .bz2, .xz or .lzma, as Beam's ReadFromText
detects them) is read through the standard library's decompressor over the same FileSystems
handle: it cannot be cut into byte ranges (a worker would have to decompress everything before its
range), so it is one range, read by one worker a piece at a time, in the same flat memory. A
compressed file cut short is refused by the scan, never read as a shorter file.

`split_csv_line` and `parse_cells` turn one line into typed values the same way for both jobs, and
name the reason (the "reason" field of rejected-*.jsonl) when they cannot.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
from pathlib import Path
from typing import IO, Any, Iterator, Mapping, NamedTuple, Sequence

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from beam_jobs.progress import ReadCounter
from beam_jobs.source_lines import SourceFiles, source_line
from core.compressed import DAMAGED, compression_of, decompressing, refusing_damage
from core.errors import DataError
from core.input_files import csv_files
from transforms.features import FEATURES_BY_NAME, Feature, parse_value

_LOG = logging.getLogger(__name__)

# Python's csv module refuses a field over 128 KiB; a line is already in memory when it is split, so a
# long field (a free-text column) costs nothing more and is read rather than rejected.
csv.field_size_limit(64 * 1024 * 1024)

# Byte ranges handed to workers: small enough to spread the shipped 1.9 MB file over two workers.
DEFAULT_CHUNK_BYTES = 256 * 1024

# Rejection reasons of a line that is not a CSV row of the header's shape ...
REASON_WRONG_FIELD_COUNT = "wrong_field_count"
REASON_MALFORMED_CSV = "malformed_csv"
ROW_LEVEL_REASONS = (REASON_WRONG_FIELD_COUNT, REASON_MALFORMED_CSV)
# ... and of a row with a cell that is not of its feature's kind.
REASON_UNPARSEABLE_VALUE = "unparseable_value"


class CsvChunk(NamedTuple):
    """A byte range of the CSV that starts at a line start and ends after a newline (or at EOF)."""

    start: int
    end: int
    first_line: int  # the range's first line: 1-based (the header is line 1), with its file (source_lines)
    file: int = 0  # the index of its file in the input's files


@dataclasses.dataclass(frozen=True)
class CsvLayout:
    """A checked CSV: its header and line-aligned byte ranges that Beam workers read in parallel."""

    csv_path: str
    columns: tuple[str, ...]  # the header, in file order
    chunks: tuple[CsvChunk, ...]
    data_rows: int  # non-blank lines after the header


@dataclasses.dataclass(frozen=True)
class CsvInput:
    """A checked input: the CSV, or the CSV files of a folder in name order, each with its header
    and byte ranges (whose `file` index is its place here)."""

    csv_path: str  # what was named: the CSV, or the folder of CSVs
    files: tuple[CsvLayout, ...]

    @property
    def data_rows(self) -> int:
        return sum(layout.data_rows for layout in self.files)

    @property
    def chunks(self) -> tuple[CsvChunk, ...]:
        return tuple(chunk for layout in self.files for chunk in layout.chunks)

    @property
    def sources(self) -> SourceFiles:
        return SourceFiles.of_paths([layout.csv_path for layout in self.files])


def scan_csv_input(csv_path: Path | str, required_columns: Sequence[str], *, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                   needed_for: str = "that ingest requires") -> CsvInput:
    """scan_csv of the file `csv_path` names, or of each CSV file in the folder it names
    (core/input_files.py); DataError for the first that fails, naming it.

    Among several files, one without data rows (a day without trips, an empty partition of an
    export: empty, or a header alone) is left out with a warning; the input needs a row somewhere."""
    files = csv_files(csv_path)
    several = len(files) > 1
    source = CsvInput(str(csv_path), tuple(
        scan_csv(path, required_columns, chunk_bytes=chunk_bytes, needed_for=needed_for, file_index=index,
                 rows_needed=not several)
        for index, path in enumerate(files)))
    if source.data_rows == 0:
        raise DataError(f"{csv_path}: none of its {len(files)} CSV files has a data row")
    return source


def scan_csv(csv_path: Path | str, required_columns: Sequence[str], *, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
             needed_for: str = "that ingest requires", file_index: int = 0, rows_needed: bool = True) -> CsvLayout:
    """Checks the header (UTF-8, no duplicates, `required_columns` present) and cuts the file into
    line-aligned byte ranges of about `chunk_bytes`, counting data rows on the way. `file_index`:
    the file's place among the input's files, which its ranges and their line numbers carry.

    Raises DataError for a missing or empty file, a bad header or a header without data rows, so a
    bad file fails in a second instead of after a pipeline start-up. `needed_for` ends the missing
    columns message ("... column(s) the model needs: ..."). Without `rows_needed` (one file of
    several), an empty file or a header alone is a file of no rows, with a warning.
    """
    path = str(csv_path)
    if not FileSystems.exists(path):
        raise DataError(f"{path}: file not found (expected a CSV with the columns {', '.join(required_columns)})")
    chunks: list[CsvChunk] = []
    if compression_of(path):
        chunk_bytes = 0  # one range: see the module docstring
    with refusing_damage(path), open_csv(path) as handle:
        header_bytes = handle.readline()
        if not rows_needed and not header_bytes.strip():
            _LOG.warning("%s: an empty file, read as no rows", path)
            return CsvLayout(path, (), (), 0)
        columns = _parse_header(path, header_bytes, required_columns, needed_for)
        offset = chunk_start = len(header_bytes)
        line_no, chunk_first_line, data_rows = 1, 2, 0
        for raw in handle:
            line_no += 1
            offset += len(raw)
            if raw.strip():
                data_rows += 1
            if chunk_bytes and offset - chunk_start >= chunk_bytes:
                chunks.append(CsvChunk(chunk_start, offset, source_line(file_index, chunk_first_line), file_index))
                chunk_start, chunk_first_line = offset, line_no + 1
    if offset > chunk_start:
        chunks.append(CsvChunk(chunk_start, offset, source_line(file_index, chunk_first_line), file_index))
    if data_rows == 0:
        if rows_needed:
            raise DataError(f"{path}: has a header but no data rows")
        _LOG.warning("%s: a header without data rows", path)
    return CsvLayout(path, columns, tuple(chunks), data_rows)


@contextlib.contextmanager
def open_csv(path: str) -> Iterator[IO[bytes]]:
    """The CSV's bytes, decompressed when its name says so, through Beam's FileSystems (so on any
    filesystem Beam knows)."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
        handle = decompressing(raw, path)
        if handle is raw:
            yield raw
        else:
            with handle:
                yield handle


def _header_hint(columns: Sequence[str], missing: Sequence[str]) -> str:
    """Why the columns may be missing when the usual causes are plain to see, else ""."""
    if len(columns) == 1:
        separators = [name for sign, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "bars")) if sign in columns[0]]
        if separators:
            return f"; the header is one column separated by {separators[0]}: the file must be comma-separated"
    by_folded = {name.casefold(): name for name in columns}
    misnamed = [f"{by_folded[name.casefold()]!r} for {name!r}" for name in missing if name.casefold() in by_folded]
    if misnamed:
        return f"; names are case-sensitive: found {', '.join(misnamed)}"
    return ""


def _parse_header(path: str, header_bytes: bytes, required_columns: Sequence[str], needed_for: str) -> tuple[str, ...]:
    try:
        header_text = header_bytes.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: the header row is not UTF-8 text ({err})") from None
    if not header_text.strip():
        raise DataError(f"{path}: file is empty (expected a header row with {', '.join(required_columns)})")
    columns = tuple(name.strip() for name in next(csv.reader([header_text.rstrip("\r\n")])))
    duplicated = sorted({name for name in columns if columns.count(name) > 1})
    if duplicated:
        raise DataError(f"{path}: the header names these columns more than once: {', '.join(duplicated)}")
    missing = [name for name in required_columns if name not in columns]
    if missing:
        raise DataError(
            f"{path}: the header is missing {len(missing)} column(s) {needed_for}: {', '.join(missing)} "
            f"(found: {', '.join(columns)}){_header_hint(columns, missing)}"
        )
    extra = [name for name in columns if name not in FEATURES_BY_NAME]
    if extra:
        _LOG.warning("%s: ignoring column(s) not defined in transforms/features.py: %s", path, ", ".join(extra))
    return columns


# --- One line ---


class BadLine(NamedTuple):
    """Why a line is not a CSV row of the header's shape (one of ROW_LEVEL_REASONS)."""

    reason: str
    detail: str
    text: str  # the line as text (undecodable bytes replaced)


def split_csv_line(raw: bytes, width: int) -> tuple[str, list[str]] | BadLine:
    """The line's text and its `width` fields, or why it has not.

    Bytes that are not UTF-8 do not spoil the line: they stay in their field (as surrogate escapes),
    so the cell that holds them is the one rejected, by `parse_cells`, naming its column. The text
    returned is for people: undecodable bytes shown as U+FFFD.
    """
    text = raw.decode("utf-8", errors="surrogateescape")
    shown = displayable(text)
    try:
        fields = next(csv.reader([text]))
    except csv.Error as err:
        return BadLine(REASON_MALFORMED_CSV, f"not a CSV row: {err}", shown)
    if len(fields) != width:
        return BadLine(REASON_WRONG_FIELD_COUNT, f"expected {width} fields as in the header, got {len(fields)}", shown)
    return shown, fields


def displayable(text: str) -> str:
    """The text with undecodable bytes (surrogate escapes) as U+FFFD, safe to write as UTF-8."""
    if text.isascii():
        return text
    return text.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")


def displayable_cells(cells: Mapping[str, str] | None) -> dict[str, str] | None:
    return None if cells is None else {name: displayable(cell) for name, cell in cells.items()}


def parse_cells(features: Sequence[Feature], cells: Mapping[str, str]) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
    """The typed values of `features`, and (column, cell as shown, what was expected) for every cell
    that does not parse, does not fit its feature's type or is not UTF-8."""
    row: dict[str, Any] = {}
    bad: list[tuple[str, str, str]] = []
    for feature in features:
        cell = cells[feature.name]
        try:
            row[feature.name] = parse_value(feature, cell)
        except ValueError as err:
            bad.append((feature.name, displayable(cell), str(err)))
    return row, bad


# --- Pipeline parts ---


def read_chunk_pieces(csv_path: str, chunk: CsvChunk, piece_bytes: int = DEFAULT_CHUNK_BYTES
                      ) -> Iterator[list[tuple[int, bytes]]]:
    """(line number, raw bytes without the line end) of every non-blank line of one byte range, in
    lists of about `piece_bytes` of whole lines: a range of a plain CSV is one piece, the one range
    of a compressed CSV is streamed in many."""
    remaining, first, carry = chunk.end - chunk.start, chunk.first_line, b""
    if not compression_of(csv_path):
        piece_bytes = remaining  # scan_csv cut it to about chunk_bytes already
    try:
        with open_csv(csv_path) as handle:
            handle.seek(chunk.start)
            while remaining > 0:
                data = handle.read(min(piece_bytes, remaining))
                if not data:
                    break
                remaining -= len(data)
                data = carry + data
                cut = data.rfind(b"\n") + 1 if remaining > 0 else len(data)
                data, carry = data[:cut], data[cut:]
                if not data:
                    continue  # a line longer than a piece: read on
                pieces = data.split(b"\n")
                if pieces[-1] == b"":
                    pieces.pop()  # the piece ends with a newline, not with another line
                yield [(first + index, raw.rstrip(b"\r")) for index, raw in enumerate(pieces) if raw.strip()]
                first += len(pieces)
    except DAMAGED as err:
        if not compression_of(csv_path):
            raise
        raise RuntimeError(f"{csv_path} changed while being read ({err})") from err
    if remaining > 0:
        raise RuntimeError(f"{csv_path} changed while being read (bytes {chunk.end - remaining}..{chunk.end} are gone)")


class ReadChunkLinesFn(beam.DoFn):
    """Reads one byte range (of the file its `file` index names among `csv_paths`) and yields (line
    number, raw bytes) for each non-blank line; counted in the `progress` folder
    (beam_jobs/progress.py) when one is given."""

    FACTS = "facts"

    def __init__(self, csv_paths: Sequence[str], progress: str | None = None) -> None:
        self._csv_paths = tuple(csv_paths)
        self._progress = progress
        self._lines = Metrics.counter("ingest", "lines_read")

    def setup(self) -> None:
        self._read = ReadCounter(self._progress)

    def finish_bundle(self) -> None:
        self._read.flush()

    def process(self, chunk: CsvChunk) -> Iterator[Any]:
        read = 0
        for lines in read_chunk_pieces(self._csv_paths[chunk.file], chunk):
            yield from lines
            read += len(lines)
            self._read.add(len(lines))
        self._lines.inc(read)
        # Counted here, independently of parsing, so the summary can prove no line was dropped.
        yield beam.pvalue.TaggedOutput(self.FACTS, ("read", read))


class SpreadCsvChunks(beam.PTransform):
    """The byte ranges of a CSV, spread across workers (each worker then reads its own ranges)."""

    def __init__(self, chunks: Sequence[CsvChunk]) -> None:
        super().__init__()
        self._chunks = list(chunks)

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return pbegin | "ListByteRanges" >> beam.Create(self._chunks) | "SpreadByteRanges" >> beam.Reshuffle()


class ReadCsvLines(beam.PTransform):
    """The CSVs' data lines with their source line numbers (source_lines: the 1-based line, with
    its file's index when there are several), read in parallel by byte range (`progress`: a
    progress.JobProgress folder, where the lines read are counted)."""

    def __init__(self, csv_paths: Sequence[str], chunks: Sequence[CsvChunk], progress: str | None = None) -> None:
        super().__init__()
        self._csv_paths = tuple(csv_paths)
        self._chunks = list(chunks)
        self._progress = progress

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.pvalue.DoOutputsTuple:
        """Main output: (line number, raw bytes); output 'facts': ("read", lines) per byte range."""
        return (
            pbegin
            | "Spread" >> SpreadCsvChunks(self._chunks)
            | "ReadByteRanges" >> beam.ParDo(ReadChunkLinesFn(self._csv_paths, self._progress)).with_outputs(
                ReadChunkLinesFn.FACTS, main="lines")
        )
