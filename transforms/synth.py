"""Larger inputs with the taxi columns and distributions, for benchmarks (`mlops data synth`).

One pass over a sample CSV (the shipped 15,002 rows) fits what the generator needs: the sample's
rows themselves, de-duplicated (joint resampling keeps every correlation between columns: fare
with tips and miles, hour with day and company, which rows miss which values), and its time span.
Then it writes N rows one at a time, never holding them: each output row is a seeded random
sample row with jitter:

- fare, tips, trip_miles and trip_seconds are scaled by one shared factor (log-normal around 1),
  so a trip stays self-consistent and the label (tips > 0.2 * fare) keeps its rate;
- coordinates move by a few hundred metres, kept inside the Chicago box of `features.py`;
- categorical values, missing cells and out-of-range values are kept as they are (the clean job
  sees the same kinds of bad rows, in the same shares);
- trip_start_timestamp gets a second within the sample row's hour that no earlier output row
  got (a counter per hour), so no output row is an exact copy of another and trip_start_hour/day
  stay true to it; once an hour's 3,600 seconds are used, rows move to the same hour of another
  week (forward while inside the sample's span, then back).

Memory is the sample's size (its rows, a counter per hour used: at most the sample's hours plus
N / 3,600), never the N rows. The same sample, N and seed give the same bytes (also
gzip-compressed: no name or time in the gzip header).
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import math
import random
from pathlib import Path
from typing import Iterator

from core.atomic import atomic_file
from core.errors import DataError
from transforms.features import (
    CHICAGO_LATITUDE,
    CHICAGO_LONGITUDE,
    DROPOFF_COORDINATES,
    FARE_KEY,
    PICKUP_COORDINATES,
    RAW_COLUMNS,
    TIMESTAMP_KEY,
    TIPS_KEY,
    TRIP_MILES_KEY,
    TRIP_SECONDS_KEY,
)

HOUR = 3600
WEEK = 7 * 24 * HOUR
# Spread of the shared size factor: exp(N(0, sigma)), about +-5 % for one standard deviation.
SIZE_SIGMA = 0.05
# Coordinate jitter in degrees (one standard deviation): ~200 m north-south.
COORDINATE_SIGMA = 0.002
# Seconds within an hour are handed out in this order (a step coprime to 3600 visits each once),
# so the first rows of an hour do not all sit at its start.
_SECOND_STEP = 1973
_SCALED_MONEY = (FARE_KEY, TIPS_KEY)
_COORDINATES = ((PICKUP_COORDINATES[0], CHICAGO_LATITUDE), (PICKUP_COORDINATES[1], CHICAGO_LONGITUDE),
                (DROPOFF_COORDINATES[0], CHICAGO_LATITUDE), (DROPOFF_COORDINATES[1], CHICAGO_LONGITUDE))


@dataclasses.dataclass(frozen=True)
class Sample:
    """What the generator fits from the sample: its distinct rows (in file order) and time span."""

    rows: tuple[tuple[str, ...], ...]
    first_hour: int  # Unix seconds, start of the earliest hour in the sample
    last_hour: int


@dataclasses.dataclass(frozen=True)
class SynthResult:
    path: Path
    rows: int
    sample_rows: int
    seed: int


def fit_sample(sample_csv: Path) -> Sample:
    """Reads the sample once: its distinct rows in the raw column order, and the hours it spans."""
    sample_csv = Path(sample_csv)
    seen: set[tuple[str, ...]] = set()
    rows: list[tuple[str, ...]] = []
    hours: list[int] = []
    with open(sample_csv, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [name for name in RAW_COLUMNS if name not in (reader.fieldnames or ())]
        if missing:
            raise DataError(f"{sample_csv}: the sample lacks the taxi columns {missing} (expected those of transforms/features.py)")
        for line, record in enumerate(reader, start=2):
            row = tuple((record[name] or "").strip() for name in RAW_COLUMNS)
            if row in seen:
                continue
            try:
                timestamp = int(row[RAW_COLUMNS.index(TIMESTAMP_KEY)])
            except ValueError:
                raise DataError(f"{sample_csv}: line {line}: {TIMESTAMP_KEY} must be an integer (Unix seconds) to resample it, "
                                f"got {row[RAW_COLUMNS.index(TIMESTAMP_KEY)]!r}") from None
            seen.add(row)
            rows.append(row)
            hours.append(timestamp - timestamp % HOUR)
    if not rows:
        raise DataError(f"{sample_csv}: the sample has no rows to resample")
    return Sample(tuple(rows), min(hours), max(hours))


class _Resampler:
    """Turns random sample rows into jittered output rows; holds one counter per sample hour."""

    def __init__(self, sample: Sample, seed: int) -> None:
        self.sample = sample
        self.random = random.Random(seed)
        self.used_seconds: dict[int, int] = {}
        self.index = {name: position for position, name in enumerate(RAW_COLUMNS)}

    def row(self) -> list[str]:
        rng = self.random
        cells = list(self.sample.rows[rng.randrange(len(self.sample.rows))])
        size = math.exp(rng.gauss(0.0, SIZE_SIGMA))
        for name in _SCALED_MONEY:
            cells[self.index[name]] = _scaled(cells[self.index[name]], size, digits=2)
        cells[self.index[TRIP_MILES_KEY]] = _scaled(cells[self.index[TRIP_MILES_KEY]], size, digits=2)
        cells[self.index[TRIP_SECONDS_KEY]] = _scaled(cells[self.index[TRIP_SECONDS_KEY]], size, digits=None)
        for name, (low, high) in _COORDINATES:
            text = cells[self.index[name]]
            if text:
                value = float(text)
                moved = value + rng.gauss(0.0, COORDINATE_SIGMA)
                # Inside the box stays inside; a value already outside (a bad row) stays outside.
                if low <= value <= high:
                    moved = min(max(moved, low), high)
                cells[self.index[name]] = f"{moved:.6f}"
        cells[self.index[TIMESTAMP_KEY]] = str(self._unique_second(int(cells[self.index[TIMESTAMP_KEY]])))
        return cells

    def _unique_second(self, timestamp: int) -> int:
        """A second no earlier row got: in the row's own hour while it has free seconds, else in the
        same hour of the next week that has (forward while inside the sample's span, then back)."""
        hour = timestamp - timestamp % HOUR
        for target in _same_hour_of_other_weeks(hour, self.sample.last_hour):
            used = self.used_seconds.get(target, 0)
            if used < HOUR:
                self.used_seconds[target] = used + 1
                return target + (used * _SECOND_STEP + target // HOUR) % HOUR
        raise AssertionError("unreachable: the weeks going back never run out")


def _same_hour_of_other_weeks(hour: int, last_hour: int) -> Iterator[int]:
    yield hour
    later = hour + WEEK
    while later <= last_hour:
        yield later
        later += WEEK
    earlier = hour - WEEK
    while True:
        yield earlier
        earlier -= WEEK


def _scaled(text: str, factor: float, digits: int | None) -> str:
    """A numeric cell times `factor`, rounded; empty, zero and unparseable cells stay as they are."""
    if not text:
        return text
    try:
        value = float(text)
    except ValueError:
        return text
    if value == 0 or not math.isfinite(value):
        return text
    if digits is None:
        return str(max(1, round(value * factor)) if value >= 1 else round(value * factor))
    return f"{value * factor:.{digits}f}"


def synth_rows(sample: Sample, rows: int, seed: int) -> Iterator[list[str]]:
    """`rows` resampled rows (cells in RAW_COLUMNS order), one at a time."""
    resampler = _Resampler(sample, seed)
    for _ in range(rows):
        yield resampler.row()


def write_synth_csv(sample_csv: Path, out: Path, rows: int, seed: int = 0, compress: bool | None = None) -> SynthResult:
    """Writes `rows` resampled rows with a header to `out` (atomically), gzip-compressed when
    `compress` is true or, when it is None, when `out` ends in .gz."""
    if rows < 0:
        raise DataError(f"rows must be 0 or more, got {rows}")
    out = Path(out)
    sample = fit_sample(sample_csv)
    compress = out.suffix == ".gz" if compress is None else compress
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out, "wb") as raw:
        # mtime=0 and no file name: the same rows give the same bytes.
        binary = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if compress else raw
        text = io.TextIOWrapper(binary, encoding="utf-8", newline="")
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(RAW_COLUMNS)
        writer.writerows(synth_rows(sample, rows, seed))
        text.flush()
        text.detach()
        if compress:
            binary.close()
    return SynthResult(out, rows, len(sample.rows), seed)


def read_csv_rows(path: Path) -> Iterator[dict[str, str]]:
    """The rows of a (possibly gzip-compressed) CSV as dicts, streamed."""
    opener = gzip.open if Path(path).suffix == ".gz" else open
    with opener(path, "rt", newline="", encoding="utf-8") as handle:
        yield from csv.DictReader(handle)
