"""The ingest job end to end on small CSVs, on the real DirectRunner."""

from __future__ import annotations

import bz2
import collections
import csv
import dataclasses
import datetime
import gzip
import json
import lzma
import os
import subprocess
import sys
from pathlib import Path

import pytest

from beam_jobs import csv_source, ingest
from beam_jobs.csv_source import REASON_UNPARSEABLE_VALUE, REASON_WRONG_FIELD_COUNT
from beam_jobs.example_codec import SPLITS, canonical_row
from beam_jobs.ingest import REASON_MISSING_TIMESTAMP, IngestResult, ingest_csv, split_index
from core.errors import DataError
from tests.beam_jobs._helpers import BEAM_ARGS, canonical_rows, parse_csv_row, read_jsonl, read_split_rows
from tests.conftest import write_csv
from transforms.features import FARE_KEY, RAW_COLUMNS, RAW_FEATURES, TIMESTAMP_KEY, TIPS_KEY, Kind

UTC = datetime.timezone.utc
WIDE_START = datetime.datetime(2000, 1, 1, tzinfo=UTC)
WIDE_END = datetime.datetime(2030, 1, 1, tzinfo=UTC)
OTHER_FLOAT = next(f.name for f in RAW_FEATURES if f.kind is Kind.FLOAT and f.name not in (FARE_KEY, TIPS_KEY))
OPTIONAL_STRING = next(f.name for f in RAW_FEATURES if f.kind is Kind.STRING and not f.required)


def utc(day: str) -> datetime.datetime:
    return datetime.datetime.combine(datetime.date.fromisoformat(day), datetime.time(), tzinfo=UTC)


def run_ingest(csv_path: Path, output: Path, **kwargs) -> IngestResult:
    kwargs.setdefault("start", WIDE_START)
    kwargs.setdefault("end", WIDE_END)
    return ingest_csv(csv_path, output, beam_args=BEAM_ARGS, **kwargs)


def split_contents(output: Path) -> dict[str, list[str]]:
    return {split: canonical_rows(read_split_rows(output / "examples", split)) for split in SPLITS}


def test_window_keeps_exactly_the_rows_in_it(tmp_path, taxi_rows):
    rows = taxi_rows[:400]
    start, end = utc("2014-01-01"), utc("2015-01-01")
    in_window = [r for r in rows if start.timestamp() <= int(r[TIMESTAMP_KEY]) < end.timestamp()]
    assert 0 < len(in_window) < len(rows)  # the premise: the window cuts the sample
    csv_path = write_csv(tmp_path / "trips.csv", rows)

    result = run_ingest(csv_path, tmp_path / "out", start=start, end=end)

    assert result.rows_read == len(rows)
    assert result.rows_in_window == len(in_window)
    assert result.rows_outside_window == len(rows) - len(in_window)
    assert result.rows_unparseable == 0 and result.unparseable_by_column == {}
    written = split_contents(tmp_path / "out")
    assert {split: len(contents) for split, contents in written.items()} == result.split_counts
    # Every value arrives with its declared kind: the written rows are the window's CSV rows, parsed.
    assert sorted(written["train"] + written["eval"]) == canonical_rows([parse_csv_row(r) for r in in_window])
    assert json.loads((tmp_path / "out" / "ingest_result.json").read_text()) == dataclasses.asdict(result)
    assert read_jsonl(tmp_path / "out" / "rejected", "rejected-*.jsonl") == []
    assert not list((tmp_path / "out").glob(".staging-*")), "the staging folder must be cleaned up"
    # A second run into the same folder would mix shards of two runs: refused before Beam starts.
    with pytest.raises(FileExistsError, match="examples"):
        run_ingest(csv_path, tmp_path / "out", start=start, end=end)


