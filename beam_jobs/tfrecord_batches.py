"""Reading and writing gzip TFRecord files as lists of records, for jobs that work in batches.

beam.io.ReadFromTFRecord and WriteToTFRecord take one element, and make one Python call, per
record; for a job whose work per record is a few microseconds (ingest, clean, statistics), that
costs more than the work. `ReadRecordBatches` reads each file with TensorFlow's C++ reader into
lists of BATCH_ROWS records; `TFRecordBatchSink` takes a list per element and writes the same files
(same framing, same shard names) with one compressor call per list.
"""

from __future__ import annotations

import struct
from typing import Any, Iterator, Sequence

import apache_beam as beam
import crcmod.predefined
from apache_beam.io.filebasedsink import FileBasedSink
from apache_beam.io.filesystem import CompressionTypes

from beam_jobs.example_codec import TFRECORD_SUFFIX

# Records per list: large enough that per-call costs (a decoder's, column operations') vanish,
# small enough that a list a decoder refuses (one undecodable record) costs little to redo.
BATCH_ROWS = 2048


class _ReadFileBatchesFn(beam.DoFn):
    """A gzip TFRecord file -> its records, `rows` to a list (read by TensorFlow's C++ reader, which
    checks each record's CRCs as beam.io.ReadFromTFRecord does, at a fraction of its cost a record)."""

    def __init__(self, rows: int) -> None:
        self._rows = rows

    def process(self, path: str) -> Iterator[list[bytes]]:
        import tensorflow as tf  # the worker's, imported where the read runs

        for batch in tf.data.TFRecordDataset(path, compression_type="GZIP").batch(self._rows):
            yield batch.numpy().tolist()


class ReadRecordBatches(beam.PTransform):
    """The records of gzip TFRecord files, as lists of up to `rows` (one element per list): for a job
    whose work per record is a few microseconds, reading one element per record
    (beam.io.ReadFromTFRecord, in Python) costs more than the work. The lists are cut the same way
    on every run (each file from its start), so batch-dependent sums are the same too."""

    def __init__(self, paths: Sequence[str], rows: int = BATCH_ROWS) -> None:
        super().__init__()
        if rows < 1:
            raise ValueError(f"ReadRecordBatches: rows must be at least 1, got {rows}")
        self._paths = sorted(paths)
        self._rows = rows

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return pbegin | "Files" >> beam.Create(self._paths) | "Records" >> beam.ParDo(_ReadFileBatchesFn(self._rows))


class DecodeExampleListsFn(beam.DoFn):
    """A list of serialized tf.Examples -> one Arrow RecordBatch, decoded in C++ by tfx_bsl (what
    TFXIO's `BeamSource` does after batching records one by one). With a schema, features are
    decoded to its types; without one, each keeps the kind it was written with."""

    def __init__(self, schema: Any = None) -> None:
        # Serialized, as tfx_bsl's own DoFn keeps it: a schema proto pickles poorly.
        self._schema = schema.SerializeToString() if schema is not None else None

    def setup(self) -> None:
        from tfx_bsl.coders import example_coder

        self._decoder = (example_coder.ExamplesToRecordBatchDecoder(self._schema) if self._schema is not None
                         else example_coder.ExamplesToRecordBatchDecoder())

    def process(self, records: list[bytes]) -> Iterator[Any]:
        if records:
            yield self._decoder.DecodeBatch(records)


class TFRecordBatchSink(FileBasedSink):
    """gzip TFRecord files (as beam.io.WriteToTFRecord writes them) from lists of serialized records.

    One element and one compressor call per list, where WriteToTFRecord takes an element and a
    compressor call per record: per row, those cost more than encoding the row.
    """

    def __init__(self, prefix: str) -> None:
        super().__init__(prefix, coder=None, file_name_suffix=TFRECORD_SUFFIX, num_shards=0,
                         shard_name_template=None, mime_type="application/octet-stream",
                         compression_type=CompressionTypes.GZIP)

    def write_record(self, file_handle: Any, records: list[bytes]) -> None:
        file_handle.write(b"".join(map(tfrecord_frame, records)))


_RECORD_LENGTH = struct.Struct("<Q")
_RECORD_CRC = struct.Struct("<I")
_crc32c = crcmod.predefined.mkPredefinedCrcFun("crc-32c")  # Beam's own dependency, C-accelerated


def tfrecord_frame(record: bytes) -> bytes:
    """One record in TFRecord framing: length, masked CRC-32C of the length, the bytes, their masked CRC-32C."""
    length = _RECORD_LENGTH.pack(len(record))
    return b"".join((length, _RECORD_CRC.pack(_masked_crc32c(length)), record, _RECORD_CRC.pack(_masked_crc32c(record))))


def _masked_crc32c(data: bytes) -> int:
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
