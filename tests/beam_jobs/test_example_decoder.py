"""example_decoder.ExampleBatchDecoder makes the batch tfx_bsl's ExamplesToRecordBatchDecoder makes
(with a schema; without one, its columns of the given features), column for column: names, order,
types, nulls and empty lists, values bit for bit, or the same error. Checked on the shipped taxi
rows and on random records with everything a record may hold: missing, empty and kind-less features,
entries without a Feature, several values, NaN and infinities, text that is not UTF-8, undeclared
features, features stored as another kind, merged (concatenated) records and bytes that are no
Example."""

from __future__ import annotations

import csv
import math
import random
import struct

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import tensorflow as tf
from tfx_bsl.coders.example_coder import ExamplesToRecordBatchDecoder

from beam_jobs.example_codec import SOURCE_LINE_KEY, serialize_row
from beam_jobs.example_decoder import ExampleBatchDecoder
from tests.beam_jobs._helpers import parse_csv_row
from tests.conftest import TAXI_CSV
from transforms.feature_spec import raw_schema
from transforms.features import EXAMPLE_FEATURES, Kind

KINDS = {feature.name: feature.kind for feature in EXAMPLE_FEATURES}


def _reference(records: list[bytes], schema=None, kinds=KINDS) -> pa.RecordBatch:
    decoder = ExamplesToRecordBatchDecoder(schema.SerializeToString()) if schema is not None else ExamplesToRecordBatchDecoder()
    batch = decoder.DecodeBatch(records)
    if schema is not None:
        return batch
    keep = [i for i, name in enumerate(batch.schema.names) if name in kinds]
    return pa.RecordBatch.from_arrays([batch.column(i) for i in keep], [batch.schema.names[i] for i in keep])


def _assert_same(got: pa.RecordBatch, want: pa.RecordBatch) -> None:
    assert got.schema.names == want.schema.names
    assert got.schema.types == want.schema.types
    assert got.num_rows == want.num_rows
    for name, mine, theirs in zip(want.schema.names, got.columns, want.columns):
        assert mine.is_valid().to_pylist() == theirs.is_valid().to_pylist(), name
        if pa.types.is_null(theirs.type):
            continue
        assert pc.list_value_length(mine).to_pylist() == pc.list_value_length(theirs).to_pylist(), name
        mine_values, their_values = mine.flatten(), theirs.flatten()
        if pa.types.is_floating(their_values.type):  # bit for bit: NaN payloads and -0.0 included
            assert (mine_values.to_numpy(zero_copy_only=False).view(np.uint32).tolist()
                    == their_values.to_numpy(zero_copy_only=False).view(np.uint32).tolist()), name
        else:
            assert mine_values.to_pylist() == their_values.to_pylist(), name


def _check(records: list[bytes]) -> None:
    """Both decoders (with the raw schema, and without one), against the reference."""
    for schema, decoder in ((raw_schema(), ExampleBatchDecoder.for_schema(raw_schema())),
                            (None, ExampleBatchDecoder.for_features(KINDS))):
        try:
            want = _reference(records, schema)
        except RuntimeError as err:
            with pytest.raises(RuntimeError) as raised:
                decoder.decode(records)
            # The same status; which conflicting feature tfx_bsl names first varies between its instances.
            assert str(raised.value).split(":")[0] == str(err).split(":")[0]
            continue
        _assert_same(decoder.decode(records), want)


def _taxi_records(limit: int) -> list[bytes]:
    with open(TAXI_CSV, newline="", encoding="utf-8") as handle:
        rows = [parse_csv_row(row) for _, row in zip(range(limit), csv.DictReader(handle))]
    return [serialize_row({**row, SOURCE_LINE_KEY: line}) for line, row in enumerate(rows, start=2)]


def test_the_shipped_taxi_rows_decode_as_tfx_bsl_decodes_them():
    records = _taxi_records(3000)
    for start in range(0, len(records), 1024):
        _check(records[start:start + 1024])


def test_a_schema_with_more_than_plain_features_is_left_to_tfx_bsl():
    schema = raw_schema()
    schema.sparse_feature.add().name = "coordinates"
    assert ExampleBatchDecoder.for_schema(schema) is None


# --- Random records ---