def test_split_is_deterministic_whatever_the_column_order(tmp_path, taxi_rows):
    repeated = taxi_rows[7]
    rows = taxi_rows[:3000] + [repeated] * 30
    first_csv = write_csv(tmp_path / "a.csv", rows)
    # Same rows, columns reversed and an extra column: the split must not change.
    shuffled_rows = [{**r, "note": f"extra {i}"} for i, r in enumerate(rows)]
    second_csv = write_csv(tmp_path / "b.csv", shuffled_rows, columns=["note"] + list(reversed(RAW_COLUMNS)))

    first = ingest.run([f"--input={first_csv}", f"--output={tmp_path / 'a'}", "--start=2000-01-01",
                        "--end=2030-01-01", "--hash_buckets=3", "--eval_buckets=1", *BEAM_ARGS])
    second = run_ingest(second_csv, tmp_path / "b", hash_buckets=3, eval_buckets=1)

    assert (first.files, second.files) == (["a.csv"], ["b.csv"])
    assert first == dataclasses.replace(second, files=first.files)
    first_splits, second_splits = split_contents(tmp_path / "a"), split_contents(tmp_path / "b")
    assert first_splits == second_splits
    train_share = first.split_counts["train"] / first.rows_in_window
    assert 0.62 < train_share < 0.71, f"train:eval should be about 2:1, got {first.split_counts}"
    # All 31 copies of the repeated row share one split.
    key = canonical_row(parse_csv_row(repeated))
    copies = {split: collections.Counter(contents)[key] for split, contents in first_splits.items()}
    assert sorted(copies.values()) == [0, 31], copies


_SPLITS_IN_ANOTHER_PROCESS = """
import json, sys
from beam_jobs.ingest import split_index
from tests.beam_jobs._helpers import parse_csv_row
rows = json.load(sys.stdin)
print(json.dumps([split_index(parse_csv_row(r), 2, 3, 1) for r in rows]))
"""


def test_split_does_not_depend_on_the_process(taxi_rows):
    """Workers are separate processes: a salted hash (Python's hash()) would split differently in each."""
    rows = taxi_rows[:300]
    here = [split_index(parse_csv_row(r), 2, 3, 1) for r in rows]
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    there = subprocess.run([sys.executable, "-c", _SPLITS_IN_ANOTHER_PROCESS], input=json.dumps(rows), env=env,
                           capture_output=True, text=True, check=True, timeout=300)
    assert json.loads(there.stdout.strip().splitlines()[-1]) == here
    assert set(here) == {0, 1}


def test_bad_lines_are_rejected_with_line_number_and_reason(tmp_path, taxi_rows):
    columns = list(taxi_rows[0])
    rows = [dict(r) for r in taxi_rows[:200]]
    rows[10][FARE_KEY] = "abc"
    rows[20][TIMESTAMP_KEY] = ""
    rows[30][OTHER_FLOAT] = "1.2.3"
    rows[40][OPTIONAL_STRING] = "Foo, Bar & Sons (Chicago), Inc."  # quoted commas must parse
    lines = []
    for row in rows:
        out = []
        csv.writer(_Collect(out)).writerow([row[c] for c in columns])
        lines.append(out[0].rstrip("\r\n"))
    broken_line = ",".join(rows[50][c] for c in columns[:-2])
    # Data starts on line 2; a blank line and a short line are inserted after data row 100.
    text_lines = [",".join(columns)] + lines[:100] + ["", broken_line] + lines[100:]
    csv_path = tmp_path / "trips.csv"
    csv_path.write_text("\n".join(text_lines) + "\n")

    # Tiny byte ranges: line numbers must stay right across many chunk boundaries.
    result = run_ingest(csv_path, tmp_path / "out", chunk_bytes=700)

    rejected = read_jsonl(tmp_path / "out" / "rejected", "rejected-*.jsonl")
    assert sorted((r["line"], r["reason"], r["feature"]) for r in rejected) == [
        (12, REASON_UNPARSEABLE_VALUE, FARE_KEY),
        (22, REASON_MISSING_TIMESTAMP, TIMESTAMP_KEY),
        (32, REASON_UNPARSEABLE_VALUE, OTHER_FLOAT),
        (103, REASON_WRONG_FIELD_COUNT, None),
    ]
    for record in rejected:
        assert record["text"] == text_lines[record["line"] - 1], "the raw line is kept verbatim"
    by_line = {r["line"]: r for r in rejected}
    assert "'abc'" in by_line[12]["detail"] and by_line[12]["row"][FARE_KEY] == "abc"
    assert result.rows_read == 201  # 200 rows and the short line; the blank line is not a row
    assert result.rows_unparseable == 4
    assert result.rows_read == result.rows_in_window + result.rows_outside_window + result.rows_unparseable
    assert result.unparseable_by_column == {FARE_KEY: 1, TIMESTAMP_KEY: 1, OTHER_FLOAT: 1}
    kept = read_split_rows(tmp_path / "out" / "examples", "train") + read_split_rows(tmp_path / "out" / "examples", "eval")
    assert len(kept) == 197
    assert "Foo, Bar & Sons (Chicago), Inc." in {row[OPTIONAL_STRING] for row in kept}


