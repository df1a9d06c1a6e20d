"""The request log's write-ahead journal: an entry is durable before its waiter hears so, replay after
a real kill -9, torn and corrupt records skipped, no duplicates when a crash came between the Parquet
file and the segment's deletion, live segments of another writer left alone, and a failing disk
(refused or served, then recovered by itself)."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pytest

from serving import log_writer
from serving import prediction_log as plog
from serving.request_journal import JOURNAL_DIR, decode_records, encode_record
from tests.fixtures.polling import poll_until
from tests.serving.test_prediction_log import DAY_1, DAY_2, _request

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _journal(log_dir: Path) -> Path:
    return log_dir / JOURNAL_DIR / plog.REQUESTS_DIR


def _segments(log_dir: Path) -> list[Path]:
    return sorted(_journal(log_dir).glob("seg-*.wal")) if _journal(log_dir).is_dir() else []


def _logged_ids(log_dir: Path) -> list[str]:
    return plog.read_prediction_logs(log_dir)["request_id"].tolist()


def _put_and_wait(writer: log_writer.ParquetLogWriter, entry) -> str | None:
    """Logs `entry` and returns what its waiter heard: None (durable) or the log problem."""
    heard: queue.Queue = queue.Queue()
    assert writer.try_put(entry, heard.put)
    return heard.get(timeout=30)


def _write_segment(log_dir: Path, name: str, data: bytes) -> Path:
    """A segment as a dead writer leaves it (nobody holds its lock)."""
    path = _journal(log_dir) / f"seg-{name}.wal"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _break(directory: Path) -> None:
    """The disk under `directory` fails: the directory (and the open segment in it) is gone and a
    file stands in its place, so writes to the open segment are lost and new segments cannot be made."""
    shutil.rmtree(directory)
    directory.write_text("not a directory")


@pytest.mark.parametrize("fsync", [True, False])
def test_an_entry_is_in_the_journal_before_its_waiter_hears_and_the_segment_goes_once_in_parquet(tmp_path, fsync):
    writer = log_writer.open_request_log(tmp_path, flush_seconds=3600.0, fsync=fsync)
    try:
        assert _put_and_wait(writer, _request("r1", 3)) is None
        [segment] = _segments(tmp_path)
        entries, skipped = decode_records(segment.read_bytes(), plog.LoggedRequest)
        assert [e.request_id for e in entries] == ["r1"] and skipped == 0
        assert _logged_ids(tmp_path) == []  # not compacted yet: durable in the journal only
        writer.flush()
        assert _logged_ids(tmp_path) == ["r1"] * 3
        assert _segments(tmp_path) == []
        name = segment.name[len("seg-"):-len(".wal")]
        assert (tmp_path / "requests" / "date=2016-03-01" / f"part-{name}.parquet").is_file()  # named after its segment
    finally:
        writer.close()


def test_concurrent_entries_share_one_fdatasync(tmp_path):
    writer = log_writer.open_request_log(tmp_path, flush_seconds=3600.0)
    heard: queue.Queue = queue.Queue()
    try:
        for index in range(200):
            assert writer.try_put(_request(f"r{index}", 1), heard.put)
        assert [heard.get(timeout=30) for _ in range(200)] == [None] * 200
        assert writer.journal_entries == 200
        assert writer.journal_commits < 200  # grouped: each fdatasync carried several entries
    finally:
        writer.close()


_LOGGING_PROCESS = textwrap.dedent("""
    import queue, sys, time
    from serving import log_writer
    from tests.serving.test_prediction_log import _request
    writer = log_writer.open_request_log(sys.argv[1], flush_seconds=3600.0)
    heard = queue.Queue()
    for index in range(12):
        writer.try_put(_request(f"r{index}", 2), heard.put)
        assert heard.get(timeout=30) is None
    writer.flush()  # r0..r11 are in Parquet now
    for index in range(12, 20):
        writer.try_put(_request(f"r{index}", 2), heard.put)
        assert heard.get(timeout=30) is None
    print("durable", flush=True)
    time.sleep(600)
