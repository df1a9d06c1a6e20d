"""A folder of CSV files as one input (a city's export comes in shards; TFX's CsvExampleGen reads
its `input_base` folder): ingest reads every file in name order, each by its own header, and makes
of them what it makes of the same rows in one file; a rejected line names its file and its line
in that file, in ingest's records, in clean's and in the error messages."""

from __future__ import annotations

import collections
import gzip
import json
from pathlib import Path

import pytest

from beam_jobs import source_lines
from beam_jobs.clean import clean_examples
from beam_jobs.example_codec import SOURCE_LINE_KEY, SPLITS, parse_serialized
from beam_jobs.source_lines import SOURCE_FILES_FILE, SourceFiles, file_and_line, source_line
from core.errors import DataError
from tests.beam_jobs._helpers import BEAM_ARGS, read_jsonl, read_split_records
from tests.beam_jobs.test_ingest import WIDE_END, WIDE_START, run_ingest, split_contents
from tests.conftest import write_csv
from transforms.features import FARE_KEY, RAW_COLUMNS


def _text(rows: list[dict[str, str]], columns: list[str]) -> str:
    lines = [",".join(columns)] + [",".join(_cell(row[name]) for name in columns) for row in rows]
    return "\n".join(lines) + "\n"


def _cell(value: str) -> str:
    return f'"{value}"' if any(mark in value for mark in ',"\n') else value


@pytest.fixture()
def shards(tmp_path: Path, taxi_rows: list[dict[str, str]]) -> dict[str, object]:
    """Three shards of 900 rows, by name order: a plain one, a gzipped one with its columns in
    another order, and a plain one with a blank line; one bad fare in the second, a broken line in
    the third, and the first shard's row 3 again as the third's last row. And the same rows, in the
    same order, as one file."""
    rows = [dict(row) for row in taxi_rows[:900]]
    rows[300 + 4][FARE_KEY] = "twelve"  # the gzipped shard's line 6 (its header is line 1)
    folder = tmp_path / "export"
    folder.mkdir()
    first, second, third = rows[:300], rows[300:600], rows[600:] + [rows[2]]
    write_csv(folder / "part-00.csv", first, columns=list(RAW_COLUMNS))
    reversed_columns = list(reversed(RAW_COLUMNS))
    (folder / "part-01.csv.gz").write_bytes(gzip.compress(_text(second, reversed_columns).encode()))
    third_text = _text(third, list(RAW_COLUMNS)).splitlines(keepends=True)
    third_text.insert(11, "\n")  # a blank line: not a row, still a line
    third_text.insert(21, "1,2,3\n")  # not a row of the header's fields: line 22
    (folder / "part-02.csv").write_text("".join(third_text))
    (folder / "notes.txt").write_text("exported on Monday\n")  # not a CSV: left aside
    joined = write_csv(tmp_path / "joined.csv", first + second + third, columns=list(RAW_COLUMNS))
    return {"folder": folder, "joined": joined, "rows": len(first) + len(second) + len(third) + 1}


def test_source_lines_name_the_file_and_keep_the_reading_order():
    assert source_line(0, 17) == 17  # a lone file's lines are its plain line numbers
    assert file_and_line(source_line(3, 17)) == (3, 17)
    assert source_line(0, 2**40 - 1) < source_line(1, 2) < source_line(1, 3) < source_line(2, 2)
    with pytest.raises(ValueError, match="beyond"):
        source_line(1, 2**40)
    assert source_line(2**23 - 1, 2**40 - 1) == 2**63 - 1  # the largest int64
    with pytest.raises(ValueError, match="beyond"):
        source_line(2**23, 2)
    one, several = SourceFiles(["a.csv"]), SourceFiles(["a.csv", "b.csv"])
    assert one.place(17) == {"line": 17} and one.where(17) == "line 17"
    assert several.place(source_line(1, 17)) == {"file": "b.csv", "line": 17}
    assert several.where(source_line(1, 17)) == "b.csv line 17"
    assert several.place(None) == {"line": None}
    assert several.where(source_line(5, 2)) == "file #6 line 2"


def test_a_folder_of_shards_gives_what_the_joined_file_gives(tmp_path, shards):
    from_folder = run_ingest(shards["folder"], tmp_path / "folder")
    from_joined = run_ingest(shards["joined"], tmp_path / "joined")

    assert from_folder.files == ["part-00.csv", "part-01.csv.gz", "part-02.csv"]
    assert from_folder.rows_read == shards["rows"] == from_joined.rows_read + 1  # the broken line
    assert from_folder.split_counts == from_joined.split_counts
    assert from_folder.unparseable_by_column == from_joined.unparseable_by_column == {FARE_KEY: 1}
    assert split_contents(tmp_path / "folder") == split_contents(tmp_path / "joined")
    assert json.loads((tmp_path / "folder" / "examples" / SOURCE_FILES_FILE).read_text()) == from_folder.files
    assert not (tmp_path / "joined" / "examples" / SOURCE_FILES_FILE).exists()

    rejected = read_jsonl(tmp_path / "folder" / "rejected", "rejected-*.jsonl")
    assert sorted((r["file"], r["line"], r["reason"]) for r in rejected) == [
        ("part-01.csv.gz", 6, "unparseable_value"), ("part-02.csv", 22, "wrong_field_count")]
    # Each example keeps where it came from: every file's lines, in that file's numbering.
    lines = collections.defaultdict(set)
    for split in SPLITS:
        for record in read_split_records(tmp_path / "folder" / "examples", split):
            index, line = file_and_line(parse_serialized(record, (SOURCE_LINE_KEY,))[SOURCE_LINE_KEY])
            lines[index].add(line)
    assert lines[0] == set(range(2, 302))
    assert lines[1] == set(range(2, 302)) - {6}
    assert lines[2] == set(range(2, 305)) - {12, 22}  # its blank line and its broken one


