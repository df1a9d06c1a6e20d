"""Cleaned examples written straight from CSV rows, for Transform and trainer tests.

They follow the clean job's contract (docs/ARCHITECTURE.md): raw feature kinds, a missing value
is an absent feature, rows missing a `required` feature or with a REJECT-policy value out of
range are dropped, NULL-policy values out of range become missing. The split is by a hash of the
row's content (train:eval = 2:1), like the ingest job's.
"""

from __future__ import annotations

import datetime
import hashlib
from pathlib import Path
from typing import Any, Iterable, Mapping

import tensorflow as tf

from beam_jobs.example_codec import TFRECORD_SUFFIX, row_to_example, split_dir
from transforms.features import RAW_FEATURES, TIMESTAMP_KEY, Kind, OnInvalid, parse_value

HASH_BUCKETS = 3
EVAL_BUCKETS = 1


def clean_row(text_row: Mapping[str, str]) -> dict[str, Any] | None:
    """A CSV row (strings) -> typed row with None for missing, or None if the clean job rejects it."""
    row: dict[str, Any] = {}
    for feature in RAW_FEATURES:
        value = parse_value(feature, text_row.get(feature.name, ""))
        if value is not None and feature.kind is not Kind.STRING and not feature.is_valid(value):
            if feature.on_invalid is OnInvalid.REJECT:
                return None
            if feature.on_invalid is OnInvalid.NULL:
                value = None
            else:
                low = feature.valid_min if feature.valid_min is not None else value
                high = feature.valid_max if feature.valid_max is not None else value
                value = type(value)(min(max(value, low), high))
        if value is None and feature.required:
            return None
        row[feature.name] = value
    return row


def clean_rows(text_rows: Iterable[Mapping[str, str]]) -> list[dict[str, Any]]:
    return [row for row in map(clean_row, text_rows) if row is not None]


def split_of(row: Mapping[str, Any]) -> str:
    digest = hashlib.sha256(repr(sorted(row.items())).encode()).digest()
    return "eval" if int.from_bytes(digest[:8], "big") % HASH_BUCKETS < EVAL_BUCKETS else "train"


def year_of(row: Mapping[str, Any]) -> int:
    return datetime.datetime.fromtimestamp(row[TIMESTAMP_KEY], datetime.timezone.utc).year


def write_split(root: Path, split: str, rows: Iterable[Mapping[str, Any]], shards: int = 1) -> Path:
    """Writes rows as gzip TFRecords of tf.Examples into root/Split-<split>/data-*.tfrecord.gz."""
    directory = split_dir(root, split)
    directory.mkdir(parents=True, exist_ok=True)
    writers = [
        tf.io.TFRecordWriter(str(directory / f"data-{i:05d}-of-{shards:05d}{TFRECORD_SUFFIX}"), options="GZIP")
        for i in range(shards)
    ]
    try:
        for index, row in enumerate(rows):
            writers[index % shards].write(row_to_example(row).SerializeToString())
    finally:
        for writer in writers:
            writer.close()
    return directory


def write_cleaned(
    root: Path, rows: Iterable[Mapping[str, Any]], eval_only_rows: Iterable[Mapping[str, Any]] = ()
) -> dict[str, int]:
    """Hash-splits cleaned rows into root/Split-train and root/Split-eval; returns rows per split.

    `eval_only_rows` go to eval whatever their hash (values the analysis must not see).
    """
    by_split: dict[str, list[Mapping[str, Any]]] = {"train": [], "eval": []}
    for row in rows:
        by_split[split_of(row)].append(row)
    by_split["eval"].extend(eval_only_rows)
    for split, split_rows in by_split.items():
        write_split(root, split, split_rows)
    return {split: len(split_rows) for split, split_rows in by_split.items()}


# --- Transform outputs shared by the transform and trainer tests (one Beam run per process) ---
_TRANSFORM_CACHE: dict[str, Any] = {}
BEAM_ARGS = ("--runner=DirectRunner", "--direct_num_workers=1", "--direct_running_mode=in_memory")


def cleaned_taxi_rows(text_rows: Iterable[Mapping[str, str]], years: tuple[int, ...], limit: int | None = None) -> list[dict[str, Any]]:
    """Cleaned rows of the shipped CSV whose trip started in one of `years`, in file order."""
    rows = [row for row in clean_rows(text_rows) if year_of(row) in years]
    return rows[:limit] if limit is not None else rows


def shared_transform(
    name: str, rows: list[dict[str, Any]], eval_only_rows: list[dict[str, Any]] = ()  # type: ignore[assignment]
) -> Any:
    """Writes `rows` as cleaned examples and runs the Transform job on them, once per `name` per process.

    Returns (cleaned_dir, rows per split, TransformResult). Several test modules need a real
    transform output; the Beam + TFT run is the slow part, so it is made once and reused (tests
    that delete a transform output make their own copy).
    """
    if name not in _TRANSFORM_CACHE:
        import atexit
        import shutil
        import tempfile

        from beam_jobs.transform import transform_examples

        root = Path(tempfile.mkdtemp(prefix=f"transform-{name}-"))
        atexit.register(shutil.rmtree, root, True)
        counts = write_cleaned(root / "cleaned", rows, eval_only_rows)
        result = transform_examples(root / "cleaned", root / "out", beam_args=BEAM_ARGS)
        _TRANSFORM_CACHE[name] = (root / "cleaned", counts, result)
    return _TRANSFORM_CACHE[name]


EVAL_ONLY_COMPANY = "Only In Eval Cab Co."


def small_transform(text_rows: Iterable[Mapping[str, str]]) -> Any:
    """400 cleaned 2013-2014 trips plus one eval-only trip of a company the analysis never sees."""
    rows = cleaned_taxi_rows(text_rows, years=(2013, 2014), limit=400)
    eval_only = dict(rows[0], company=EVAL_ONLY_COMPANY)
    return shared_transform("small-2013", rows, [eval_only])


def rows_to_dense(rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Rows -> the dense serving inputs (one numpy column per serving feature, sentinels for missing)."""
    import numpy as np

    from transforms.features import SERVING_FEATURES, missing_value

    dtypes = {Kind.FLOAT: np.float32, Kind.INT: np.int64, Kind.STRING: object}
    columns: dict[str, Any] = {}
    for feature in SERVING_FEATURES:
        values = [row.get(feature.name) for row in rows]
        values = [missing_value(feature.kind) if value is None else value for value in values]
        if feature.kind is Kind.STRING:
            values = [value.encode() if isinstance(value, str) else value for value in values]
        columns[feature.name] = np.array(values, dtype=dtypes[feature.kind]).reshape(len(rows))
    return columns


def blank_some_values(rows: list[dict[str, Any]], share: float, seed: int) -> list[dict[str, Any]]:
    """Copies of `rows` with about `share` of the serving values set to missing (labels kept)."""
    import random

    from transforms.features import SERVING_COLUMNS

    chooser = random.Random(seed)
    blanked = []
    for row in rows:
        copy = dict(row)
        for name in SERVING_COLUMNS:
            if chooser.random() < share:
                copy[name] = None
        blanked.append(copy)
    return blanked
