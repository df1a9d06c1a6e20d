"""Reading gzip TFRecord files as lists (tfrecord_batches.ReadRecordBatches), on real files through a
real Beam pipeline: every record once, in lists cut the same way on every run, corruption refused."""

from __future__ import annotations

import gzip
from pathlib import Path

import apache_beam as beam
import pytest
import tensorflow as tf
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs.tfrecord_batches import ReadRecordBatches


def _write(path: Path, records: list[bytes]) -> str:
    with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
        for record in records:
            writer.write(record)
    return str(path)


def _read_as(paths: list[str], rows: int, expected: list[tuple[bytes, ...]]) -> None:
    with beam.Pipeline() as pipeline:
        assert_that(pipeline | ReadRecordBatches(paths, rows) | beam.Map(tuple), equal_to(expected))


def test_every_record_comes_once_in_lists_of_at_most_rows_cut_from_each_files_start(tmp_path):
    first = [f"a{n}".encode() for n in range(25)]
    second = [f"b{n}".encode() for n in range(7)]
    paths = [_write(tmp_path / "data-00001-of-00002.tfrecord.gz", second), _write(tmp_path / "data-00000-of-00002.tfrecord.gz", first)]
    for _ in range(2):  # the same cuts on a re-run
        _read_as(paths, 10, [tuple(first[:10]), tuple(first[10:20]), tuple(first[20:]), tuple(second)])
    with beam.Pipeline() as pipeline:
        flat = pipeline | ReadRecordBatches(paths) | beam.FlatMap(lambda records: records)
        assert_that(flat, equal_to(first + second))


def test_a_corrupt_file_fails_the_read_instead_of_losing_records(tmp_path):
    path = tmp_path / "data-00000-of-00001.tfrecord.gz"
    _write(path, [b"x" * 100] * 50)
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[200] ^= 0xFF  # inside a record: its CRC no longer matches
    path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(Exception, match="(?i)corrupt|checksum|crc|data_loss"):
        _read_as([str(path)], 10, [])


def test_rows_must_be_positive():
    with pytest.raises(ValueError, match="rows must be at least 1"):
        ReadRecordBatches(["x"], 0)
