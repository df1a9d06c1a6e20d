"""Writing gzip TFRecord files from lists of records: a Beam sink for jobs that batch their output.

beam.io.WriteToTFRecord takes one element, and makes one compressor call, per record; for a job
whose work per record is a few microseconds (ingest), that costs more than the work. This sink
takes a list of serialized records per element and writes the same files (same framing, same
shard names) with one compressor call per list.
"""

from __future__ import annotations

import struct
from typing import Any

import crcmod.predefined
from apache_beam.io.filebasedsink import FileBasedSink
from apache_beam.io.filesystem import CompressionTypes

from beam_jobs.example_codec import TFRECORD_SUFFIX


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
