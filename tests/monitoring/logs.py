"""Prediction logs built from real taxi rows, written through `serving.prediction_log` like the gateway does,
or written by a real gateway the rows are sent to (`serve_through_gateway`).

Rows come from the shipped CSV; probabilities come from the real model that the pipeline pushed
(scored through its `serving_examples` signature, as TF Serving would), or are given explicitly.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from monitoring.frames import frame_from_csv_rows
from serving.prediction_log import (
    FEEDBACK_DIR,
    FEEDBACK_SCHEMA,
    REQUEST_SCHEMA,
    REQUESTS_DIR,
    Feedback,
    LoggedRequest,
    feedback_columns,
    read_feedback,
    read_prediction_logs,
    request_columns,
    write_table_atomically,
)
from serving.protocol import MODEL_VERSION_HEADER, REQUEST_ID_HEADER
from transforms import features

INSTANCES_PER_REQUEST = 8


def taxi_frame(rows: Sequence[dict[str, str]]) -> pd.DataFrame:
    """CSV rows -> typed frame of serving features plus `tips` (the label source)."""
    frame = frame_from_csv_rows(rows, features.RAW_COLUMNS)
    return frame


def year_of(frame: pd.DataFrame) -> pd.Series:
    return pd.to_datetime(frame[features.TIMESTAMP_KEY].astype("int64"), unit="s").dt.year


def big_tipper(frame: pd.DataFrame) -> np.ndarray:
    return (frame[features.TIPS_KEY].to_numpy(dtype=float) > features.BIG_TIPPER_SHARE * frame[features.FARE_KEY].to_numpy(dtype=float))


def score(model_dir: Path, frame: pd.DataFrame) -> np.ndarray:
    """The model's probabilities for the rows, through the SavedModel's serving_examples signature."""
    import tensorflow as tf

    from beam_jobs.example_codec import serialize_row

    loaded = tf.saved_model.load(str(model_dir))
    signature = loaded.signatures["serving_examples"]
    rows = frame[list(features.SERVING_COLUMNS)].astype(object).where(frame[list(features.SERVING_COLUMNS)].notna(), None)
    serialized = [serialize_row({k: v for k, v in row.items()}) for row in rows.to_dict("records")]
    probabilities = []
    for start in range(0, len(serialized), 1024):
        batch = tf.constant(serialized[start:start + 1024])
        probabilities.append(signature(examples=batch)["probability"].numpy().reshape(-1))
    return np.concatenate(probabilities).astype(np.float64) if probabilities else np.array([])


def instance_of(row: dict[str, Any]) -> dict[str, Any]:
    instance = {}
    for name in features.SERVING_COLUMNS:
        value = row.get(name)
        if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
            instance[name] = None
        elif features.FEATURES_BY_NAME[name].kind is features.Kind.INT:
            instance[name] = int(value)
        elif features.FEATURES_BY_NAME[name].kind is features.Kind.FLOAT:
            instance[name] = float(value)
        else:
            instance[name] = str(value)
    return instance


def write_requests(
    log_dir: Path,
    frame: pd.DataFrame,
    probabilities: Sequence[float | None],
    start: dt.datetime,
    end: dt.datetime,
    *,
    model_name: str = "taxi",
    model_version: int = 1,
    shadow_probabilities: Sequence[float | None] | None = None,
    shadow_version: int | None = None,
    seed: int = 0,
) -> list[str]:
    """Logs the rows as requests of 8 instances spread over [start, end); returns the request ids.

    With `shadow_probabilities`, every request also gets a shadow copy from `shadow_version`
    (never returned to the client), as the gateway logs a shadowed candidate.
    """
    rng = np.random.default_rng(seed)
    records = frame.astype(object).where(frame.notna(), None).to_dict("records")
    span_us = int((end - start) / dt.timedelta(microseconds=1))
    start_us = int(start.timestamp() * 1_000_000)
    entries, ids = [], []
    for first in range(0, len(records), INSTANCES_PER_REQUEST):
        chunk = range(first, min(first + INSTANCES_PER_REQUEST, len(records)))
        request_id = uuid.UUID(int=int(rng.integers(1 << 62)) << 64 | first).hex
        timestamp = start_us + int(rng.integers(0, max(span_us, 1)))
        rows = [instance_of(records[i]) for i in chunk]
        columns = {name: [row.get(name) for row in rows] for name in features.SERVING_COLUMNS}
        probs = [None if probabilities[i] is None or np.isnan(probabilities[i]) else float(probabilities[i]) for i in chunk]
        classes = [None if p is None else int(p >= 0.5) for p in probs]
        decisions = ["none" if p is None else ("big_tipper" if p >= 0.5 else "not_big_tipper") for p in probs]
        entries.append(LoggedRequest(request_id, timestamp, model_name, model_version, "stable", "blue_green", "full",
                                     columns, probs, classes, decisions, 12.5, 200, False))
        if shadow_probabilities is not None:
            shadow = [float(shadow_probabilities[i]) for i in chunk]
            entries.append(LoggedRequest(request_id, timestamp, model_name, shadow_version, "shadow", "shadow", "full",
                                         columns, shadow, [int(p >= 0.5) for p in shadow], ["none"] * len(shadow),
                                         15.0, 200, True))
        ids.append(request_id)
    _write_by_date(log_dir / REQUESTS_DIR, entries, REQUEST_SCHEMA, request_columns)
    return ids


def write_requests_not_to_count(log_dir: Path, taxi: pd.DataFrame, start: dt.datetime, end: dt.datetime) -> None:
    """80 requests after [start, end) and 80 of another model inside it: a window's readers must count neither."""
    other = taxi[taxi["year"] == 2016].iloc[:80]
    write_requests(log_dir, other, np.full(80, 0.9), end, end + dt.timedelta(hours=1), seed=2)
    write_requests(log_dir, other, np.full(80, 0.9), start, end, model_name="other", seed=3)


