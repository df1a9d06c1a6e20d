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

`summarize_served_window` is what run_monitoring reads of a window (`ServedWindow`): those counts,
the rows per model version, each version's automation degrees and its probabilities, counted on a
grid of GRID_STEPS bins (`ProbabilityCounts`: at most a million distinct values however many
requests); `summarize_shadowed_requests` is what the timeline's agreement needs (the rows of
shadowed requests only).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

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


# --- probabilities, counted -------------------------------------------------------------------

# Probabilities are counted on a grid of 1e-6: prediction drift and the performance estimate read
# them only through bins and a decision threshold that have a few decimals (0.05-wide bins, 0.5),
# through a calibration map that moves by at most tens of times a probability's change, and
# through ranks, which a grid only turns into ties between requests less than 1e-6 apart. A dense
# count per grid point is 8 MB per model version, whatever the window's length (float64 per
# request: 80 MB at 10M requests, plus the estimate's temporaries of that size).
GRID_STEPS = 1_000_000
# A boundary (bin edge, decision threshold) this close to a grid point is that grid point:
# np.linspace(0, 1, 21) gives 0.15000000000000002 for the grid's 0.15.
_GRID_SNAP = 1e-12


def grid_indices(probabilities: np.ndarray) -> np.ndarray:
    """The grid point at or below each finite probability (clipped to [0, 1]): k with k / GRID_STEPS <= p < (k + 1) / GRID_STEPS.

    Floor, not round, and corrected where p * GRID_STEPS rounded onto the next integer: a
    probability stays on its side of every boundary that lies on the grid (p >= 0.5 exactly when
    its grid point is), so predicted classes and bin memberships do not move.
    """
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 0.0, 1.0)
    k = np.floor(p * GRID_STEPS).astype(np.int64)
    k -= k / GRID_STEPS > p
    k += (k + 1) / GRID_STEPS <= p
    return k


@dataclasses.dataclass(frozen=True)
class ProbabilityCounts:
    """A set of finite probabilities as distinct values (sorted float64) with how many requests had each.

    `on_grid`: the values are grid points (`grid_indices`), each standing for the requests whose
    probability lies less than 1 / GRID_STEPS above it; else they are the probabilities themselves.
    """

    values: np.ndarray
    counts: np.ndarray
    on_grid: bool

    @classmethod
    def exact(cls, probabilities: np.ndarray) -> "ProbabilityCounts":
        """The finite ones of `probabilities` (NaN is a null output), counted as they are."""
        p = np.asarray(probabilities, dtype=np.float64)
        distinct, counts = np.unique(p[np.isfinite(p)], return_counts=True)
        return cls(distinct, counts.astype(np.int64), on_grid=False)

    @classmethod
    def gridded(cls, probabilities: np.ndarray) -> "ProbabilityCounts":
        """The finite ones of `probabilities`, counted at their grid points."""
        p = np.asarray(probabilities, dtype=np.float64)
        indices, counts = np.unique(grid_indices(p[np.isfinite(p)]), return_counts=True)
        return cls(indices / GRID_STEPS, counts.astype(np.int64), on_grid=True)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def mean(self) -> float:
        """The mean probability; on the grid, of each grid step's middle (the requests' own lie anywhere in the step)."""
        if not self.total:
            return math.nan
        middle = 0.5 / GRID_STEPS if self.on_grid else 0.0
        return float(np.dot(self.values, self.counts) / self.total) + middle

    def boundaries(self, at: Sequence[float] | np.ndarray) -> np.ndarray:
        """Bin edges or a threshold as these values are compared with: on the grid, its nearest grid point when that is
        within rounding (a boundary between grid points cannot be resolved; the grid point below stands for both sides)."""
        at = np.asarray(at, dtype=np.float64)
        if not self.on_grid:
            return at
        snapped = np.round(at * GRID_STEPS) / GRID_STEPS
        return np.where(np.abs(snapped - at) <= _GRID_SNAP, snapped, at)

    def expanded(self) -> np.ndarray:
        """One value per request, in ascending order (the order of the requests is not kept)."""
        return np.repeat(self.values, self.counts)


