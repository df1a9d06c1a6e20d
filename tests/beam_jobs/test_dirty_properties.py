"""Property-based: CSV lines generated from the features' definitions with random corruptions.

Whatever the corruption, ingest and clean never raise, every line is kept or rejected (rows in =
kept + rejected), every rejected row has a reason and its line number, and every kept row obeys
transforms/features.py (types that fit, required values present, values in their valid ranges).
The per-line test drives the jobs' own line parser and DoFns on many examples; the pipeline test runs both Beam
jobs on generated files.
"""

from __future__ import annotations

import csv
import datetime
import io
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beam_jobs import clean, clean_rules, ingest
from beam_jobs.clean import clean_examples
from beam_jobs.example_codec import SOURCE_LINE_KEY, serialize_row
from beam_jobs.ingest import ingest_csv
from tests.beam_jobs._helpers import BEAM_ARGS, read_jsonl, read_split_rows
from tests.conftest import TAXI_CSV
from transforms.features import FEATURES_BY_NAME, RAW_COLUMNS, RAW_FEATURES, Kind, fit_problem

UTC = datetime.timezone.utc
START, END = datetime.datetime(2000, 1, 1, tzinfo=UTC), datetime.datetime(2030, 1, 1, tzinfo=UTC)

with TAXI_CSV.open(newline="") as _handle:
    BASE_ROWS = [row for _, row in zip(range(200), csv.DictReader(_handle))]

