"""Raw rows <-> tf.train.Example, by the kinds in transforms/features.py.

A row is a dict feature name -> value (None = missing). A missing value is an absent feature in
the Example, which is what TFDV, tf.io.parse_example with VarLenFeature and TFT expect.

`row_to_example` / `serialize_row` build protobuf messages and are the reference. Ingest, which
encodes every row of the input, uses `RowEncoder`: the same Examples and the same canonical text,
written directly in protobuf's wire format, in protobuf's deterministic form (map entries sorted by
key), so that clean can take a stored record's bytes for its content once it has checked them
(beam_jobs/canonical_examples.py); tests/beam_jobs/test_example_encoder.py checks both against the
reference on generated rows.
"""

from __future__ import annotations

import json
import math
import struct
from json.encoder import c_make_encoder, encode_basestring
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from transforms.features import FEATURES_BY_NAME, OBSERVED_LABEL_KEY, RAW_COLUMNS, Kind

if TYPE_CHECKING:
    import tensorflow as tf

Row = dict[str, Any]

# The CSV line a raw example came from, written by ingest beside the features so that the clean job
# can say which line it rejected. Not a feature: statistics leave it out (beam_jobs/statistics.py)
# and the clean job does not write it into the cleaned examples.
SOURCE_LINE_KEY = "__source_line"

# How a feature without a value serializes inside an Example's map: an empty Feature (the map value,
# field 2, of length 0), or an empty float_list, bytes_list or int64_list (fields 2, 1, 3). One of
# these is in the bytes whenever such a feature is (value bytes can look like one too).
EMPTY_FEATURE_MARKS = (b"\x12\x00", b"\x0a\x00", b"\x1a\x00")


def _example_type() -> "type[tf.train.Example]":
    # Imported when first used, not with the module: TensorFlow costs seconds of CPU and ~400 MB,
    # and ingest, which imports this module, never builds a message (it uses RowEncoder).
    import tensorflow as tf

    return tf.train.Example


def row_to_example(row: Mapping[str, Any]) -> tf.train.Example:
    example = _example_type()()
    features = example.features.feature
    for name, value in row.items():
        if value is None:
            continue
        kind = Kind.INT if name == SOURCE_LINE_KEY else FEATURES_BY_NAME[name].kind
        if kind is Kind.FLOAT:
            features[name].float_list.value.append(float(value))
        elif kind is Kind.INT:
            features[name].int64_list.value.append(int(value))
        else:
            features[name].bytes_list.value.append(value.encode() if isinstance(value, str) else bytes(value))
    return example


def example_to_row(example: tf.train.Example, names: tuple[str, ...] | None = None) -> Row:
    """Decodes an Example; every name in `names` is present, None if missing. The default is every CSV
    column, plus the observed label when the example carries one (a production row)."""
    features = example.features.feature
    if names is None:
        names = RAW_COLUMNS + ((OBSERVED_LABEL_KEY,) if OBSERVED_LABEL_KEY in features else ())
    row: Row = {}
    for name in names:
        if name not in features:
            row[name] = None
            continue
        feature = features[name]
        kind = feature.WhichOneof("kind")
        values = list(getattr(feature, kind).value) if kind else []
        if not values:
            row[name] = None
        elif kind == "bytes_list":
            row[name] = values[0].decode("utf-8", errors="replace")
        else:
            row[name] = values[0]
    return row


def serialize_row(row: Mapping[str, Any]) -> bytes:
    return row_to_example(row).SerializeToString()


def parse_serialized(serialized: bytes, names: tuple[str, ...] | None = None) -> Row:
    return example_to_row(_example_type().FromString(serialized), names)


# --- Where split data lives (docs/ARCHITECTURE.md, "On-disk formats") ---
SPLITS: tuple[str, ...] = ("train", "eval")
TFRECORD_SUFFIX = ".tfrecord.gz"


def split_dir(root: "str | Path", split: str) -> "Path":
    return Path(root) / f"Split-{split}"


def split_pattern(root: "str | Path", split: str) -> str:
    """Glob of a split's TFRecord files, for beam.io.ReadFromTFRecord / tf.data."""
    return str(split_dir(root, split) / f"data-*{TFRECORD_SUFFIX}")


def split_prefix(root: "str | Path", split: str) -> str:
    """Prefix for beam.io.WriteToTFRecord(prefix, file_name_suffix=TFRECORD_SUFFIX)."""
    return str(split_dir(root, split) / "data")


# --- Row identity, shared by ingest's hash split and clean's duplicate detection ---


