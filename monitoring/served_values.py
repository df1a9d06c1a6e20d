"""What the distribution checks need of a window's served requests, counted while the logs stream.

The drift and skew checks (monitoring/checks.py) look at a window's raw values in only three
ways: the number of rows, each numeric feature's values counted into the baseline's quantile
buckets (monitoring/drift.py), and each categorical feature's value counts; the null-output check
counts null probabilities per model version. All of that is exactly a table of distinct values
with their counts, which is as large as the number of distinct values, not the number of
requests: taxi features have at most tens of thousands of distinct values (fares in cents,
seconds of a day, a few hundred coordinate centroids), while a window can hold tens of millions
of requests. `summarize_served_logs` reads the window's Parquet logs in record batches and merges
the counts batch by batch, so memory stays flat in the log's length (docs/MONITORING.md has the
numbers at 1M and 10M requests); `ServedValues.of_frame` gives the same counts for a window
already in pandas, so both paths feed the checks identical numbers.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.errors import DataError
from serving.prediction_log import REQUEST_SCHEMA, REQUESTS_DIR, list_part_files
from transforms.features import SERVING_FEATURES, Kind

_KINDS = {feature.name: feature.kind for feature in SERVING_FEATURES}
# Rows per record batch read from a log file: big enough for numpy to pay off, small enough that a
# batch and its copies stay a few tens of MB whatever the file size.
READ_BATCH_ROWS = 65_536
# The version key of a null model_version, as pandas' value_counts(dropna=False) names it.
_NULL_VERSION = str(pd.NA)
_FILTER_COLUMNS = ("timestamp", "model_name", "is_shadow")


@dataclasses.dataclass(frozen=True)
class ValueCounts:
    """Distinct non-missing values of one numeric feature (sorted float64) and how often each occurs."""

    values: np.ndarray
    counts: np.ndarray

    @classmethod
    def empty(cls) -> "ValueCounts":
        return cls(np.array([], dtype=np.float64), np.array([], dtype=np.int64))

    @classmethod
    def of(cls, values: np.ndarray) -> "ValueCounts":
        distinct, counts = np.unique(values, return_counts=True)
        return cls(distinct, counts.astype(np.int64))

    def merged(self, other: "ValueCounts") -> "ValueCounts":
        if not other.values.size:
            return self
        if not self.values.size:
            return other
        distinct, inverse = np.unique(np.concatenate([self.values, other.values]), return_inverse=True)
        counts = np.bincount(inverse, weights=np.concatenate([self.counts, other.counts]), minlength=distinct.size)
        return ValueCounts(distinct, counts.astype(np.int64))

    @property
    def total(self) -> int:
        return int(self.counts.sum())


@dataclasses.dataclass(frozen=True)
class ServedValues:
    """Counts of one window's served requests: rows, per-feature value counts, null outputs by version.

    `numeric` and `categories` hold the features that were summarized (all serving features unless
    the caller chose fewer); a feature absent from the logs has empty counts. Categories are in
    pandas' value_counts order (most frequent first).
    """

    rows: int
    numeric: Mapping[str, ValueCounts]
    categories: Mapping[str, pd.Series]
    null_outputs: int
    null_outputs_by_version: Mapping[str, int]

    def numeric_values(self, name: str) -> ValueCounts:
        if name not in self.numeric:
            raise DataError(f"numeric feature {name!r} was not summarized for this window "
                            f"(summarized: {sorted(self.numeric)}); pass it in `features`")
        return self.numeric[name]

    def category_counts(self, name: str) -> pd.Series:
        if name not in self.categories:
            raise DataError(f"categorical feature {name!r} was not summarized for this window "
                            f"(summarized: {sorted(self.categories)}); pass it in `features`")
        return self.categories[name]

    @classmethod
    def of_frame(cls, frame: pd.DataFrame, features: Iterable[str] | None = None) -> "ServedValues":
        """The counts of a window already read into pandas (serving.prediction_log.read_prediction_logs)."""
        summary = _Accumulator(_chosen(features))
        summary.add_frame(frame)
        return summary.result()


def served_values(window: "pd.DataFrame | ServedValues", features: Iterable[str] | None = None) -> ServedValues:
    """The counts of `window`, a frame of served requests (only `features` counted; None = all) or counts already made."""
    return window if isinstance(window, ServedValues) else ServedValues.of_frame(window, features)


def numeric_feature_values(column: pd.Series | pa.Array | pa.ChunkedArray, name: str) -> np.ndarray:
    """Non-missing values of a numeric column as float64; FLOAT features rounded to float32 (drift.feature_values)."""
    if isinstance(column, pd.Series):
        values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        values = pc.cast(column, pa.float64()).fill_null(np.nan).to_numpy()
    if _KINDS.get(name) is Kind.FLOAT:
        values = values.astype(np.float32).astype(np.float64)
    return values[np.isfinite(values)]


def summarize_served_logs(log_dir: Path, start: dt.datetime, end: dt.datetime, *, model_name: str | None = None,
                          features: Iterable[str] | None = None) -> ServedValues:
    """The counts of the requests clients were answered with (no shadow copies) in [start, end), streamed.

    The same rows as `read_prediction_logs(log_dir, start, end, model_name=..., include_shadow=False)`;
    only the columns the counts need are read, one record batch at a time.
    """
    if end <= start:
        raise DataError(f"the window is empty: end {end.isoformat()} is not after start {start.isoformat()}")
    chosen = _chosen(features)
    summary = _Accumulator(chosen)
    start_us, end_us = _micros(start), _micros(end)
    columns = [*_FILTER_COLUMNS, "model_version", "probability", *chosen]
    for batch in _log_batches(Path(log_dir), start, end, columns):
        timestamps = batch.column("timestamp").cast(pa.int64())
        keep = pc.and_(pc.greater_equal(timestamps, start_us), pc.less(timestamps, end_us))
        keep = pc.and_(keep, pc.invert(batch.column("is_shadow").fill_null(False)))
        if model_name is not None:
            keep = pc.and_(keep, pc.equal(batch.column("model_name"), model_name))
        selected = batch.filter(keep.fill_null(False))
        if selected.num_rows:
            summary.add_arrow(selected)
    return summary.result()


def _chosen(features: Iterable[str] | None) -> list[str]:
    names = list(_KINDS) if features is None else list(dict.fromkeys(features))
    unknown = [name for name in names if name not in _KINDS]
    if unknown:
        raise DataError(f"features {unknown} are not serving features (expected some of {list(_KINDS)})")
    return names


def _micros(moment: dt.datetime) -> int:
    """Microseconds since the epoch; a naive datetime is UTC, as for read_prediction_logs."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return (moment - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(microseconds=1)