def probability_counts(probabilities: "np.ndarray | ProbabilityCounts") -> ProbabilityCounts:
    """`probabilities` counted (exactly, for an array of per-request values) or as already counted."""
    return probabilities if isinstance(probabilities, ProbabilityCounts) else ProbabilityCounts.exact(probabilities)


class _GridCounter:
    """Probabilities counted at their grid points, batch by batch: 8 MB, whatever the number of requests."""

    def __init__(self) -> None:
        self._counts = np.zeros(GRID_STEPS + 1, dtype=np.int64)

    def add(self, probabilities: np.ndarray) -> None:
        finite = probabilities[np.isfinite(probabilities)]
        if finite.size:
            self._counts += np.bincount(grid_indices(finite), minlength=GRID_STEPS + 1)

    def result(self) -> ProbabilityCounts:
        indices = np.flatnonzero(self._counts)
        return ProbabilityCounts(indices / GRID_STEPS, self._counts[indices], on_grid=True)


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
    columns = [*_FILTER_COLUMNS, "model_version", "probability", *chosen]
    for selected in window_batches(Path(log_dir), start, end, columns, model_name):
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


# --- the window as run_monitoring needs it ---------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ServedWindow:
    """Everything run_monitoring needs of a window's served requests, without holding the requests.

    `values` are the counts the distribution checks read (or, from `of_frame`, the frame itself,
    which the checks accept alike); `versions` the rows per model version (pandas'
    value_counts(dropna=False) keys, "<NA>" for a missing version); `automation` the automation
    degrees each version answered with, counted; `probabilities` each version's finite logged
    probabilities counted on the grid (`ProbabilityCounts`; null outputs are in `values`): nothing
    is kept per request.
    """

    rows: int
    values: "ServedValues | pd.DataFrame"
    versions: pd.Series
    automation: Mapping[str, pd.Series]
    probabilities: Mapping[str, ProbabilityCounts]

    @property
    def empty(self) -> bool:
        return self.rows == 0

    def judged_version(self) -> int:
        """The model version that answered most of the window (the highest one among equals)."""
        known = [(int(count), int(key)) for key, count in self.versions.items() if key != _NULL_VERSION]
        if not known:
            raise DataError("the logged requests carry no model_version: cannot tell which model to judge")
        return max(known)[1]

    def probabilities_of(self, version: int) -> ProbabilityCounts:
        found = self.probabilities.get(str(version))
        return found if found is not None else ProbabilityCounts.gridded(np.array([], dtype=np.float64))

    def automation_of(self, version: int) -> str | None:
        """The automation degree `version` answered most of its requests with (None: it answered none)."""
        degrees = self.automation.get(str(version))
        return str(degrees.index[0]) if degrees is not None and len(degrees) else None

    @classmethod
    def of_frame(cls, frame: pd.DataFrame) -> "ServedWindow":
        """The window already read into pandas (read_prediction_logs, include_shadow=False); `values` is the frame."""
        versions = frame["model_version"].astype(str).where(frame["model_version"].notna(), _NULL_VERSION)
        automation = {key: _ordered(group.value_counts().to_dict())
                      for key, group in frame["automation"].groupby(versions, sort=False)}
        probabilities = {key: ProbabilityCounts.gridded(pd.to_numeric(group).to_numpy(dtype=float))
                         for key, group in frame["probability"].groupby(versions, sort=False)}
        return cls(len(frame), frame, _ordered(versions.value_counts().to_dict()), automation, probabilities)


