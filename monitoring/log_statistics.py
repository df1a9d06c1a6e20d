"""TFDV statistics of a window of logged serving requests, as a Beam job reading the Parquet logs.

The gateway's prediction logs are Parquet (docs/ARCHITECTURE.md "Prediction logs"); this job reads
the window's date partitions, keeps the requests clients were answered with (no shadow copies) in
[start, end), turns the feature columns into the Arrow layout TFDV reads (one list per feature,
null = missing) and runs `tfdv.GenerateStatistics` with the options of `beam_jobs.statistics`, so
the numbers compare directly with the training statistics.

Columnar all the way: on this machine a million logged requests take about as long as ten
thousand (fixed pipeline cost dominates); going through tf.Example protos one row at a time would
cost a minute per million rows before TFDV even starts.

Program:
    python -m monitoring.log_statistics --log_dir DIR --window_start ISO --window_end ISO \
        --statistics_output FILE [--model_name taxi] --runner=DirectRunner
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import tensorflow_data_validation as tfdv
from apache_beam.options.pipeline_options import PipelineOptions
from tensorflow_metadata.proto.v0 import statistics_pb2

from beam_jobs.options import add_job_argument, configure_cli_logging, require_flags
from beam_jobs.progress import JobProgress, ReadCounter, watched
from beam_jobs.statistics import load_statistics, stats_options
from core.errors import DataError
from serving.prediction_log import REQUESTS_DIR
from transforms.features import SERVING_FEATURES, Kind

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

_PARTITION = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
# What TFDV sees, matching what a tf.Example holds (float_list is float32, bytes_list is bytes).
_TFDV_TYPES = {Kind.FLOAT: pa.float32(), Kind.INT: pa.int64(), Kind.STRING: pa.binary()}
_READ_COLUMNS = ["timestamp", "model_name", "is_shadow", *(f.name for f in SERVING_FEATURES)]


class LogStatisticsOptions(PipelineOptions):
    """Flags of the job; every other flag goes to the Beam runner."""

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        add_job_argument(parser, "--log_dir", type=str, default=None,
                         help="The gateway's log directory (holds requests/date=YYYY-MM-DD/)")
        add_job_argument(parser, "--window_start", type=str, default=None,
                         help="First request time to include, ISO 8601 (UTC if no zone)")
        add_job_argument(parser, "--window_end", type=str, default=None,
                         help="Request time after the window, ISO 8601 (exclusive)")
        add_job_argument(parser, "--model_name", type=str, default=None,
                         help="Only requests for this model (default: all)")
        add_job_argument(parser, "--statistics_output", type=str, default=None,
                         help="Where to write the binary DatasetFeatureStatisticsList")


def utc(value: dt.datetime | str, what: str = "time") -> dt.datetime:
    """A timezone-aware UTC datetime (naive means UTC); DataError for text that is no ISO time."""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise DataError(f"{what} must be an ISO 8601 date or time (e.g. 2026-01-31T10:00:00Z), got {value!r}") from None
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


def log_files(log_dir: Path, start: dt.datetime, end: dt.datetime) -> list[Path]:
    """The request log files whose date partition overlaps [start, end)."""
    requests = Path(log_dir) / REQUESTS_DIR
    if not requests.is_dir():
        return []
    files: list[Path] = []
    last_day = (end - dt.timedelta(microseconds=1)).date()
    for partition in sorted(requests.iterdir()):
        match = _PARTITION.match(partition.name)
        if not match or not partition.is_dir():
            continue  # hidden temp folders; the reader in serving.prediction_log rejects strays loudly
        day = dt.date.fromisoformat(match.group(1))
        if start.date() <= day <= last_day:
            files.extend(sorted(partition.glob("part-*.parquet")))
    return files


def statistics_of_frame(frame: "pd.DataFrame") -> statistics_pb2.DatasetFeatureStatisticsList:
    """In-memory TFDV statistics of a typed frame (monitoring.frames), with the Beam job's generator and options.

    For notebooks, tests and calibration on data that fits in memory; monitoring runs use the Beam job.
    """
    from tensorflow_data_validation.statistics import stats_impl

    table = pa.Table.from_pandas(frame[[f.name for f in SERVING_FEATURES]], preserve_index=False)
    return stats_impl.generate_statistics_in_memory(to_tfdv_batch(table), stats_options())


def _micros(moment: dt.datetime) -> int:
    return int((moment - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(microseconds=1))


def to_tfdv_batch(table: pa.Table) -> pa.RecordBatch:
    """Logged feature columns -> TFDV's layout: a list per feature per row, a null list when missing."""
    arrays, names = [], []
    for feature in SERVING_FEATURES:
        column = table.column(feature.name).combine_chunks() if feature.name in table.column_names else pa.nulls(table.num_rows)
        valid = pc.is_valid(column)
        if feature.kind is Kind.FLOAT and pa.types.is_floating(column.type):
            valid = pc.and_(valid, pc.invert(pc.is_nan(column)))
        valid = valid.fill_null(False)
        present = column.filter(valid).cast(_TFDV_TYPES[feature.kind])
        mask = np.asarray(valid.to_numpy(zero_copy_only=False), dtype=bool)
        offsets = np.concatenate([[0], np.cumsum(mask)]).astype(np.int32)
        arrays.append(pa.ListArray.from_arrays(pa.array(offsets), present, mask=pa.array(~mask)))
        names.append(feature.name)
    return pa.RecordBatch.from_arrays(arrays, names)


