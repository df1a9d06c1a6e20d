"""The log's write-ahead journal: append-only segment files that make a logged entry durable before
the gateway answers, and the replay that turns a dead process's segments into Parquet.

A segment is `<log_dir>/_journal/<log>/seg-<unix_ms>-<hex8>.wal` (`seg-<unix_ms>-<writer>-<hex8>.wal`
when the writer has an id: a gateway replica's) (outside `requests/` and
`feedback/`, so the Parquet layout readers know is untouched). One record per line: 8 hex digits
of the CRC-32 of the JSON that follows, a space, the entry's fields as a JSON array (the
NamedTuple's order), a newline. A `kill -9` or a power cut in the middle of a write leaves a last
line without its newline, or one whose CRC does not match: replay skips it. Nobody was answered
for it, because an answer waits for the write and its fdatasync to return.

The segment's name is also the name of the Parquet file(s) it is compacted into
(`part-<unix_ms>-<hex8>.parquet`, one per date partition), so compaction is idempotent: a file that
is already there was written (atomically) before a crash and is not written again, and a segment is
deleted only after all of its files are in place. That is what keeps replay free of duplicates.

Ownership: the process writing a segment holds an exclusive `flock` on it until the segment is
compacted and deleted. The kernel drops the lock when the process dies, `kill -9` included, so
`adopt_stale_segments` takes only segments no living writer holds: two gateways sharing a log
directory never compact each other's live segments.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
import uuid
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import orjson

from core.atomic import fsync_directory

log = logging.getLogger(__name__)

JOURNAL_DIR = "_journal"
_PREFIX = "seg-"
_SUFFIX = ".wal"


def new_segment_name(writer_id: str = "") -> str:
    """`<unix_ms>-<hex8>` (`<unix_ms>-<writer_id>-<hex8>` with an id): the segment's and its Parquet
    files' name (the layout of part files)."""
    middle = f"{writer_id}-" if writer_id else ""
    return f"{int(time.time() * 1000)}-{middle}{uuid.uuid4().hex[:8]}"


def encode_record(entry: Sequence[Any]) -> bytes:
    """One journal line for a log entry (a NamedTuple): CRC, space, JSON array, newline."""
    body = orjson.dumps(tuple(entry))
    return b"%08x %s\n" % (zlib.crc32(body), body)


def decode_records(data: bytes, entry_type: Callable[..., Any]) -> tuple[list[Any], int]:
    """The entries in a segment's bytes and how many records were skipped (torn or corrupt)."""
    lines = data.split(b"\n")
    # What follows the last newline is a record whose write did not finish (or nothing).
    skipped = 1 if lines.pop() else 0
    entries = []
    for line in lines:
        try:
            crc, body = line.split(b" ", 1)
            if int(crc, 16) != zlib.crc32(body):
                raise ValueError("CRC mismatch")
            entries.append(entry_type(*orjson.loads(body)))
        except (ValueError, TypeError):  # orjson.JSONDecodeError is a ValueError
            skipped += 1
    return entries, skipped


class Segment:
    """One segment file, held under an exclusive flock from creation (or adoption) until `remove()`."""

    def __init__(self, path: Path, fd: int, size: int) -> None:
        self.path = path
        self.name = path.name[len(_PREFIX):-len(_SUFFIX)]
        self._fd = fd
        self.size = size  # bytes known to be complete and synced
        self.broken = False

    @classmethod
    def create(cls, directory: Path, writer_id: str = "") -> "Segment":
        """A new, empty segment in `directory` (made if missing); OSError if the disk refuses."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{_PREFIX}{new_segment_name(writer_id)}{_SUFFIX}"
        # Locked under a hidden name first, then renamed into place: another gateway sharing the log
        # directory (a replica starting up) must never find it unlocked and adopt it as a dead one's.
        hidden = directory / f".{path.name}.new"
        fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(hidden, path)
            fsync_directory(directory)  # the new name must survive a power cut with the records in it
        except BaseException:
            os.close(fd)
            hidden.unlink(missing_ok=True)
            path.unlink(missing_ok=True)
            raise
        return cls(path, fd, 0)

    def append(self, data: bytes, sync: bool = True) -> None:
        """Writes `data` and, with `sync`, waits for it to reach the disk (one fdatasync for the whole
        group). Without it the data is in the kernel's page cache: safe from the process dying
        (`kill -9` included), not from a power cut or a kernel crash."""
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        if sync:
            os.fdatasync(self._fd)
        # Writes to a file someone deleted (say, the log directory removed under a running
        # gateway) succeed and are lost: that is a failing log too.
        if os.fstat(self._fd).st_nlink == 0:
            raise FileNotFoundError(f"{self.path} was deleted while the gateway was writing it")
        self.size += len(data)

    def abandon(self) -> None:
        """After a failed append: cut a half-written record off (best effort) and take no more."""
        self.broken = True
        try:
            os.ftruncate(self._fd, self.size)
        except OSError:
            pass  # replay skips a torn record anyway

    def read(self, entry_type: Callable[..., Any]) -> tuple[list[Any], int]:
        return decode_records(self.path.read_bytes(), entry_type)

    def remove(self) -> None:
        """Deletes the file (its entries are in Parquet now), then lets go of the lock."""
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)

    def release(self) -> None:
        """Lets go of the lock and keeps the file (for the next start to replay)."""
        os.close(self._fd)


def adopt_stale_segments(directory: Path) -> Iterator[Segment]:
    """Segments left by writers that are gone (crashed, killed), oldest first, each now locked by us."""
    if not directory.is_dir():
        return
    for path in sorted(directory.glob(f"{_PREFIX}*{_SUFFIX}")):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # compacted by its writer meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # a living writer's segment
            continue
        if not path.exists():  # compacted and deleted between our open and our lock
            os.close(fd)
            continue
        yield Segment(path, fd, os.fstat(fd).st_size)
