"""Clean's `DropDuplicates` step: exact duplicates found by counting content digests, in flat memory.

A row's content is its stored Example without the source line, normalized (features without a value
left out, unknown protobuf fields dropped) and serialized with sorted keys (`content_bytes`): two
records hold the same values exactly when their content bytes are equal, the same equality as
example_codec.canonical_row's text, and for a row the clean job keeps unchanged those bytes are
also what it writes.

How it stays flat: `CountContentCopies` collects 8-byte digests of the contents of a second read of
the split (lists of records), an array per bundle, and a combiner finds those seen more than once: a
side input as large as the duplicated contents; the count holds 8 bytes per row, never a row. Given
a folder beside the job's outputs, each bundle writes its array to a file there and passes on only
the file's name, and the combiner reads the files into one array it sorts in place: one copy of the
digests instead of the three or four a shuffle of the arrays makes (encoded, decoded, gathered),
and a folder on shared storage serves any runner as the job's sinks do. The first read's
rows stream past it (clean.CleanRecordFn): a row whose content is there goes to the exact
comparison (`GroupByKey` on the full content bytes, then `pick_kept_copy`), every other row is kept
as it goes. A digest collision only sends both rows to the exact comparison, which tells them
apart; so does anything the second read counts that the first read refuses.
"""

from __future__ import annotations

import array
import hashlib
import uuid
from typing import Any, Callable, Iterable, Iterator, Mapping, Union

import apache_beam as beam
import numpy as np
import tensorflow as tf
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindows
from google.protobuf.message import DecodeError

from beam_jobs.canonical_examples import CanonicalContents
from beam_jobs.example_codec import EMPTY_FEATURE_MARKS, SOURCE_LINE_KEY, row_to_example
from transforms.features import Kind

# A content's digest: 8 bytes of BLAKE2b, as an int. The count keeps 8 bytes per row, nothing else;
# a collision (~n^2/2^65: one in 10^7 runs at 1.5M rows) costs only an exact comparison.
CONTENT_DIGEST_BYTES = 8


def content_digest(content: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(content, digest_size=CONTENT_DIGEST_BYTES).digest(), "little")


def _has_values(feature: tf.train.Feature) -> bool:
    kind = feature.WhichOneof("kind")
    return kind is not None and len(getattr(feature, kind).value) > 0


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
    # (Spelled out: a generator over the marks costs as much as the three searches.)
    if EMPTY_FEATURE_MARKS[0] in content or EMPTY_FEATURE_MARKS[1] in content or EMPTY_FEATURE_MARKS[2] in content:
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


def record_digest(serialized: bytes) -> int | None:
    """The second read's digest of a record. Not as strict as clean's decode: what that refuses is
    rejected before it is routed, and counting it too can only send a row to the exact comparison."""
    try:
        example = tf.train.Example.FromString(serialized)
    except DecodeError:
        return None
    return content_digest(content_bytes(example))


# One bundle's digests as the combiner gets them: the array's bytes, or (file, digest count) when spilled.
BundleDigests = Union[bytes, tuple[str, int]]
_READ_BYTES = 8 << 20


class BundleDigestsFn(beam.DoFn):
    """Lists of records -> one array of their content digests per bundle (8 bytes a record): no
    per-record element leaves this stage. With `spill_dir`, the array goes to a file there and the
    element is (its path, how many digests). With `kinds` (the features a record may hold, of their
    kinds), a record in protobuf's deterministic form gives its content from its own bytes
    (beam_jobs/canonical_examples.py); any other is parsed (record_digest)."""

    def __init__(self, spill_dir: str | None = None, kinds: Mapping[str, Kind] | None = None) -> None:
        self._spill_dir = spill_dir
        self._canonical = CanonicalContents(kinds) if kinds else None

    def start_bundle(self) -> None:
        self._digests = array.array("Q")

    def process(self, records: list[bytes]) -> Iterator[Any]:
        contents = self._canonical.contents(records) if self._canonical is not None else [None] * len(records)
        for serialized, content in zip(records, contents):
            digest = content_digest(content) if content is not None else record_digest(serialized)
            if digest is not None:
                self._digests.append(digest)
        return iter(())

    def finish_bundle(self) -> Iterator[Any]:
        if self._digests:
            yield GlobalWindows.windowed_value(self._spill() if self._spill_dir else self._digests.tobytes())
        self._digests = array.array("Q")

    def _spill(self) -> tuple[str, int]:
        # A file of its own per bundle attempt: only the names of committed bundles reach the combiner.
        path = FileSystems.join(self._spill_dir, f"digests-{uuid.uuid4().hex}.u64")
        with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as out:
            out.write(memoryview(self._digests).cast("B"))
        return path, len(self._digests)


