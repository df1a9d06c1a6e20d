"""example_wire.ExamplesEncoder writes, per row, the Example tfx_bsl's RecordBatchToExamplesEncoder
writes (byte for byte in protobuf's deterministic form, the form ExampleWire makes), on the taxi
columns and on random batches: NaN and -0.0, ints of every varint size, texts of every length and
not UTF-8, rows without a feature, empty lists, several values (those go to tfx_bsl's encoder)."""

from __future__ import annotations

import math
import random
import struct

import numpy as np
import pyarrow as pa
import pytest
import tensorflow as tf
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx_bsl.coders.example_coder import RecordBatchToExamplesEncoder

from beam_jobs.example_decoder import ExampleBatchDecoder
from beam_jobs.example_wire import ExamplesEncoder, binary_values
from tests.beam_jobs.test_example_decoder import _taxi_records
from transforms.feature_spec import raw_schema

_TYPES = {"float": (schema_pb2.FLOAT, pa.float32()), "int": (schema_pb2.INT, pa.int64()),
          "text": (schema_pb2.BYTES, pa.large_binary())}


def _value(kind: str, rng: random.Random):
    if kind == "float":
        return rng.choice([rng.uniform(-1e6, 1e6), 0.0, -0.0, math.nan, math.inf, 1e-40,
                           struct.unpack("<f", struct.pack("<I", 0x7FC12345))[0]])
    if kind == "int":
        return rng.choice([rng.randint(0, 127), rng.randint(128, 2**14), rng.randint(-2**63, 2**63 - 1), -1,
                           2**63 - 1, rng.randint(0, 2**35)])
    if rng.random() < 0.003:  # too long for the fast path: its batch goes to tfx_bsl
        return b"x" * rng.choice([124, 300])
    return rng.choice([b"", b"Cash", "Flash Cab ü".encode(), b"\xff\xfe", b"x" * rng.choice([60, 123])])


def _batch(rng: random.Random, names: dict[str, str], rows: int, odd: float) -> pa.RecordBatch:
    columns = []
    for name, kind in names.items():
        cells = []
        for _ in range(rows):
            shape = rng.random()
            if shape < odd / 3:
                cells.append(None)
            elif shape < 2 * odd / 3:
                cells.append([])
            elif shape < odd:
                cells.append([_value(kind, rng) for _ in range(rng.randint(2, 3))])
            else:
                cells.append([_value(kind, rng)])
        columns.append(pa.array(cells, type=pa.large_list(_TYPES[kind][1])))
    return pa.RecordBatch.from_arrays(columns, list(names))


def _schema(names: dict[str, str]) -> schema_pb2.Schema:
    schema = schema_pb2.Schema()
    for name, kind in names.items():
        schema.feature.add(name=name, type=_TYPES[kind][0])
    return schema


def _deterministic(record: bytes) -> bytes:
    return tf.train.Example.FromString(record).SerializeToString(deterministic=True)


def _assert_encodes_as_tfx_bsl(names: dict[str, str], batch: pa.RecordBatch) -> bool:
    """True when the batch took the fast path."""
    schema = _schema(names)
    encoder = ExamplesEncoder(schema)
    got = encoder.encode(batch)
    want = RecordBatchToExamplesEncoder(schema).encode(batch)
    assert len(got) == len(want)
    fast = encoder._reference is None
    for mine, theirs in zip(got, want):
        # tfx_bsl's map order varies from call to call; the fast path's is the deterministic one.
        assert (mine if fast else _deterministic(mine)) == _deterministic(theirs)
    return fast


@pytest.mark.parametrize("seed", range(10))
def test_random_batches_encode_as_tfx_bsl_encodes_them(seed):
    rng = random.Random(seed)
    fast = 0
    for _ in range(12):
        names = {f"f{i}_{rng.choice(['a', 'bb', 'x' * 40, 'z' * 130])}": rng.choice(list(_TYPES))
                 for i in range(rng.randint(1, 12))}
        batch = _batch(rng, names, rng.randint(1, 300), rng.choice([0.0, 0.0, 0.0, 0.01, 0.2]))
        fast += _assert_encodes_as_tfx_bsl(names, batch)
    assert fast > 0


def test_dense_batches_take_the_fast_path_and_others_do_not():
    rng = random.Random(7)
    names = {"b_int": "int", "a_float": "float", "c_text": "text"}
    dense = pa.RecordBatch.from_arrays(
        [pa.array([[rng.randint(0, 300)] for _ in range(50)], pa.large_list(pa.int64())),
         pa.array([[rng.random()] for _ in range(50)], pa.large_list(pa.float32())),
         pa.array([[b"ok"] for _ in range(50)], pa.large_list(pa.large_binary()))], list(names))
    assert _assert_encodes_as_tfx_bsl(names, dense)
    with_a_null = pa.RecordBatch.from_arrays([pa.array([None] + [[1]] * 49, pa.large_list(pa.int64())),
                                              *dense.columns[1:]], list(names))
    assert _assert_encodes_as_tfx_bsl(names, with_a_null)  # a null: a Feature without a kind, as tfx_bsl writes
    all_null = pa.RecordBatch.from_arrays([pa.array([None] * 50, pa.large_list(pa.int64())), dense.columns[1],
                                           pa.array([None] * 50, pa.large_list(pa.large_binary()))], list(names))
    assert _assert_encodes_as_tfx_bsl(names, all_null)  # columns with no value at all
    with_two_values = pa.RecordBatch.from_arrays([pa.array([[1, 2]] + [[1]] * 49, pa.large_list(pa.int64())),
                                                  *dense.columns[1:]], list(names))
    assert not _assert_encodes_as_tfx_bsl(names, with_two_values)
    other_columns = pa.RecordBatch.from_arrays(dense.columns[:2], ["b_int", "a_float"])
    assert not _assert_encodes_as_tfx_bsl(names, other_columns)


def test_the_taxi_columns_take_the_fast_path_and_encode_as_tfx_bsl_encodes_them():
    raw = ExampleBatchDecoder.for_schema(raw_schema()).decode(_taxi_records(2000))
    kinds = {name: ("float" if pa.types.is_floating(column.type.value_type) else
                    "int" if pa.types.is_integer(column.type.value_type) else "text")
             for name, column in zip(raw.schema.names, raw.columns)}
    # Missing values (nulls, written as Features without a kind), texts, ints of several sizes.
    assert _assert_encodes_as_tfx_bsl(kinds, raw)


def test_binary_values_are_the_arrays_values():
    array = pa.array([b"a", b"", b"\x00\xff", b"xyz"], pa.large_binary())
    assert binary_values(array) == array.to_pylist()
    assert binary_values(array.slice(1, 2)) == [b"", b"\x00\xff"]
    assert binary_values(pa.array([], pa.large_binary())) == []
    assert np.array_equal(binary_values(pa.array([b""] * 3, pa.large_binary())), [b""] * 3)
