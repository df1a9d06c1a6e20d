"""Ingest's fast path (beam_jobs/csv_columns.py) against the reference rules it stands in for.

The reference is what ingest did for every line before: CsvLineParser.parse, then RowEncoder.encode
and split_of. Whatever the lines, a piece must come out the same (the same examples in the same
order in each split, the same rejected records, the same summary), and a line the fast path takes
must be one the reference reads into exactly those values.
"""

from __future__ import annotations

import csv
import io
import math
import random
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beam_jobs import csv_columns, ingest
from beam_jobs.csv_columns import PlainLines, PlainRowEncoder
from beam_jobs.example_codec import SOURCE_LINE_KEY, SPLITS, RowEncoder, canonical_row
from tests.beam_jobs.test_dirty_properties import BASE_ROWS, csv_lines
from tests.conftest import TAXI_CSV
from transforms.features import RAW_COLUMNS, RAW_FEATURES, TIMESTAMP_KEY, Kind

START, END = 946684800.0, 1893456000.0  # 2000-01-01 .. 2030-01-01, UTC


def reference_piece(columns: tuple[str, ...], lines: list[tuple[int, bytes]], start: float = START,
                    end: float = END, hash_buckets: int = 3, eval_buckets: int = 1) -> dict[str, Any]:
    """A piece as ingest read it line by line before the fast path."""
    parser, encoder = ingest.CsvLineParser(columns), RowEncoder((*RAW_COLUMNS, SOURCE_LINE_KEY))
    summary = ingest.new_summary()
    summary["read"] = len(lines)
    splits: dict[str, list[bytes]] = {split: [] for split in SPLITS}
    rejected, low, high, inside, outside = [], None, None, 0, 0
    for line_no, raw in lines:
        values = parser.parse(line_no, raw)
        if isinstance(values, ingest.Rejection):
            ingest.add_rejection(summary, values)
            rejected.append(values.record)
            continue
        timestamp = values[RAW_COLUMNS.index(TIMESTAMP_KEY)]
        low = timestamp if low is None else min(low, timestamp)
        high = timestamp if high is None else max(high, timestamp)
        if not start <= timestamp < end:
            outside += 1
            continue
        inside += 1
        values.append(line_no)
        text, example = encoder.encode(values)
        splits[ingest.split_of(text, hash_buckets, eval_buckets)].append(example)
    summary.update(in_window=inside, outside_window=outside, min_ts=low, max_ts=high)
    summary["splits"] = {split: len(batch) for split, batch in splits.items() if batch}
    return {"splits": {split: batch for split, batch in splits.items() if batch}, "rejected": rejected,
            "summary": summary}


def ingest_piece(columns: tuple[str, ...], lines: list[tuple[int, bytes]], start: float = START,
                 end: float = END, hash_buckets: int = 3, eval_buckets: int = 1) -> dict[str, Any]:
    """A piece as IngestChunkFn reads it now."""
    fn = ingest.IngestChunkFn([("unused.csv", columns)], start, end, hash_buckets, eval_buckets)
    fn.setup()
    outcome: dict[str, Any] = {"splits": {}, "rejected": [], "summary": None}
    for output in fn._piece(lines):
        if output.tag == fn.REJECTED:
            outcome["rejected"].append(output.value)
        elif output.tag == fn.SUMMARY:
            outcome["summary"] = output.value
        else:
            outcome["splits"][output.tag] = output.value
    return outcome


def numbered(lines: list[bytes], first: int = 2) -> list[tuple[int, bytes]]:
    return [(first + index, raw) for index, raw in enumerate(lines) if raw.strip()]


def taxi_lines(count: int | None = None) -> tuple[tuple[str, ...], list[bytes]]:
    with TAXI_CSV.open("rb") as handle:
        header, *lines = handle.read().split(b"\n")
    return tuple(header.decode().strip().split(",")), [line.rstrip(b"\r") for line in lines[:count] if line.strip()]


# Cells of every form a number may take, plain and not.
NUMBER_CELLS = st.one_of(
    st.floats(width=32, allow_nan=False, allow_infinity=False).map(repr),
    st.floats(min_value=-1e12, max_value=1e12).map(lambda value: f"{value:.{abs(hash(value)) % 9}f}"),
    st.floats(min_value=-1e-3, max_value=1e-3).map(repr),
    st.integers(min_value=-(10**19), max_value=10**19).map(str),
    st.sampled_from(["0", "-0", "-0.0", "007", "0.0001", "0.00009999", "9999999999.5", "10000000000.0", "1e5", "1.",
                     ".5", "+3", " 4", "5 ", "1_0", "12.0", "", " ", "  ", "-", ".", "--1", "1.2.3", "0x10",
                     "99999999999999999999.99999999999999999999", "1" * 21, "1" * 19, "-" + "9" * 18]),
)
TEXT_CELLS = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters=',"'), max_size=140),
    st.sampled_from(["", " ", " Cash ", "Credit Card", "x" * 123, "x" * 124, " " + "y" * 123, "Blue_Ribbon",
                     "a\\b", "caf\u00e9", "\u00a0tab\u00a0", "tab\there"]),
)


