"""Ingest's fast path: the plain lines of a piece of the CSV read as Arrow columns, and their rows'
canonical text, split and Example made for all of them at once.

A line is plain when it is printable ASCII without a quote or a backslash, has the header's number
of fields, and each cell has one of the forms below (or is blank); its timestamp is given, its
texts are under 124 bytes, and each float, rounded to float32, is 0 or between 1e-4 and 1e10 in
size. For such a line the reference rules (ingest.CsvLineParser, transforms.features.parse_value)
give the values read here: a cell's surrounding spaces are dropped and a blank one is missing,
numbers are read by Arrow's parser (correctly rounded, as Python's float()), and in that size range
Arrow writes a float's shortest round-trip digits in the fixed notation Python's repr writes (less
".0" for a whole number, added here), so the canonical text (example_codec.canonical_row) comes out
character for character. Every other line is left to CsvLineParser, one at a time, as before.
tests/beam_jobs/test_csv_columns.py compares the two on generated lines.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beam_jobs.example_codec import SOURCE_LINE_KEY
from beam_jobs.example_wire import ARROW_LIST_TYPES, ExampleWire, binary_values
from transforms.features import RAW_FEATURES, TIMESTAMP_KEY, Kind

# Digits of an int that certainly fits an int64, or a whole number written as a decimal (as pandas
# writes an int column with a missing value: "8.0") with digits a float64 holds exactly, as the
# reference reads it through float(); and of each part of a plain decimal (whose size then fits a
# float32).
_INT_FORM = r"^-?[0-9]{1,18}$|^-?[0-9]{1,15}\.0*$"
_WHOLE_DECIMAL_ZEROS = r"\.0*$"
_FLOAT_FORM = r"^-?[0-9]{1,20}(\.[0-9]{1,20})?$"
# Where Python's repr and Arrow's cast both write a float in fixed notation.
_FIXED_LOW, _FIXED_HIGH = 1e-4, 1e10
# A text this long takes a two-byte length in its Example: ExampleWire leaves it to RowEncoder.
_LONG_TEXT = 124
# The most bytes an Arrow string array with 32-bit offsets holds: a larger piece (a chunk_bytes of
# gigabytes) is left to the reference rules whole.
_MOST_BYTES = 2**31 - 1

# The bytes a plain line is made of: printable ASCII but the quote and the backslash, which csv and
# JSON treat apart.
_PLAIN_BYTES = bytes(range(0x20, 0x7F)).replace(b'"', b"").replace(b"\\", b"")
_PLAIN = np.zeros(256, dtype=bool)
_PLAIN[np.frombuffer(_PLAIN_BYTES, dtype=np.uint8)] = True


class PlainRows(NamedTuple):
    """The rows of a piece's plain lines, in line order."""

    at: np.ndarray  # each row's index among the piece's lines
    columns: dict[str, pa.Array]  # RAW_COLUMNS name -> the rows' values (float32, int64 or string; null = missing)
    texts: pa.Array  # each row's canonical_row text

    @property
    def timestamps(self) -> np.ndarray:
        """Each row's trip_start_timestamp (int64; every row taken has one)."""
        return self.columns[TIMESTAMP_KEY].to_numpy(zero_copy_only=False)

    def rows(self, which: np.ndarray) -> PlainRows:
        """The rows where `which` (a bool per row) holds."""
        keep = pa.array(which)
        return PlainRows(self.at[which], {name: values.filter(keep) for name, values in self.columns.items()},
                         self.texts.filter(keep))


