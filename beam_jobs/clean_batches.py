"""Clean's screen of a batch of raw records: which rows the per-row steps must see.

Decoding a record strictly in Python (clean.decode_strict) costs ~30 us; decoding a batch of them
into Arrow columns (example_decoder.ExampleBatchDecoder, TensorFlow's C++ parser) costs ~2 us a row,
and the rules then run as column operations. A row that passes is one clean writes as its content:
when the record is in protobuf's deterministic form (ingest writes that), the content comes from
its bytes, checked against the columns (beam_jobs/canonical_examples.py); any other is parsed once
more (protobuf), to see that it holds no feature beyond those and to serialize its content. A row passes the
screen only when the per-row steps would keep it exactly as stored: every feature known and of its
kind with at most one value, floats finite, text UTF-8, every required feature with a value, every
checked value inside its range. Every other row (and every row of a batch the decoder refuses, or
whose columns are not what the rules expect) goes through the per-row steps, which decide, word for
word, as they always did. So the screen may send a row that needs nothing (a production row without
tips, whose observed label stands in), but never lets one through that a rule would refuse or
change.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import tensorflow as tf
from google.protobuf.message import DecodeError

from beam_jobs.canonical_examples import CanonicalContents
from beam_jobs.dedupe import content_bytes
from beam_jobs.example_decoder import ExampleBatchDecoder
from beam_jobs.example_wire import ARROW_LIST_TYPES
from beam_jobs.tfrecord_batches import BATCH_ROWS  # noqa: F401 - clean's batch size is the reader's
from transforms.features import Feature, Kind

# Integers beyond this may not compare exactly once numpy makes them float64 to meet a bound.
_EXACT_IN_FLOAT64 = 2 ** 53


class BatchScreen:
    """`stored_kinds`: the kind each feature decode_strict checks must be stored as; `known_names`:
    the features (and the source line) a record may hold; `required`, `checked`: the rules' required
    features and (feature, low, high) ranges, as clean.CleanRecordFn holds them."""

    def __init__(self, stored_kinds: Mapping[str, Kind], known_names: frozenset[str], required: Sequence[Feature],
                 checked: Sequence[tuple[Feature, float, float]]) -> None:
        self._stored_kinds = dict(stored_kinds)
        self._known_names = known_names
        self._required = tuple(feature.name for feature in required)
        self._checked = tuple((feature.name, feature.kind, low, high) for feature, low, high in checked)
        self._decoder: ExampleBatchDecoder | None = None

        # The known features of their kinds, and the source line (an int): what the screen decodes.
        self.decoded_kinds = {name: self._stored_kinds.get(name, Kind.INT) for name in sorted(known_names)}
        self._canonical = CanonicalContents(self.decoded_kinds)

    def __getstate__(self) -> dict[str, Any]:
        # The decoder is made where the screen runs (a worker), not pickled with the DoFn.
        return {**self.__dict__, "_decoder": None}

    def contents_kept_as_stored(self, records: Sequence[bytes]) -> list[bytes | None]:
        """Per record, its content (dedupe.content_bytes of its Example, what clean writes) when the
        per-row steps would keep it exactly as stored, else None (the per-row steps must see it).
        A record in protobuf's deterministic form (as ingest writes them) gives its content from its
        own bytes (beam_jobs/canonical_examples.py); any other is parsed."""
        needing, entries, batch = self._screen_columns(records)
        if batch is None:
            return [None] * len(records)
        canonical = self._canonical.contents(records, batch)
        return [None if needs else content if content is not None else self._content_of_known_features(record, count)
                for record, needs, count, content in zip(records, needing, entries.tolist(), canonical)]

    def _screen_columns(self, records: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray, pa.RecordBatch | None]:
        """(a bool per record: True when the per-row steps must see it, as far as its known features
        tell; per record, how many map entries it holds if all its features are known; the decoded
        batch, None when every record must go to the per-row steps)."""
        everything = (np.ones(len(records), dtype=bool), np.zeros(len(records), dtype=np.int64), None)
        if self._decoder is None:
            self._decoder = ExampleBatchDecoder.for_features(self.decoded_kinds)
        try:
            batch = self._decoder.decode(records)
        except RuntimeError:  # a record that is no Example, or a feature stored as two kinds
            return everything
        columns = dict(zip(batch.schema.names, batch.columns))
        # Map entries a row holds if every feature it has is known (one with no kind set counts no
        # entry here, so such a row goes to the rules, which keep it).
        entries = sum((column.is_valid().to_numpy(zero_copy_only=False).astype(np.int64)
                                  for column in columns.values()), np.zeros(len(records), dtype=np.int64))
        needing = np.zeros(len(records), dtype=bool)
        for name, column in columns.items():
            kind = self._stored_kinds.get(name)
            if kind is None or pa.types.is_null(column.type):  # the source line, or no value in any row
                continue
            if column.type != ARROW_LIST_TYPES[kind]:  # stored as another kind in every row that has it
                needing |= column.is_valid().to_numpy(zero_copy_only=False)
                continue
            needing |= _value_counts(column) > 1
            if kind is Kind.FLOAT:
                values = column.flatten().to_numpy(zero_copy_only=False)
                needing[_parents(column)[~np.isfinite(values)]] = True
            elif kind is Kind.STRING:
                try:
                    column.flatten().cast(pa.large_string())  # validates UTF-8
                except pa.ArrowInvalid:
                    return everything
        for name in self._required:
            column = columns.get(name)
            if column is None or pa.types.is_null(column.type):
                return everything
            needing |= _value_counts(column) == 0
        for name, kind, low, high in self._checked:
            column = columns.get(name)
            if column is None or column.type != ARROW_LIST_TYPES[kind]:
                continue
            values = column.flatten().to_numpy(zero_copy_only=False)
            if kind is Kind.FLOAT:
                values = values.astype(np.float64)  # exact: the per-row check compares Python floats
            outside = ~((values >= low) & (values <= high))
            if kind is Kind.INT:
                outside |= (values > _EXACT_IN_FLOAT64) | (values < -_EXACT_IN_FLOAT64)
            needing[_parents(column)[outside]] = True
        return needing, entries, batch

    @staticmethod
    def _content_of_known_features(record: bytes, entries: int) -> bytes | None:
        """The record's content, if it holds no feature beyond the `entries` the screen saw."""
        try:
            example = tf.train.Example.FromString(record)
        except DecodeError:  # a key that is not UTF-8: TensorFlow's parser skipped it
            return None
        return content_bytes(example) if len(example.features.feature) == entries else None


def _value_counts(column: pa.Array) -> np.ndarray:
    """Values per row (0 for a row without the feature or with an empty one)."""
    return pc.list_value_length(column).fill_null(0).to_numpy(zero_copy_only=False)


def _parents(column: pa.Array) -> np.ndarray:
    """The row of each value of column.flatten()."""
    return pc.list_parent_indices(column).to_numpy(zero_copy_only=False)


def one_record_batch(record: bytes) -> list[bytes]:
    return [record]
