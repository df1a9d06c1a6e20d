"""The gateway's log writer: a write-ahead journal for durability, Parquet files for readers.

An entry handed to `ParquetLogWriter.try_put` goes through three stages, in order:
1. the journal thread appends it, with every entry that arrived meanwhile, to the open segment
   (`serving/request_journal.py`) with one write and one fdatasync (group commit), then tells the
   entry's waiter; the gateway answers only then, so an answered request survives `kill -9`;
2. every `flush_rows` rows or `flush_seconds` seconds (and on `flush()`/`close()`), the journal
   thread seals the segment and opens a new one on the next entry;
3. the Parquet thread writes a sealed segment's entries (kept in memory, not re-read) as
   `part-<segment name>.parquet` in their date partitions (`serving/prediction_log.py`,
   atomically), then deletes the segment.
On start, segments left by a dead writer are read back and go through stage 3 first (replay).

When the journal cannot be written (full disk, I/O error, the directory gone), the writer
reports it in `failure` and to the waiters, and retries with a new segment on the next entry,
so it recovers by itself. With `on_failure="refuse"` it drops the entries (the gateway answers
503 and logs nothing); with `"serve"` it keeps them in memory for the Parquet files, not durable.
`fsync=False` skips the fdatasync: an entry is durable against the process dying (`kill -9`) as
soon as it is written, not against a power cut; on a disk whose fdatasync is slow that is the
cheaper trade. `journal=False` is the log as it was before the journal (memory only until a
Parquet file).

`capacity_rows` bounds the rows accepted but not yet in Parquet: `try_put` refuses an entry that
would exceed it (back-pressure, never a silent drop). A failed Parquet write is retried; its
segment stays on disk until it succeeds.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import pyarrow as pa

from serving import prediction_log as plog
from serving.request_journal import JOURNAL_DIR, Segment, adopt_stale_segments, encode_record, new_segment_name

log = logging.getLogger(__name__)

LOG_FAILURE_POLICIES = ("refuse", "serve")

# What a waiter hears: None when the entry is durable, else the message naming the log problem.
Waiter = Callable[[str | None], None]


class LogWriterClosed(RuntimeError):
    """The writer was closed; nothing more can be logged through it."""


@dataclasses.dataclass
class _Batch:
    """Entries bound for one set of Parquet files named `name`, and the segment that holds them."""

    name: str
    entries: list[Any]
    rows: int
    segment: Segment | None
    last_seq: int  # every entry accepted up to this one is done once this batch is


class ParquetLogWriter:
    """A journaled, bounded log of entries (NamedTuples with `rows` and `timestamp_us`) written as Parquet."""

    def __init__(
        self,
        directory: Path,
        schema: pa.Schema,
        to_columns: Callable[[Sequence[Any]], dict[str, list[Any]]],
        entry_type: Callable[..., Any],
        *,
        journal_dir: Path | None = None,
        fsync: bool = True,
        on_failure: str = "refuse",
        capacity_rows: int = 50_000,
        flush_rows: int = 10_000,
        flush_seconds: float = 5.0,
        retry_seconds: float = 1.0,
        name: str = "prediction-log",
        writer_id: str = "",
    ) -> None:
        if capacity_rows < 1 or flush_rows < 1 or flush_seconds <= 0:
            raise ValueError("capacity_rows and flush_rows must be >= 1 and flush_seconds > 0")
        if on_failure not in LOG_FAILURE_POLICIES:
            raise ValueError(f"on_failure must be one of {list(LOG_FAILURE_POLICIES)}, got {on_failure!r}")
        self.directory = Path(directory)
        self.journal_dir = Path(journal_dir) if journal_dir is not None else None
        # In every file name this writer makes: gateway replicas sharing a log directory are told apart.
        self.writer_id = writer_id
        self.on_failure = on_failure
        self.fsync = fsync
        self.schema = schema
        self._to_columns = to_columns
        self._entry_type = entry_type
        self.capacity_rows = capacity_rows
        self.flush_rows = min(flush_rows, capacity_rows)
        self.flush_seconds = flush_seconds
        self._retry_seconds = retry_seconds
        self._cond = threading.Condition()
        # Stage 1: accepted, not yet in the journal: (seq, entry, record bytes, waiter).
        self._buffer: list[tuple[int, Any, bytes | None, Waiter | None]] = []
        # Stage 2, owned by the journal thread: the open segment and the entries written to it.
        self._segment: Segment | None = None
        self._open: list[Any] = []
        self._open_rows = 0
        self._open_since: float | None = None
        self._open_last_seq = 0
        # Stage 3: sealed batches, oldest first, for the Parquet thread.
        self._sealed: collections.deque[_Batch] = collections.deque()
        self._pending_rows = 0  # accepted, not yet in Parquet (nor dropped)
        self._seq = 0  # entries accepted so far
        self._done_seq = 0  # every entry up to this one is in Parquet or was dropped
        self._flush_requested = False
        self._closing = False
        self._journal_stopped = False
        self._closed = False
        self.failure: str | None = None  # the journal's current problem; None while it works
        self.rows_written = 0
        self.files_written = 0
        self.write_failures = 0  # failed Parquet writes (retried)
        self.journal_failures = 0  # failed journal writes (entries refused, or kept not durable)
        self.journal_commits = 0  # fdatasyncs: entries journaled / commits = the group size
        self.journal_entries = 0
        self.not_durable_rows = 0  # rows kept in memory only (on_failure="serve" while failing)
        self.replayed_rows = 0
        self.skipped_records = 0  # torn or corrupt records found by replay
        self.directory.mkdir(parents=True, exist_ok=True)
        plog.load_arrow_timezones()
        if self.journal_dir is not None:
            self._replay()
        self._journal_thread = threading.Thread(target=self._journal_run, name=f"{name}-journal", daemon=True)
        self._parquet_thread = threading.Thread(target=self._parquet_run, name=name, daemon=True)
        self._journal_thread.start()
        self._parquet_thread.start()

    @property
    def journaled(self) -> bool:
        return self.journal_dir is not None

    # --- producers -------------------------------------------------------------------------
    def try_put(self, entry: Any, waiter: Waiter | None = None) -> bool:
        """Accepts `entry` unless that would exceed the capacity; never blocks (safe on an event loop).

        `waiter` is called once, from the journal thread, when the entry is durable (None) or could
        not be journaled (the problem's message). Without a journal it is called at once with None.
        """
        rows = entry.rows
        record = encode_record(entry) if self.journal_dir is not None else None
        with self._cond:
            if self._closing:
                raise LogWriterClosed(f"log writer for {self.directory} is closed")
            # An entry larger than the whole capacity is still accepted into an empty queue.
            if self._pending_rows and self._pending_rows + rows > self.capacity_rows:
                return False
            self._seq += 1
            self._buffer.append((self._seq, entry, record, waiter))
            self._pending_rows += rows
            if len(self._buffer) == 1:
                self._cond.notify_all()
        return True

    def put(self, entry: Any, timeout: float | None = None) -> bool:
        """Blocking `try_put` for threads: waits for room up to `timeout` seconds; False if none came."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.try_put(entry):
            with self._cond:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(0.05 if remaining is None else min(remaining, 0.05))
        return True

    @property
    def pending_rows(self) -> int:
        with self._cond:
            return self._pending_rows

    def flush(self, timeout: float = 30.0) -> None:
        """Writes everything accepted so far to Parquet and waits for it (tests, shutdown, admin)."""
        with self._cond:
            target = self._seq
            self._flush_requested = True
            self._cond.notify_all()
            deadline = time.monotonic() + timeout
            while self._done_seq < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._parquet_thread.is_alive():
                    raise TimeoutError(
                        f"{self.directory}: {target - self._done_seq} log entries not written after {timeout}s "
                        f"({self.write_failures} failed writes; journal: {self.failure or 'ok'})"
                    )
                self._cond.wait(min(remaining, 0.1))

    def close(self, timeout: float = 60.0) -> None:
        """Journals and writes what is queued, then stops both threads. Idempotent.

        If the disk keeps failing for `timeout` seconds, raises TimeoutError with the number of rows
        not in Parquet; the journaled ones stay in their segments for the next start to replay.
        """
        with self._cond:
            if self._closed:
                return
            self._closing = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        self._journal_thread.join(timeout)
        self._parquet_thread.join(max(0.0, deadline - time.monotonic()))
        with self._cond:
            self._closed = True
            left = self._pending_rows
        if self._parquet_thread.is_alive() or left:
            raise TimeoutError(f"{self.directory}: {left} log rows could not be written before shutdown")

    # --- the journal thread ----------------------------------------------------------------
    def _journal_run(self) -> None:
        while True:
            probe = False
            with self._cond:
                while not self._buffer and not self._seal_due():
                    if self._closing:
                        break
                    if self.failure is not None:
                        # Failing and idle: check the disk now and then, so the failure clears (and
                        # /healthz says so) without waiting for a request a load balancer won't send.
                        self._cond.wait(min(self._seal_wait(), self._retry_seconds))
                        probe = True
                        break
                    self._cond.wait(self._seal_wait())
                batch, self._buffer = self._buffer, []
                closing = self._closing and not batch
            if batch:
                self._commit(batch)
            elif probe:
                self._probe()
            if closing or self._seal_due():
                self._seal()
            if closing:
                with self._cond:
                    self._journal_stopped = True
                    self._cond.notify_all()
                return

    def _commit(self, batch: list[tuple[int, Any, bytes | None, Waiter | None]]) -> None:
        entries = [item[1] for item in batch]
        error = None
        if self.journal_dir is not None:
            try:
                if self._segment is None:
                    self._segment = Segment.create(self.journal_dir, self.writer_id)
                self._segment.append(b"".join(item[2] for item in batch), self.fsync)  # type: ignore[misc]
            except OSError as err:
                error = self._journal_failed(err)
            else:
                self._journal_works()
                self.journal_commits += 1
                self.journal_entries += len(batch)
        rows = sum(entry.rows for entry in entries)
        if error is not None and self.on_failure == "refuse":
            self._drop(rows, batch[-1][0])
        else:
            if error is not None:
                self.not_durable_rows += rows
            with self._cond:
                self._open.extend(entries)
                self._open_rows += rows
                self._open_last_seq = batch[-1][0]
                if self._open_since is None:
                    self._open_since = time.monotonic()
        for item in batch:
            if item[3] is not None:
                try:
                    item[3](error)
                except Exception:  # noqa: BLE001 - one waiter gone wrong (its loop closed) must not stop the journal
                    log.exception("a log waiter failed")

    def _probe(self) -> None:
        try:
            if self._segment is None:
                self._segment = Segment.create(self.journal_dir, self.writer_id)  # type: ignore[arg-type]
            self._segment.append(b"")  # an fdatasync, and the check that the file is still there
        except OSError as err:
            self._journal_failed(err)
        else:
            self._journal_works()

    def _journal_works(self) -> None:
        if self.failure is not None:
            log.warning("the log journal under %s works again", self.journal_dir)
        self.failure = None

    def _journal_failed(self, err: OSError) -> str:
        where = self._segment.path if self._segment is not None else self.journal_dir
        message = f"the log journal cannot be written ({where}: {err.strerror or err})"
        self.journal_failures += 1
        if self.failure is None:
            log.error("%s; %s", message, "refusing requests until it works" if self.on_failure == "refuse" else "serving without durability")
        self.failure = message
        if self._segment is not None:
            # What was synced before stays in it (and in memory); a new segment is tried next time.
            self._segment.abandon()
            self._seal()
        return message

    def _drop(self, rows: int, last_seq: int) -> None:
        """Entries that will never be logged (refused): they count as done for `flush()`."""
        with self._cond:
            self._pending_rows -= rows
            if self._open:
                self._open_last_seq = last_seq
            elif self._sealed:
                self._sealed[-1].last_seq = last_seq
            else:
                self._done_seq = last_seq
            self._cond.notify_all()

    def _seal_due(self) -> bool:
        if self._closing or self._flush_requested:
            return True  # sealing nothing just clears the request
        if not self._open:
            return False
        if self._open_rows >= self.flush_rows:
            return True
        return self._open_since is not None and time.monotonic() - self._open_since >= self.flush_seconds

    def _seal_wait(self) -> float:
        if self._open_since is None:
            return self.flush_seconds
        return max(0.001, self.flush_seconds - (time.monotonic() - self._open_since))

    def _seal(self) -> None:
        """Hands the open segment and its entries to the Parquet thread; the next entry opens a new one."""
        segment, self._segment = self._segment, None
        with self._cond:
            self._flush_requested = False
            if self._open or segment is not None:
                name = segment.name if segment is not None else new_segment_name(self.writer_id)
                self._sealed.append(_Batch(name, self._open, self._open_rows, segment, self._open_last_seq))
                self._open, self._open_rows, self._open_since = [], 0, None
                self._cond.notify_all()

    # --- the Parquet thread ----------------------------------------------------------------
    def _parquet_run(self) -> None:
        while True:
            with self._cond:
                while not self._sealed:
                    if self._journal_stopped:
                        return
                    self._cond.wait(0.5)
                batch = self._sealed[0]
            try:
                self._write(batch)
            except Exception:  # noqa: BLE001 - any I/O failure: keep the rows (and the segment) and retry
                self.write_failures += 1
                log.exception("writing %d log rows under %s failed; will retry", batch.rows, self.directory)
                time.sleep(self._retry_seconds)  # also while closing: close() reports what is left after its timeout
                continue
            if batch.segment is not None:
                try:
                    batch.segment.remove()
                except OSError as err:  # harmless: a replay finds its Parquet files in place and skips them
                    log.warning("could not delete the compacted journal segment %s: %s", batch.segment.path, err)
            with self._cond:
                self._sealed.popleft()
                self._pending_rows -= batch.rows
                self._done_seq = max(self._done_seq, batch.last_seq)
                self.rows_written += batch.rows
                self._cond.notify_all()

    def _write(self, batch: _Batch) -> None:
        """One Parquet file per date partition, named after the batch; a file already there is from
        an earlier attempt (a crash, or a retry after another partition failed) and is kept."""
        by_date: dict[str, list[Any]] = collections.defaultdict(list)
        for entry in batch.entries:
            by_date[plog.utc_date(entry.timestamp_us)].append(entry)
        for date, entries in sorted(by_date.items()):
            partition = self.directory / f"{plog.PARTITION_PREFIX}{date}"
            if plog.part_path(partition, batch.name).exists():
                continue
            table = pa.Table.from_pydict(self._to_columns(entries), schema=self.schema)
            plog.write_table_atomically(table, partition, name=batch.name)
            self.files_written += 1

    # --- replay ----------------------------------------------------------------------------
    def _replay(self) -> None:
        """Queues the segments of dead writers for Parquet, before anything new is accepted."""
        assert self.journal_dir is not None
        for segment in adopt_stale_segments(self.journal_dir):
            try:
                entries, skipped = segment.read(self._entry_type)
            except OSError as err:
                log.error("cannot read journal segment %s (%s); left for the next start", segment.path, err)
                segment.release()
                continue
            rows = sum(entry.rows for entry in entries)
            if skipped:
                log.warning("%s: skipped %d torn or corrupt record(s) (a crash in the middle of a write)", segment.path, skipped)
            self.skipped_records += skipped
            self.replayed_rows += rows
            self._pending_rows += rows
            self._seq += 1  # so that flush() waits for the replay too
            self._sealed.append(_Batch(segment.name, entries, rows, segment, self._seq))
        if self._sealed:
            log.warning("replaying %d journal segment(s) (%d rows) left by a stopped writer under %s",
                        len(self._sealed), self.replayed_rows, self.journal_dir)


def open_request_log(log_dir: Path, *, journal: bool = True, **options: Any) -> ParquetLogWriter:
    """The writer of `<log_dir>/requests/`, journaled in `<log_dir>/_journal/requests/` (unless `journal=False`)."""
    return _open(Path(log_dir), plog.REQUESTS_DIR, plog.REQUEST_SCHEMA, plog.request_columns, plog.LoggedRequest,
                 "request-log", journal, options)


def open_feedback_log(log_dir: Path, *, journal: bool = True, **options: Any) -> ParquetLogWriter:
    """The writer of `<log_dir>/feedback/`, journaled in `<log_dir>/_journal/feedback/`."""
    return _open(Path(log_dir), plog.FEEDBACK_DIR, plog.FEEDBACK_SCHEMA, plog.feedback_columns, plog.Feedback,
                 "feedback-log", journal, options)


def _open(log_dir: Path, kind: str, schema: pa.Schema, to_columns: Callable, entry_type: Callable, name: str,
          journal: bool, options: dict[str, Any]) -> ParquetLogWriter:
    journal_dir = log_dir / JOURNAL_DIR / kind if journal else None
    return ParquetLogWriter(log_dir / kind, schema, to_columns, entry_type, journal_dir=journal_dir, name=name, **options)