class SelectServedRequests(beam.DoFn):
    """Keeps the rows of a log table in [start, end) that a client was answered with, as TFDV batches;
    counts the rows it reads in the `progress` folder (beam_jobs/progress.py) when one is given."""

    def __init__(self, start_us: int, end_us: int, model_name: str | None, progress: str | None = None) -> None:
        self._start_us = start_us
        self._end_us = end_us
        self._model_name = model_name
        self._progress = progress

    def setup(self) -> None:
        self._read = ReadCounter(self._progress)

    def finish_bundle(self) -> None:
        self._read.flush()

    def process(self, table: pa.Table) -> Iterator[pa.RecordBatch]:
        self._read.add(table.num_rows)
        timestamps = table.column("timestamp").cast(pa.int64())
        keep = pc.and_(pc.greater_equal(timestamps, self._start_us), pc.less(timestamps, self._end_us))
        keep = pc.and_(keep, pc.invert(table.column("is_shadow").fill_null(False)))
        if self._model_name is not None:
            keep = pc.and_(keep, pc.equal(table.column("model_name"), self._model_name))
        selected = table.filter(pc.fill_null(keep, False))
        if selected.num_rows:
            yield to_tfdv_batch(selected)


def build(pipeline: beam.Pipeline, options: LogStatisticsOptions, progress: str | None = None) -> Path:
    """ListLogFiles -> ReadLogTables -> SelectServedRequests -> GenerateStatistics -> WriteStatistics.
    `progress`: a progress.JobProgress folder, where the rows read are counted."""
    require_flags("monitoring.log_statistics", {
        "--log_dir": options.log_dir, "--window_start": options.window_start,
        "--window_end": options.window_end, "--statistics_output": options.statistics_output})
    start, end = utc(options.window_start, "--window_start"), utc(options.window_end, "--window_end")
    if end <= start:
        raise DataError(f"the window is empty: --window_end {end.isoformat()} is not after --window_start {start.isoformat()}")
    files = log_files(Path(options.log_dir), start, end)
    if not files:
        raise DataError(f"{Path(options.log_dir) / REQUESTS_DIR}: no request logs between {start.isoformat()} and {end.isoformat()}")
    output = Path(options.statistics_output)
    output.parent.mkdir(parents=True, exist_ok=True)
    _ = (
        pipeline
        | "ListLogFiles" >> beam.Create([str(path) for path in files])
        | "ReadLogTables" >> beam.io.ReadAllFromParquetBatched(columns=_READ_COLUMNS)
        | "SelectServedRequests" >> beam.ParDo(SelectServedRequests(_micros(start), _micros(end), options.model_name, progress))
        | "GenerateStatistics" >> tfdv.GenerateStatistics(stats_options())
        # A temp file renamed into place when the pipeline finishes.
        | "WriteStatistics" >> tfdv.WriteStatisticsToBinaryFile(str(output))
    )
    return output


def generate_log_statistics(
    log_dir: Path,
    start: dt.datetime,
    end: dt.datetime,
    output_path: Path,
    *,
    model_name: str | None = None,
    beam_args: Sequence[str] = (),
    progress: JobProgress | None = None,
) -> Path:
    """Statistics of the served requests logged in [start, end), written to `output_path`.
    `progress` (log_statistics_progress) prints how far it has read while it runs.

    Raises DataError when no log file covers the window or no request in it was served.
    """
    options = LogStatisticsOptions(
        flags=list(beam_args), log_dir=str(log_dir), window_start=utc(start).isoformat(),
        window_end=utc(end).isoformat(), model_name=model_name, statistics_output=str(output_path))
    return _run(options, progress)


def log_statistics_progress(log_dir: Path, start: dt.datetime, end: dt.datetime) -> JobProgress:
    """The progress lines of the job over [start, end): of every row of the log files it reads
    (the whole date partitions, counted from their Parquet footers), inside the window or not."""
    import pyarrow.parquet as pq

    rows = sum(pq.read_metadata(path).num_rows for path in log_files(log_dir, utc(start), utc(end)))
    return JobProgress("log statistics", rows)


def _run(options: LogStatisticsOptions, progress: JobProgress | None = None) -> Path:
    with watched(progress) as counted_in, beam.Pipeline(options=options) as pipeline:
        output = build(pipeline, options, counted_in)
    statistics = load_statistics(output)
    if not statistics.datasets or statistics.datasets[0].num_examples == 0:
        raise DataError(f"{options.log_dir}: no served requests logged between {options.window_start} and {options.window_end}"
                        f"{f' for model {options.model_name}' if options.model_name else ''}")
    log.info("statistics of %d logged requests: %s", statistics.datasets[0].num_examples, output)
    return output


def run(argv: Sequence[str] | None = None) -> Path:
    """Entry point of `python -m monitoring.log_statistics`: job flags plus any Beam runner flags."""
    return _run(PipelineOptions(argv).view_as(LogStatisticsOptions))


if __name__ == "__main__":
    import sys

    configure_cli_logging()
    try:
        print(run(sys.argv[1:]))
    except DataError as err:
        sys.exit(f"error: {err}")
