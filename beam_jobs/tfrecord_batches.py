"""Reading and writing gzip TFRecord files as lists of records, for jobs that work in batches.

beam.io.ReadFromTFRecord and WriteToTFRecord take one element, and make one Python call, per
record; for a job whose work per record is a few microseconds (ingest, clean, statistics), that
costs more than the work. `ReadRecordBatches` reads each file with TensorFlow's C++ reader into
lists of BATCH_ROWS records; `TFRecordBatchSink` takes a list per element and writes the same files
(same framing, same shard names) with one compressor call per list.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any, Iterable, Iterator, Mapping, Sequence

import apache_beam as beam
import google_crc32c
from apache_beam.io.filebasedsink import FileBasedSink
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_jobs.example_codec import TFRECORD_SUFFIX
from beam_jobs.progress import ReadCounter
from transforms.features import Kind

# Records per list: large enough that per-call costs (a decoder's, column operations') vanish,
# small enough that a list a decoder refuses (one undecodable record) costs little to redo.
BATCH_ROWS = 2048


class _ReadFileBatchesFn(beam.DoFn):
    """A gzip TFRecord file -> its records, `rows` to a list (read by TensorFlow's C++ reader, which
    checks each record's CRCs as beam.io.ReadFromTFRecord does, at a fraction of its cost a record);
    each list counted in the `progress` folder (beam_jobs/progress.py) when one is given."""

    def __init__(self, rows: int, progress: str | None = None) -> None:
        self._rows = rows
        self._progress = progress

    def setup(self) -> None:
        self._read = ReadCounter(self._progress)

    def process(self, path: str) -> Iterator[list[bytes]]:
        import tensorflow as tf  # the worker's, imported where the read runs

        for batch in tf.data.TFRecordDataset(path, compression_type="GZIP").batch(self._rows):
            records = batch.numpy().tolist()
            self._read.add(len(records))
            yield records

    def finish_bundle(self) -> None:
        self._read.flush()


class ReadRecordBatches(beam.PTransform):
    """The records of gzip TFRecord files, as lists of up to `rows` (one element per list): for a job
    whose work per record is a few microseconds, reading one element per record
    (beam.io.ReadFromTFRecord, in Python) costs more than the work. The lists are cut the same way
    on every run (each file from its start), so batch-dependent sums are the same too. `progress`:
    the folder of a progress.JobProgress, where the records read are counted."""

    def __init__(self, paths: Sequence[str], rows: int = BATCH_ROWS, progress: str | None = None) -> None:
        super().__init__()
        if rows < 1:
            raise ValueError(f"ReadRecordBatches: rows must be at least 1, got {rows}")
        self._paths = sorted(paths)
        self._rows = rows
        self._progress = progress

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return pbegin | "Files" >> beam.Create(self._paths) | "Records" >> beam.ParDo(
            _ReadFileBatchesFn(self._rows, self._progress))


class DecodeExampleListsFn(beam.DoFn):
    """A list of serialized tf.Examples -> one Arrow RecordBatch: the batch tfx_bsl's decoder makes
    (what TFXIO's `BeamSource` does after batching records one by one), made by
    example_decoder.ExampleBatchDecoder when it can. With a schema, features are decoded to its
    types; without one, each keeps the kind it was written with, and `features` (name -> the kind
    expected), when given, keeps only those columns."""

    def __init__(self, schema: Any = None, features: Mapping[str, Kind] | None = None) -> None:
        # Serialized, as tfx_bsl's own DoFn keeps it: a schema proto pickles poorly.
        self._schema = schema.SerializeToString() if schema is not None else None
        self._features = dict(features) if features is not None else None

    def setup(self) -> None:
        from tensorflow_metadata.proto.v0 import schema_pb2
        from tfx_bsl.coders import example_coder

        from beam_jobs.example_decoder import ExampleBatchDecoder

        if self._schema is not None:
            decoder = ExampleBatchDecoder.for_schema(schema_pb2.Schema.FromString(self._schema))
            self._decode = (decoder.decode if decoder is not None
                            else example_coder.ExamplesToRecordBatchDecoder(self._schema).DecodeBatch)
        elif self._features is not None:
            self._decode = ExampleBatchDecoder.for_features(self._features).decode
        else:
            self._decode = example_coder.ExamplesToRecordBatchDecoder().DecodeBatch

    def process(self, records: list[bytes]) -> Iterator[Any]:
        if records:
            yield self._decode(records)


# gzip level of the files the sink writes. Intermediate files are written once and read once to
# three times: at level 1 a taxi split compresses 2.6x faster than at zlib's default 6 (190 against
# 73 MB/s here) into a file 18% larger (13.6% of the bytes against 11.5%), and reads as fast.
GZIP_LEVEL = 1


class _GzipFile:
    """A gzip stream at GZIP_LEVEL into a file Beam's FileSystems opened (Beam's own compressed file
    always compresses at zlib's default level)."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self._compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)

    def write(self, data: bytes) -> None:
        compressed = self._compressor.compress(data)
        if compressed:
            self._raw.write(compressed)

    def finish(self) -> bytes:
        return self._compressor.flush()

    def close(self) -> None:
        self._raw.write(self.finish())
        self._raw.close()


class TFRecordBatchSink(FileBasedSink):
    """gzip TFRecord files (as beam.io.WriteToTFRecord writes them, at GZIP_LEVEL) from lists of
    serialized records.

    One element and one compressor call per list, where WriteToTFRecord takes an element and a
    compressor call per record: per row, those cost more than encoding the row.
    """

    def __init__(self, prefix: str) -> None:
        # Opened uncompressed: `open` puts the gzip stream on it.
        super().__init__(prefix, coder=None, file_name_suffix=TFRECORD_SUFFIX, num_shards=0,
                         shard_name_template=None, mime_type="application/octet-stream",
                         compression_type=CompressionTypes.UNCOMPRESSED)

    def open(self, temp_path: str) -> _GzipFile:
        return _GzipFile(super().open(temp_path))

    def write_record(self, file_handle: Any, records: list[bytes]) -> None:
        file_handle.write(tfrecord_frames(records))


def write_tfrecord_file(path: str, record_lists: Iterable[list[bytes]]) -> None:
    """One gzip TFRecord file, as the sink writes its shards, from lists of serialized records: for
    a single element a job writes whole (a split's head), without a shuffle to a sink's writer."""
    with FileSystems.create(path, mime_type="application/octet-stream", compression_type=CompressionTypes.UNCOMPRESSED) as raw:
        gzip_file = _GzipFile(raw)
        for records in record_lists:
            gzip_file.write(tfrecord_frames(records))
        raw.write(gzip_file.finish())


_RECORD_LENGTH = struct.Struct("<Q")
_RECORD_CRC = struct.Struct("<I")
# google-crc32c (what Beam's GCS client checks uploads with; pinned in requirements/ml.lock): the
# CPU's CRC-32C instruction, ~0.1 us a record where crcmod's table (Beam's tfrecordio) takes ~0.7.
_crc32c = google_crc32c.value


def tfrecord_frames(records: Iterable[bytes]) -> bytes:
    """Records in TFRecord framing, back to back."""
    return b"".join(map(tfrecord_frame, records))


def tfrecord_frame(record: bytes) -> bytes:
    """One record in TFRecord framing: length, masked CRC-32C of the length, the bytes, their masked CRC-32C."""
    length = _RECORD_LENGTH.pack(len(record))
    return b"".join((length, _RECORD_CRC.pack(_masked_crc32c(length)), record, _RECORD_CRC.pack(_masked_crc32c(record))))


def _masked_crc32c(data: bytes) -> int:
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
