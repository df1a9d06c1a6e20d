"""canonical_examples.CanonicalContents: a record's content taken from its own bytes is, whenever it
is given, exactly dedupe.content_bytes of the parsed record; it is given for the records ingest
writes (protobuf's deterministic form), and withheld (None) for every record it cannot vouch for:
other key orders, unknown features, empty or repeated values, long texts, altered bytes."""

from __future__ import annotations

import random
import struct

import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beam_jobs import clean, dedupe
from beam_jobs.canonical_examples import CanonicalContents
from beam_jobs.example_codec import SOURCE_LINE_KEY, RowEncoder, row_to_example
from tests.beam_jobs.test_example_decoder import KINDS, _random_record, _taxi_records
from tests.beam_jobs.test_example_encoder import NAMES, ROWS
from transforms.features import EXAMPLE_FEATURES

CLEAN_KINDS = clean.batch_screen(EXAMPLE_FEATURES).decoded_kinds
ENCODER = RowEncoder(NAMES)


def _content(record: bytes) -> bytes:
    return dedupe.content_bytes(tf.train.Example.FromString(record))


def _deterministic(record: bytes) -> bytes:
    return tf.train.Example.FromString(record).SerializeToString(deterministic=True)


def _assert_vouched_only_when_right(records: list[bytes], kinds=CLEAN_KINDS) -> list[bytes | None]:
    contents = CanonicalContents(kinds).contents(records)  # a new one: no batches skipped
    assert len(contents) == len(records)
    for record, content in zip(records, contents):
        if content is not None:
            assert content == _content(record)
    return contents


def test_ingest_records_give_their_content_from_their_bytes():
    rows = [tf.train.Example.FromString(record) for record in _taxi_records(3000)]
    records = [example.SerializeToString(deterministic=True) for example in rows]
    contents = _assert_vouched_only_when_right(records)
    # Every shipped row but those with a text of 124 bytes or more (none here) is vouched for.
    assert all(content is not None for content in contents)
    # The same rows with their map entries in another order are parsed by the caller instead.
    assert _assert_vouched_only_when_right([example.SerializeToString() for example in rows]) == [None] * len(rows)


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(ROWS, min_size=1, max_size=40))
def test_encoded_rows_are_vouched_for_exactly_when_the_rebuild_can_make_them(rows):
    records = [ENCODER.encode([row[name] for name in NAMES])[1] for row in rows]
    contents = _assert_vouched_only_when_right(records)
    for row, content in zip(rows, contents):
        present = [name for name in NAMES if row[name] is not None]
        long_text = any(isinstance(row[name], str) and len(row[name].encode()) >= 124 for name in present)
        makeable = bool(set(present) - {SOURCE_LINE_KEY}) and not long_text
        assert (content is not None) == makeable, row


@pytest.mark.parametrize("seed", range(8))
def test_random_records_are_vouched_for_only_with_their_exact_content(seed):
    rng = random.Random(seed)
    kinds = {**KINDS, SOURCE_LINE_KEY: CLEAN_KINDS[SOURCE_LINE_KEY]}
    vouched = 0
    for _ in range(10):
        names = rng.sample(list(KINDS), rng.randint(1, len(KINDS)))
        other_kind = rng.choice([0.0, 0.0, 0.05])
        records = [_random_record(rng, names, other_kind) for _ in range(rng.randint(1, 200))]
        deterministic = []
        for record in records:
            try:
                deterministic.append(_deterministic(record))
            except Exception:  # bytes protobuf refuses: left as they are
                deterministic.append(record)
        for batch in (records, deterministic):
            vouched += sum(content is not None for content in _assert_vouched_only_when_right(batch, kinds))
    assert vouched > 0  # some random records are in the form it vouches for


