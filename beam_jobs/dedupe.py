"""Clean's `DropDuplicates` step: exact duplicates found by counting content digests, in flat memory.

A row's content is its stored Example without the source line, normalized (features without a value
left out, unknown protobuf fields dropped) and serialized with sorted keys (`content_bytes`): two
records hold the same values exactly when their content bytes are equal, the same equality as
example_codec.canonical_row's text, and for a row the clean job keeps unchanged those bytes are
also what it writes.

How it stays flat: `CountContentCopies` counts 16-byte digests of the contents of a second read of
the split with a combiner (summed per bundle before the shuffle), and keeps only those seen more
than once: a side input as large as the duplicated contents, not as the data. The first read's rows
stream past it (clean.CleanRecordFn): a row whose content is there goes to the exact comparison
(`GroupByKey` on the full content bytes, then `pick_kept_copy`), every other row is kept as it goes.
A digest collision (odds ~2^-64 at 2^32 rows) only sends both rows to the exact comparison, which
tells them apart; so does anything the second read counts that the first read refuses.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterator

import apache_beam as beam
import tensorflow as tf
from google.protobuf.message import DecodeError

from beam_jobs.example_codec import SOURCE_LINE_KEY, row_to_example

# What the duplicate count shuffles per row instead of the row (about 500 bytes encoded).
CONTENT_DIGEST_BYTES = 16


def content_digest(content: bytes) -> bytes:
    return hashlib.blake2b(content, digest_size=CONTENT_DIGEST_BYTES).digest()


def _has_values(feature: tf.train.Feature) -> bool:
    kind = feature.WhichOneof("kind")
    return kind is not None and len(getattr(feature, kind).value) > 0


# How a feature without a value serializes inside the map (an empty Feature, or an empty bytes_list,
# float_list or int64_list): one of these is in the bytes whenever such a feature is.
_EMPTY_FEATURE_MARKS = (b"\x12\x00", b"\x0a\x00", b"\x1a\x00")


def content_bytes(example: tf.train.Example) -> bytes:
    """The example's content, normalized (see the module docstring); changes `example` in place."""
    features = example.features.feature
    if SOURCE_LINE_KEY in features:
        del features[SOURCE_LINE_KEY]
    example.DiscardUnknownFields()
    # Sorted map keys: the same content gives the same bytes in every process (a map's own order
    # need not be stable).
    content = example.SerializeToString(deterministic=True)
    # Looking at each feature costs more than the rest of this together: only when the bytes hold
    # the mark of an empty one (value bytes can look like it too; then the look finds nothing).
    if any(mark in content for mark in _EMPTY_FEATURE_MARKS):
        empty = [name for name, feature in features.items() if not _has_values(feature)]
        if empty:
            for name in empty:
                del features[name]
            content = example.SerializeToString(deterministic=True)
    return content


def row_content_bytes(row: dict[str, Any]) -> bytes:
    """content_bytes of the example a row (a decoded record, or one changed by a policy) stores as."""
    return row_to_example({name: value for name, value in row.items() if name != SOURCE_LINE_KEY}).SerializeToString(
        deterministic=True)


def record_digest(serialized: bytes) -> Iterator[bytes]:
    """The second read's digest of a record. Not as strict as clean's decode: what that refuses is
    rejected before it is routed, and counting it too can only send a row to the exact comparison."""
    try:
        example = tf.train.Example.FromString(serialized)
    except DecodeError:
        return
    yield content_digest(content_bytes(example))


def _has_copies(digest_count: tuple[bytes, int]) -> bool:
    return digest_count[1] > 1


class CountContentCopies(beam.PTransform):
    """Serialized records -> (content digest, count) for each content seen more than once.

    A combiner counts: the shuffle carries 16-byte digests and counts, summed per bundle before it,
    never the rows.
    """

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        return (
            records
            | "ContentDigest" >> beam.FlatMap(record_digest)
            | "CountPerDigest" >> beam.combiners.Count.PerElement()
            | "OnlyWithCopies" >> beam.Filter(_has_copies)
        )


def _source_line_order(row: dict[str, Any]) -> tuple[bool, int]:
    line = row.get(SOURCE_LINE_KEY)
    return (line is None, line or 0)


def pick_kept_copy(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]], str]:
    """Rows of one content -> (the copy kept, the copies rejected, the rejection detail).

    The rows are equal value for value, so which copy is kept cannot change the cleaned data; the
    copy from the earliest line is kept (a line before none), so the rejected lines are the same on
    every run.
    """
    rows = sorted(rows, key=_source_line_order)
    kept = rows[0]
    of_line = f" of line {kept[SOURCE_LINE_KEY]}" if kept.get(SOURCE_LINE_KEY) is not None else ""
    return kept, rows[1:], f"exact duplicate{of_line}: {len(rows)} identical rows in this split, 1 kept"