def write_feedback(log_dir: Path, frame: pd.DataFrame, request_ids: Sequence[str], labels: Sequence[int],
                   at: dt.datetime, count: int | None = None) -> int:
    """Ground truth for the first `count` logged examples (in logging order); returns how many were written."""
    entries = []
    total = len(frame) if count is None else min(count, len(frame))
    timestamp = int(at.timestamp() * 1_000_000)
    for index in range(total):
        request_id = request_ids[index // INSTANCES_PER_REQUEST]
        entries.append(Feedback(request_id, index % INSTANCES_PER_REQUEST, timestamp, int(labels[index]), None, "test"))
    _write_by_date(log_dir / FEEDBACK_DIR, entries, FEEDBACK_SCHEMA, feedback_columns)
    return total


def _write_by_date(directory: Path, entries: list, schema: pa.Schema, to_columns) -> None:
    by_date: dict[str, list] = {}
    for entry in entries:
        day = dt.datetime.fromtimestamp(entry.timestamp_us / 1_000_000, tz=dt.timezone.utc).strftime("%Y-%m-%d")
        by_date.setdefault(day, []).append(entry)
    for day, chunk in sorted(by_date.items()):
        for first in range(0, len(chunk), 5000):
            table = pa.Table.from_pydict(to_columns(chunk[first:first + 5000]), schema=schema)
            write_table_atomically(table, directory / f"date={day}")


def serve_through_gateway(gateway_url: str, log_dir: Path, frame: pd.DataFrame, labels: Sequence[int], *,
                          labelled: int = 0, model_name: str = "taxi", timeout_s: float = 300.0) -> dict[str, Any]:
    """Sends the rows to a running gateway's REST predict API, 8 instances a request, then ground truth for
    the first `labelled` of them (in sending order) to its feedback endpoint, under the request ids the
    gateway gave; returns once the gateway's Parquet log in `log_dir` holds every one of those rows.

    Returns {"rows", "labelled", "versions"}: the versions are the X-Model-Version answers, to say who served.
    """
    records = frame.astype(object).where(frame.notna(), None).to_dict("records")
    ids, versions = [], set()
    for first in range(0, len(records), INSTANCES_PER_REQUEST):
        chunk = [instance_of(row) for row in records[first:first + INSTANCES_PER_REQUEST]]
        answer, headers = _post_json(f"{gateway_url}/v1/models/{model_name}:predict", {"instances": chunk})
        if len(answer.get("predictions", [])) != len(chunk):
            raise AssertionError(f"the gateway answered {answer!r:.300} to {len(chunk)} instances")
        ids.append(headers[REQUEST_ID_HEADER])
        versions.add(int(headers[MODEL_VERSION_HEADER]))
    feedback = [{"request_id": ids[index // INSTANCES_PER_REQUEST], "instance_index": index % INSTANCES_PER_REQUEST,
                 "ground_truth": int(labels[index]), "source": "test"} for index in range(min(labelled, len(records)))]
    for first in range(0, len(feedback), 200):
        batch = feedback[first:first + 200]
        answer, _ = _post_json(f"{gateway_url}/v1/feedback", batch)
        if answer.get("accepted") != len(batch):
            raise AssertionError(f"the gateway accepted {answer!r:.300} of {len(batch)} feedback items")
    _wait_for_logged(log_dir, set(ids), len(records), len(feedback), timeout_s)
    return {"rows": len(records), "labelled": len(feedback), "versions": sorted(versions)}


def _post_json(url: str, document: Any) -> tuple[dict[str, Any], Any]:
    request = urllib.request.Request(url, data=json.dumps(document).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read()), response.headers


def _wait_for_logged(log_dir: Path, ids: set[str], rows: int, feedback: int, timeout_s: float) -> None:
    """The gateway writes its log in the background (every log_flush_seconds): waits for our rows on disk."""
    deadline = time.monotonic() + timeout_s
    while True:
        served = read_prediction_logs(log_dir, include_shadow=False)
        logged = int(served["request_id"].isin(ids).sum()) if len(served) else 0
        answers = read_feedback(log_dir)
        labelled = int(answers["request_id"].isin(ids).sum()) if len(answers) else 0
        if (logged, labelled) == (rows, feedback):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout_s}s the gateway log in {log_dir} holds {logged} of {rows} served rows "
                                 f"and {labelled} of {feedback} feedback rows")
        time.sleep(0.5)