def test_altered_bytes_are_never_vouched_for_with_another_content():
    record = _deterministic(_taxi_records(1)[0])
    altered = []
    for at in range(len(record)):
        for value in (record[at] ^ 0x01, record[at] ^ 0x80, 0x00, 0x0A):
            candidate = record[:at] + bytes((value,)) + record[at + 1:]
            if candidate == record:
                continue
            try:
                tf.train.Example.FromString(candidate)
            except Exception:
                continue  # not an Example: a batch of it is refused by the decoder
            altered.append(candidate)
    assert len(altered) > 200
    vouched = 0
    for start in range(0, len(altered), 64):
        contents = _assert_vouched_only_when_right([record] + altered[start:start + 64])
        vouched += sum(content is not None for content in contents[1:])
    # A changed value byte leaves a record in the form, with another content: vouched for, rightly.
    assert 0 < vouched < len(altered)


def test_what_it_cannot_vouch_for_is_withheld_row_by_row():
    plain = [_deterministic(record) for record in _taxi_records(20)]
    example = tf.train.Example.FromString(plain[0])
    example.features.feature["surge"].float_list.value.append(1.0)  # a feature no rule knows
    unknown = example.SerializeToString(deterministic=True)
    example = tf.train.Example.FromString(plain[1])
    example.features.feature["company"].bytes_list.value[:] = [b"x" * 200]  # a long text
    long_text = example.SerializeToString(deterministic=True)
    example = tf.train.Example.FromString(plain[2])
    example.features.feature["trip_start_month"].int64_list.value.append(3)  # two values
    two_values = example.SerializeToString(deterministic=True)
    example = tf.train.Example.FromString(plain[3])
    example.features.feature["fare"].float_list.SetInParent()
    del example.features.feature["fare"].float_list.value[:]  # an empty list
    empty = example.SerializeToString(deterministic=True)
    only_line = row_to_example({SOURCE_LINE_KEY: 7}).SerializeToString(deterministic=True)
    # A float stored unpacked (valid protobuf, one byte shorter than the packed form), last in the batch.
    float_list = b"\x12\x05\x0d" + struct.pack("<f", 7.5)
    entry = b"\x0a\x04fare" + bytes((0x12, len(float_list))) + float_list
    unpacked = bytes((0x0A, len(entry) + 2, 0x0A, len(entry))) + entry
    assert tf.train.Example.FromString(unpacked).features.feature["fare"].float_list.value == [7.5]
    odd = [unknown, long_text, two_values, empty, only_line, b"", unpacked]
    contents = _assert_vouched_only_when_right(plain[4:] + odd)
    assert all(content is not None for content in contents[:16]) and contents[16:] == [None] * len(odd)


def test_a_record_without_a_source_line_is_its_own_content():
    example = tf.train.Example.FromString(_deterministic(_taxi_records(1)[0]))
    del example.features.feature[SOURCE_LINE_KEY]
    record = example.SerializeToString(deterministic=True)
    assert CanonicalContents(CLEAN_KINDS).contents([record]) == [record]


def test_a_batch_the_decoder_refuses_gives_nothing():
    plain = [_deterministic(record) for record in _taxi_records(5)]
    assert CanonicalContents(CLEAN_KINDS).contents(plain + [b"\xff\x00 not an example"]) == [None] * 6


def test_the_second_read_counts_the_same_digests_with_or_without_the_rebuild():
    records = [_deterministic(record) for record in _taxi_records(500)] + _taxi_records(50)[10:]
    digests = []
    for kinds in (None, CLEAN_KINDS):
        fn = dedupe.BundleDigestsFn(kinds=kinds)
        fn.start_bundle()
        list(fn.process(records))
        digests.append(list(fn._digests))
    assert digests[0] == digests[1] == [dedupe.record_digest(record) for record in records]


def test_after_batches_of_another_writer_its_own_records_are_vouched_for_again():
    plain = [_deterministic(record) for record in _taxi_records(40)]
    other = _taxi_records(40)  # map entries in the order the message was built
    contents = CanonicalContents(CLEAN_KINDS)
    for _ in range(12):
        assert contents.contents(other) == [None] * len(other)
    # Skipped batches are parsed by the caller (None); within 64 batches one is checked again.
    answers = [contents.contents(plain) for _ in range(65)]
    assert all(answer in ([None] * len(plain), [_content(record) for record in plain]) for answer in answers)
    assert answers[-1] == [_content(record) for record in plain]