@pytest.mark.parametrize("suffix, compress", [
    (".gz", lambda data: gzip.compress(data)),
    (".bz2", lambda data: bz2.compress(data)),
    (".xz", lambda data: lzma.compress(data)),
])
def test_a_compressed_csv_gives_what_the_plain_one_gives(tmp_path, taxi_rows, suffix, compress):
    """One range, streamed in pieces of `chunk_bytes` (tiny here: many pieces, lines cut between
    reads); the same examples, rejections and line numbers as the plain file cut in byte ranges."""
    rows = [dict(r) for r in taxi_rows[:300]]
    rows[7][FARE_KEY] = "abc"
    rows[150][OPTIONAL_STRING] = "x" * 2000  # a line longer than a piece
    plain = write_csv(tmp_path / "trips.csv", rows)
    packed = tmp_path / f"trips.csv{suffix}"
    packed.write_bytes(compress(plain.read_bytes()))

    from_plain = run_ingest(plain, tmp_path / "plain", chunk_bytes=700)
    from_packed = run_ingest(packed, tmp_path / "packed", chunk_bytes=700)

    assert from_packed == dataclasses.replace(from_plain, files=[f"trips.csv{suffix}"])
    assert from_packed.rows_read == 300 and from_packed.rows_unparseable == 1
    assert split_contents(tmp_path / "packed") == split_contents(tmp_path / "plain")
    rejected = read_jsonl(tmp_path / "packed" / "rejected", "rejected-*.jsonl")
    assert [(r["line"], r["feature"]) for r in rejected] == [(9, FARE_KEY)]


def test_a_compressed_csv_is_read_in_pieces_as_large_as_asked(tmp_path):
    lines = [b"h"] + [b"row-%d" % n for n in range(100)] + [b"", b"y" * 300, b"last"]
    packed = tmp_path / "lines.csv.gz"
    packed.write_bytes(gzip.compress(b"\n".join(lines)))  # no newline after the last line
    layout = csv_source.scan_csv(packed, ["h"])
    assert len(layout.chunks) == 1 and layout.data_rows == 102
    pieces = list(csv_source.read_chunk_pieces(str(packed), layout.chunks[0], piece_bytes=64))
    assert len(pieces) > 10 and all(pieces)
    numbered = [line for piece in pieces for line in piece]
    expected = [(number, text) for number, text in enumerate(lines, start=1) if number > 1 and text]
    assert numbered == expected  # every line once, numbered as an editor does (the blank line 102 counted)


