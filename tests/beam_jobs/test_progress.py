"""Progress lines of long Beam jobs: readers count into files, the launcher sums and prints."""

from __future__ import annotations

import os
import threading
import time

import pytest

from beam_jobs.progress import JobProgress, ReadCounter, format_duration, watched


@pytest.mark.parametrize("seconds, shown", [(0, "0s"), (44.6, "45s"), (100, "1m40s"), (3599, "59m59s"), (7500, "2h05m")])
def test_durations_read_as_people_write_them(seconds, shown):
    assert format_duration(seconds) == shown


def test_a_line_says_how_far_how_long_and_how_long_is_left():
    progress = JobProgress("clean", 4_000_000)
    with progress.watching(passes=2):
        assert progress.expected == 8_000_000
        assert progress.line(2_000_000, 100) == "clean: 2,000,000 of 8,000,000 rows read (25%, each row twice) after 1m40s; about 5m00s left"
        # Too early to guess, and done: no time left shown.
        assert progress.line(100_000, 5).endswith("(1%, each row twice) after 5s")
        assert progress.line(8_000_100, 400).endswith("(100%, each row twice) after 6m40s")


def test_a_split_read_again_counts_in_what_is_expected():
    progress = JobProgress("transform", 150, split_rows={"train": 100, "eval": 50})
    with progress.watching(again=["train"]):
        assert progress.expected == 250
        assert progress.line(125, 10) == "transform: 125 of 250 rows read (50%, the train split again) after 10s; about 10s left"
    with pytest.raises(ValueError, match="passes"):
        with progress.watching(passes=0):
            pass


def test_readers_in_this_and_other_processes_add_up_and_the_launcher_prints_while_they_read(tmp_path):
    lines: list[str] = []
    progress = JobProgress("ingest", 3_000, every=0.05, print_fn=lines.append)
    with progress.watching():
        folder = progress.folder
        first, second = ReadCounter(folder), ReadCounter(folder)
        for _ in range(10):
            first.add(100)
            second.add(50)
            first.flush()
            second.flush()
            time.sleep(0.03)
        child = os.fork()
        if child == 0:  # a worker process of its own, as the DirectRunner's or a worker pool's
            other = ReadCounter(progress.folder)
            other.add(1_500)
            other.flush()
            os._exit(0)
        assert os.waitpid(child, 0)[1] == 0
        time.sleep(0.2)
    assert progress.read_at_end == 3_000
    assert lines and lines[-1].startswith("ingest: 3,000 of 3,000 rows read (100%) after")
    counts = [int(line.split()[1].replace(",", "")) for line in lines]
    assert counts == sorted(set(counts)), "a line only when the count moved"
    assert not os.path.exists(folder) and progress.folder is None


def test_nothing_is_printed_for_a_job_shorter_than_the_interval():
    lines: list[str] = []
    progress = JobProgress("validate", 10, every=5, print_fn=lines.append)
    with progress.watching():
        counter = ReadCounter(progress.folder)
        counter.add(10)
        counter.flush()
    assert lines == [] and progress.read_at_end == 10


def test_a_reader_without_the_folder_counts_nothing_and_does_not_fail(tmp_path):
    ReadCounter(None).add(5)
    gone = tmp_path / "gone"
    counter = ReadCounter(str(gone))  # the launcher is on another machine, or has ended
    counter.add(5)
    counter.flush()
    counter.add(5)
    assert not gone.exists()


def test_a_half_written_count_is_not_read():
    progress = JobProgress("clean", 10)
    with progress.watching():
        with open(os.path.join(progress.folder, "1-2.tmp"), "w") as handle:
            handle.write("7")
        with open(os.path.join(progress.folder, "1-3"), "w") as handle:
            handle.write("")
        assert progress.read_so_far() == 0
    assert not [thread for thread in threading.enumerate() if thread.name == "progress-clean"], "the watcher ended"


def test_watched_gives_the_folder_to_count_in_or_none_without_a_progress():
    with watched(None, passes=2) as folder:
        assert folder is None
    progress = JobProgress("clean", 4)
    with watched(progress, passes=2) as folder:
        assert folder == progress.folder and os.path.isdir(folder) and progress.expected == 8
    assert not os.path.exists(folder)
