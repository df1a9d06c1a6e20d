"""The training order: which of a split's rows a training run reads, chosen where the rows are written.

A training run of `steps` batches of `batch_size` rows reads at most `steps * batch_size` rows.
Which ones, and in which order before the seeded shuffle, is fixed by the rows alone: rows are
ordered by an 8-byte digest (`order_digest`) of their serialized transformed tf.Example, ties broken by
those bytes, and a run takes the first rows in that order. The digest makes the order a pseudo-random
permutation (the first rows are a uniform sample); neither the order of the files nor their sharding
changes it, so the same rows train the same model. Identical rows tie to the byte and are
interchangeable. The transform's example encoder writes one content as one sequence of bytes.

Transform's Beam job combines every split it writes into its head, the split's first `limit` rows
in this order (`FirstInOrderFn`: a combiner, each accumulator at most `limit * 5 / 4` records), and
writes it beside the split (`head_dir`) with a manifest (`HEADS_FILE`). The trainer reads a head
instead of its split, so its time and memory follow its budget, not the data's size;
`FirstInOrder` is the same choice in one process, for a split whose head is missing or shorter than
the budget.
"""

from __future__ import annotations

import array
import json
import zlib
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import apache_beam as beam
import mmh3
import numpy as np

from beam_jobs.example_codec import TFRECORD_SUFFIX

ORDER_DESCRIPTION = ("the first 8 bytes of MurmurHash3 (x64, 128 bits, seed 0) of the serialized transformed tf.Example, "
                     "ties by its bytes")
HEADS_FILE = "heads.json"
_DIGEST_HEAD = np.dtype([("head", ">u8"), ("rest", "V8")])


def order_digest(record: bytes) -> bytes:
    """The record's 8-byte digest: its place in the training order (bytes compare as the big-endian number).

    MurmurHash3 (x64, 128 bits, seed 0), not a cryptographic hash: all the order needs is to be
    unrelated to the rows' content, and a 1 KB record takes it in 0.25 us (SHA-1: 1.0, BLAKE2b: 1.5).
    """
    return mmh3.hash_bytes(record)[:8]


def order_digests(records: Sequence[bytes]) -> np.ndarray:
    """`order_digest` of each record, as unsigned 64-bit numbers (their whole hashes joined, the
    first 8 bytes of each read by numpy: no slice a record)."""
    digest = mmh3.hash_bytes
    return np.frombuffer(b"".join([digest(record) for record in records]), dtype=_DIGEST_HEAD)["head"]


def in_training_order(records: Iterable[bytes]) -> list[bytes]:
    """All of `records`, sorted in the training order: the definition the selections below keep."""
    return [record for _, record in sorted((order_digest(record), record) for record in records)]