def _log_batches(log_dir: Path, start: dt.datetime, end: dt.datetime, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """Record batches of `columns` of the request log files that may hold [start, end), cast to the log schema."""
    target = pa.schema([REQUEST_SCHEMA.field(name) for name in columns])
    for path in list_part_files(log_dir / REQUESTS_DIR, start, end):
        try:
            parquet = pq.ParquetFile(path)
            present = parquet.schema_arrow
            missing = [name for name in columns if name not in present.names]
            if missing:
                raise DataError(f"{path}: missing columns {missing} (expected the prediction log schema in docs/ARCHITECTURE.md)")
            for batch in parquet.iter_batches(batch_size=READ_BATCH_ROWS, columns=columns):
                yield _cast(batch, target, path)
        except (pa.ArrowInvalid, OSError) as err:
            raise DataError(f"{path}: not a readable Parquet file ({err})") from None


def _cast(batch: pa.RecordBatch, target: pa.Schema, path: Path) -> pa.RecordBatch:
    try:
        return pa.RecordBatch.from_arrays([batch.column(field.name).cast(field.type) for field in target], schema=target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        wrong = [f"{f.name}: {batch.schema.field(f.name).type} (expected {f.type})" for f in target
                 if batch.schema.field(f.name).type != f.type]
        raise DataError(f"{path}: columns of the wrong type {wrong} ({err})") from None


class _Accumulator:
    """Counts merged batch by batch; holds only distinct values, never rows."""

    def __init__(self, features: list[str]) -> None:
        self._numeric = {name: ValueCounts.empty() for name in features if _KINDS[name] is not Kind.STRING}
        self._categories: dict[str, dict[str, int]] = {name: {} for name in features if _KINDS[name] is Kind.STRING}
        self._null_by_version: dict[str, int] = {}
        self._null_outputs = 0
        self._rows = 0

    def add_frame(self, frame: pd.DataFrame) -> None:
        self._rows += len(frame)
        for name in self._numeric:
            if name in frame.columns:
                self._add_numeric(name, numeric_feature_values(frame[name], name))
        for name, counts in self._categories.items():
            if name in frame.columns:
                _add_counts(counts, frame[name].dropna().astype(str).value_counts(sort=False).items())
        if "probability" not in frame.columns:
            return  # a frame of features only (tests, notebooks): no outputs to count
        null = pd.to_numeric(frame["probability"], errors="coerce").isna()
        self._null_outputs += int(null.sum())
        if "model_version" in frame.columns:
            _add_counts(self._null_by_version, frame.loc[null, "model_version"].value_counts(dropna=False, sort=False).items())

    def add_arrow(self, batch: pa.RecordBatch) -> None:
        self._rows += batch.num_rows
        for name in self._numeric:
            self._add_numeric(name, numeric_feature_values(batch.column(name), name))
        for name, counts in self._categories.items():
            column = batch.column(name)
            found = pc.value_counts(column.drop_null())
            _add_counts(counts, zip(found.field("values").to_pylist(), found.field("counts").to_pylist()))
        probability = batch.column("probability")
        null = pc.or_(pc.is_null(probability), pc.is_nan(probability).fill_null(True))
        nulls = pc.sum(null).as_py() or 0
        if nulls:
            self._null_outputs += nulls
            versions = pc.value_counts(batch.column("model_version").filter(null))
            _add_counts(self._null_by_version, zip(versions.field("values").to_pylist(), versions.field("counts").to_pylist()))

    def _add_numeric(self, name: str, values: np.ndarray) -> None:
        self._numeric[name] = self._numeric[name].merged(ValueCounts.of(values))

    def result(self) -> ServedValues:
        categories = {name: _ordered(counts) for name, counts in self._categories.items()}
        versions = {key: count for key, count in _ordered(self._null_by_version).items() if count}
        return ServedValues(self._rows, dict(self._numeric), categories, self._null_outputs, versions)


def _add_counts(counts: dict[str, int], pairs: Iterable[tuple[object, int]]) -> None:
    for value, count in pairs:
        key = _NULL_VERSION if value is None or value is pd.NA else str(value)
        counts[key] = counts.get(key, 0) + int(count)


def _ordered(counts: Mapping[str, int]) -> pd.Series:
    """Most frequent first, ties by value: one order whatever the batches were."""
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return pd.Series(dict(ordered), dtype="int64")
