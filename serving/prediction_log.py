"""Prediction and feedback logs: date-partitioned Parquet written by the gateway, read by monitoring.

Layout and columns are the contract in docs/ARCHITECTURE.md ("Prediction logs"):
`<log_dir>/requests/date=YYYY-MM-DD/part-<unix_ms>-<uuid8>.parquet`, one row per example served,
and `<log_dir>/feedback/date=YYYY-MM-DD/part-*.parquet`. This module owns the schemas, the rows
of an entry, the atomic write of one part file and the readers.

The gateway writes through `serving/log_writer.py`: every entry is first made durable in a
write-ahead journal (`serving/request_journal.py`, under `<log_dir>/_journal/`, which readers
never look at) before the request is answered, then compacted into these Parquet files; after a
crash the journal is replayed into them, without duplicates. A part file appears under its final
name only when it is complete (written to a hidden temp name, fsynced, renamed), so a reader never
sees half a file and readers skip the hidden temp names.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import re
import time
import uuid
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from core import atomic
from core.errors import DataError
from transforms.features import SERVING_FEATURES, Kind

REQUESTS_DIR = "requests"
FEEDBACK_DIR = "feedback"
PARTITION_PREFIX = "date="
_PARTITION_RE = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
_PART_GLOB = "part-*.parquet"

_TIMESTAMP = pa.timestamp("us", tz="UTC")
_FEATURE_TYPES = {Kind.FLOAT: pa.float64(), Kind.INT: pa.int64(), Kind.STRING: pa.string()}

REQUEST_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("instance_index", pa.int32(), nullable=False),
        pa.field("timestamp", _TIMESTAMP, nullable=False),
        pa.field("model_name", pa.string(), nullable=False),
        pa.field("model_version", pa.int64()),
        pa.field("label", pa.string(), nullable=False),
        pa.field("policy", pa.string(), nullable=False),
        pa.field("automation", pa.string(), nullable=False),
        *(pa.field(feature.name, _FEATURE_TYPES[feature.kind]) for feature in SERVING_FEATURES),
        pa.field("probability", pa.float64()),
        pa.field("predicted_class", pa.int64()),
        pa.field("decision", pa.string(), nullable=False),
        pa.field("latency_ms", pa.float64(), nullable=False),
        pa.field("status_code", pa.int32(), nullable=False),
        pa.field("is_shadow", pa.bool_(), nullable=False),
    ]
)

FEEDBACK_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("instance_index", pa.int32(), nullable=False),
        pa.field("timestamp", _TIMESTAMP, nullable=False),
        pa.field("ground_truth", pa.int64()),
        pa.field("human_decision", pa.string()),
        pa.field("source", pa.string(), nullable=False),
    ]
)

_SERVING_COLUMNS = tuple(feature.name for feature in SERVING_FEATURES)


class LoggedRequest(NamedTuple):
    """One served request: one log row per example, all sharing `request_id` (a NamedTuple: cheap on the hot path).

    `features` holds the raw values as columns (feature name -> one value per example, None for
    missing), as the gateway checked them; `probabilities` hold None where the model gave no
    number (null or NaN).
    """

    request_id: str
    timestamp_us: int
    model_name: str
    model_version: int | None
    label: str
    policy: str
    automation: str
    features: Mapping[str, Sequence[Any]]
    probabilities: Sequence[float | None]
    classes: Sequence[int | None]
    decisions: Sequence[str]
    latency_ms: float
    status_code: int
    is_shadow: bool

    @property
    def rows(self) -> int:
        return len(self.probabilities)


class Feedback(NamedTuple):
    """Ground truth or a human's decision for one served example."""

    request_id: str
    instance_index: int
    timestamp_us: int
    ground_truth: int | None
    human_decision: str | None
    source: str

    @property
    def rows(self) -> int:
        return 1


