"""Clean's screen of a batch of raw records: which rows the per-row steps must see.

Decoding a record strictly in Python (clean.decode_strict) costs ~30 us; decoding a batch of them
in C++ (tfx_bsl's ExamplesToRecordBatchDecoder, into Arrow columns) costs a few us a row, and the
rules then run as column operations. A row passes the screen only when the per-row steps would keep
it exactly as stored: every feature known and of its kind with at most one value, floats finite,
text UTF-8, every required feature with a value, every checked value inside its range. Every other
row (and every row of a batch the decoder refuses, or whose columns are not what the rules expect)
goes through the per-row steps, which decide, word for word, as they always did. So the screen may
send a row that needs nothing (a production row without tips, whose observed label stands in), but
never lets one through that a rule would refuse or change.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tfx_bsl.coders.example_coder import ExamplesToRecordBatchDecoder

from beam_jobs.tfrecord_batches import BATCH_ROWS  # noqa: F401 - clean's batch size is the reader's
from transforms.features import Feature, Kind

_LIST_TYPES = {Kind.FLOAT: pa.large_list(pa.float32()), Kind.INT: pa.large_list(pa.int64()),
               Kind.STRING: pa.large_list(pa.large_binary())}
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
        self._decoder: ExamplesToRecordBatchDecoder | None = None

    def __getstate__(self) -> dict[str, Any]:
        # The decoder is made where the screen runs (a worker), not pickled with the DoFn.
        return {**self.__dict__, "_decoder": None}

    def rows_needing_rules(self, records: Sequence[bytes]) -> np.ndarray:
        """A bool per record: True when the per-row steps must see it."""
        everything = np.ones(len(records), dtype=bool)
        if self._decoder is None:
            self._decoder = ExamplesToRecordBatchDecoder()
        try:
            batch = self._decoder.DecodeBatch(list(records))
        except RuntimeError:  # a record that is no Example, or a feature stored as two kinds
            return everything
        columns = dict(zip(batch.schema.names, batch.columns))
        if not self._known_names.issuperset(columns):
            return everything
        needing = np.zeros(len(records), dtype=bool)
        for name, column in columns.items():
            kind = self._stored_kinds.get(name)
            if kind is None or pa.types.is_null(column.type):  # the source line, or no value in any row
                continue
            if column.type != _LIST_TYPES[kind]:  # stored as another kind in every row that has it
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
            if column is None or column.type != _LIST_TYPES[kind]:
                continue
            values = column.flatten().to_numpy(zero_copy_only=False)
            if kind is Kind.FLOAT:
                values = values.astype(np.float64)  # exact: the per-row check compares Python floats
            outside = ~((values >= low) & (values <= high))
            if kind is Kind.INT:
                outside |= (values > _EXACT_IN_FLOAT64) | (values < -_EXACT_IN_FLOAT64)
            needing[_parents(column)[outside]] = True
        return needing


def _value_counts(column: pa.Array) -> np.ndarray:
    """Values per row (0 for a row without the feature or with an empty one)."""
    return pc.list_value_length(column).fill_null(0).to_numpy(zero_copy_only=False)


def _parents(column: pa.Array) -> np.ndarray:
    """The row of each value of column.flatten()."""
    return pc.list_parent_indices(column).to_numpy(zero_copy_only=False)


def one_record_batch(record: bytes) -> list[bytes]:
    return [record]