def _as_stored(kind: Kind, value: Any) -> Any:
    """The value as a tf.Example holds it: floats become float32, so ingest and clean agree on identity."""
    if value is None:
        return None
    if kind is Kind.FLOAT:
        return struct.unpack("<f", struct.pack("<f", float(value)))[0]
    if kind is Kind.INT:
        return int(value)
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def canonical_row(row: Mapping[str, Any]) -> str:
    """A stable text form of a row's raw-feature content, independent of column order and process.

    Two rows with the same stored values give the same text, so a hash of it puts identical rows in
    the same split, and the clean job can find exact duplicates within a split.
    """
    values = [_as_stored(FEATURES_BY_NAME[name].kind, row.get(name)) for name in RAW_COLUMNS]
    # Appended only when present, so a CSV row's text (and so its split) is what it always was.
    if row.get(OBSERVED_LABEL_KEY) is not None:
        values.append(int(row[OBSERVED_LABEL_KEY]))
    return json.dumps(values, separators=(",", ":"), ensure_ascii=False)


# What json.dumps(values, separators=(",", ":"), ensure_ascii=False) runs for a list, made once
# (json.dumps makes it per call): canonical_row's text for RowEncoder, character for character.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_C_LIST_ENCODER = (None if c_make_encoder is None else
                   c_make_encoder(None, _COMPACT_JSON.default, encode_basestring, None, ":", ",", False, False, True))


def _compact_json(values: list[Any]) -> str:
    if _C_LIST_ENCODER is None:  # a Python without the json C accelerator
        return _COMPACT_JSON.encode(values)
    return "".join(_C_LIST_ENCODER(values, 0))


# --- Protobuf wire format, for RowEncoder ---
# Example {Features features = 1}; Features {map<string, Feature> feature = 1}, each map entry a
# message {string key = 1; Feature value = 2}; Feature {oneof: BytesList bytes_list = 1,
# FloatList float_list = 2, Int64List int64_list = 3}; each list {repeated value = 1}, floats and
# ints packed. Every field here is length-delimited, so its tag byte is (number << 3) | 2.

_ENTRY, _KEY, _VALUE = 0x0A, 0x0A, 0x12
_BYTES_LIST, _FLOAT_LIST, _INT64_LIST, _LIST_VALUES = 0x0A, 0x12, 0x1A, 0x0A
_FLOAT32 = struct.Struct("<f")
# Texts shorter than this have one-byte lengths at every level of a string entry (n + 4 < 128).
_SHORT_TEXT = 0x80 - 4
_UINT64_MASK = 0xFFFFFFFFFFFFFFFF
# Varints by 14-bit groups: 0 .. 2**14 - 1 whole (one or two bytes: community areas, hours, small
# counts), and the same groups with both continuation bits set, for the low groups of larger values
# (a line number, a timestamp, a census tract take two or three look-ups instead of a loop).
_LAST_GROUP = [bytes((n,)) for n in range(0x80)] + [bytes(((n & 0x7F) | 0x80, n >> 7)) for n in range(0x80, 0x4000)]
_INNER_GROUP = [bytes(((n & 0x7F) | 0x80, (n >> 7) | 0x80)) for n in range(0x4000)]