class FirstInOrder:
    """The first `limit` records in training order among all added, held in at most `limit * 5 / 4`
    (and a few hundred, and one batch).

    Once `limit` records are held, only a record whose digest is at most the last kept one's can
    still be among the first; the rest are dropped as they come (one numpy comparison a batch), so
    after the first rows the pool grows by about `limit / rows seen` of each batch. The records held are copied back to back into
    one buffer (transformed taxi examples are ~1 KB: 40 MB at a limit of 40,000), not kept as the
    objects they came as, each of which would pin the allocator's page it shares with the transient
    rows around it. They are put in training order only when read out.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"FirstInOrder: limit must be at least 1, got {limit}")
        self.limit = limit
        self.seen = 0
        self._capacity = limit + max(limit // 4, 256)
        self._digests = bytearray()  # 8 bytes a record held
        self._data = bytearray()  # the records held, back to back
        self._ends = array.array("q")  # where each ends in _data
        self._bound: int | None = None  # the last kept record's digest, once `limit` are held
        self._compressed: bytes | None = None  # _data compressed, until it changes

    def add(self, records: Sequence[bytes]) -> None:
        self.seen += len(records)
        self._compressed = None
        digests = order_digests(records)
        if self._bound is None:
            taken = range(len(records))
        else:
            taken = np.flatnonzero(digests <= np.uint64(self._bound)).tolist()
            if not taken:
                return
        kept = [records[index] for index in taken]
        self._digests += digests[taken].tobytes()
        base = len(self._data)
        self._data += b"".join(kept)
        self._ends.extend((base + np.cumsum([len(record) for record in kept])).tolist())
        if len(self._ends) >= self._capacity:
            self.prune()

    def merge(self, other: "FirstInOrder") -> None:
        self.seen += other.seen
        self._compressed = None
        shift = len(self._data)
        self._digests += other._digests
        self._data += other._data
        self._ends.extend((np.frombuffer(other._ends, dtype=np.int64) + shift).tolist())
        if other._bound is not None and (self._bound is None or other._bound < self._bound):
            self._bound = other._bound
        if len(self._ends) >= self._capacity:
            self.prune()

    def __len__(self) -> int:
        return len(self._ends)

    def __getstate__(self) -> dict[str, Any]:
        # An accumulator waits pickled between a runner's stages: its records compressed (transformed
        # examples: ~7x at level 1) hold ~6 MB there instead of 40. Beam pickles the same one again
        # to sample its size: compressed once, until it changes.
        if self._compressed is None:
            self._compressed = zlib.compress(self._data, 1)
        return dict(self.__dict__, _data=self._compressed, _compressed=None)

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["_data"] = bytearray(zlib.decompress(state["_data"]))
        self.__dict__.update(state)

    def records(self) -> list[bytes]:
        """The first `min(limit, seen)` records added, in training order."""
        return [record for batch in self.record_lists() for record in batch]

    def record_lists(self, rows: int = 4096) -> Iterator[list[bytes]]:
        """`records()`, `rows` at a time: what a writer takes without a second copy of them all."""
        order = self.prune()
        data, ends = self._data, np.frombuffer(self._ends, dtype=np.int64)
        starts = _starts(ends)
        for first in range(0, len(order), rows):
            part = order[first:first + rows]
            yield [bytes(data[start:end]) for start, end in zip(starts[part].tolist(), ends[part].tolist())]

    def prune(self) -> np.ndarray:
        """Keeps only the first `limit` records held; returns the indices of those held, in training order.

        They stay where they are, in the order they came; the others' bytes are closed up in place,
        a run of kept neighbours moved at once (no second buffer).
        """
        order = self._order()
        if len(order) < self.limit:
            return order
        digests = np.frombuffer(self._digests, dtype=">u8")
        self._bound = int(digests[order[self.limit - 1]])
        if len(order) == self.limit:
            return order
        ends = np.frombuffer(self._ends, dtype=np.int64)
        starts = _starts(ends)
        kept = np.sort(order[: self.limit])
        written = 0
        with memoryview(self._data) as data:
            for first, last in _runs(kept):
                start, end = int(starts[first]), int(ends[last])
                if start != written:
                    data[written:written + end - start] = data[start:end]
                written += end - start
        del self._data[written:]
        self._compressed = None
        self._ends = array.array("q", np.cumsum(ends[kept] - starts[kept]).tolist())
        self._digests = bytearray(digests[kept].tobytes())
        return np.searchsorted(kept, order[: self.limit])  # where each of the first now sits

    def _order(self) -> np.ndarray:
        """The records held, as their indices in training order."""
        digests = np.frombuffer(self._digests, dtype=">u8")
        order = np.argsort(digests, kind="stable")
        ordered = digests[order]
        tied = np.flatnonzero(ordered[1:] == ordered[:-1])
        if len(tied):  # equal digests (copies of a record, or a collision): their bytes order them
            data, ends = self._data, np.frombuffer(self._ends, dtype=np.int64)
            starts = _starts(ends)
            for first, last in _runs(tied):
                run = order[first:last + 2]
                order[first:last + 2] = sorted(run, key=lambda index: data[starts[index]:ends[index]])
        return order


def _starts(ends: np.ndarray) -> np.ndarray:
    return np.concatenate([np.zeros(1, np.int64), ends[:-1]])


def _runs(positions: np.ndarray) -> Iterator[tuple[int, int]]:
    """Increasing positions -> (first, last) of each run of consecutive ones."""
    if not len(positions):
        return
    breaks = np.flatnonzero(np.diff(positions) != 1)
    for first, last in zip(np.concatenate([[0], breaks + 1]).tolist(), np.concatenate([breaks, [len(positions) - 1]]).tolist()):
        yield int(positions[first]), int(positions[last])


class FirstInOrderFn(beam.CombineFn):
    """Lists of serialized records -> the first `limit` of them all in training order, as a
    `FirstInOrder` (its `record_lists()`: one buffer held, not an object per record)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self._limit = limit

    def create_accumulator(self) -> FirstInOrder:
        return FirstInOrder(self._limit)

    def add_input(self, accumulator: FirstInOrder, records: Sequence[bytes]) -> FirstInOrder:
        accumulator.add(records)
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[FirstInOrder]) -> FirstInOrder:
        merged, *others = accumulators
        for other in others:
            merged.merge(other)
        return merged

    def compact(self, accumulator: FirstInOrder) -> FirstInOrder:
        accumulator.prune()  # an accumulator leaves its worker with `limit` records at most
        return accumulator

    def extract_output(self, accumulator: FirstInOrder) -> FirstInOrder:
        accumulator.prune()
        return accumulator


# --- Where heads live: <transformed>/Head-<split>/data-00000-of-00001.tfrecord.gz, and heads.json ---


def head_dir(root: "str | Path", split: str) -> Path:
    return Path(root) / f"Head-{split}"


def head_path(root: "str | Path", split: str) -> Path:
    return head_dir(root, split) / f"data-00000-of-00001{TFRECORD_SUFFIX}"


def heads_manifest(limit: int, split_rows: Mapping[str, int]) -> dict[str, Any]:
    """What heads.json says: the order, the limit, and each split's rows and head rows."""
    return {"order": ORDER_DESCRIPTION, "limit": limit,
            "splits": {split: {"rows": rows, "head_rows": min(limit, rows)} for split, rows in sorted(split_rows.items())}}


def head_for(root: "str | Path", split: str, rows: int) -> tuple[Path | None, int | None, str]:
    """(the head file holding the split's first `rows` rows in training order, the split's rows, why)
    if `root` has such a head; else (None, None, why not).

    A head serves any number of rows up to its limit, and every number when it holds the whole split.
    """
    manifest_path = Path(root) / HEADS_FILE
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        described, limit = manifest["order"], int(manifest["limit"])
        split_rows = int(manifest["splits"][split]["rows"])
    except FileNotFoundError:
        return None, None, f"{manifest_path} does not exist (transformed before heads were written)"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return None, None, f"{manifest_path} is not a heads manifest with split {split!r} ({type(err).__name__}: {err})"
    if described != ORDER_DESCRIPTION:
        return None, None, f"{manifest_path} describes another order ({described!r})"
    if rows > limit and split_rows > limit:
        return None, None, f"{manifest_path}: the heads hold {limit:,} rows a split, fewer than the {rows:,} needed of {split_rows:,}"
    path = head_path(root, split)
    if not path.is_file():
        return None, None, f"{path} does not exist"
    return path, split_rows, f"{path}: the first {min(rows, split_rows):,} of {split_rows:,} rows in training order"
