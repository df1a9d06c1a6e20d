"""Dirty CSVs through ingest and clean on the real DirectRunner: no value crashes a job, every line is
kept or rejected with its reason, its feature and its line number."""

from __future__ import annotations

import csv
import datetime
import io
import re
from pathlib import Path

import pytest

from beam_jobs import clean, csv_source, ingest
from beam_jobs.clean import clean_examples
from beam_jobs.ingest import ingest_csv
from core.errors import DataError
from tests.beam_jobs._helpers import BEAM_ARGS, read_jsonl, read_split_rows
from transforms.features import FARE_KEY, PAYMENT_TYPE_KEY, RAW_COLUMNS, TIMESTAMP_KEY, TRIP_SECONDS_KEY

UTC = datetime.timezone.utc
START, END = datetime.datetime(2000, 1, 1, tzinfo=UTC), datetime.datetime(2030, 1, 1, tzinfo=UTC)


def csv_line(values: list[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(values)
    return buffer.getvalue()


def run_both(csv_path: Path, out: Path) -> tuple[ingest.IngestResult, clean.CleanResult, list[dict], list[dict]]:
    ingested = ingest_csv(csv_path, out / "ingest", start=START, end=END, beam_args=BEAM_ARGS,
                          max_unparseable_fraction=1.0)
    cleaned = clean_examples(out / "ingest" / "examples", out / "clean", beam_args=BEAM_ARGS)
    ingest_rejected = read_jsonl(out / "ingest" / "rejected", "rejected-*.jsonl")
    clean_rejected = read_jsonl(out / "clean" / "rejected", "Split-*/rejected-*.jsonl")
    return ingested, cleaned, ingest_rejected, clean_rejected


@pytest.fixture
def good_rows(taxi_rows):
    """Rows the clean job keeps as they are, with distinct content."""
    rows = [row for row in taxi_rows[:300] if row[TRIP_SECONDS_KEY] not in ("", "0") and row[FARE_KEY]][:60]
    assert len(rows) == 60
    return rows


def test_values_that_do_not_fit_their_type_reject_the_row_and_every_line_is_accounted_for(tmp_path, good_rows):
    """The issue's crashes (a fare beyond float32, an integer beyond int64) and their neighbours, in
    one file with a BOM, CRLF line endings, columns in another order plus an extra column, quoted
    commas, undecodable bytes and a very long line."""
    columns = list(reversed(RAW_COLUMNS)) + ["note"]
    lines = [csv_line(columns)]

    def line_of(row: dict[str, str], note: str = "", **changed: str) -> str:
        return csv_line([{**row, **changed}.get(name, note) for name in columns])

    expected_ingest: dict[int, tuple[str, str]] = {}  # line number -> (reason, feature)
    expected_clean: dict[int, tuple[str, str | None]] = {}
    kept_lines = []
    cases = [
        ({FARE_KEY: "1e39"}, ("ingest", csv_source.REASON_UNPARSEABLE_VALUE, FARE_KEY)),
        ({FARE_KEY: "-1e300"}, ("ingest", csv_source.REASON_UNPARSEABLE_VALUE, FARE_KEY)),
        ({TRIP_SECONDS_KEY: str(2**63)}, ("ingest", csv_source.REASON_UNPARSEABLE_VALUE, TRIP_SECONDS_KEY)),
        ({TIMESTAMP_KEY: "1e30"}, ("ingest", csv_source.REASON_UNPARSEABLE_VALUE, TIMESTAMP_KEY)),
        ({FARE_KEY: "1_000"}, ("ingest", csv_source.REASON_UNPARSEABLE_VALUE, FARE_KEY)),
        ({PAYMENT_TYPE_KEY: "Cash, or card"}, None),  # a quoted comma is text, not two fields
        ({FARE_KEY: "-3.0"}, ("clean", clean.REASON_OUT_OF_RANGE, FARE_KEY)),
        ({"trip_start_hour": "25"}, ("clean", clean.REASON_OUT_OF_RANGE, "trip_start_hour")),
        ({"pickup_latitude": "991"}, ("clean", clean.REASON_OUT_OF_RANGE, "pickup_latitude")),
        ({PAYMENT_TYPE_KEY: ""}, ("clean", clean.REASON_MISSING_REQUIRED, PAYMENT_TYPE_KEY)),
    ]
    for index, (changes, verdict) in enumerate(cases):
        lines.append(line_of(good_rows[index], **changes))
        line_no = len(lines)
        if verdict is None:
            kept_lines.append(line_no)
        elif verdict[0] == "ingest":
            expected_ingest[line_no] = verdict[1:]
        else:
            expected_clean[line_no] = verdict[1:]
    for row in good_rows[len(cases):50]:
        lines.append(line_of(row, note="x" * 200_000 if len(lines) == 20 else "ok"))  # a very long line is fine
        kept_lines.append(len(lines))
    lines.append(line_of(good_rows[50], company="Flash \udcff Cab"))  # an undecodable byte in a text column
    expected_ingest[len(lines)] = (csv_source.REASON_UNPARSEABLE_VALUE, "company")
    lines.append(line_of(good_rows[51], note="caf\udce9"))  # ... in a column nobody reads: kept
    kept_lines.append(len(lines))
    lines.append(lines[6])  # an exact copy of line 7 (the quoted comma): a duplicate, the earlier line kept
    expected_clean[len(lines)] = (clean.REASON_DUPLICATE, None)
    lines.append(csv_line(["1", "2", "3"]))
    expected_ingest[len(lines)] = (csv_source.REASON_WRONG_FIELD_COUNT, None)
    data = "\ufeff" + "\r\n".join(lines) + "\r\n"
    csv_path = tmp_path / "dirty.csv"
    csv_path.write_bytes(data.encode("utf-8", errors="surrogateescape"))

    ingested, cleaned, ingest_rejected, clean_rejected = run_both(csv_path, tmp_path / "out")

    data_lines = len(lines) - 1
    assert ingested.rows_read == data_lines
    assert {r["line"]: (r["reason"], r["feature"]) for r in ingest_rejected} == expected_ingest
    assert ingested.rows_in_window == data_lines - len(expected_ingest)
    assert sum(cleaned.rows_in.values()) == ingested.rows_in_window
    assert {r["line"]: (r["reason"], r["feature"]) for r in clean_rejected} == expected_clean
    kept = sum(cleaned.rows_kept.values())
    assert kept == len(kept_lines) == ingested.rows_in_window - len(expected_clean)
    by_line = {r["line"]: r for r in ingest_rejected + clean_rejected}
    assert "does not fit a float32" in by_line[2]["detail"] and by_line[2]["text"].count(",") >= len(RAW_COLUMNS)
    assert "does not fit a 64-bit integer" in by_line[4]["detail"]
    assert "UTF-8" in next(r["detail"] for r in ingest_rejected if r["feature"] == "company")
    assert "line 7" in by_line[len(lines) - 1]["detail"]  # the duplicate names the copy that was kept
    rows = [row for split in ("train", "eval") for row in read_split_rows(tmp_path / "out" / "clean" / "cleaned", split)]
    assert "Cash, or card" in {row[PAYMENT_TYPE_KEY] for row in rows}
    assert all(set(row) == set(RAW_COLUMNS) for row in rows)  # the source line is not carried into cleaned data


@pytest.mark.parametrize("content, says", [
    (b"", "file is empty"),
    (b"\xef\xbb\xbf\r\n", "file is empty"),
    (",".join(RAW_COLUMNS).encode() + b"\r\n", "has a header but no data rows"),
    (",".join(c for c in RAW_COLUMNS if c != FARE_KEY).encode() + b"\n1,2\n", "missing 1 column(s) that ingest requires: fare"),
    (b"\xff\xfe" + ",".join(RAW_COLUMNS).encode("utf-16-le") + b"\n", "not UTF-8 text"),
])
def test_files_that_are_not_a_taxi_table_are_refused_before_the_pipeline_naming_the_problem(tmp_path, content, says):
    path = tmp_path / "trips.csv"
    path.write_bytes(content)
    with pytest.raises(DataError, match=re.escape(says)):
        ingest_csv(path, tmp_path / "out", start=START, end=END, beam_args=BEAM_ARGS)
    assert not (tmp_path / "out" / "examples").exists()
