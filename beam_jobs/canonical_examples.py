"""Records stored in protobuf's deterministic form: a row's content taken from its bytes, checked.

Clean needs each row's content (dedupe.content_bytes: its Example without the source line, in
protobuf's deterministic form, map entries sorted by key): to digest it, twice (the second read
that counts copies, and the first), and to write the rows it keeps. Parsing a record and
serializing it again costs ~8 us a row in Python. Ingest already writes every record in that form
(example_codec.RowEncoder), so per batch, from the Arrow columns the batch decoder made of it, each
row's deterministic serialization is rebuilt with numpy and compared with the stored bytes. Where
the two are equal the record holds exactly those features with those values, nothing unknown,
empty or encoded otherwise; its content is then its own bytes without the source line's entry,
under a new length.

Every other row gets None and the caller parses it as before: a record another writer made (other
key order, other encodings), a feature with no value or several, a text of 124 bytes or more, a
feature stored as another kind, a batch the decoder refuses.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beam_jobs.example_codec import SOURCE_LINE_KEY, entry_heads, varint
from beam_jobs.example_decoder import ExampleBatchDecoder
from transforms.features import Kind

_LIST_TYPES = {Kind.FLOAT: pa.large_list(pa.float32()), Kind.INT: pa.large_list(pa.int64()),
               Kind.STRING: pa.large_list(pa.large_binary())}
# Payload sizes with a head made (example_codec.entry_heads): a float's 4 bytes, a varint's 1..10,
# texts below 124 bytes (longer ones have longer lengths inside; their rows are left to the caller).
_PAYLOAD_SIZES = {Kind.FLOAT: 5, Kind.INT: 11, Kind.STRING: 124}
_EXAMPLE_FEATURES_TAG = 0x0A
_VARINT_BYTES = 10
_MOST_SKIPPED = 63


class _Heads:
    """One feature's entry heads by payload size, as a padded matrix and their lengths."""

    def __init__(self, name: str, kind: Kind) -> None:
        heads = entry_heads(name, kind, _PAYLOAD_SIZES[kind])
        self.lengths = np.array([len(head) for head in heads], dtype=np.int64)
        self.matrix = np.zeros((len(heads), int(self.lengths.max())), dtype=np.uint8)
        for size, head in enumerate(heads):
            self.matrix[size, :len(head)] = np.frombuffer(head, dtype=np.uint8)


class _Entries:
    """One feature's entries in the rows that hold it (`rows`): their payloads, where to find them."""

    def __init__(self, rows: np.ndarray, sizes: np.ndarray, heads: _Heads, payload: Any) -> None:
        self.rows = rows
        self.sizes = sizes
        self.heads = heads
        self.payload = payload  # a (rows, width) matrix, or (data buffer, starts) of texts
        self.lengths = heads.lengths[sizes] + sizes