@st.composite
def number_heavy_lines(draw: Any, columns: tuple[str, ...]) -> bytes:
    """A taxi row with some cells replaced by numbers and texts of every form (no quoting)."""
    row = dict(draw(st.sampled_from(BASE_ROWS)))
    for feature in draw(st.lists(st.sampled_from(RAW_FEATURES), max_size=6, unique_by=lambda feature: feature.name)):
        row[feature.name] = draw(TEXT_CELLS if feature.kind is Kind.STRING else NUMBER_CELLS)
    return ",".join(row.get(name, "extra") for name in columns).encode("utf-8", errors="surrogateescape")


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(columns=st.permutations(RAW_COLUMNS + ("an_extra_column",)), data=st.data())
def test_a_piece_comes_out_as_line_by_line(columns, data):
    columns = tuple(columns)
    lines = data.draw(st.lists(st.one_of(number_heavy_lines(columns), csv_lines(list(columns))), max_size=12))
    lines += data.draw(st.lists(st.sampled_from(lines), max_size=3)) if lines else []  # copies of earlier lines
    window = data.draw(st.sampled_from([(START, END), (1.3e9, 1.4e9), (0.0, 1.0)]))
    pieces = numbered(lines)
    assert ingest_piece(columns, pieces, *window) == reference_piece(columns, pieces, *window)


def assert_taken_lines_read_as_the_reference(columns: tuple[str, ...], lines: list[bytes]) -> int:
    """Each line the fast path takes has the reference's values and canonical text; returns how many."""
    rows = PlainLines(columns).read(lines)
    parser = ingest.CsvLineParser(columns)
    texts = rows.texts.to_pylist()
    for position, index in enumerate(rows.at.tolist()):
        values = parser.parse(2 + index, lines[index])
        assert not isinstance(values, ingest.Rejection), lines[index]
        row = dict(zip(RAW_COLUMNS, values))
        assert texts[position] == canonical_row(row), lines[index]
        for feature in RAW_FEATURES:
            taken = rows.columns[feature.name][position].as_py()
            expected = row[feature.name]
            if feature.kind is Kind.FLOAT and expected is not None:
                expected = struct.unpack("<f", struct.pack("<f", expected))[0]
            assert taken == expected, (feature.name, lines[index])
            if feature.kind is Kind.FLOAT and taken is not None:  # -0.0 == 0.0: the sign too
                assert math.copysign(1, taken) == math.copysign(1, expected), (feature.name, lines[index])
    return len(rows.at)


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(columns=st.permutations(RAW_COLUMNS), data=st.data())
def test_a_line_taken_is_read_into_the_reference_values(columns, data):
    columns = tuple(columns)
    assert_taken_lines_read_as_the_reference(columns, data.draw(st.lists(number_heavy_lines(columns), min_size=1,
                                                                         max_size=20)))


@settings(max_examples=300, deadline=None, database=None)
@given(value=st.floats(width=32, allow_nan=False, allow_infinity=False),
       form=st.sampled_from(["{!r}", "{:.2f}", "{:.6f}", "{:.12f}", "{:.0f}", "{:.1f}"]))
def test_a_float_is_stored_and_written_as_by_the_reference(value, form):
    columns, (line, *_) = taxi_lines(1)
    cells = line.decode().split(",")
    cells[columns.index("fare")] = form.format(value)
    raw = ",".join(cells).encode()
    assert ingest_piece(columns, [(2, raw)]) == reference_piece(columns, [(2, raw)])


def test_the_shipped_rows_take_the_fast_path_and_come_out_as_line_by_line():
    columns, lines = taxi_lines()
    rows = PlainLines(columns).read(lines)
    assert len(rows.at) >= 0.99 * len(lines), f"only {len(rows.at)} of {len(lines)} shipped lines were plain"
    pieces = numbered(lines)
    assert ingest_piece(columns, pieces) == reference_piece(columns, pieces)


def test_lines_the_fast_path_leaves_keep_their_place_among_the_others():
    columns, lines = taxi_lines(40)
    quoted = []
    for index, line in enumerate(lines):
        if index % 3 == 0:  # a quoted cell: the csv module's rules, line by line
            cells = line.decode().split(",")
            cells[columns.index("company")] = '"Taxi, Inc."'
            line = ",".join(cells).encode()
        quoted.append(line)
    rows = PlainLines(columns).read(quoted)
    assert 0 < len(rows.at) < len(quoted)
    pieces = numbered(quoted)
    outcome = ingest_piece(columns, pieces)
    assert outcome == reference_piece(columns, pieces)
    assert sum(outcome["summary"]["splits"].values()) == len(quoted)


@pytest.mark.parametrize("hash_buckets, eval_buckets", [(3, 1), (10, 3), (2, 1)])
def test_the_split_is_the_reference_split(hash_buckets, eval_buckets):
    columns, lines = taxi_lines(500)
    rows = PlainLines(columns).read(lines)
    _, splits = PlainRowEncoder(hash_buckets, eval_buckets).encode(rows, rows.at + 2)
    expected = [SPLITS.index(ingest.split_of(text, hash_buckets, eval_buckets)) for text in rows.texts.to_pylist()]
    assert splits.tolist() == expected and 0 < splits.sum() < len(splits)