_NO_NEWLINES = st.characters(exclude_characters="\r\n", exclude_categories=("Cs",))
BAD_CELLS = st.one_of(
    st.just(""),
    st.text(_NO_NEWLINES, max_size=12),
    st.sampled_from(["1e39", "-1e39", "3.5e38", "nan", "inf", "-inf", "9" * 25, "1e30", "-5", "25", "13", "991",
                     "0", "-0.0", "١٢", "1_0", "🚕", '"', '""', "a,b", " 7 ", "12.0", "0x1F", "1e-400"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
)


@st.composite
def csv_lines(draw: Any, columns: list[str]) -> bytes:
    """One line: a real taxi row with some cells corrupted, or a line broken as a whole."""
    row = dict(draw(st.sampled_from(BASE_ROWS)))
    for name in draw(st.lists(st.sampled_from(RAW_COLUMNS), max_size=4, unique=True)):
        row[name] = draw(BAD_CELLS)
    values = [row.get(name, "") for name in columns]
    shape = draw(st.sampled_from(["row"] * 6 + ["fewer", "more", "bytes", "undecodable", "binary"]))
    if shape == "fewer":
        values = values[: draw(st.integers(0, len(values) - 1))]
    elif shape == "more":
        values = values + ["extra"] * draw(st.integers(1, 3))
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(values)
    line = buffer.getvalue().encode("utf-8")
    if shape == "undecodable":
        cut = draw(st.integers(0, len(line)))
        line = line[:cut] + b"\xff\xfe" + line[cut:]
    elif shape == "binary":
        line = draw(st.binary(max_size=80)).replace(b"\n", b"").replace(b"\r", b"")
    return line


def assert_obeys_the_features(row: dict[str, Any]) -> None:
    assert set(row) == set(RAW_COLUMNS), sorted(set(row) ^ set(RAW_COLUMNS))
    for feature in RAW_FEATURES:
        value = row[feature.name]
        if value is None:
            assert not feature.required, feature.name
            continue
        if feature.kind is Kind.STRING:
            assert isinstance(value, str) and value == value.strip() and value.encode("utf-8")
            continue
        assert isinstance(value, int if feature.kind is Kind.INT else float), (feature.name, value)
        assert fit_problem(feature.kind, value) is None, (feature.name, value)
        assert feature.is_valid(value), (feature.name, value)


def clean_one_row(row: dict[str, Any]) -> tuple[str, Any]:
    """A parsed row through clean's per-row steps, as the clean job runs them (duplicates aside)."""
    decoded = clean_rules.decode_strict(serialize_row(row))
    for step in (clean_rules.MissingValuePolicyFn(RAW_FEATURES), clean_rules.ValueRangeFn(RAW_FEATURES)):
        produced = list(step.process(decoded))
        outcomes = [item for item in produced if not (hasattr(item, "tag") and item.tag == "adjusted")]
        assert len(outcomes) == 1, produced
        if hasattr(outcomes[0], "tag"):
            assert outcomes[0].tag == "rejected"
            return "rejected", outcomes[0].value
        decoded = outcomes[0]
    return "kept", clean_rules.without_source_line(decoded)


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(columns=st.permutations(RAW_COLUMNS), data=st.data())
def test_every_line_is_kept_or_rejected_with_a_reason_and_its_line(columns, data):
    parser = ingest.CsvLineParser(columns)
    for line_no in range(2, 7):
        raw = data.draw(csv_lines(columns))
        outcome = parser.parse(line_no, raw)
        assert outcome == parser._parse_reference(line_no, raw), "the fast path must decide as the reference rules"
        if isinstance(outcome, ingest.Rejection):
            record = outcome.record
            assert record["line"] == line_no and record["reason"] in ingest.INGEST_REJECTION_REASONS
            assert record["detail"] and record["text"] is not None
            record_text = repr(record)  # written as UTF-8 JSON: nothing undecodable may be left in it
            record_text.encode("utf-8")
            continue
        assert len(outcome) == len(RAW_COLUMNS), outcome
        row = {**dict(zip(RAW_COLUMNS, outcome)), SOURCE_LINE_KEY: line_no}
        verdict, outcome = clean_one_row(row)
        if verdict == "rejected":
            assert outcome["reason"] in clean.REJECTION_REASONS and outcome["line"] == line_no and outcome["detail"]
        else:
            assert_obeys_the_features(outcome)


@pytest.mark.slow
@settings(max_examples=4, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])
@given(columns=st.permutations(RAW_COLUMNS), data=st.data())
def test_ingest_and_clean_never_raise_and_account_for_every_line(tmp_path_factory, columns, data):
    lines = data.draw(st.lists(csv_lines(columns), min_size=1, max_size=40))
    lines += data.draw(st.lists(st.sampled_from(lines), max_size=5))  # exact duplicates of earlier lines
    lines.append(",".join(BASE_ROWS[0][name] for name in columns).encode())  # at least one good row
    out = tmp_path_factory.mktemp("dirty")
    path = out / "generated.csv"
    path.write_bytes(b"\xef\xbb\xbf" + ",".join(columns).encode() + b"\r\n" + b"\r\n".join(lines) + b"\r\n")

    ingested = ingest_csv(path, out / "ingest", start=START, end=END, beam_args=BEAM_ARGS, max_unparseable_fraction=1.0)
    cleaned = clean_examples(out / "ingest" / "examples", out / "clean", beam_args=BEAM_ARGS)

    non_blank = [line for line in lines if line.strip()]
    assert ingested.rows_read == len(non_blank)
    assert ingested.rows_read == ingested.rows_in_window + ingested.rows_outside_window + ingested.rows_unparseable
    assert sum(cleaned.rows_in.values()) == ingested.rows_in_window
    assert sum(cleaned.rows_in.values()) == sum(cleaned.rows_kept.values()) + sum(cleaned.rows_rejected.values())
    rejected = []
    if ingested.rows_unparseable:
        rejected += read_jsonl(out / "ingest" / "rejected", "rejected-*.jsonl")
    if sum(cleaned.rows_rejected.values()):
        rejected += read_jsonl(out / "clean" / "rejected", "Split-*/rejected-*.jsonl")
    assert len(rejected) == ingested.rows_unparseable + sum(cleaned.rows_rejected.values())
    for record in rejected:
        assert record["reason"] and record["detail"]
        assert isinstance(record["line"], int) and 2 <= record["line"] <= len(lines) + 1
    assert len({record["line"] for record in rejected}) == len(rejected)  # one verdict per line
    for split, count in cleaned.rows_kept.items():
        if count:
            for row in read_split_rows(out / "clean" / "cleaned", split):
                assert_obeys_the_features(row)
                assert all(not isinstance(v, float) or math.isfinite(v) for v in row.values())
    assert FEATURES_BY_NAME  # the features module was the reference for every check above
