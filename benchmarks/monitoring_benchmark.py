"""How long monitoring takes for 1M and 10M logged requests, in how much memory, and whether the cost grows linearly.

    .venvs/ml/bin/python benchmarks/monitoring_benchmark.py [--requests 1000000,10000000] [--read stream|frame|both]
        [--repeats 1] [--work DIR] [--pipeline-run DIR]

Logged requests are real taxi rows (2013-2014 trips of the shipped CSV) resampled with replacement
and written as the gateway's Parquet logs (docs/ARCHITECTURE.md), ROWS_PER_FILE rows per file, one
chunk at a time (generating 10M requests holds one file's rows, never the log). The baseline is the
statistics of the other rows of that period. Each size is generated in one child process and
monitored in another, so each reports its own CPU seconds (user + sys) and peak RSS; the machine
is shared, so compare those rather than wall seconds (each line ends with the machine's load
average as the run ended). Timed in the monitoring process, after a
warm-up run on 1,000 requests (imports, Beam and TFDV start-up):
- statistics: the Beam job over the Parquet logs (monitoring.log_statistics, DirectRunner);
- read: `stream` (default) counts the window's values batch by batch (monitoring.served_values,
  memory flat in the log's length); `frame` loads the window into pandas
  (serving.prediction_log.read_prediction_logs, the path before the streaming one: ~1.5 GB at 1M,
  so do not run it at 10M on a shared machine);
- checks: data drift and skew (TFDV comparators), schema anomalies, missing values, null outputs.
`--read both` runs both readers on the same log and says whether every check's outcome is identical.

With `--pipeline-run DIR` (a finished pipeline run: its mlops.toml, ML Metadata and a pushed
taxi:1, e.g. a `benchmarks/pipeline_scale.py` run) the monitoring process times `run_monitoring`
itself, what the monitoring DAG and `make run` call: the log statistics Beam job, the window
streamed (monitoring/served_values.py ServedWindow), the baselines found through ML Metadata,
the previous window, every check (drift, skew, schema, missing values, null outputs, prediction
drift, concept drift, performance estimate), the agreement and readiness, the timeline summary,
result.json, the report and the MLMD records. The run is copied into the work folder first and its
ML Metadata paths moved to the copy, so nothing is written into DIR. The warm-up run fills the
baseline caches (the training rows as Parquet, the prediction baseline), as any earlier check of
the model has. `frame` there is run_monitoring with the window read into pandas, as before
ServedWindow (monitoring.served_values.ServedWindow.of_frame, and the timeline summary of
the window read into pandas): identical outcomes, compared by `--read both`.
A least-squares fit `seconds = fixed + per_million * rows / 1e6` says how the cost grows.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from monitoring import checks, drift  # noqa: E402
from monitoring.frames import frame_from_csv_rows  # noqa: E402
from monitoring.log_statistics import generate_log_statistics, statistics_of_frame  # noqa: E402
from monitoring.results import Baseline, as_strict_json  # noqa: E402
from monitoring.served_values import summarize_served_logs  # noqa: E402
from monitoring.settings import load_thresholds  # noqa: E402
from serving.prediction_log import REQUEST_SCHEMA, REQUESTS_DIR, read_prediction_logs, write_table_atomically  # noqa: E402
from transforms.features import (  # noqa: E402
    DECISION_BIG_TIPPER,
    DECISION_NOT_BIG_TIPPER,
    RAW_COLUMNS,
    SERVING_COLUMNS,
    TIMESTAMP_KEY,
)
from validation.schema import load_schema  # noqa: E402

START = dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc)
END = START + dt.timedelta(hours=1)
ROWS_PER_FILE = 100_000  # the gateway flushes every 10k rows or 5 s; bigger files keep 1M rows manageable here
BEAM = ["--runner=DirectRunner", "--direct_num_workers=1", "--direct_running_mode=in_memory"]


def write_logs(log_dir: Path, source: pd.DataFrame, rows: int, seed: int) -> None:
    """`rows` served examples resampled from `source`, as Parquet request logs of one hour.

    One file's rows at a time (columnar): the log is never in memory, whatever `rows` is.
    """
    rng = np.random.default_rng(seed)
    start_us = int(START.timestamp() * 1_000_000)
    for first in range(0, rows, ROWS_PER_FILE):
        n = min(ROWS_PER_FILE, rows - first)
        chunk = source.iloc[rng.integers(0, len(source), n)]
        probability = rng.random(n) * 0.6
        columns = {
            "request_id": [uuid.UUID(int=int(x)).hex for x in rng.integers(0, 1 << 62, n)],
            "instance_index": np.zeros(n, dtype=np.int32),
            "timestamp": pa.array(start_us + rng.integers(0, 3_600_000_000, n), type=pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "model_name": ["taxi"] * n, "model_version": np.ones(n, dtype=np.int64), "label": ["stable"] * n,
            "policy": ["blue_green"] * n, "automation": ["full"] * n,
            **{name: chunk[name].astype(object).where(chunk[name].notna(), None).tolist() for name in SERVING_COLUMNS},
            "probability": probability, "predicted_class": (probability >= 0.5).astype(np.int64),
            "decision": np.where(probability >= 0.5, DECISION_BIG_TIPPER, DECISION_NOT_BIG_TIPPER).tolist(),
            "latency_ms": np.full(n, 3.0), "status_code": np.full(n, 200, dtype=np.int32), "is_shadow": np.zeros(n, dtype=bool),
        }
        table = pa.Table.from_pydict(columns, schema=REQUEST_SCHEMA)
        write_table_atomically(table, log_dir / REQUESTS_DIR / f"date={START:%Y-%m-%d}")


def taxi_period() -> tuple[Baseline, pd.DataFrame]:
    """The training baseline (2/3 of the 2013-2014 trips) and the held-out rest the requests are drawn from."""
    raw = pd.read_csv(PROJECT_ROOT / "data" / "taxi" / "data.csv", dtype=str, keep_default_na=False)
    taxi = frame_from_csv_rows(raw.to_dict("records"), RAW_COLUMNS)
    period = taxi[pd.to_datetime(taxi[TIMESTAMP_KEY].astype("int64"), unit="s") < "2015-01-01"]
    training_rows = period.sample(frac=2 / 3, random_state=1)
    heldout = period.drop(training_rows.index)
    return Baseline("training data", statistics_of_frame(training_rows), training_rows), heldout


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def generate(rows: int, log_dir: Path) -> dict[str, float]:
    """Child process: write the log of `rows` requests."""
    _, heldout = taxi_period()
    began, cpu = time.perf_counter(), cpu_seconds()
    write_logs(log_dir, heldout, rows, seed=rows)
    return {"seconds": time.perf_counter() - began, "cpu": cpu_seconds() - cpu, "peak_rss_mib": peak_rss_mib()}


def monitor_once(rows: int, log_dir: Path, read: str, training: Baseline, schema: Any, thresholds: Any,
                 work: Path) -> tuple[dict[str, float], list[Any]]:
    began, cpu = time.perf_counter(), cpu_seconds()
    stats_path = generate_log_statistics(log_dir, START, END, work / f"stats-{rows}.pb", model_name="taxi", beam_args=BEAM)
    statistics_done, statistics_cpu = time.perf_counter(), cpu_seconds()
    from beam_jobs.statistics import load_statistics

    current = load_statistics(stats_path)
    window_hours = (END - START) / dt.timedelta(hours=1)
    if read == "frame":
        served = read_prediction_logs(log_dir, START, END, model_name="taxi", include_shadow=False)
        served_rows = len(served)
    else:
        compared = {*drift.compared_features(thresholds.drift, window_hours), *drift.compared_features(thresholds.skew, window_hours)}
        served = summarize_served_logs(log_dir, START, END, model_name="taxi", features=sorted(compared))
        served_rows = served.rows
    read_done, read_cpu = time.perf_counter(), cpu_seconds()
    outcomes = [
        checks.data_drift(current, served, [training], schema, thresholds, window_hours),
        checks.training_serving_skew(training, current, served, schema, thresholds, window_hours),
        checks.schema_anomalies(current, schema),
        checks.missing_values(current, training.statistics, thresholds),
        checks.null_outputs(served, thresholds),
    ]
    checks_done = time.perf_counter()
    assert served_rows == rows and all(o.passed for o in outcomes), [(o.name, o.evidence) for o in outcomes if not o.passed]
    times = {"statistics": statistics_done - began, "read": read_done - statistics_done, "checks": checks_done - read_done,
             "total": checks_done - began, "cpu": cpu_seconds() - cpu, "cpu_statistics": statistics_cpu - cpu,
             "cpu_read": read_cpu - statistics_cpu}
    return times, outcomes


def relocated_run(source: Path, copy: Path) -> Any:
    """A copy of the pipeline run at `source`, its ML Metadata artifacts pointing into the copy; its Config."""
    import shutil

    from core.config import load_config
    from metadata.store import connect

    shutil.copytree(source, copy, symlinks=True)
    config = load_config(copy / "mlops.toml")
    sqlite = Path(config.metadata.sqlite_path).resolve()
    if sqlite.is_relative_to(source.resolve()):  # an absolute path into the run: the copy's file instead
        sqlite = copy.resolve() / sqlite.relative_to(source.resolve())
        config = dataclasses.replace(config, metadata=dataclasses.replace(config.metadata, sqlite_path=sqlite))
    if config.metadata.backend != "sqlite" or not sqlite.is_relative_to(copy.resolve()):
        raise SystemExit(f"--pipeline-run {source}: its ML Metadata must be a SQLite file inside it "
                         f"(found backend {config.metadata.backend!r}, {sqlite}); the benchmark records into a copy of it")
    store = connect(config.metadata)
    old, new = str(source.resolve()), str(copy.resolve())
    moved = []
    for artifact in store.get_artifacts():
        changed = artifact.uri.startswith(old)
        if changed:
            artifact.uri = new + artifact.uri[len(old):]
        for properties in (artifact.properties, artifact.custom_properties):
            for value in properties.values():
                if value.HasField("string_value") and value.string_value.startswith(old):
                    value.string_value, changed = new + value.string_value[len(old):], True
        if changed:
            moved.append(artifact)
    store.put_artifacts(moved)
    return config


def run_monitoring_once(config: Any, rows: int, log_dir: Path, read: str, run_id: str) -> tuple[dict[str, float], list[Any]]:
    """run_monitoring on the window of `log_dir`; the seconds between its progress messages are its phases."""
    from monitoring.monitor import run_monitoring

    marks: list[tuple[str, float, float]] = []
    began, cpu = time.perf_counter(), cpu_seconds()
    result = run_monitoring(config, window_start=START, window_end=END, log_dir=log_dir, run_id=run_id,
                            progress=lambda message: marks.append((message, time.perf_counter(), cpu_seconds())))
    done, cpu_done = time.perf_counter(), cpu_seconds()
    assert result.rows == rows and len(result.checks) == 8, (result.rows, [c.name for c in result.checks])
    statistics = next((i for i, (m, _, _) in enumerate(marks) if m.startswith("statistics of the window")), None)
    comparing = next((i for i, (m, _, _) in enumerate(marks) if m.startswith("comparing distributions")), None)
    times = {"total": done - began, "cpu": cpu_done - cpu, "read": marks[0][1] - began if marks else math.nan,
             "cpu_read": marks[0][2] - cpu if marks else math.nan,
             "statistics": marks[statistics + 1][1] - marks[statistics][1] if statistics is not None else math.nan,
             "cpu_statistics": marks[statistics + 1][2] - marks[statistics][2] if statistics is not None else math.nan,
             "checks": done - marks[comparing][1] if comparing is not None else math.nan,
             "failed": [c.name for c in result.failed]}
    return times, result.checks


def monitor_run(rows: int, log_dir: Path, read: str, repeats: int, outcomes_file: Path, pipeline_run: Path) -> dict[str, Any]:
    """Child process: run_monitoring on the log `repeats` times after a warm-up; the fastest run counts."""
    if read == "frame":
        _read_windows_into_pandas()
    _, heldout = taxi_period()
    with tempfile.TemporaryDirectory(prefix="monitoring-benchmark-", dir=outcomes_file.parent) as temp:
        config = relocated_run(pipeline_run, Path(temp) / "pipeline-run")
        warm_logs = Path(temp) / "warm-up"
        write_logs(warm_logs, heldout, 1000, seed=1000)
        run_monitoring_once(config, 1000, warm_logs, read, f"benchmark-warm-up-{read}")
        rss_before = peak_rss_mib()
        runs = [run_monitoring_once(config, rows, log_dir, read, f"benchmark-{rows}-{i}") for i in range(repeats)]
    best, outcomes = min(runs, key=lambda run: run[0]["total"])
    # Evidence names files of the copied run (e.g. the evaluation calibrated with): each process has its own copy.
    document = json.dumps(comparable(outcomes), sort_keys=True, default=str).replace(str(Path(temp).resolve()), "<work>")
    outcomes_file.write_text(document)
    return {**best, "rss_before_mib": rss_before, "peak_rss_mib": peak_rss_mib(), "load_average": os.getloadavg()[0]}


def _read_windows_into_pandas() -> None:
    """run_monitoring as before ServedWindow: each window read into a pandas frame of every logged column."""
    from monitoring import timeline
    from monitoring.monitor import Monitor
    from monitoring.served_values import ServedWindow

    def read_window(self: Monitor, start: dt.datetime, end: dt.datetime) -> ServedWindow:
        return ServedWindow.of_frame(read_prediction_logs(self.log_dir, start, end, model_name=self.model_name,
                                                          include_shadow=False))

    def window_summary(log_dir: Path, start: Any, end: Any, model_name: str, thresholds: Any) -> dict[str, Any]:
        agreement, pairs, referrals = timeline.log_summary(read_prediction_logs(log_dir, start, end, model_name=model_name),
                                                           thresholds)
        return {"agreement": agreement, "pairs": pairs, "referrals": referrals}

    Monitor.read_window = read_window
    timeline.window_summary = window_summary


def comparable(outcomes: list[Any]) -> list[Any]:
    """Each outcome as JSON with the per-baseline tables of its details (what the report shows)."""
    return [{**o.to_json(), "details": as_strict_json({k: v for k, v in o.details.items() if k != "scores"})} for o in outcomes]


def monitor(rows: int, log_dir: Path, read: str, repeats: int, outcomes_file: Path) -> dict[str, float]:
    """Child process: monitor the log `repeats` times after a warm-up; the fastest run counts."""
    training, heldout = taxi_period()
    schema = load_schema(PROJECT_ROOT / "data" / "taxi" / "schema.pbtxt")
    thresholds = load_thresholds()
    with tempfile.TemporaryDirectory(prefix="monitoring-benchmark-", dir=outcomes_file.parent) as temp:
        warm_logs = Path(temp) / "warm-up"
        write_logs(warm_logs, heldout, 1000, seed=1000)
        monitor_once(1000, warm_logs, read, training, schema, thresholds, Path(temp))
        rss_before = peak_rss_mib()
        runs = [monitor_once(rows, log_dir, read, training, schema, thresholds, Path(temp)) for _ in range(repeats)]
    best, outcomes = min(runs, key=lambda run: run[0]["total"])
    outcomes_file.write_text(json.dumps(comparable(outcomes), sort_keys=True, default=str))
    return {**best, "rss_before_mib": rss_before, "peak_rss_mib": peak_rss_mib(), "load_average": os.getloadavg()[0]}


def child(*args: str) -> dict[str, float]:
    """Run a phase of this script in a fresh process (its own CPU and peak RSS) and return what it measured."""
    done = subprocess.run([sys.executable, __file__, *args], check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", "--sizes", dest="requests", default="1000000,10000000",
                        help="comma-separated numbers of logged requests")
    parser.add_argument("--read", choices=("stream", "frame", "both"), default="stream",
                        help="how the checks get the window: counted batch by batch, or loaded into pandas")
    parser.add_argument("--repeats", type=int, default=1, help="monitoring runs per size; the fastest counts")
    parser.add_argument("--work", type=Path, default=None, help="where the logs go (default: a temporary folder)")
    parser.add_argument("--pipeline-run", type=Path, default=None,
                        help="a finished pipeline run (mlops.toml, ML Metadata, pushed taxi:1): time run_monitoring itself")
    parser.add_argument("--phase", choices=("generate", "monitor"), help=argparse.SUPPRESS)
    parser.add_argument("--log-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--outcomes", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase == "generate":
        print(json.dumps(generate(int(args.requests), args.log_dir)))
        return
    if args.phase == "monitor":
        if args.pipeline_run is not None:
            print(json.dumps(monitor_run(int(args.requests), args.log_dir, args.read, args.repeats, args.outcomes,
                                         args.pipeline_run.resolve())))
        else:
            print(json.dumps(monitor(int(args.requests), args.log_dir, args.read, args.repeats, args.outcomes)))
        return
    sizes = [int(s) for s in args.requests.split(",")]
    reads = ["stream", "frame"] if args.read == "both" else [args.read]
    results: dict[str, list[tuple[int, dict[str, float]]]] = {read: [] for read in reads}
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="monitoring-benchmark-", dir=args.work) as temp:
        for rows in sizes:
            log_dir = Path(temp) / f"logs-{rows}"
            made = child("--phase", "generate", "--requests", str(rows), "--log-dir", str(log_dir))
            print(f"{rows:>10,} requests generated in {made['seconds']:6.1f}s ({made['cpu']:6.1f} CPU s, "
                  f"peak RSS {made['peak_rss_mib']:6.0f} MiB)", flush=True)
            outcomes = {}
            for read in reads:
                outcomes[read] = Path(temp) / f"outcomes-{rows}-{read}.json"
                best = child("--phase", "monitor", "--requests", str(rows), "--log-dir", str(log_dir), "--read", read,
                             "--repeats", str(args.repeats), "--outcomes", str(outcomes[read]),
                             *(["--pipeline-run", str(args.pipeline_run)] if args.pipeline_run else []))
                results[read].append((rows, best))
                print(f"{rows:>10,} requests, read {read:6}: statistics {best['statistics']:6.1f}s  read {best['read']:5.1f}s  "
                      f"checks {best['checks']:5.1f}s  total {best['total']:6.1f}s ({rows / best['total']:,.0f} requests/s)  "
                      f"CPU {best['cpu']:6.1f}s (statistics {best['cpu_statistics']:.1f}, read {best['cpu_read']:.1f})  peak RSS {best['peak_rss_mib']:6.0f} MiB "
                      f"(after warm-up {best['rss_before_mib']:5.0f} MiB)"
                      + (f"  run_monitoring failed checks: {best['failed'] or 'none'}" if "failed" in best else "")
                      + f"  load average {best['load_average']:.1f} (1 min, as the run ended)", flush=True)
            if len(reads) == 2:
                stream, frame = (json.loads(outcomes[read].read_text()) for read in ("stream", "frame"))
                differ = [a.get("name") for a, b in zip(stream, frame) if a != b] + (["number of checks"] if len(stream) != len(frame) else [])
                print(f"{rows:>10,} requests: check outcomes of both readers "
                      f"{'IDENTICAL' if not differ else 'DIFFER: ' + ', '.join(differ)}", flush=True)
    for read, measured in results.items():
        if len(measured) >= 2:
            x = np.array([r for r, _ in measured], dtype=float) / 1e6
            y = np.array([b["total"] for _, b in measured])
            per_million, fixed = np.polyfit(x, y, 1)
            worst = float(np.max(np.abs(fixed + per_million * x - y) / y))
            print(f"fit ({read}): total = {fixed:.1f}s + {per_million:.1f}s per million requests "
                  f"(largest deviation from the line {worst:.0%}): {'linear' if worst < 0.25 else 'NOT linear'} in the number of requests")
        for rows, best in measured:
            if rows >= 10_000_000:
                print(f"{rows:,} requests ({read}) in {best['total']:.1f}s: {'within' if best['total'] < 60 else 'ABOVE'} the 60 s aim")


if __name__ == "__main__":
    main()
