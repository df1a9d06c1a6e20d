"""Clean's dedupe by content digest keeps exactly the rows, and rejects exactly the copies, that
grouping every row by its whole content did (the rule before issue 14), written out here in plain
Python as the reference."""

from __future__ import annotations

from typing import Any

import apache_beam as beam
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs import clean
from beam_jobs.example_codec import SOURCE_LINE_KEY, canonical_row, parse_serialized, serialize_row
from tests.beam_jobs._helpers import is_clean, parse_csv_row
from transforms.features import OBSERVED_LABEL_KEY


@pytest.fixture(scope="module")
def stored_rows(taxi_rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Distinct valid taxi rows in their stored (float32) form."""
    rows, seen = [], set()
    for text_row in taxi_rows[:300]:
        row = parse_serialized(serialize_row(parse_csv_row(text_row)))
        if is_clean(row) and canonical_row(row) not in seen:
            seen.add(canonical_row(row))
            rows.append(row)
    assert len(rows) >= 8
    return rows


def _with_line(row: dict[str, Any], line: int | None) -> dict[str, Any]:
    return {**row, SOURCE_LINE_KEY: line} if line is not None else dict(row)


def records_with_copies(rows: list[dict[str, Any]]) -> list[bytes]:
    """Unique rows, copies out of line order, copies without a source line, a labelled copy, garbage."""
    a, b, c, d, e, f = rows[:6]
    labelled = {**f, OBSERVED_LABEL_KEY: 1}
    stored = [
        _with_line(a, 9), _with_line(a, 4), _with_line(a, 7),  # three copies: line 4 kept
        _with_line(b, None), _with_line(b, 12),  # the copy with a line wins over the one without
        _with_line(c, None), _with_line(c, None),  # no lines at all: one kept, one rejected
        _with_line(d, 3), _with_line(e, 5),  # once each
        _with_line(f, 20), _with_line(labelled, 21), _with_line(labelled, 22),  # the label makes another content
        *[_with_line(row, 100 + i) for i, row in enumerate(rows[6:])],
    ]
    return [serialize_row(row) for row in stored] + [b"\xff\xff not an example"]


def reference_dedupe(records: list[bytes]) -> tuple[list[str], list[dict[str, Any]]]:
    """The rule before the digests: group every decodable row by its content, keep the copy of the
    earliest line (a line before none), reject the others naming it. -> (kept contents with their
    line, rejected records)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        try:
            row = clean.decode_strict(record)
        except clean._Undecodable:
            continue
        groups.setdefault(canonical_row(row), []).append(row)
    kept, rejected = [], []
    for rows in groups.values():
        rows = sorted(rows, key=lambda r: (r.get(SOURCE_LINE_KEY) is None, r.get(SOURCE_LINE_KEY) or 0))
        kept.append(f"{rows[0].get(SOURCE_LINE_KEY)}:{canonical_row(rows[0])}")
        line = rows[0].get(SOURCE_LINE_KEY)
        of_line = f" of line {line}" if line is not None else ""
        rejected += [clean.rejection(clean.REASON_DUPLICATE, None,
                                     f"exact duplicate{of_line}: {len(rows)} identical rows in this split, 1 kept", copy)
                     for copy in rows[1:]]
    return sorted(kept), rejected


def _line_and_content(row: dict[str, Any]) -> str:
    return f"{row.get(SOURCE_LINE_KEY)}:{canonical_row(row)}"


def _run_drop_duplicates(records: list[bytes], *, reread: bool) -> None:
    expected_kept, expected_rejected = reference_dedupe(records)
    assert len(expected_rejected) == 5  # two of a, one each of b, c and the labelled f
    with test_pipeline.TestPipeline() as pipeline:
        rows = pipeline | "Rows" >> beam.Create(records) | beam.FlatMap(clean._decoded_or_nothing)
        copies = None
        if reread:  # as CleanSplit counts: from a second read of the same records
            copies = (pipeline | "Again" >> beam.Create(records) | "DecodeAgain" >> beam.FlatMap(clean._decoded_or_nothing)
                      | clean.CountContentCopies())
        deduped = rows | clean.DropDuplicates(copies)
        assert_that(deduped.kept | beam.Map(_line_and_content), equal_to(expected_kept), label="KeptCopies")
        assert_that(deduped.rejected, equal_to(expected_rejected), label="RejectedCopies")


@pytest.mark.parametrize("reread", [False, True], ids=["counted-from-rows", "counted-from-a-second-read"])
def test_dedupe_keeps_and_rejects_exactly_what_grouping_every_row_did(stored_rows, reread):
    _run_drop_duplicates(records_with_copies(stored_rows), reread=reread)


def test_a_digest_collision_only_costs_an_exact_comparison(stored_rows, monkeypatch):
    # Every row gets the same digest: all rows go to the exact comparison, which still tells them apart.
    monkeypatch.setattr(clean, "content_digest", lambda row: b"\x00" * clean.CONTENT_DIGEST_BYTES)
    _run_drop_duplicates(records_with_copies(stored_rows), reread=False)


def test_clean_split_with_a_second_read_accounts_for_every_row_as_before(stored_rows):
    records = records_with_copies(stored_rows)
    expected_kept, expected_duplicates = reference_dedupe(records)
    with test_pipeline.TestPipeline() as pipeline:
        cleaned = pipeline | beam.Create(records) | clean.CleanSplit(reread=beam.Create(records))
        assert_that(cleaned.kept | beam.Map(canonical_row),
                    equal_to([kept.split(":", 1)[1] for kept in expected_kept]), label="Kept")
        assert_that(cleaned.rejected | beam.Map(lambda r: (r["reason"], r["line"], r["detail"])),
                    equal_to([(r["reason"], r["line"], r["detail"]) for r in expected_duplicates]
                             + [(clean.REASON_UNPARSEABLE, None, _garbage_detail())]),
                    label="RejectedOncePerRow")


def _garbage_detail() -> str:
    try:
        clean.decode_strict(b"\xff\xff not an example")
    except clean._Undecodable as err:
        return err.detail
    raise AssertionError("garbage decoded")
