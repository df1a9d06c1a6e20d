"""How far a long Beam job has read, printed by the process that launched it while it runs:

    clean: 3,100,000 of 9,675,234 rows read (32%, each row twice) after 1m40s; about 3m30s left

Beam's counters reach the launching process only when a job ends on the local runners (Flink's and
Dataflow's own UIs show them live), so the DoFns that read count what they read, each into a small
file of its own in a folder the launcher watches (`JobProgress.watching`): the sum is the job's,
whether its workers are threads of this process, processes of the DirectRunner or an SDK worker
pool on this machine. A worker on another machine does not see the folder and reports nothing; a
job with nothing to report prints nothing, and a job shorter than the first interval prints no
line at all.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
import uuid
from typing import Callable, Iterator, Mapping, Sequence

# How often the launcher prints (at most; nothing when nothing moved) and a reader writes its count.
PRINT_EVERY_SECONDS = 20.0
WRITE_EVERY_SECONDS = 1.0
# Under this share done, the time left would be a guess from too little: it is not shown.
ETA_FROM_SHARE = 0.03


def format_duration(seconds: float) -> str:
    """45s, 1m40s, 2h05m."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class JobProgress:
    """The progress of the job `job` over its input's `rows` rows (`split_rows`: per split, when
    known): made by who knows the rows (the step), handed to the job, which runs inside
    `watching(...)`, saying how often it reads the rows, and gives `folder` (there only) to its
    reading DoFns (each counts into a `ReadCounter(folder)`).
    """

    def __init__(self, job: str, rows: int, *, split_rows: Mapping[str, int] | None = None,
                 every: float = PRINT_EVERY_SECONDS, print_fn: Callable[[str], None] | None = None) -> None:
        if rows < 0:
            raise ValueError(f"{job}: progress needs rows >= 0, got {rows}")
        self.job, self.rows, self.split_rows, self.every = job, rows, dict(split_rows or {}), every
        self._print = print_fn or (lambda line: print(line, flush=True))
        self.folder: str | None = None  # while watching
        self.expected = rows
        self.read_at_end: int | None = None  # what the readers had counted when the job ended
        self._how = ""
        self._started = time.monotonic()

    def read_so_far(self) -> int:
        """The sum of every reader's count."""
        total = 0
        if self.folder is None:
            return total
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.folder):
                if entry.name.endswith(".tmp"):
                    continue
                with contextlib.suppress(OSError, ValueError):
                    with open(entry.path, encoding="ascii") as handle:
                        total += int(handle.read() or 0)
        return total

    def line(self, read: int, elapsed: float) -> str:
        expected = self.expected
        share = min(read / expected, 1.0) if expected else 0.0
        text = f"{self.job}: {read:,} of {expected:,} rows read ({share:.0%}{self._how}) after {format_duration(elapsed)}"
        if ETA_FROM_SHARE <= share < 1.0:
            text += f"; about {format_duration(elapsed / share - elapsed)} left"
        return text

    @contextlib.contextmanager
    def watching(self, passes: int = 1, *, again: Sequence[str] = ()) -> Iterator["JobProgress"]:
        """Prints a line every `every` seconds while the readers' count moves toward every row read
        `passes` times and the splits `again` once more; removes the folder at the end."""
        if passes < 1:
            raise ValueError(f"{self.job}: passes must be at least 1, got {passes}")
        self.expected = self.rows * passes + sum(self.split_rows.get(split, 0) for split in again)
        times = {1: "", 2: "twice"}.get(passes, f"{passes} times")
        self._how = (f", each row {times}" if times else "") + "".join(f", the {split} split again" for split in again)
        self._started = time.monotonic()
        self.folder = tempfile.mkdtemp(prefix=f"mlops-progress-{self.job.replace(' ', '-')}-")
        stop = threading.Event()

        def watch() -> None:
            printed = 0
            while not stop.wait(self.every):
                read = self.read_so_far()
                if read > printed:
                    self._print(self.line(read, time.monotonic() - self._started))
                    printed = read

        watcher = threading.Thread(target=watch, name=f"progress-{self.job}", daemon=True)
        watcher.start()
        try:
            yield self
        finally:
            stop.set()
            watcher.join()
            self.read_at_end = self.read_so_far()
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


@contextlib.contextmanager
def watched(progress: JobProgress | None, passes: int = 1, *, again: Sequence[str] = ()) -> Iterator[str | None]:
    """`progress.watching(...)`, giving the folder to hand the job's readers; without a progress,
    nothing watched and no folder (None: the readers count nothing)."""
    if progress is None:
        yield None
        return
    with progress.watching(passes, again=again):
        yield progress.folder


class ReadCounter:
    """What one DoFn instance has read, written to a file of its own in a JobProgress folder at most
    every WRITE_EVERY_SECONDS (and by `flush`, at the end of each bundle). Create it in the DoFn's
    setup: it is not meant to be pickled. A folder of None, or one this worker cannot write, makes it
    count nothing."""

    def __init__(self, folder: str | None) -> None:
        self._count = 0
        self._written_at = 0.0
        # Not id(self): a counter freed after its stage could hand its id, and so its file, to the next.
        self._path = os.path.join(folder, uuid.uuid4().hex) if folder else None

    def add(self, rows: int) -> None:
        if self._path is None:
            return
        self._count += rows
        if time.monotonic() - self._written_at >= WRITE_EVERY_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self._path is None:
            return
        self._written_at = time.monotonic()
        temporary = f"{self._path}.tmp"
        try:
            with open(temporary, "w", encoding="ascii") as handle:
                handle.write(str(self._count))
            os.replace(temporary, self._path)
        except OSError:  # the job's launcher is on another machine, or it has ended
            self._path = None