def _read_spilled(path: str, into: np.ndarray) -> None:
    """Fills `into` with the digests of one spilled file, which must hold exactly that many: a file
    cut short would miss duplicates."""
    target = memoryview(into).cast("B")
    filled = 0
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as source:
        while filled < len(target) and (chunk := source.read(min(_READ_BYTES, len(target) - filled))):
            target[filled:filled + len(chunk)] = chunk
            filled += len(chunk)
        longer = bool(source.read(1))
    if filled != len(target) or longer:
        raise RuntimeError(f"{path}: expected {len(target)} bytes of content digests, found "
                           f"{'more' if longer else filled}")


class DigestsWithCopiesFn(beam.CombineFn):
    """Per-bundle digest arrays (or their files) -> the set of digests seen more than once (sorted
    and counted once, by numpy)."""

    def create_accumulator(self) -> list[BundleDigests]:
        return []

    def add_input(self, bundles: list[BundleDigests], digests: BundleDigests) -> list[BundleDigests]:
        bundles.append(digests)
        return bundles

    def merge_accumulators(self, accumulators: Iterable[list[BundleDigests]]) -> list[BundleDigests]:
        return [digests for bundles in accumulators for digests in bundles]

    def extract_output(self, bundles: list[BundleDigests]) -> frozenset[int]:
        if not bundles:
            return frozenset()
        # One array of every digest, sorted in place; a digest with copies equals its neighbour.
        # 8 bytes a record beside the accumulator's own (np.unique with counts took ~5 such arrays).
        sizes = [len(bundle) // 8 if isinstance(bundle, bytes) else bundle[1] for bundle in bundles]
        digests = np.empty(sum(sizes), dtype=np.uint64)
        filled = 0
        for bundle, size in zip(bundles, sizes):
            if isinstance(bundle, bytes):
                digests[filled:filled + size] = np.frombuffer(bundle, dtype=np.uint64)
            else:
                _read_spilled(bundle[0], digests[filled:filled + size])
            filled += size
        digests.sort()
        repeated = digests[1:][digests[1:] == digests[:-1]]
        return frozenset(np.unique(repeated).tolist())


class CountContentCopies(beam.PTransform):
    """Lists of serialized records -> (a single element) the frozenset of content digests seen more than once.

    Counted with a combiner over per-bundle arrays of 8-byte digests: what crosses a stage is 8 bytes
    per record, never the rows, and no per-record element; with `spill_dir` (a folder on storage
    every worker sees, removed by the caller after the run), only a file name per bundle.
    """

    def __init__(self, spill_dir: str | None = None, kinds: Mapping[str, Kind] | None = None) -> None:
        super().__init__()
        self._spill_dir = spill_dir
        self._kinds = kinds

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        return (
            records
            | "ContentDigests" >> beam.ParDo(BundleDigestsFn(self._spill_dir, self._kinds))
            | "DigestsWithCopies" >> beam.CombineGlobally(DigestsWithCopiesFn())
        )


def _source_line_order(row: dict[str, Any]) -> tuple[bool, int]:
    line = row.get(SOURCE_LINE_KEY)
    return (line is None, line or 0)


def pick_kept_copy(rows: list[dict[str, Any]], where: Callable[[int], str] = "line {}".format,
                   ) -> tuple[dict[str, Any], list[dict[str, Any]], str]:
    """Rows of one content -> (the copy kept, the copies rejected, the rejection detail).

    The rows are equal value for value, so which copy is kept cannot change the cleaned data; the
    copy from the earliest line is kept (a line before none; the first file's before the next's),
    so the rejected lines are the same on every run. `where` names a source line in the detail
    (source_lines.SourceFiles.where, with the file when there are several).
    """
    rows = sorted(rows, key=_source_line_order)
    kept = rows[0]
    of_line = f" of {where(kept[SOURCE_LINE_KEY])}" if kept.get(SOURCE_LINE_KEY) is not None else ""
    return kept, rows[1:], f"exact duplicate{of_line}: {len(rows)} identical rows in this split, 1 kept"