def request_columns(entries: Sequence[LoggedRequest]) -> dict[str, list[Any]]:
    """Columns of REQUEST_SCHEMA for `entries`, one row per instance."""
    columns: dict[str, list[Any]] = {name: [] for name in REQUEST_SCHEMA.names}
    for entry in entries:
        count = len(entry.probabilities)
        columns["request_id"].extend([entry.request_id] * count)
        columns["instance_index"].extend(range(count))
        columns["timestamp"].extend([entry.timestamp_us] * count)
        columns["model_name"].extend([entry.model_name] * count)
        columns["model_version"].extend([entry.model_version] * count)
        columns["label"].extend([entry.label] * count)
        columns["policy"].extend([entry.policy] * count)
        columns["automation"].extend([entry.automation] * count)
        for name in _SERVING_COLUMNS:
            columns[name].extend(entry.features[name])
        columns["probability"].extend(entry.probabilities)
        columns["predicted_class"].extend(entry.classes)
        columns["decision"].extend(entry.decisions)
        columns["latency_ms"].extend([entry.latency_ms] * count)
        columns["status_code"].extend([entry.status_code] * count)
        columns["is_shadow"].extend([entry.is_shadow] * count)
    return columns


def feedback_columns(entries: Sequence[Feedback]) -> dict[str, list[Any]]:
    """Columns of FEEDBACK_SCHEMA for `entries`."""
    columns: dict[str, list[Any]] = {name: [] for name in FEEDBACK_SCHEMA.names}
    for entry in entries:
        columns["request_id"].append(entry.request_id)
        columns["instance_index"].append(entry.instance_index)
        columns["timestamp"].append(entry.timestamp_us)
        columns["ground_truth"].append(entry.ground_truth)
        columns["human_decision"].append(entry.human_decision)
        columns["source"].append(entry.source)
    return columns


@functools.cache
def load_arrow_timezones() -> None:
    """pyarrow imports pandas the first time it builds a tz-aware timestamp array (seconds of CPU here).

    Writers call it once when they are created, so it happens at start-up and not in the middle of
    serving, where it would hold the GIL and stall requests.
    """
    pa.array([0], type=pa.int64()).view(_TIMESTAMP)


def part_path(partition_dir: Path, name: str) -> Path:
    """`<partition_dir>/part-<name>.parquet`; `name` is `<unix_ms>-<hex8>`."""
    return partition_dir / f"part-{name}.parquet"


def write_table_atomically(table: pa.Table, partition_dir: Path, name: str | None = None) -> Path:
    """Writes `table` as `part-<name>.parquet` in `partition_dir` (default name: `<unix_ms>-<uuid8>`),
    atomically (core.atomic): until the rename, the file has a hidden temp name that the readers'
    `part-*.parquet` glob skips."""
    final = part_path(partition_dir, name or f"{int(time.time() * 1000)}-{uuid.uuid4().hex[:8]}")
    with atomic.atomic_file(final, "wb") as handle:
        pq.write_table(table, handle, compression="snappy")
    return final


def utc_date(timestamp_us: int) -> str:
    """The `YYYY-MM-DD` partition of a timestamp in microseconds."""
    return dt.datetime.fromtimestamp(timestamp_us / 1_000_000, tz=dt.timezone.utc).strftime("%Y-%m-%d")


# --- readers -------------------------------------------------------------------------------

TimeBound = dt.datetime | dt.date | str | None


def read_prediction_logs(
    log_dir: Path,
    start: TimeBound = None,
    end: TimeBound = None,
    *,
    model_name: str | None = None,
    include_shadow: bool = True,
) -> "pandas.DataFrame":  # noqa: F821 - pandas is imported lazily
    """Served examples with `start <= timestamp < end` (UTC; None = unbounded), oldest first.

    Integer columns come back as pandas nullable integers (`Int64`/`Int32`) so a missing value
    stays distinguishable from a number; floats use NaN for null; strings use None. Shadow
    copies (`is_shadow`, never returned to a client) are kept unless `include_shadow=False`:
    monitoring of what clients received should drop them.
    """
    frame = _read_partitioned(Path(log_dir) / REQUESTS_DIR, REQUEST_SCHEMA, start, end)
    if model_name is not None:
        frame = frame[frame["model_name"] == model_name]
    if not include_shadow:
        frame = frame[~frame["is_shadow"].astype(bool)]
    return frame.reset_index(drop=True)


def read_feedback(log_dir: Path, start: TimeBound = None, end: TimeBound = None) -> "pandas.DataFrame":  # noqa: F821
    """Feedback rows (ground truth and human decisions) received in [start, end), oldest first."""
    return _read_partitioned(Path(log_dir) / FEEDBACK_DIR, FEEDBACK_SCHEMA, start, end).reset_index(drop=True)


