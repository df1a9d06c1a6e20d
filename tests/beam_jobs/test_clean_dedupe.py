"""Clean's dedupe by content digest keeps exactly the rows, and rejects exactly the copies, that
grouping every row by its whole content did (the rule before issue 14), written out here in plain
Python as the reference; the kept copies take their own branch, never mixed into the others'."""

from __future__ import annotations

from collections import Counter
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs import clean, clean_rules, dedupe
from beam_jobs.example_codec import SOURCE_LINE_KEY, canonical_row, parse_serialized, row_to_example, serialize_row
from tests.beam_jobs._helpers import is_clean, parse_csv_row
from transforms.features import COMPANY_KEY, OBSERVED_LABEL_KEY


@pytest.fixture(scope="module")
def stored_rows(taxi_rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Distinct valid taxi rows in their stored (float32) form."""
    rows, seen = [], set()
    for text_row in taxi_rows[:300]:
        row = parse_serialized(serialize_row(parse_csv_row(text_row)))
        if is_clean(row) and row[COMPANY_KEY] is not None and canonical_row(row) not in seen:
            seen.add(canonical_row(row))
            rows.append(row)
    assert len(rows) >= 8
    return rows


def _with_line(row: dict[str, Any], line: int | None) -> dict[str, Any]:
    return {**row, SOURCE_LINE_KEY: line} if line is not None else dict(row)


def _stored_differently(row: dict[str, Any], line: int) -> bytes:
    """The same content as serialize_row(row), other bytes: an empty feature, the company stored as an
    empty list before its value, a field protobuf does not know."""
    example = row_to_example(_with_line(row, line))
    example.features.feature["pickup_census_tract"].int64_list.SetInParent()  # stored, no value: missing
    return example.SerializeToString() + b"\x98\x06\x01"  # unknown field 99, varint 1


def records_with_copies(rows: list[dict[str, Any]]) -> list[bytes]:
    """Unique rows, copies out of line order, copies without a source line, a labelled copy, a copy
    stored in other bytes, garbage."""
    a, b, c, d, e, f, g = rows[:7]
    labelled = {**f, OBSERVED_LABEL_KEY: 1}
    stored = [
        _with_line(a, 9), _with_line(a, 4), _with_line(a, 7),  # three copies: line 4 kept
        _with_line(b, None), _with_line(b, 12),  # the copy with a line wins over the one without
        _with_line(c, None), _with_line(c, None),  # no lines at all: one kept, one rejected
        _with_line(d, 3), _with_line(e, 5),  # once each
        _with_line(f, 20), _with_line(labelled, 21), _with_line(labelled, 22),  # the label makes another content
        _with_line(g, 30),
        *[_with_line(row, 100 + i) for i, row in enumerate(rows[7:])],
    ]
    assert g["pickup_census_tract"] is None
    return [serialize_row(row) for row in stored] + [_stored_differently(g, 31), b"\xff\xff not an example"]


def reference_dedupe(records: list[bytes]) -> tuple[list[str], list[dict[str, Any]]]:
    """The rule before the digests: group every decodable row by its content, keep the copy of the
    earliest line (a line before none), reject the others naming it. -> (kept contents with their
    line, rejected records)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        try:
            row = clean_rules.decode_strict(record)
        except clean_rules.Undecodable:
            continue
        groups.setdefault(canonical_row(row), []).append(row)
    kept, rejected = [], []
    for rows in groups.values():
        rows = sorted(rows, key=lambda r: (r.get(SOURCE_LINE_KEY) is None, r.get(SOURCE_LINE_KEY) or 0))
        kept.append(canonical_row(rows[0]))
        line = rows[0].get(SOURCE_LINE_KEY)
        of_line = f" of line {line}" if line is not None else ""
        rejected += [clean_rules.rejection(clean_rules.REASON_DUPLICATE, None,
                                     f"exact duplicate{of_line}: {len(rows)} identical rows in this split, 1 kept", copy)
                     for copy in rows[1:]]
    return sorted(kept), rejected


def _kept_contents(kept: beam.PCollection, label: str) -> beam.PCollection:
    """The contents of kept Examples (which come in lists, a batch each)."""
    return (kept | f"Unbatch{label}" >> beam.FlatMap(lambda records: records)
            | f"Content{label}" >> beam.Map(lambda record: canonical_row(parse_serialized(record))))


def _run_clean_split(records: list[bytes], *, reread: bool, digests_dir: str | None = None) -> None:
    expected_kept, expected_rejected = reference_dedupe(records)
    assert len(expected_rejected) == 6  # two of a, one each of b, c, g and the labelled f
    with test_pipeline.TestPipeline() as pipeline:
        # As the job counts: from a second read of the same records; else from the records themselves.
        split = clean.CleanSplit(reread=beam.Create(records) if reread else None, digests_dir=digests_dir)
        cleaned = pipeline | "Records" >> beam.Create(records) | split
        kept = (cleaned.once.kept, cleaned.copies.kept) | "AllKept" >> beam.Flatten()
        assert_that(_kept_contents(kept, "All"), equal_to(expected_kept), label="KeptOnePerContent")
        # Each copy kept is written by its own branch, once.
        contents = Counter(canonical_row(clean_rules.decode_strict(record)) for record in records[:-1])
        with_copies = [content for content, count in contents.items() if count > 1]
        assert_that(_kept_contents(cleaned.copies.kept, "Copies"), equal_to(with_copies), label="CopiesBranch")
        assert_that(cleaned.copies.rejected, equal_to(expected_rejected), label="RejectedCopies")
        assert_that(cleaned.once.rejected | beam.Map(lambda r: r["reason"]), equal_to([clean.REASON_UNPARSEABLE]),
                    label="OnlyTheGarbageRejectedOnce")


@pytest.mark.parametrize("reread", [False, True], ids=["counted-from-the-records", "counted-from-a-second-read"])
def test_dedupe_keeps_and_rejects_exactly_what_grouping_every_row_did(stored_rows, reread):
    _run_clean_split(records_with_copies(stored_rows), reread=reread)


def test_dedupe_through_spilled_digest_files_keeps_and_rejects_the_same(stored_rows, tmp_path):
    """As the job runs it: the count's digests go through files in a folder, not through the shuffle."""
    _run_clean_split(records_with_copies(stored_rows), reread=True, digests_dir=str(tmp_path / "digests"))
    spilled = list((tmp_path / "digests").glob("digests-*.u64"))
    assert spilled and sum(path.stat().st_size for path in spilled) % 8 == 0


def test_a_digest_collision_only_costs_an_exact_comparison(stored_rows, monkeypatch):
    # Every content gets the same digest: all rows go to the exact comparison, which still tells them apart.
    monkeypatch.setattr(dedupe, "content_digest", lambda content: 0)
    records = records_with_copies(stored_rows)
    expected_kept, expected_rejected = reference_dedupe(records)
    with test_pipeline.TestPipeline() as pipeline:
        cleaned = pipeline | beam.Create(records) | clean.CleanSplit()
        assert_that(cleaned.once.kept, equal_to([]), label="NothingSeenOnce")
        assert_that(_kept_contents(cleaned.copies.kept, "Copies"), equal_to(expected_kept), label="AllComparedExactly")
        assert_that(cleaned.copies.rejected, equal_to(expected_rejected), label="SameCopiesRejected")


def test_equal_contents_have_equal_content_bytes_however_they_are_stored(stored_rows):
    row = next(r for r in stored_rows if r["pickup_census_tract"] is None)
    plain = clean_rules.decode_with_example(serialize_row(_with_line(row, 1)))[0]
    other = clean_rules.decode_with_example(_stored_differently(row, 2))[0]
    assert dedupe.content_bytes(plain) == dedupe.content_bytes(other) == dedupe.row_content_bytes(row)
    changed = clean_rules.decode_with_example(serialize_row({**row, "fare": row["fare"] + 1}))[0]
    assert dedupe.content_bytes(changed) != dedupe.row_content_bytes(row)


def _spill(bundle: Any, path: Any) -> tuple[str, int]:
    path.write_bytes(bundle.tobytes())
    return str(path), len(bundle)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("carried", ["bytes", "files", "both"])
def test_the_digests_with_copies_are_exactly_those_seen_more_than_once_across_bundles(seed, carried, tmp_path):
    """The combiner's output, against a count of every digest, on bundles of random digests of
    which some appear two or three times (in one bundle or across bundles) and the extremes occur;
    the bundles carried as bytes, as spilled files, or some of each."""
    import numpy as np

    rng = np.random.default_rng(seed)
    once = rng.integers(0, 2**64, 5_000, dtype=np.uint64, endpoint=False).tolist()
    twice, thrice = once[:40], once[40:47]
    digests = [*once, *twice, *thrice, *thrice, 0, 0, 2**64 - 1, 2**64 - 1]
    order = rng.permutation(len(digests))
    bundles = np.array_split(np.array(digests, dtype=np.uint64)[order], 7)
    combine = dedupe.DigestsWithCopiesFn()
    accumulators = []
    for index, bundle in enumerate(bundles):
        as_file = carried == "files" or (carried == "both" and index % 2)
        element = _spill(bundle, tmp_path / f"digests-{index}.u64") if as_file else bundle.tobytes()
        accumulators.append(combine.add_input(combine.create_accumulator(), element))
    found = combine.extract_output(combine.merge_accumulators(accumulators))
    assert found == frozenset(d for d, n in Counter(digests).items() if n > 1)
    assert len(found) == 40 + 7 + 2
    assert combine.extract_output(combine.create_accumulator()) == frozenset()


@pytest.mark.parametrize("change", ["cut short", "longer"])
def test_a_spilled_digest_file_of_another_length_is_refused_not_half_counted(change, tmp_path):
    import numpy as np

    bundle = np.arange(1, 1_001, dtype=np.uint64)
    path, count = _spill(bundle, tmp_path / "digests-0.u64")
    data = bundle.tobytes()
    (tmp_path / "digests-0.u64").write_bytes(data[:-8] if change == "cut short" else data + data[:8])
    combine = dedupe.DigestsWithCopiesFn()
    with pytest.raises(RuntimeError, match=rf"digests-0\.u64: expected 8000 bytes of content digests, found "
                                           rf"{7992 if change == 'cut short' else 'more'}"):
        combine.extract_output(combine.add_input(combine.create_accumulator(), (path, count)))