class CanonicalContents:
    """`contents(records)`: per record, its content bytes when it is stored in the deterministic
    form of what it holds (see the module docstring), else None. `kinds`: the features a record may
    hold, and the kind each must be stored as (the source line an int among them)."""

    def __init__(self, kinds: Mapping[str, Kind], left_out: str = SOURCE_LINE_KEY) -> None:
        self._kinds = dict(kinds)
        self._left_out = left_out
        self._names = tuple(sorted(self._kinds))  # protobuf's deterministic order of map keys
        self._heads = {name: _Heads(name, kind) for name, kind in self._kinds.items()}
        self._decoder: ExampleBatchDecoder | None = None
        # Records of another writer fail the check in every batch: after a batch with none in the
        # form, the next 1, 3, 7 ... 63 batches are not rebuilt (their rows are parsed, as any
        # other), then one is tried again.
        self._misses = 0
        self._skipped = 0

    def __getstate__(self) -> dict[str, Any]:
        # The decoder is made where the contents are taken (a worker), not pickled with a DoFn.
        return {**self.__dict__, "_decoder": None}

    def contents(self, records: Sequence[bytes], batch: pa.RecordBatch | None = None) -> list[bytes | None]:
        """`batch`: the records as ExampleBatchDecoder.for_features(kinds) decodes them, when the
        caller has it; otherwise they are decoded here."""
        if self._skipped:
            self._skipped -= 1
            return [None] * len(records)
        contents = self._contents(records, batch)
        if any(content is not None for content in contents):
            self._misses = 0
        elif records:
            self._misses += 1
            self._skipped = min(2 ** self._misses, _MOST_SKIPPED + 1) - 1
        return contents

    def _contents(self, records: Sequence[bytes], batch: pa.RecordBatch | None) -> list[bytes | None]:
        if batch is None:
            if self._decoder is None:
                self._decoder = ExampleBatchDecoder.for_features(self._kinds)
            try:
                batch = self._decoder.decode(records)
            except RuntimeError:  # bytes that are no Example, a feature stored as two kinds
                return [None] * len(records)
        count = len(records)
        columns = dict(zip(batch.schema.names, batch.columns))
        checked = np.ones(count, dtype=bool)  # rows whose every feature the rebuild can make
        entries: list[tuple[str, _Entries]] = []
        for name in self._names:
            column = columns.get(name)
            if column is None or pa.types.is_null(column.type):
                continue
            valid = column.is_valid().to_numpy(zero_copy_only=False)
            kind = self._kinds[name]
            if column.type != _LIST_TYPES[kind]:
                checked &= ~valid
                continue
            values_per_row = pc.list_value_length(column).fill_null(0).to_numpy(zero_copy_only=False)
            checked &= ~valid | (values_per_row == 1)
            rows = np.flatnonzero(valid & (values_per_row == 1))
            heads = self._heads[name]
            sizes, payload = _payloads(column, rows, kind)
            made = sizes < len(heads.lengths)
            checked[rows[~made]] = False  # a long text
            entries.append((name, _Entries(rows[made], sizes[made], heads, _keep(payload, made))))
        body = np.zeros(count, dtype=np.int64)
        left_out = np.zeros(count, dtype=np.int64)
        for name, found in entries:
            body[found.rows] += found.lengths
            if name == self._left_out:
                left_out[found.rows] = found.lengths
        body_varints, body_varint_sizes = _varints(body)
        stored_sizes = np.fromiter(map(len, records), dtype=np.int64, count=count)
        # Empty bodies (no feature, or only the source line) are left to the caller: protobuf writes
        # an Example whose features were set, then emptied, as two bytes, not none.
        checked &= (body > left_out) & (stored_sizes == 1 + body_varint_sizes + body)
        rows = np.flatnonzero(checked)
        if not len(rows):
            return [None] * count
        stored = np.frombuffer(b"".join(records), dtype=np.uint8)
        starts = np.concatenate(([0], np.cumsum(stored_sizes)))
        rebuilt = np.zeros_like(stored)
        cursor = starts[:-1].copy()
        rebuilt[cursor[rows]] = _EXAMPLE_FEATURES_TAG
        _scatter(rebuilt, cursor[rows] + 1, body_varints[rows], body_varint_sizes[rows])
        cursor += 1 + body_varint_sizes
        left_out_at = np.zeros(count, dtype=np.int64)
        for name, found in entries:
            take = checked[found.rows]
            at_rows = found.rows[take]
            at = cursor[at_rows]
            sizes = found.sizes[take]
            head_lengths = found.heads.lengths[sizes]
            _scatter(rebuilt, at, found.heads.matrix[sizes], head_lengths)
            if isinstance(found.payload, tuple):
                data, data_starts = found.payload
                _copy_runs(rebuilt, at + head_lengths, data, data_starts[take], sizes)
            else:
                _scatter(rebuilt, at + head_lengths, found.payload[take], sizes)
            if name == self._left_out:
                left_out_at[at_rows] = at - starts[at_rows]
            cursor[at_rows] += head_lengths + sizes
        same = checked.copy()
        differing = np.flatnonzero(rebuilt != stored)  # none, mostly
        if len(differing):
            same[np.searchsorted(starts, differing, side="right") - 1] = False
        contents: list[bytes | None] = [None] * count
        head = bytes((_EXAMPLE_FEATURES_TAG,))
        rows = np.flatnonzero(same)
        for row, cut, at, body_size, body_at in zip(rows.tolist(), left_out[rows].tolist(), left_out_at[rows].tolist(),
                                                   body[rows].tolist(), (1 + body_varint_sizes[rows]).tolist()):
            record = records[row]
            contents[row] = (head + varint(body_size - cut) + record[body_at:at] + record[at + cut:]) if cut else record
        return contents


