"""Helpers for the validation tests: typed taxi rows, and Examples written in the layout the Beam jobs read."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Iterable

import tensorflow as tf

from beam_jobs.example_codec import row_to_example, split_prefix
from transforms.features import RAW_FEATURES, TIMESTAMP_KEY, parse_value

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CHECKED_IN_SCHEMA = PROJECT_ROOT / "data" / "taxi" / "schema.pbtxt"


def write_examples(root: Path, split: str, examples: Iterable[tf.train.Example], shards: int = 1) -> list[Path]:
    """Writes Examples round-robin into `shards` gzip TFRecord files of the split (the job layout)."""
    paths = [Path(f"{split_prefix(root, split)}-{i:05d}-of-{shards:05d}.tfrecord.gz") for i in range(shards)]
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    writers = [tf.io.TFRecordWriter(str(p), options="GZIP") for p in paths]
    try:
        for index, example in enumerate(examples):
            writers[index % shards].write(example.SerializeToString())
    finally:
        for writer in writers:
            writer.close()
    return paths


def write_rows(root: Path, split: str, rows: Iterable[dict[str, Any]], shards: int = 1) -> list[Path]:
    return write_examples(root, split, (row_to_example(r) for r in rows), shards)


def typed_row(raw: dict[str, str]) -> dict[str, Any]:
    return {feature.name: parse_value(feature, raw[feature.name]) for feature in RAW_FEATURES}


def trip_year(row: dict[str, Any]) -> int:
    return dt.datetime.fromtimestamp(row[TIMESTAMP_KEY], tz=dt.timezone.utc).year