""")


def test_a_killed_writers_journal_is_replayed_once_on_the_next_start(tmp_path):
    process = subprocess.Popen([sys.executable, "-c", _LOGGING_PROCESS, str(tmp_path)], cwd=PROJECT_ROOT,
                               env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "durable"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stdout.close()
    assert sorted(set(_logged_ids(tmp_path))) == sorted(f"r{i}" for i in range(12))  # r12..r19 only in the journal
    assert _segments(tmp_path)

    writer = log_writer.open_request_log(tmp_path)
    writer.close()
    frame = plog.read_prediction_logs(tmp_path)
    assert writer.replayed_rows == 16 and writer.skipped_records == 0
    assert sorted(set(frame["request_id"])) == sorted(f"r{i}" for i in range(20))
    assert not frame.duplicated(["request_id", "instance_index"]).any()
    assert _segments(tmp_path) == []


def test_replay_skips_a_torn_last_record_and_a_corrupt_one(tmp_path):
    records = [encode_record(_request(f"r{index}", 1)) for index in range(4)]
    corrupt = records[1].replace(b'"r1"', b'"rX"')  # same length, CRC no longer matches
    torn = records[3][: len(records[3]) // 2]  # the process died in the middle of this write
    _write_segment(tmp_path, "1456876799000-0badc0de", records[0] + corrupt + records[2] + torn)
    writer = log_writer.open_request_log(tmp_path)
    writer.close()
    assert _logged_ids(tmp_path) == ["r0", "r2"]
    assert writer.skipped_records == 2 and writer.replayed_rows == 2
    assert _segments(tmp_path) == []


def test_replay_after_a_crash_between_the_parquet_file_and_the_segments_deletion_adds_nothing_twice(tmp_path):
    name = "1456876799000-5e9e0001"
    entries = [_request("day1", 2, DAY_1), _request("day2", 1, DAY_2)]
    _write_segment(tmp_path, name, b"".join(encode_record(entry) for entry in entries))
    # The first partition's file was in place when the process died; the second was not.
    table = pa.Table.from_pydict(plog.request_columns(entries[:1]), schema=plog.REQUEST_SCHEMA)
    plog.write_table_atomically(table, tmp_path / "requests" / "date=2016-03-01", name=name)
    writer = log_writer.open_request_log(tmp_path)
    writer.close()
    frame = plog.read_prediction_logs(tmp_path)
    assert frame["request_id"].tolist() == ["day1", "day1", "day2"]
    assert writer.files_written == 1 and _segments(tmp_path) == []


def test_a_live_writers_segment_is_not_taken_by_another_writer(tmp_path):
    first = log_writer.open_request_log(tmp_path, flush_seconds=3600.0)
    try:
        assert _put_and_wait(first, _request("mine", 1)) is None
        second = log_writer.open_request_log(tmp_path)  # a second gateway on the same log directory
        second.close()
        assert second.replayed_rows == 0 and len(_segments(tmp_path)) == 1
    finally:
        first.close()
    assert _logged_ids(tmp_path) == ["mine"]


@pytest.mark.parametrize("on_failure", ["refuse", "serve"])
def test_a_failing_journal_refuses_or_serves_and_recovers_by_itself(tmp_path, on_failure):
    writer = log_writer.open_request_log(tmp_path, on_failure=on_failure, flush_seconds=3600.0, retry_seconds=0.05)
    try:
        assert _put_and_wait(writer, _request("before", 1)) is None
        _break(tmp_path / JOURNAL_DIR)
        problem = _put_and_wait(writer, _request("during", 2))
        assert problem is not None and "log journal cannot be written" in problem and JOURNAL_DIR in problem
        assert writer.failure == problem or writer.failure.startswith("the log journal cannot be written")
        assert _put_and_wait(writer, _request("still", 1)) is not None  # no new segment can be made either
        assert writer.journal_failures >= 2
        (tmp_path / JOURNAL_DIR).unlink()  # the disk works again
        poll_until(lambda: writer.failure is None, "the journal's own probe to clear the failure")
        assert _put_and_wait(writer, _request("after", 1)) is None
        writer.flush()
    finally:
        writer.close()
    logged = set(_logged_ids(tmp_path))
    if on_failure == "refuse":
        assert logged == {"before", "after"}  # refused entries are never logged ("before" was kept in memory)
        assert writer.not_durable_rows == 0
    else:
        assert logged == {"before", "during", "still", "after"}
        assert writer.not_durable_rows == 3
    assert _segments(tmp_path) == []


def test_without_the_journal_nothing_waits_and_nothing_is_journaled(tmp_path):
    writer = log_writer.open_request_log(tmp_path, journal=False, flush_seconds=3600.0)
    try:
        assert not writer.journaled
        assert _put_and_wait(writer, _request("r1", 1)) is None
        assert not (tmp_path / JOURNAL_DIR).exists()
    finally:
        writer.close()
    assert _logged_ids(tmp_path) == ["r1"]