def test_a_compressed_csv_cut_short_or_of_an_unread_kind_is_refused(tmp_path, taxi_rows):
    plain = write_csv(tmp_path / "trips.csv", taxi_rows[:2000])
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(gzip.compress(plain.read_bytes())[:20_000])
    with pytest.raises(DataError, match=r"cut\.csv\.gz: not a whole gzip file .*nothing was read"):
        run_ingest(cut, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    zstd = tmp_path / "trips.csv.zst"
    zstd.write_bytes(b"\x28\xb5\x2f\xfd")
    with pytest.raises(DataError, match=r"trips\.csv\.zst: a \.zst file, which cannot be read here"):
        run_ingest(zstd, tmp_path / "out")


class _Collect:
    def __init__(self, out: list[str]) -> None:
        self.out = out

    def write(self, text: str) -> None:
        self.out.append(text)


# --- Bad input: each raises DataError naming the file and the problem ---


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        run_ingest(tmp_path / "nope.csv", tmp_path / "out")


def test_empty_file(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match=r"empty\.csv: file is empty"):
        run_ingest(empty, tmp_path / "out")
    assert not (tmp_path / "out").exists(), "nothing is written for a file rejected up front"


def test_header_only(tmp_path):
    header_only = tmp_path / "header.csv"
    header_only.write_text(",".join(RAW_COLUMNS) + "\n")
    with pytest.raises(DataError, match=r"header\.csv: has a header but no data rows"):
        run_ingest(header_only, tmp_path / "out")


def test_missing_columns_are_named(tmp_path, taxi_rows):
    columns = [c for c in RAW_COLUMNS if c not in (FARE_KEY, TIPS_KEY)]
    csv_path = write_csv(tmp_path / "partial.csv", taxi_rows[:5], columns=columns)
    with pytest.raises(DataError) as caught:
        run_ingest(csv_path, tmp_path / "out")
    message = str(caught.value)
    assert "partial.csv" in message and f"{FARE_KEY}, {TIPS_KEY}" in message


@pytest.mark.parametrize("separator, named", [(";", "semicolons"), ("\t", "tabs"), ("|", "bars")])
def test_a_file_separated_by_something_else_than_commas_says_so(tmp_path, taxi_rows, separator, named):
    csv_path = tmp_path / "excel.csv"
    csv_path.write_text("\n".join(separator.join(row[c] for c in RAW_COLUMNS) for row in [dict(zip(RAW_COLUMNS, RAW_COLUMNS)),
                                                                                            *taxi_rows[:5]]) + "\n")
    with pytest.raises(DataError, match=f"one column separated by {named}: the file must be comma-separated"):
        run_ingest(csv_path, tmp_path / "out")


def test_columns_named_in_another_case_are_pointed_at(tmp_path, taxi_rows):
    renamed = {FARE_KEY: FARE_KEY.title(), TIPS_KEY: TIPS_KEY.upper()}
    rows = [{renamed.get(name, name): value for name, value in row.items()} for row in taxi_rows[:5]]
    csv_path = write_csv(tmp_path / "upper.csv", rows)
    with pytest.raises(DataError, match=f"case-sensitive: found '{FARE_KEY.title()}' for '{FARE_KEY}', "
                                        f"'{TIPS_KEY.upper()}' for '{TIPS_KEY}'"):
        run_ingest(csv_path, tmp_path / "out")


def test_a_column_of_wrong_types_fails_with_examples(tmp_path, taxi_rows):
    rows = [dict(r) for r in taxi_rows[:300]]
    for row in rows[:100]:
        row[FARE_KEY] = "twelve dollars"
    csv_path = write_csv(tmp_path / "typed.csv", rows)
    with pytest.raises(DataError) as caught:
        run_ingest(csv_path, tmp_path / "out")
    message = str(caught.value)
    assert "typed.csv" in message
    assert f"column '{FARE_KEY}' has 100 values that are not a finite number (33.33% of 300 rows)" in message
    assert "line 2: 'twelve dollars', line 3: 'twelve dollars', line 4: 'twelve dollars'" in message
    # The rejected lines stay for inspection; no examples are published from a failed run.
    assert len(read_jsonl(tmp_path / "out" / "rejected", "rejected-*.jsonl")) == 100
    assert not (tmp_path / "out" / "examples").exists()


def test_a_window_without_rows_names_the_window_and_the_data_range(tmp_path, taxi_rows):
    rows = taxi_rows[:100]
    csv_path = write_csv(tmp_path / "trips.csv", rows)
    stamps = [int(r[TIMESTAMP_KEY]) for r in rows]
    first_day = datetime.datetime.fromtimestamp(min(stamps), tz=UTC).date().isoformat()
    last_day = datetime.datetime.fromtimestamp(max(stamps), tz=UTC).date().isoformat()
    with pytest.raises(DataError) as caught:
        run_ingest(csv_path, tmp_path / "out", start=utc("2020-01-01"), end=utc("2021-01-01"))
    message = str(caught.value)
    assert "[2020-01-01, 2021-01-01)" in message
    assert f"from {first_day} to {last_day}" in message


def test_arguments_are_checked_before_reading(tmp_path):
    naive = datetime.datetime(2014, 1, 1)
    with pytest.raises(ValueError, match="timezone-aware"):
        ingest_csv(tmp_path / "x.csv", tmp_path / "out", start=naive, end=WIDE_END)
    with pytest.raises(ValueError, match="not before"):
        ingest_csv(tmp_path / "x.csv", tmp_path / "out", start=WIDE_END, end=WIDE_START)
    with pytest.raises(ValueError, match="eval_buckets"):
        ingest_csv(tmp_path / "x.csv", tmp_path / "out", start=WIDE_START, end=WIDE_END, eval_buckets=3)
