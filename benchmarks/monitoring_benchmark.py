"""How long monitoring takes for 10k, 100k and 1M logged requests, and whether the cost grows linearly.

    .venvs/ml/bin/python benchmarks/monitoring_benchmark.py [--sizes 10000,100000,1000000] [--repeats 1]

Logged requests are real taxi rows (2013-2014 trips of the shipped CSV) resampled with replacement
and written as the gateway's Parquet logs (docs/ARCHITECTURE.md); the baseline is the statistics of
the other rows of that period. Timed per size:
- statistics: the Beam job over the Parquet logs (monitoring.log_statistics, DirectRunner);
- read: loading the window's logs into pandas (serving.prediction_log);
- checks: data drift and skew (TFDV comparators), schema anomalies, missing values, null outputs.
A least-squares fit `seconds = fixed + per_million * rows / 1e6` says how the cost grows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from monitoring import checks  # noqa: E402
from monitoring.frames import frame_from_csv_rows  # noqa: E402
from monitoring.log_statistics import generate_log_statistics, statistics_of_frame  # noqa: E402
from monitoring.results import Baseline  # noqa: E402
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
    """`rows` served examples resampled from `source`, as Parquet request logs of one hour (columnar, fast)."""
    rng = np.random.default_rng(seed)
    picked = source.iloc[rng.integers(0, len(source), rows)].reset_index(drop=True)
    start_us = int(START.timestamp() * 1_000_000)
    for first in range(0, rows, ROWS_PER_FILE):
        chunk = picked.iloc[first:first + ROWS_PER_FILE]
        n = len(chunk)
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


def run_once(rows: int, training: Baseline, schema, thresholds, source: pd.DataFrame, work: Path) -> dict[str, float]:
    log_dir = work / f"logs-{rows}"
    write_logs(log_dir, source, rows, seed=rows)
    began = time.perf_counter()
    stats_path = generate_log_statistics(log_dir, START, END, work / f"stats-{rows}.pb", model_name="taxi", beam_args=BEAM)
    statistics_done = time.perf_counter()
    from beam_jobs.statistics import load_statistics

    current = load_statistics(stats_path)
    served = read_prediction_logs(log_dir, START, END, model_name="taxi", include_shadow=False)
    read_done = time.perf_counter()
    outcomes = [
        checks.data_drift(current, served, [training], schema, thresholds, 1.0),
        checks.training_serving_skew(training, current, served, schema, thresholds, 1.0),
        checks.schema_anomalies(current, schema),
        checks.missing_values(current, training.statistics, thresholds),
        checks.null_outputs(served, thresholds),
    ]
    checks_done = time.perf_counter()
    assert len(served) == rows and all(o.passed for o in outcomes), [(o.name, o.evidence) for o in outcomes if not o.passed]
    return {"statistics": statistics_done - began, "read": read_done - statistics_done, "checks": checks_done - read_done,
            "total": checks_done - began}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--repeats", type=int, default=1, help="runs per size; the fastest counts")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    raw = pd.read_csv(PROJECT_ROOT / "data" / "taxi" / "data.csv", dtype=str, keep_default_na=False)
    taxi = frame_from_csv_rows(raw.to_dict("records"), RAW_COLUMNS)
    period = taxi[pd.to_datetime(taxi[TIMESTAMP_KEY].astype("int64"), unit="s") < "2015-01-01"]
    training_rows = period.sample(frac=2 / 3, random_state=1)
    heldout = period.drop(training_rows.index)
    training = Baseline("training data", statistics_of_frame(training_rows), training_rows)
    schema = load_schema(PROJECT_ROOT / "data" / "taxi" / "schema.pbtxt")
    thresholds = load_thresholds()
    results = []
    with tempfile.TemporaryDirectory(prefix="monitoring-benchmark-") as temp:
        run_once(1000, training, schema, thresholds, heldout, Path(temp))  # warm-up: imports, Beam and TFDV start-up
        for rows in sizes:
            best = min((run_once(rows, training, schema, thresholds, heldout, Path(temp)) for _ in range(args.repeats)),
                       key=lambda r: r["total"])
            results.append((rows, best))
            print(f"{rows:>9,} requests: statistics {best['statistics']:6.1f}s  read {best['read']:5.1f}s  "
                  f"checks {best['checks']:5.1f}s  total {best['total']:6.1f}s  "
                  f"({rows / best['total']:,.0f} requests/s)", flush=True)
    if len(results) >= 2:
        x = np.array([r for r, _ in results], dtype=float) / 1e6
        y = np.array([b["total"] for _, b in results])
        per_million, fixed = np.polyfit(x, y, 1)
        predicted = fixed + per_million * x
        worst = float(np.max(np.abs(predicted - y) / y))
        print(f"fit: total = {fixed:.1f}s + {per_million:.1f}s per million requests "
              f"(largest deviation from the line {worst:.0%}): "
              f"{'linear' if worst < 0.25 else 'NOT linear'} in the number of requests")
        million = dict(results).get(1_000_000)
        if million is not None:
            print(f"1M requests in {million['total']:.1f}s: {'within' if million['total'] < 60 else 'ABOVE'} the 60 s aim")


if __name__ == "__main__":
    main()