@pytest.mark.parametrize("column, cell", [
    ("company", "x" * 123), ("company", "x" * 124), ("company", "y" * 300), ("company", "a\\b"),
    ("company", "caf\u00e9"), ("payment_type", " Cash "), ("payment_type", "\tCash"), ("company", "Blue_Ribbon"),
    ("trip_seconds", "9" * 18), ("trip_seconds", "9" * 19), ("trip_seconds", "-" + "9" * 18), ("trip_seconds", "+5"),
    ("trip_seconds", "12.0"), ("trip_seconds", "12."), ("trip_seconds", "12.000"), ("trip_seconds", "-0.0"),
    ("trip_seconds", "12.5"), ("trip_seconds", "12.0.0"), ("pickup_census_tract", "17031081800.0"),
    ("pickup_census_tract", "1234567890123456.0"), ("pickup_census_tract", "9999999999999999.0"),
    ("pickup_census_tract", "12345678901234567.0"), ("trip_seconds", " 12"), ("trip_start_timestamp", ""), ("trip_start_timestamp", "1.4e9"),
    ("fare", "1e5"), ("fare", "0.00001"), ("fare", "9999999999"), ("fare", "10000000000"), ("fare", "-0"),
    ("fare", "1" * 20 + "." + "1" * 20), ("fare", "1" * 21), ("fare", "nan"), ("fare", "inf"), ("fare", "1_0"),
])
def test_each_cell_of_an_edge_form_comes_out_as_line_by_line(column, cell):
    columns, lines = taxi_lines(3)
    cells = lines[1].decode().split(",")
    cells[columns.index(column)] = cell
    edited = [lines[0], ",".join(cells).encode("utf-8"), lines[2]]
    assert assert_taken_lines_read_as_the_reference(columns, edited) >= 2
    pieces = numbered(edited)
    assert ingest_piece(columns, pieces) == reference_piece(columns, pieces)


def test_a_piece_too_large_for_an_arrow_string_array_is_read_by_the_reference_rules(monkeypatch):
    columns, lines = taxi_lines(20)
    monkeypatch.setattr(csv_columns, "_MOST_BYTES", len(b"".join(lines)) - 1)
    assert len(PlainLines(columns).read(lines).at) == 0
    pieces = numbered(lines)
    assert ingest_piece(columns, pieces) == reference_piece(columns, pieces)


def test_int_columns_written_as_whole_decimals_take_the_fast_path():
    """pandas writes an int column holding a missing value as floats ("8.0"): still plain lines."""
    columns, lines = taxi_lines(200)
    ints = [columns.index(feature.name) for feature in RAW_FEATURES if feature.kind is Kind.INT]
    as_pandas = []
    for line in lines:
        cells = line.decode().split(",")
        for at in ints:
            cells[at] = f"{int(cells[at])}.0" if cells[at] else cells[at]
        as_pandas.append(",".join(cells).encode())
    assert assert_taken_lines_read_as_the_reference(columns, as_pandas) == len(as_pandas)
    assert ingest_piece(columns, numbered(as_pandas)) == ingest_piece(columns, numbered(lines))


def test_no_line_or_an_empty_one_is_no_row():
    columns, _ = taxi_lines(1)
    assert len(PlainLines(columns).read([]).at) == 0
    assert len(PlainLines(columns).read([b""]).at) == 0
    assert ingest_piece(columns, []) == reference_piece(columns, [])


def test_a_line_of_another_writer_is_read_by_the_reference_rules():
    columns, (line, *_) = taxi_lines(1)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="", quoting=csv.QUOTE_ALL).writerow(line.decode().split(","))
    quoted = buffer.getvalue().encode()
    assert len(PlainLines(columns).read([quoted]).at) == 0
    assert ingest_piece(columns, [(2, quoted)]) == reference_piece(columns, [(2, quoted)])
    assert ingest_piece(columns, [(2, quoted)])["splits"] == ingest_piece(columns, [(2, line)])["splits"]


def test_seeded_lines_of_every_number_form_mostly_take_the_fast_path_and_come_out_as_line_by_line():
    """Not vacuous: numbers written in many ways, most of them plain, the rest left to the reference."""
    columns, lines = taxi_lines(300)
    rng = random.Random(0)
    forms = ["{:.2f}", "{:.6f}", "{!r}", "{:.0f}", " {} ", "{:e}"]
    varied = []
    for line in lines:
        cells = line.decode().split(",")
        for feature in RAW_FEATURES:
            if feature.kind is Kind.FLOAT and cells[columns.index(feature.name)] and rng.random() < 0.5:
                value = float(cells[columns.index(feature.name)]) * rng.choice([1, -1, 1e-3, 1e3, 1e-6])
                cells[columns.index(feature.name)] = rng.choice(forms).format(value)
        varied.append(",".join(cells).encode())
    taken = assert_taken_lines_read_as_the_reference(columns, varied)
    assert 0.15 * len(varied) < taken < len(varied)
    pieces = numbered(varied)
    assert ingest_piece(columns, pieces) == reference_piece(columns, pieces)