def test_clean_names_a_duplicate_by_its_file_and_line(tmp_path, shards):
    run_ingest(shards["folder"], tmp_path / "ingest")
    clean_examples(tmp_path / "ingest" / "examples", tmp_path / "clean", beam_args=BEAM_ARGS)

    duplicates = {(record["file"], record["line"]): record["detail"]
                  for record in read_jsonl(tmp_path / "clean" / "rejected", "Split-*/rejected-*.jsonl")
                  if record["reason"] == "duplicate"}
    # The third shard's last line (header, 301 rows, a blank and a broken line: line 304) copies
    # the first shard's fourth line: the earlier file's copy is kept.
    assert duplicates[("part-02.csv", 304)].startswith("exact duplicate of part-00.csv line 4:")
    assert all(file in ("part-00.csv", "part-01.csv.gz", "part-02.csv") for file, _ in duplicates)


def test_too_many_bad_values_are_shown_by_file_and_line(tmp_path, taxi_rows):
    folder = tmp_path / "export"
    folder.mkdir()
    for index in range(2):
        rows = [dict(row) for row in taxi_rows[index * 50:(index + 1) * 50]]
        rows[9][FARE_KEY] = "n/a"
        write_csv(folder / f"day-{index + 1}.csv", rows, columns=list(RAW_COLUMNS))

    with pytest.raises(DataError) as refused:
        run_ingest(folder, tmp_path / "out", max_unparseable_fraction=0.01)

    message = str(refused.value)
    assert str(folder) in message
    assert "e.g. day-1.csv line 11: 'n/a', day-2.csv line 11: 'n/a'" in message
    records = read_jsonl(tmp_path / "out" / "rejected", "rejected-*.jsonl")
    assert sorted((r["file"], r["line"]) for r in records) == [("day-1.csv", 11), ("day-2.csv", 11)]


def test_a_shard_without_a_column_is_refused_by_its_name(tmp_path, taxi_rows):
    folder = tmp_path / "export"
    folder.mkdir()
    write_csv(folder / "a.csv", taxi_rows[:20], columns=list(RAW_COLUMNS))
    write_csv(folder / "b.csv", taxi_rows[20:40], columns=[name for name in RAW_COLUMNS if name != FARE_KEY])

    with pytest.raises(DataError, match=rf"{folder / 'b.csv'}: the header is missing 1 column\(s\).*{FARE_KEY}"):
        run_ingest(folder, tmp_path / "out")
    assert not (tmp_path / "out" / "examples").exists()


def test_a_folder_of_one_file_reads_as_that_file(tmp_path, taxi_rows):
    folder = tmp_path / "export"
    folder.mkdir()
    write_csv(folder / "trips.csv", taxi_rows[:50], columns=list(RAW_COLUMNS))

    result = run_ingest(folder, tmp_path / "out", start=WIDE_START, end=WIDE_END)

    assert result.files == ["trips.csv"] and result.rows_read == 50
    assert source_lines.read_source_files(tmp_path / "out" / "examples") == ()


def test_the_beam_program_takes_a_folder(tmp_path, shards):
    from beam_jobs import ingest

    result = ingest.run([f"--input={shards['folder']}", f"--output={tmp_path / 'out'}", "--start=2000-01-01",
                         "--end=2030-01-01", *BEAM_ARGS])

    assert result.files == ["part-00.csv", "part-01.csv.gz", "part-02.csv"]


def test_a_shard_without_rows_is_read_as_none_and_a_folder_without_any_is_refused(tmp_path, taxi_rows, caplog):
    folder = tmp_path / "export"
    folder.mkdir()
    write_csv(folder / "day-1.csv", taxi_rows[:30], columns=list(RAW_COLUMNS))
    (folder / "day-2.csv").write_text(",".join(RAW_COLUMNS) + "\n")  # a day without trips
    (folder / "day-3.csv").write_bytes(b"")  # an empty partition
    write_csv(folder / "day-4.csv", taxi_rows[30:40], columns=list(RAW_COLUMNS))

    result = run_ingest(folder, tmp_path / "out")

    assert result.rows_read == 40 and result.files == ["day-1.csv", "day-2.csv", "day-3.csv", "day-4.csv"]
    assert "day-2.csv: a header without data rows" in caplog.text and "day-3.csv: an empty file" in caplog.text
    lines = {file_and_line(parse_serialized(record, (SOURCE_LINE_KEY,))[SOURCE_LINE_KEY])
             for split in SPLITS for record in read_split_records(tmp_path / "out" / "examples", split)}
    assert {index for index, _ in lines} == {0, 3}  # the fourth file keeps its own index

    for name in ("day-1.csv", "day-4.csv"):
        (folder / name).write_text(",".join(RAW_COLUMNS) + "\n")
    with pytest.raises(DataError, match="none of its 4 CSV files has a data row"):
        run_ingest(folder, tmp_path / "again")
    # One file alone must hold rows, as before.
    with pytest.raises(DataError, match="has a header but no data rows"):
        run_ingest(folder / "day-1.csv", tmp_path / "alone")
