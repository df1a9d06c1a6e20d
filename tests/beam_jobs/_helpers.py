"""Shared by the beam_jobs tests: in-memory runner flags, readers of job outputs, valid taxi rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import tensorflow as tf

from beam_jobs.example_codec import TFRECORD_SUFFIX, canonical_row, parse_serialized, split_dir
from transforms.features import RAW_FEATURES, parse_value

# In-memory DirectRunner: one process, so the folder's tests stay fast on a shared 2-core machine.
BEAM_ARGS = ("--runner=DirectRunner", "--direct_num_workers=1", "--direct_running_mode=in_memory")


def read_split_records(root: Path, split: str) -> list[bytes]:
    files = sorted(str(p) for p in split_dir(root, split).glob(f"data-*{TFRECORD_SUFFIX}"))
    assert files, f"no data files in {split_dir(root, split)}"
    return [record.numpy() for record in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def read_split_rows(root: Path, split: str) -> list[dict[str, Any]]:
    return [parse_serialized(record) for record in read_split_records(root, split)]


def read_jsonl(folder: Path, pattern: str) -> list[dict[str, Any]]:
    files = sorted(folder.glob(pattern))
    assert files, f"no files match {pattern} in {folder}"
    return [json.loads(line) for path in files for line in path.read_text().splitlines() if line.strip()]


def parse_csv_row(text_row: dict[str, str]) -> dict[str, Any]:
    """What ingest should make of a CSV row, computed independently of the pipeline."""
    return {feature.name: parse_value(feature, text_row[feature.name]) for feature in RAW_FEATURES}


def canonical_rows(rows: list[dict[str, Any]]) -> list[str]:
    return sorted(canonical_row(row) for row in rows)


def is_clean(row: dict[str, Any]) -> bool:
    """True when the clean job must keep the row unchanged: required present, every value in range."""
    for feature in RAW_FEATURES:
        value = row[feature.name]
        if value is None:
            if feature.required:
                return False
        elif not isinstance(value, str) and not feature.is_valid(value):
            return False
    return True
