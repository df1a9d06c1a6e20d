"""Lists of serialized tf.Examples -> Arrow RecordBatches, parsed by TensorFlow's C++ example parser.

tfx_bsl's `ExamplesToRecordBatchDecoder` (what TFXIO and TFDV decode with) costs 7-9 us a taxi row
here: at 1.5M rows that was half of the statistics step and a large part of transform.
`tf.io.parse_example` (the parser behind TensorFlow's input pipelines) plus building the Arrow
arrays from its ragged output costs under 2 us a row. `ExampleBatchDecoder` makes, from that, the
batch tfx_bsl's decoder makes, column for column:

- with a schema: every schema feature, in the schema's order, of the schema's type;
- without one: the features that occur in some record of the batch, sorted by name, each of the
  kind it is stored as; here restricted to the features the decoder is given (statistics describe
  only those: the other columns are what TFDV's `feature_allowlist` drops);
- a row without the feature, or with it but no kind set, is null; one with an empty list of the
  feature's kind is an empty list (TFDV counts the first as missing, the second as present).

TensorFlow's parser gives a row no values in all three cases, so the rows that may hold a feature
without values are looked at once more: such a feature serializes with one of
example_codec.EMPTY_FEATURE_MARKS in the record (and value bytes can look like one, so the look may
find nothing). A feature stored as
another kind (even an empty list of it), a map entry without its Feature, bytes that are no Example:
TensorFlow's parser refuses them, and the batch goes to tfx_bsl's decoder, whose answer (or error)
is the reference. One difference, known: a feature key that is not UTF-8 (of a feature not decoded)
makes protobuf, and so tfx_bsl, refuse the record (DATA_LOSS), where TensorFlow's parser skips the
feature; records reach the decoder from TFRecord files whose every record passed its CRC check.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow_metadata.proto.v0 import schema_pb2

from beam_jobs.example_codec import EMPTY_FEATURE_MARKS
from beam_jobs.example_wire import ARROW_LIST_TYPES, SCHEMA_KINDS
from transforms.features import Kind

_TF_TYPES = {Kind.FLOAT: tf.float32, Kind.INT: tf.int64, Kind.STRING: tf.string}


class ExampleBatchDecoder:
    """`decode(records)` is `tfx_bsl.coders.example_coder.ExamplesToRecordBatchDecoder(schema).DecodeBatch(records)`
    (without a schema: its columns of `kinds`' features), computed faster; see the module docstring.
    Build it with `for_schema` or `for_features`."""

    def __init__(self, kinds: Mapping[str, Kind], schema: schema_pb2.Schema | None) -> None:
        self._kinds = dict(kinds)
        self._with_schema = schema is not None
        # A schema's order, else by name: the order of tfx_bsl's columns.
        self._names = tuple(kinds) if self._with_schema else tuple(sorted(kinds))
        self._spec = {name: tf.io.RaggedFeature(_TF_TYPES[kind], row_splits_dtype=tf.int64)
                      for name, kind in self._kinds.items()}
        self._schema_bytes = schema.SerializeToString() if schema is not None else None
        self._reference: Any = None

    @classmethod
    def for_schema(cls, schema: schema_pb2.Schema) -> "ExampleBatchDecoder | None":
        """The decoder of a schema of plain features (a type each, nothing else: what TFT's
        `schema_from_feature_spec` makes of VarLenFeatures); None for any other schema."""
        if schema.sparse_feature or schema.weighted_feature or schema.tensor_representation_group:
            return None
        kinds: dict[str, Kind] = {}
        for feature in schema.feature:
            kind = SCHEMA_KINDS.get(feature.type)
            if kind is None or feature.name in kinds or feature.HasField("struct_domain"):
                return None
            kinds[feature.name] = kind
        return cls(kinds, schema)

    @classmethod
    def for_features(cls, kinds: Mapping[str, Kind]) -> "ExampleBatchDecoder":
        """The decoder without a schema, restricted to `kinds`' features (each expected as its kind)."""
        return cls(kinds, None)

    def decode(self, records: Sequence[bytes]) -> pa.RecordBatch:
        records = list(records)
        try:
            parsed = tf.io.parse_example(tf.constant(records, dtype=tf.string), self._spec)
        # A record that is no Example, or a feature of another kind (an error whose message quotes
        # bytes that are not UTF-8 reaches Python as a UnicodeDecodeError).
        except (tf.errors.InvalidArgumentError, UnicodeDecodeError):
            return self._decode_by_reference(records)
        present = self._present_without_values(records)
        if present is None:
            return self._decode_by_reference(records)
        names: list[str] = []
        columns: list[pa.Array] = []
        for name in self._names:
            ragged = parsed[name]
            splits = ragged.row_splits.numpy()
            valid = splits[1:] > splits[:-1]
            with_kind, without_kind = present.get(name, ((), ()))
            valid[list(with_kind)] = True
            if not self._with_schema and not valid.any():
                if without_kind:
                    names.append(name)
                    columns.append(pa.nulls(len(records)))
                continue
            list_type = ARROW_LIST_TYPES[self._kinds[name]]
            values = pa.array(ragged.values.numpy(), type=list_type.value_type)
            names.append(name)
            columns.append(pa.LargeListArray.from_arrays(pa.array(splits), values, type=list_type,
                                                         mask=None if valid.all() else pa.array(~valid)))
        return pa.RecordBatch.from_arrays(columns, names)

    def _present_without_values(self, records: list[bytes]) -> dict[str, tuple[list[int], list[int]]] | None:
        """Per feature, the rows holding it without values: (with an empty list, with no kind set).
        (An empty list of another kind than the feature's fails TensorFlow's parse, as a map entry
        holding only its key does.)"""
        found: dict[str, tuple[list[int], list[int]]] = {}
        for row in _rows_with_a_mark(records).tolist():
            record = records[row]
            try:
                example = tf.train.Example.FromString(record)
            except DecodeError:  # TensorFlow's parser read what protobuf refuses (a key not UTF-8)
                return None
            for name, feature in example.features.feature.items():
                if name not in self._kinds:
                    continue
                stored = feature.WhichOneof("kind")
                if stored is None:
                    found.setdefault(name, ([], []))[1].append(row)
                elif not getattr(feature, stored).value:
                    found.setdefault(name, ([], []))[0].append(row)
        return found

    def _decode_by_reference(self, records: list[bytes]) -> pa.RecordBatch:
        if self._reference is None:
            from tfx_bsl.coders.example_coder import ExamplesToRecordBatchDecoder

            self._reference = (ExamplesToRecordBatchDecoder(self._schema_bytes) if self._schema_bytes is not None
                               else ExamplesToRecordBatchDecoder())
        batch = self._reference.DecodeBatch(records)
        if self._with_schema:
            return batch
        keep = [i for i, name in enumerate(batch.schema.names) if name in self._kinds]
        return pa.RecordBatch.from_arrays([batch.column(i) for i in keep], [batch.schema.names[i] for i in keep])


def _rows_with_a_mark(records: list[bytes]) -> np.ndarray:
    """The rows whose bytes hold one of EMPTY_FEATURE_MARKS (two bytes each), found in the batch's
    bytes at once; a mark across two records' boundary counts for the first (one more row looked at).
    Each mark's second byte is searched first (one pass for all marks that share it: every mark ends
    in 0x00), then only where it is found, the first."""
    joined = np.frombuffer(b"".join(records), dtype=np.uint8)
    if len(joined) < 2:
        return np.zeros(0, dtype=np.int64)
    found = []
    for second in sorted({mark[1] for mark in EMPTY_FEATURE_MARKS}):
        at = np.flatnonzero(joined[1:] == second)
        firsts = [mark[0] for mark in EMPTY_FEATURE_MARKS if mark[1] == second]
        found.append(at[np.isin(joined[at], firsts)])
    ends = np.cumsum(np.fromiter(map(len, records), dtype=np.int64, count=len(records)))
    return np.unique(np.searchsorted(ends, np.concatenate(found), side="right"))