def varint(value: int) -> bytes:
    """Protobuf's base-128 varint; a negative int64 as its 64-bit two's complement (10 bytes)."""
    if 0 <= value < 1 << 14:
        return _LAST_GROUP[value]
    if 0 <= value < 1 << 28:
        return _INNER_GROUP[value & 0x3FFF] + _LAST_GROUP[value >> 14]
    if 0 <= value < 1 << 42:
        return _INNER_GROUP[value & 0x3FFF] + _INNER_GROUP[(value >> 14) & 0x3FFF] + _LAST_GROUP[value >> 28]
    value &= _UINT64_MASK
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _delimited(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + varint(len(payload)) + payload


def _float32_bytes(value: Any) -> bytes:
    """The float32 a FloatList stores: rounded to nearest; beyond float32's range, an infinity (as protobuf does)."""
    value = float(value)
    try:
        return _FLOAT32.pack(value)
    except OverflowError:
        return _FLOAT32.pack(math.copysign(math.inf, value))


def _entry_head(key: bytes, framing: bytes, value_bytes: int) -> bytes:
    """The bytes of a map entry before its last `value_bytes` bytes: entry tag, entry length, key, framing."""
    return bytes((_ENTRY,)) + varint(len(key) + len(framing) + value_bytes) + key + framing


_LIST_TAGS = {Kind.FLOAT: _FLOAT_LIST, Kind.INT: _INT64_LIST, Kind.STRING: _BYTES_LIST}


def entry_heads(name: str, kind: Kind, payload_sizes: int) -> tuple[bytes, ...]:
    """The head of the map entry of a feature `name` holding one value of `kind`, by its payload's size
    n (the value's bytes: 4 for a float, the varint's 1..10 for an int, the UTF-8 for a text) for n
    below `payload_sizes`, where the lengths inside the value fit one byte (n + 4 < 128); the
    entry is its head and the payload."""
    key = _delimited(_KEY, name.encode("utf-8"))
    return tuple(_entry_head(key, bytes((_VALUE, n + 4, _LIST_TAGS[kind], n + 2, _LIST_VALUES, n)), n)
                 for n in range(min(payload_sizes, _SHORT_TEXT)))


class RowEncoder:
    """Rows given as values in a fixed order of names -> (canonical_row text, serialized Example).

    The Example parses back to the message row_to_example builds, and the text is canonical_row's,
    at a fraction of the cost: the bytes that depend only on a feature's name and kind are made
    once here, the floats of a row are rounded to float32 in one struct call, and the text comes
    from json's own encoder. Values are as parse_value returns them (None = missing).
    """

    def __init__(self, names: Sequence[str]) -> None:
        names = tuple(names)
        kinds = [Kind.INT if name == SOURCE_LINE_KEY else FEATURES_BY_NAME[name].kind for name in names]
        keys = [_delimited(_KEY, name.encode("utf-8")) for name in names]
        self._width = len(names)
        # Where each name's entry goes: protobuf's deterministic order, by key.
        self._slot = tuple(sorted(range(len(names)), key=lambda i: names[i]).index(i) for i in range(len(names)))
        # Where canonical_row's values are among the encoder's (None: not given, so missing).
        self._canonical_at = tuple(names.index(name) if name in names else None for name in RAW_COLUMNS)
        self._float_at = tuple(i for i, kind in enumerate(kinds) if kind is Kind.FLOAT)
        self._int_at = tuple(i for i, kind in enumerate(kinds) if kind is Kind.INT)
        self._string_at = tuple(i for i, kind in enumerate(kinds) if kind is Kind.STRING)
        self._floats = struct.Struct(f"<{len(self._float_at)}f")
        # A float entry is its head + 4 bytes; an int entry is a head for its varint's length (1..10) + the varint.
        self._float_heads = tuple(entry_heads(names[i], Kind.FLOAT, 5)[4] for i in self._float_at)
        self._int_heads = tuple(entry_heads(names[i], Kind.INT, 11) for i in self._int_at)
        self._string_keys = tuple(keys[i] for i in self._string_at)
        # A string entry is its head for the text's length + the UTF-8 bytes; heads made for short texts.
        self._string_heads = tuple(entry_heads(names[i], Kind.STRING, _SHORT_TEXT) for i in self._string_at)

    def encode(self, values: Sequence[Any]) -> tuple[str, bytes]:
        """(canonical_row of the row, its serialized Example); values in the encoder's order of names."""
        if len(values) != self._width:
            raise ValueError(f"expected {self._width} values, one per name, got {len(values)}")
        stored = list(values)  # becomes the values as the Example holds them, for the canonical text
        entries = [b""] * self._width  # by slot
        present = False
        floats = [values[i] for i in self._float_at]
        try:
            packed = self._floats.pack(*[0.0 if value is None else value for value in floats])
        except (OverflowError, struct.error):  # beyond float32, or not a float: one at a time, as row_to_example
            packed = b"".join(_float32_bytes(0.0 if value is None else value) for value in floats)
        for k, (index, value, rounded) in enumerate(zip(self._float_at, floats, self._floats.unpack(packed))):
            if value is not None:
                stored[index] = rounded
                entries[self._slot[index]] = self._float_heads[k] + packed[4 * k:4 * k + 4]
                present = True
        for index, heads in zip(self._int_at, self._int_heads):
            value = values[index]
            if value is not None:
                stored[index] = value = int(value)
                encoded = varint(value)
                entries[self._slot[index]] = heads[len(encoded)] + encoded
                present = True
        for index, key, heads in zip(self._string_at, self._string_keys, self._string_heads):
            value = values[index]
            if value is not None:
                if isinstance(value, bytes):
                    stored[index], data = value.decode("utf-8", errors="replace"), value
                else:
                    stored[index] = value = str(value)
                    data = value.encode("utf-8")
                if len(data) < _SHORT_TEXT:
                    entries[self._slot[index]] = heads[len(data)] + data
                else:
                    feature = _delimited(_BYTES_LIST, _delimited(_LIST_VALUES, data))
                    entries[self._slot[index]] = _delimited(_ENTRY, key + _delimited(_VALUE, feature))
                present = True
        text = _compact_json([None if at is None else stored[at] for at in self._canonical_at])
        if not present:
            return text, b""  # no feature set: protobuf leaves `features` out too
        features = b"".join(entries)
        return text, bytes((0x0A,)) + varint(len(features)) + features
