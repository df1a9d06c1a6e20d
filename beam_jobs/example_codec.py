"""Raw rows <-> tf.train.Example, by the kinds in transforms/features.py.

A row is a dict feature name -> value (None = missing). A missing value is an absent feature in
the Example, which is what TFDV, tf.io.parse_example with VarLenFeature and TFT expect.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Mapping

import tensorflow as tf

from transforms.features import FEATURES_BY_NAME, OBSERVED_LABEL_KEY, RAW_COLUMNS, Kind

Row = dict[str, Any]

# The CSV line a raw example came from, written by ingest beside the features so that the clean job
# can say which line it rejected. Not a feature: statistics leave it out (beam_jobs/statistics.py)
# and the clean job does not write it into the cleaned examples.
SOURCE_LINE_KEY = "__source_line"


def row_to_example(row: Mapping[str, Any]) -> tf.train.Example:
    example = tf.train.Example()
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
    return example_to_row(tf.train.Example.FromString(serialized), names)


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