def _payloads(column: pa.Array, rows: np.ndarray, kind: Kind) -> tuple[np.ndarray, Any]:
    """(payload sizes, payloads) of `rows` (each holding one value) of a list column of `kind`: the
    payloads a (rows, width) matrix, or texts as (data buffer, starts)."""
    offsets = column.offsets.to_numpy(zero_copy_only=False)
    values = column.values
    at = offsets[rows]
    if kind is Kind.FLOAT:
        payload = values.to_numpy(zero_copy_only=False).view(np.uint8).reshape(-1, 4)[at]
        return np.full(len(rows), 4, dtype=np.int64), payload
    if kind is Kind.INT:
        payload, sizes = _varints(values.to_numpy(zero_copy_only=False)[at])
        return sizes, payload
    _, text_offsets, data = values.buffers()
    text_offsets = np.frombuffer(text_offsets, dtype=np.int64)[values.offset:values.offset + len(values) + 1]
    data_starts = text_offsets[at]
    data_bytes = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, dtype=np.uint8)
    return text_offsets[at + 1] - data_starts, (data_bytes, data_starts)


def _keep(payload: Any, keep: np.ndarray) -> Any:
    if isinstance(payload, tuple):
        return payload[0], payload[1][keep]
    return payload[keep]


def _varints(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Protobuf varints of int64s (a negative one as its 64-bit two's complement): a (n, 10) matrix
    of bytes (n, 1 when every value is below 128) and each one's size."""
    values = values.astype(np.int64)
    if not len(values) or (values.min() >= 0 and values.max() < 0x80):
        return values.astype(np.uint8)[:, None], np.ones(len(values), dtype=np.int64)
    unsigned = values.view(np.uint64)[:, None]
    groups = unsigned >> (7 * np.arange(_VARINT_BYTES, dtype=np.uint64))
    sizes = 1 + np.count_nonzero(groups[:, 1:], axis=1)
    matrix = (groups & 0x7F).astype(np.uint8)
    matrix[np.arange(_VARINT_BYTES) < (sizes - 1)[:, None]] |= 0x80
    return matrix, sizes.astype(np.int64)


def _scatter(out: np.ndarray, at: np.ndarray, matrix: np.ndarray, sizes: np.ndarray) -> None:
    """Writes the first sizes[i] bytes of matrix row i at out[at[i]:]."""
    if not len(at):
        return
    width = int(sizes.max())
    places = at[:, None] + np.arange(width)
    if width == sizes.min():  # all of one size (floats, most heads): no mask
        out[places] = matrix[:, :width]
        return
    mask = np.arange(width) < sizes[:, None]
    out[places[mask]] = matrix[:, :width][mask]


def _copy_runs(out: np.ndarray, at: np.ndarray, data: np.ndarray, data_starts: np.ndarray, sizes: np.ndarray) -> None:
    """Copies data[data_starts[i]:][:sizes[i]] to out[at[i]:] for every i."""
    total = int(sizes.sum())
    if not total:
        return
    within = np.arange(total) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    out[np.repeat(at, sizes) + within] = data[np.repeat(data_starts, sizes) + within]