def join_feedback(requests: "pandas.DataFrame", feedback: "pandas.DataFrame") -> "pandas.DataFrame":  # noqa: F821
    """Requests with their latest feedback (`ground_truth`, `human_decision`, `feedback_source`) on (request_id, instance_index).

    Shadow rows are never joined: the feedback is about what the client was told.
    """
    import pandas as pd

    latest = (
        feedback.sort_values("timestamp")
        .groupby(["request_id", "instance_index"], as_index=False)
        .agg({"ground_truth": "last", "human_decision": "last", "source": "last"})
        .rename(columns={"source": "feedback_source"})
    )
    served = requests[~requests["is_shadow"].astype(bool)]
    joined = served.merge(latest, on=["request_id", "instance_index"], how="left")
    joined["ground_truth"] = joined["ground_truth"].astype(pd.Int64Dtype())
    return joined


def _read_partitioned(directory: Path, schema: pa.Schema, start: TimeBound, end: TimeBound) -> "pandas.DataFrame":  # noqa: F821
    import pandas as pd

    start_ts, end_ts = _bound(start, "start"), _bound(end, "end")
    if start_ts is not None and end_ts is not None and end_ts <= start_ts:
        raise DataError(f"reading {directory}: end {end_ts.isoformat()} must be after start {start_ts.isoformat()}")
    tables = [_read_part(path, schema) for path in _part_files(directory, start_ts, end_ts)]
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    # Nullable integers keep a missing value apart from a number (numpy would turn the column into floats).
    nullable_ints = {pa.int64(): pd.Int64Dtype(), pa.int32(): pd.Int32Dtype()}
    frame = table.to_pandas(types_mapper=nullable_ints.get)
    if start_ts is not None:
        frame = frame[frame["timestamp"] >= pd.Timestamp(start_ts)]
    if end_ts is not None:
        frame = frame[frame["timestamp"] < pd.Timestamp(end_ts)]
    return frame.sort_values("timestamp", kind="stable")


def list_part_files(directory: Path, start: TimeBound = None, end: TimeBound = None) -> list[Path]:
    """The part files of `directory` (requests/ or feedback/) whose date partition may hold [start, end)."""
    return _part_files(Path(directory), _bound(start, "start"), _bound(end, "end"))


def _part_files(directory: Path, start: dt.datetime | None, end: dt.datetime | None) -> list[Path]:
    if not directory.is_dir():
        return []
    files: list[Path] = []
    for partition in sorted(directory.iterdir()):
        if partition.name.startswith((".", "_")):
            continue
        match = _PARTITION_RE.match(partition.name)
        if not match or not partition.is_dir():
            raise DataError(f"{partition}: unexpected entry in a prediction log directory (expected date=YYYY-MM-DD folders)")
        try:
            day = dt.date.fromisoformat(match.group(1))
        except ValueError:
            raise DataError(f"{partition}: {match.group(1)!r} is not a calendar date") from None
        if start is not None and day < start.date():
            continue
        if end is not None and day > end.date():
            continue
        files.extend(sorted(partition.glob(_PART_GLOB)))
    return files


def _read_part(path: Path, schema: pa.Schema) -> pa.Table:
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing columns {missing} (expected the prediction log schema in docs/ARCHITECTURE.md)")
    table = table.select(schema.names)
    try:
        return table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        wrong = [f"{f.name}: {table.schema.field(f.name).type} (expected {f.type})" for f in schema if table.schema.field(f.name).type != f.type]
        raise DataError(f"{path}: columns of the wrong type {wrong} ({err})") from None


def _bound(value: TimeBound, what: str) -> dt.datetime | None:
    """A UTC datetime from a datetime (naive = UTC), a date (midnight UTC) or an ISO string."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            raise DataError(f"{what} must be an ISO date or datetime (e.g. 2016-01-31), got {value!r}") from None
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc)
    raise DataError(f"{what} must be a datetime, date or ISO string, got {type(value).__name__}")


def finite_or_none(value: Any) -> float | None:
    """The model's probability as logged: None for a missing, NaN or infinite number."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None