class PlainLines:
    """`read(lines)`: the rows of the plain lines among `lines` (raw bytes without the line end),
    for a CSV whose header is `columns`."""

    def __init__(self, columns: Sequence[str]) -> None:
        self._width = len(columns)
        # In RAW_COLUMNS order (RAW_FEATURES'), canonical_row's order.
        self._cells = tuple((feature.name, columns.index(feature.name), feature.kind) for feature in RAW_FEATURES)

    def read(self, lines: Sequence[bytes]) -> PlainRows:
        joined = b"".join(lines)
        if len(joined) > _MOST_BYTES:
            return _no_rows()
        offsets = np.zeros(len(lines) + 1, dtype=np.int32)
        np.cumsum(np.fromiter(map(len, lines), dtype=np.int32, count=len(lines)), out=offsets[1:])
        plain = offsets[1:] > offsets[:-1]
        if joined.translate(None, _PLAIN_BYTES):  # some line holds another byte: find which
            other = np.flatnonzero(~_PLAIN[np.frombuffer(joined, dtype=np.uint8)])
            plain[np.searchsorted(offsets, other, side="right") - 1] = False
        at = np.flatnonzero(plain)
        text = pa.StringArray.from_buffers(len(lines), pa.py_buffer(offsets), pa.py_buffer(joined))
        fields = pc.split_pattern(text.take(pa.array(at)) if len(at) < len(lines) else text, ",")
        right_width = pc.equal(pc.list_value_length(fields), self._width).to_numpy(zero_copy_only=False)
        if not right_width.all():
            at, fields = at[right_width], fields.filter(pa.array(right_width))
        if not len(at):
            return _no_rows()
        # Every line left has the header's number of fields: a flat list of cells, a column every `width`.
        cells = pc.list_flatten(fields)
        taken = np.ones(len(at), dtype=bool)
        columns: dict[str, pa.Array] = {}
        tokens: list[pa.Array | str] = []
        for name, index, kind in self._cells:
            cell = cells.take(pa.array(np.arange(index, len(cells), self._width)))
            if kind is Kind.STRING:
                cell = pc.utf8_trim(cell, " ")
                length = pc.utf8_length(cell)
                values = pc.if_else(pc.equal(length, 0), pa.scalar(None, pa.string()), cell)
                taken &= pc.less(length, _LONG_TEXT).to_numpy(zero_copy_only=False)
                tokens += [",", pc.binary_join_element_wise('"', values, '"', "").fill_null("null"), ""]
                columns[name] = values
                continue
            # A number with spaces around it, or of another form, is left to the reference rules.
            blank = pc.equal(pc.utf8_length(cell), 0)
            readable = pc.match_substring_regex(cell, _INT_FORM if kind is Kind.INT else _FLOAT_FORM)
            taken &= pc.or_(blank, readable).to_numpy(zero_copy_only=False)
            cell = pc.if_else(readable, cell, pa.scalar(None, pa.string()))
            if kind is Kind.INT:
                if pc.any(pc.match_substring(cell, ".")).as_py():
                    cell = pc.replace_substring_regex(cell, _WHOLE_DECIMAL_ZEROS, "")
                values = pc.cast(cell, pa.int64())
                tokens += [",", pc.cast(values, pa.string()), ""]
            else:
                values = pc.cast(pc.cast(cell, pa.float64()), pa.float32(), safe=False)
                stored = pc.cast(values, pa.float64())
                size = pc.abs(stored)
                fixed = pc.or_(pc.equal(size, 0), pc.and_(pc.greater_equal(size, _FIXED_LOW), pc.less(size, _FIXED_HIGH)))
                taken &= fixed.fill_null(True).to_numpy(zero_copy_only=False)
                # Python's repr writes a whole number with ".0"; Arrow without.
                whole = pc.equal(pc.floor(stored), stored)
                tokens += [",", pc.cast(stored, pa.string()), pc.if_else(whole, ".0", "").fill_null("")]
            columns[name] = values
        taken &= columns[TIMESTAMP_KEY].is_valid().to_numpy(zero_copy_only=False)
        tokens[0] = "["  # canonical_row's list opens where the first column's comma would be
        texts = pc.binary_join_element_wise(*tokens, "]", "", null_handling="replace", null_replacement="null")
        keep = pa.array(taken)
        kept = {name: values.filter(keep) for name, values in columns.items()}
        return PlainRows(at[taken], kept, texts.filter(keep).cast(pa.large_string()))


class PlainRowEncoder:
    """`encode(rows, line_numbers)`: each row's serialized Example (its values and the source line,
    as RowEncoder writes it) and its split's index in SPLITS (ingest.split_of of its text)."""

    def __init__(self, hash_buckets: int, eval_buckets: int) -> None:
        self._hash_buckets = hash_buckets
        self._eval_from = hash_buckets - eval_buckets
        kinds = {feature.name: feature.kind for feature in RAW_FEATURES}
        self._wire = ExampleWire({**kinds, SOURCE_LINE_KEY: Kind.INT})
        self._kinds = kinds

    def encode(self, rows: PlainRows, line_numbers: np.ndarray) -> tuple[list[bytes], np.ndarray]:
        count = len(rows.at)
        names, arrays = [], []
        for name, values in rows.columns.items():
            names.append(name)
            arrays.append(_one_value_lists(values, ARROW_LIST_TYPES[self._kinds[name]]))
        names.append(SOURCE_LINE_KEY)
        arrays.append(_one_value_lists(pa.array(line_numbers, pa.int64()), ARROW_LIST_TYPES[Kind.INT]))
        entries = self._wire.entries(pa.RecordBatch.from_arrays(arrays, names=names))
        if not entries.makeable.all():  # PlainLines took only rows it can make: a bug, not data
            raise RuntimeError("PlainRowEncoder was given a row ExampleWire cannot make")
        examples = binary_values(self._wire.examples(entries)[0]) if count else []
        digests = b"".join(hashlib.md5(text).digest()[:8] for text in binary_values(rows.texts))
        buckets = np.frombuffer(digests, dtype=">u8") % np.uint64(self._hash_buckets)
        return examples, (buckets >= self._eval_from).astype(np.int64)


def _one_value_lists(values: pa.Array, list_type: pa.DataType) -> pa.Array:
    """Each value as a list of one, a null as a null list."""
    values = values.cast(list_type.value_type)
    offsets = pa.array(np.arange(len(values) + 1, dtype=np.int64))
    return pa.LargeListArray.from_arrays(offsets, values.fill_null(_zero(list_type.value_type)), type=list_type,
                                         mask=pc.is_null(values))


def _zero(value_type: pa.DataType) -> pa.Scalar:
    return pa.scalar(b"" if pa.types.is_large_binary(value_type) else 0, value_type)


def _no_rows() -> PlainRows:
    empty = {Kind.FLOAT: pa.float32(), Kind.INT: pa.int64(), Kind.STRING: pa.string()}
    columns = {feature.name: pa.array([], empty[feature.kind]) for feature in RAW_FEATURES}
    return PlainRows(np.zeros(0, dtype=np.int64), columns, pa.array([], pa.large_string()))