_VALUE_MAKERS = {
    Kind.FLOAT: lambda rng: rng.choice([rng.uniform(-1e6, 1e6), 0.0, -0.0, math.nan, math.inf, -math.inf, 1e-40,
                                        struct.unpack("<f", struct.pack("<I", 0x7FC12345))[0]]),
    Kind.INT: lambda rng: rng.choice([rng.randint(-2**63, 2**63 - 1), 0, rng.randint(0, 300), -1]),
    Kind.STRING: lambda rng: rng.choice([b"", b"Cash", "Flash Cab ü".encode(), b"\xff\xfe not utf-8", bytes([0x12, 0])]),
}
_FIELDS = {Kind.FLOAT: "float_list", Kind.INT: "int64_list", Kind.STRING: "bytes_list"}


def _random_feature(feature: tf.train.Feature, kind: Kind, rng: random.Random) -> None:
    shape = rng.random()
    if shape < 0.05:
        return  # a Feature without a kind
    if shape < 0.12:
        getattr(feature, _FIELDS[kind]).SetInParent()  # an empty list
        return
    count = 1 if shape < 0.9 else rng.randint(2, 4)
    getattr(feature, _FIELDS[kind]).value.extend(_VALUE_MAKERS[kind](rng) for _ in range(count))


def _random_record(rng: random.Random, names: list[str], other_kind: float) -> bytes:
    example = tf.train.Example()
    for name in rng.sample(names, rng.randint(0, len(names))):
        kind = KINDS[name]
        if rng.random() < other_kind:
            kind = rng.choice([k for k in Kind if k is not kind])
        _random_feature(example.features.feature[name], kind, rng)
    if rng.random() < 0.2:
        _random_feature(example.features.feature[SOURCE_LINE_KEY], Kind.INT, rng)
    if rng.random() < 0.05:
        example.features.feature["undeclared"].bytes_list.value.append(b"x")
    record = example.SerializeToString()
    if rng.random() < 0.02:  # a map entry holding only its key: present, without a Feature
        key = rng.choice(names).encode()
        entry = bytes((0x0A, len(key) + 2, 0x0A, len(key))) + key
        record += bytes((0x0A, len(entry))) + entry
    if rng.random() < 0.02:  # two records concatenated: protobuf merges them, the later entry wins
        record += _random_record(rng, names, other_kind)
    return record


@pytest.mark.parametrize("seed", range(12))
def test_random_records_decode_as_tfx_bsl_decodes_them(seed):
    rng = random.Random(seed)
    for _ in range(12):
        names = rng.sample(list(KINDS), rng.randint(1, len(KINDS)))  # some features absent from the batch
        other_kind = rng.choice([0.0, 0.0, 0.002, 0.05])
        records = [_random_record(rng, names, other_kind) for _ in range(rng.randint(1, 300))]
        if rng.random() < 0.1:
            records[rng.randrange(len(records))] = rng.choice([b"\xff\x00garbage", b"\x0a\x05\x0a\x03abc"])
        _check(records)


def test_a_feature_only_ever_present_without_values_decodes_as_tfx_bsl_decodes_it():
    # No kind; an empty list of its kind; an empty list of another kind.
    for make in (lambda f: None, lambda f: f.float_list.SetInParent(), lambda f: f.int64_list.SetInParent()):
        example = tf.train.Example()
        make(example.features.feature["fare"])
        _check([example.SerializeToString(), tf.train.Example().SerializeToString()])
    bare = b"\x0a\x08\x0a\x06\x0a\x04fare"  # features { feature { key: "fare" } }: no Feature at all
    _check([bare, tf.train.Example().SerializeToString()])


def test_the_known_difference_a_key_that_is_not_utf8_is_skipped_where_tfx_bsl_refuses_the_record():
    example = tf.train.Example()
    example.features.feature["fare"].float_list.value.append(1.5)
    key = b"\xffbad"
    entry = bytes((0x0A, len(key))) + key + bytes((0x12, 5, 0x1A, 3, 0x0A, 1, 1))
    record = example.SerializeToString() + bytes((0x0A, len(entry) + 2, 0x0A, len(entry))) + entry
    with pytest.raises(RuntimeError, match="DATA_LOSS"):
        _reference([record])
    batch = ExampleBatchDecoder.for_features(KINDS).decode([record])
    assert batch.schema.names == ["fare"] and batch.column(0).to_pylist() == [[1.5]]