def summarize_served_window(log_dir: Path, start: dt.datetime, end: dt.datetime, *,
                            model_name: str | None = None) -> ServedWindow:
    """The ServedWindow of the requests clients were answered with in [start, end), streamed in record batches.

    The same rows as `read_prediction_logs(log_dir, start, end, model_name=..., include_shadow=False)`;
    memory is the distinct values' counts and a grid of probability counts per model version
    (8 MB each), not the requests.
    """
    if end <= start:
        raise DataError(f"the window is empty: end {end.isoformat()} is not after start {start.isoformat()}")
    chosen = _chosen(None)
    summary = _Accumulator(chosen)
    versions: dict[str, int] = {}
    automation: dict[str, dict[str, int]] = {}
    probabilities: dict[str, _GridCounter] = {}
    columns = [*_FILTER_COLUMNS, "model_version", "probability", "automation", *chosen]
    for selected in window_batches(Path(log_dir), start, end, columns, model_name):
        summary.add_arrow(selected)
        version = selected.column("model_version")
        probability = pc.cast(selected.column("probability"), pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
        keys = version.cast(pa.string()).fill_null(_NULL_VERSION)
        for key in pc.unique(keys).to_pylist():
            of_key = pc.equal(keys, key)
            mask = of_key.to_numpy(zero_copy_only=False)
            versions[key] = versions.get(key, 0) + int(mask.sum())
            found = pc.value_counts(selected.column("automation").filter(of_key))
            _add_counts(automation.setdefault(key, {}), zip(found.field("values").to_pylist(), found.field("counts").to_pylist()))
            probabilities.setdefault(key, _GridCounter()).add(probability[mask])
    values = summary.result()
    return ServedWindow(values.rows, values, _ordered(versions),
                        {key: _ordered(counts) for key, counts in automation.items()},
                        {key: counter.result() for key, counter in probabilities.items()})


def window_batches(log_dir: Path, start: dt.datetime, end: dt.datetime, columns: list[str],
                    model_name: str | None, include_shadow: bool = False) -> Iterator[pa.RecordBatch]:
    """The non-empty record batches of the requests of `model_name` in [start, end) (served only, unless `include_shadow`),
    read one Parquet record batch at a time: memory is one batch's, whatever the window's length."""
    start_us, end_us = _micros(start), _micros(end)
    for batch in _log_batches(log_dir, start, end, columns):
        timestamps = batch.column("timestamp").cast(pa.int64())
        keep = pc.and_(pc.greater_equal(timestamps, start_us), pc.less(timestamps, end_us))
        if not include_shadow:
            keep = pc.and_(keep, pc.invert(batch.column("is_shadow").fill_null(False)))
        if model_name is not None:
            keep = pc.and_(keep, pc.equal(batch.column("model_name"), model_name))
        selected = batch.filter(keep.fill_null(False))
        if selected.num_rows:
            yield selected


# --- shadowed requests, for the agreement of a shadowed candidate --------------------------------

@dataclasses.dataclass(frozen=True)
class ShadowedRequests:
    """What the timeline needs of a window's logs: referrals among served requests, and the shadowed requests.

    `requests` holds every logged row (served and shadow copy) of the requests that have a shadow
    copy, as read_prediction_logs returns rows (oldest first, nullable integers): pairing needs
    their values, and they are only the shadowed share of the traffic, not the window.
    """

    served: int  # requests clients were answered with (no shadow copies)
    referred: int  # of those, the ones referred to a person
    requests: pd.DataFrame


def summarize_shadowed_requests(log_dir: Path, start: dt.datetime, end: dt.datetime, *, model_name: str | None,
                                referral: str) -> ShadowedRequests:
    """Streams the window once for the counts and the ids of shadowed requests; reads those requests' rows only if any."""
    if end <= start:
        raise DataError(f"the window is empty: end {end.isoformat()} is not after start {start.isoformat()}")
    served = referred = 0
    shadowed: set[str] = set()
    for batch in window_batches(Path(log_dir), start, end, [*_FILTER_COLUMNS, "request_id", "decision"], model_name,
                                 include_shadow=True):
        shadow = batch.column("is_shadow").fill_null(False)
        decisions = batch.column("decision").filter(pc.invert(shadow))
        served += len(decisions)
        referred += pc.sum(pc.equal(decisions, referral).fill_null(False)).as_py() or 0
        shadowed.update(batch.column("request_id").filter(shadow).drop_null().to_pylist())
    batches = []
    if shadowed:
        wanted = pa.array(sorted(shadowed), type=pa.string())
        for batch in window_batches(Path(log_dir), start, end, REQUEST_SCHEMA.names, model_name, include_shadow=True):
            of_shadowed = batch.filter(pc.is_in(batch.column("request_id"), value_set=wanted).fill_null(False))
            if of_shadowed.num_rows:
                batches.append(of_shadowed)
    table = pa.Table.from_batches(batches, schema=REQUEST_SCHEMA) if batches else REQUEST_SCHEMA.empty_table()
    frame = table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype(), pa.int32(): pd.Int32Dtype()}.get)
    return ShadowedRequests(served, referred, frame.sort_values("timestamp", kind="stable").reset_index(drop=True))
