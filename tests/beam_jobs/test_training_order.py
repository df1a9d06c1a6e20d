"""The training order and the heads Transform writes: which rows a training run reads."""

from __future__ import annotations

import json
import random

import apache_beam as beam
import mmh3
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs import training_order
from beam_jobs.training_order import (
    HEADS_FILE,
    ORDER_DESCRIPTION,
    FirstInOrder,
    FirstInOrderFn,
    head_for,
    head_path,
    heads_manifest,
    in_training_order,
    order_digest,
    order_digests,
)

BEAM_ARGS = ["--runner=DirectRunner", "--direct_num_workers=1", "--direct_running_mode=in_memory"]


def some_records(count: int, seed: int) -> list[bytes]:
    """Records of several lengths, with copies and with records that are prefixes of others."""
    rng = random.Random(seed)
    records = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 12))) for _ in range(count)] + [b"", b""]
    records += records[: count // 10]  # identical rows
    records += [record + b"\0" for record in records[: count // 20]]
    rng.shuffle(records)
    return records


def batches(records: list[bytes], rng: random.Random) -> list[list[bytes]]:
    cuts = sorted(rng.sample(range(1, len(records)), k=min(7, len(records) - 1)))
    return [records[start:end] for start, end in zip([0, *cuts], [*cuts, len(records)])]


def test_the_digest_is_the_documented_one():
    records = [b"", b"\n\x03", bytes(range(200))]
    for record in records:
        assert order_digest(record) == mmh3.hash_bytes(record, seed=0, x64arch=True)[:8]
    assert [int(value) for value in order_digests(records)] == [int.from_bytes(order_digest(r), "big") for r in records]
    assert "the first 8 bytes of MurmurHash3 (x64, 128 bits, seed 0)" in ORDER_DESCRIPTION and "ties by its bytes" in ORDER_DESCRIPTION
    # MurmurHash3_x64_128 of "hello", seed 0, is h1 = 0xcbd8a7b341bd9b02, h2 = 0x5b1e906a48ae1d19; the
    # digest is h1's bytes as mmh3 lays them out (little-endian): one order on every machine.
    assert order_digest(b"hello") == (0xCBD8A7B341BD9B02).to_bytes(8, "little")


def test_the_order_is_by_digest_then_bytes_and_not_the_bytes_order():
    records = some_records(300, seed=1)
    ordered = in_training_order(records)
    assert sorted(ordered) == sorted(records)
    keys = [(order_digest(record), record) for record in ordered]
    assert keys == sorted(keys)
    assert ordered != sorted(records)
    # Copies of a record sit next to each other; only their digests place them.
    assert in_training_order(list(reversed(records))) == ordered


@pytest.mark.parametrize("limit", [1, 5, 37, 329, 10_000])
def test_first_in_order_keeps_the_first_records_whatever_the_batches(limit):
    records = some_records(300, seed=limit)
    expected = in_training_order(records)[:limit]
    for seed in range(4):
        rng = random.Random(seed)
        shuffled = list(records)
        rng.shuffle(shuffled)
        first = FirstInOrder(limit)
        for batch in batches(shuffled, rng):
            first.add(batch)
        assert first.seen == len(records)
        assert first.records() == expected


@pytest.mark.parametrize("limit", [1, 13, 200])
def test_merged_accumulators_keep_what_one_would(limit):
    """A combiner's accumulators meet in any grouping: the result is the same."""
    records = some_records(400, seed=3)
    expected = in_training_order(records)[:limit]
    rng = random.Random(limit)
    parts = []
    for batch in batches(records, rng):
        part = FirstInOrder(limit)
        for piece in batches(batch, rng) if len(batch) > 1 else [batch]:
            part.add(piece)
        parts.append(part)
    merged = parts[0]
    for part in parts[1:]:
        merged.merge(part)
    assert merged.seen == len(records) and merged.records() == expected


def test_digests_next_to_the_bound_compare_exactly(monkeypatch):
    """A digest one above the bound is dropped as it comes, also near 2**64 (compared as unsigned
    64-bit numbers, not as floats, to which the four digests here are one number)."""
    top = 2**64 - 1
    digests = {b"a": top - 4096, b"b": top - 4095, b"c": top - 4094, b"d": top - 4097}
    monkeypatch.setattr(training_order, "order_digests", lambda records: np.array([digests[r] for r in records], ">u8"))
    first = FirstInOrder(2)
    first.add([b"a", b"b"])
    first.prune()
    first.add([b"c", b"d"])
    assert len(first) == 3, "c is above the bound and is not held"
    assert first.records() == [b"d", b"a"]


def test_the_pool_stays_within_its_capacity():
    first = FirstInOrder(50)
    for start in range(0, 20_000, 1_000):
        first.add([start.to_bytes(4, "big") + index.to_bytes(4, "big") for index in range(1_000)])
        assert len(first) < 50 + 256
    assert len(first.records()) == 50


def test_a_limit_below_one_is_refused():
    with pytest.raises(ValueError, match="limit must be at least 1, got 0"):
        FirstInOrder(0)


def test_the_combiner_on_beam_gives_the_first_records():
    records = some_records(500, seed=9)
    rng = random.Random(2)
    with TestPipeline(argv=BEAM_ARGS) as pipeline:
        first = pipeline | beam.Create(batches(records, rng)) | beam.CombineGlobally(FirstInOrderFn(40))
        assert_that(first | beam.Map(FirstInOrder.records), equal_to([in_training_order(records)[:40]]))


def test_the_combiner_on_no_input_gives_no_records():
    with TestPipeline(argv=BEAM_ARGS) as pipeline:
        first = pipeline | beam.Create([]) | beam.CombineGlobally(FirstInOrderFn(3))
        assert_that(first | beam.Map(FirstInOrder.records), equal_to([[]]))


def test_record_lists_cut_the_records_in_order():
    records = some_records(100, seed=4)
    first = FirstInOrder(70)
    first.add(records)
    lists = list(first.record_lists(rows=16))
    assert [len(part) for part in lists] == [16, 16, 16, 16, 6]
    assert [record for part in lists for record in part] == in_training_order(records)[:70] == first.records()


def write_heads(root, limit: int, split_rows: dict[str, int]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / HEADS_FILE).write_text(json.dumps(heads_manifest(limit, split_rows)))
    for split in split_rows:
        head_path(root, split).parent.mkdir(parents=True, exist_ok=True)
        head_path(root, split).write_bytes(b"")


def test_a_head_serves_up_to_its_limit_or_all_of_a_smaller_split(tmp_path):
    write_heads(tmp_path, 100, {"train": 1_000, "eval": 60})
    assert json.loads((tmp_path / HEADS_FILE).read_text())["splits"] == {
        "eval": {"head_rows": 60, "rows": 60}, "train": {"head_rows": 100, "rows": 1_000}}
    path, rows, why = head_for(tmp_path, "train", 100)
    assert path == head_path(tmp_path, "train") and rows == 1_000 and "first 100 of 1,000" in why
    path, rows, why = head_for(tmp_path, "eval", 5_000)
    assert path == head_path(tmp_path, "eval") and rows == 60 and "first 60 of 60" in why
    path, rows, why = head_for(tmp_path, "train", 101)
    assert path is None and rows is None and "hold 100 rows a split, fewer than the 101 needed of 1,000" in why


@pytest.mark.parametrize(
    "manifest, reason",
    [
        (None, "does not exist (transformed before heads were written)"),
        ("{not json", "is not a heads manifest with split 'train' (JSONDecodeError"),
        ({"order": ORDER_DESCRIPTION, "limit": 5, "splits": {"eval": {"rows": 3}}}, "is not a heads manifest with split 'train' (KeyError"),
        ({"order": "by line", "limit": 5, "splits": {"train": {"rows": 3}}}, "describes another order ('by line')"),
    ],
)
def test_no_head_says_why(tmp_path, manifest, reason):
    if manifest is not None:
        (tmp_path / HEADS_FILE).write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
    path, rows, why = head_for(tmp_path, "train", 3)
    assert path is None and rows is None and reason in why


def test_a_manifest_without_its_file_is_no_head(tmp_path):
    write_heads(tmp_path, 10, {"train": 5})
    head_path(tmp_path, "train").unlink()
    path, _, why = head_for(tmp_path, "train", 3)
    assert path is None and why.endswith("data-00000-of-00001.tfrecord.gz does not exist")


def test_an_accumulator_pickles_to_what_it_holds_after_every_change():
    import pickle

    records = some_records(300, seed=5)
    first = FirstInOrder(20)
    first.add(records[:100])
    assert pickle.loads(pickle.dumps(first)).records() == in_training_order(records[:100])[:20]
    first.add(records[100:130])  # no prune: only the added records change what is held
    assert pickle.loads(pickle.dumps(first)).records() == in_training_order(records[:130])[:20]
    first.add(records[130:])
    copy = pickle.loads(pickle.dumps(first))
    assert copy.records() == first.records() == in_training_order(records)[:20] and copy.seen == len(records)
    other = FirstInOrder(20)
    other.add([b"\0"])
    first.merge(other)
    assert pickle.loads(pickle.dumps(first)).records() == in_training_order([*records, b"\0"])[:20]


def test_records_with_one_digest_are_ordered_by_their_bytes(monkeypatch):
    """Different records whose digests collide: their bytes order them, in the pool as in the definition."""
    monkeypatch.setattr(training_order, "order_digests", lambda records: np.zeros(len(records), ">u8"))
    monkeypatch.setattr(training_order, "order_digest", lambda record: bytes(8))
    records = some_records(900, seed=6)
    first = FirstInOrder(30)
    for start in range(0, len(records), 50):  # pruned on the way: later records meet the bound
        first.add(records[start:start + 50])
    assert first.records() == sorted(records)[:30] == in_training_order(records)[:30]
