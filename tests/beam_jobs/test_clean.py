"""The clean job end to end: real gzip TFRecords in, cleaned splits and rejected JSON out."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import tensorflow as tf

from beam_jobs import clean
from beam_jobs.clean import (
    REASON_DUPLICATE,
    REASON_MISSING_REQUIRED,
    REASON_OUT_OF_RANGE,
    REASON_UNPARSEABLE,
    CleanResult,
    clean_examples,
)
from beam_jobs.example_codec import TFRECORD_SUFFIX, parse_serialized, serialize_row, split_dir
from core.errors import DataError
from tests.beam_jobs._helpers import BEAM_ARGS, canonical_rows, is_clean, parse_csv_row, read_jsonl, read_split_rows
from transforms.features import FARE_KEY, RAW_FEATURES, TIPS_KEY, Kind, OnInvalid

NULL_INT_FEATURE = next(f for f in RAW_FEATURES if f.on_invalid is OnInvalid.NULL and f.kind is Kind.INT)


def write_split(root: Path, split: str, records: list[bytes]) -> None:
    folder = split_dir(root, split)
    folder.mkdir(parents=True)
    with tf.io.TFRecordWriter(str(folder / f"data-00000-of-00001{TFRECORD_SUFFIX}"), options="GZIP") as writer:
        for record in records:
            writer.write(record)


def test_clean_examples_keeps_rejects_and_counts_every_row(tmp_path, taxi_rows):
    stored = [parse_serialized(serialize_row(parse_csv_row(r))) for r in taxi_rows[:300]]
    good = [row for row in stored if is_clean(row)][:50]
    assert len(good) == 50
    nulled = {**good[3], NULL_INT_FEATURE.name: int(NULL_INT_FEATURE.valid_max) + 1}
    train = [serialize_row(row) for row in good] + [
        serialize_row(good[0]),
        serialize_row(good[0]),  # two extra copies: duplicates
        b"\xff\xff\xff\xff",  # not an Example
        serialize_row({**good[1], TIPS_KEY: None}),  # label source missing
        serialize_row({**good[2], FARE_KEY: -3.0}),  # negative fare
        serialize_row(nulled),  # out of range, NULL policy: kept with the value missing
    ]
    examples = tmp_path / "examples"
    write_split(examples, "train", train)
    write_split(examples, "eval", [])  # an empty split is valid input

    result = clean.run([f"--input={examples}", f"--output={tmp_path / 'out'}", "--splits=train,eval", *BEAM_ARGS])

    assert result == CleanResult(
        rows_in={"train": 56, "eval": 0},
        rows_kept={"train": 51, "eval": 0},
        rows_rejected={"train": 5, "eval": 0},
        rejected_by_reason={REASON_DUPLICATE: 2, REASON_MISSING_REQUIRED: 1, REASON_OUT_OF_RANGE: 1,
                            REASON_UNPARSEABLE: 1},
        values_clipped={},
        values_nulled={NULL_INT_FEATURE.name: 1},
    )
    out = tmp_path / "out"
    assert canonical_rows(read_split_rows(out / "cleaned", "train")) == canonical_rows(
        good + [{**nulled, NULL_INT_FEATURE.name: None}])
    assert read_split_rows(out / "cleaned", "eval") == []
    rejected = read_jsonl(split_dir(out / "rejected", "train"), "rejected-*.jsonl")
    assert sorted((r["reason"], r["feature"]) for r in rejected) == sorted([
        (REASON_DUPLICATE, None), (REASON_DUPLICATE, None), (REASON_UNPARSEABLE, None),
        (REASON_MISSING_REQUIRED, TIPS_KEY), (REASON_OUT_OF_RANGE, FARE_KEY)])
    assert read_jsonl(split_dir(out / "rejected", "eval"), "rejected-*.jsonl") == []
    assert json.loads((out / "clean_result.json").read_text()) == dataclasses.asdict(result)
    assert not list(out.glob(".staging-*"))


def test_a_missing_split_is_named(tmp_path):
    write_split(tmp_path / "examples", "train", [b""])
    with pytest.raises(DataError, match=r"Split-eval: no files match data-\*\.tfrecord\.gz"):
        clean_examples(tmp_path / "examples", tmp_path / "out", beam_args=BEAM_ARGS)
    assert not (tmp_path / "out").exists()
