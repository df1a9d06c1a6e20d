"""The timeline across monitoring windows: what the report draws so a person sees a trend, not one window.

Per window: the data-drift score, the estimated and realized accuracy, the agreement of a shadowed
candidate with stable, the share of requests referred to a person, which checks failed, and whether
retraining was triggered (or refused for want of new data). Earlier windows come from ML Metadata:
each `DriftCheckResult` of the model version (metadata/queries.py drift_checks_of) with its
`result.json`, the training runs whose trigger points at it, and the `RetrainingDecision`s that
refused one. Agreement and referrals are read from the window's prediction logs, which the check
itself does not summarise.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Mapping

from monitoring.paired import compare_paired, pairs_from_logs
from monitoring.results import DATA_DRIFT, PERFORMANCE_ESTIMATE, RESULT_FILE
from monitoring.settings import MonitoringThresholds
from transforms.features import DECISION_REFER_TO_HUMAN

# Two days of hourly checks: enough for a trend, and the report stays readable.
MAX_WINDOWS = 48


@dataclasses.dataclass(frozen=True)
class WindowPoint:
    window_start: str
    window_end: str
    artifact_id: int | None  # None: the window being checked now (not recorded yet)
    rows: int
    data_drift: float | None  # the worst feature's score (the check's value)
    data_drift_threshold: float | None
    estimated_accuracy: float | None
    realized_accuracy: float | None
    baseline_accuracy: float | None
    accuracy_limit: float | None  # the estimate fails below this
    estimated_auc: float | None
    realized_auc: float | None
    agreement: float | None  # shadowed candidate vs stable (None: no shadow pairs in the window)
    pairs: int
    referrals: float | None  # share of served examples referred to a person
    failed_checks: tuple[str, ...]
    retraining: str | None  # "triggered: <run>", "refused: <decision>" or None


def _check(document: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    return next((c for c in document.get("checks") or [] if c.get("name") == name), {})


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def log_summary(requests: Any, thresholds: MonitoringThresholds) -> tuple[float | None, int, float | None]:
    """(agreement, pairs, referral share) of one window's logged requests (shadow copies included)."""
    if requests.empty:
        return None, 0, None
    served = requests[~requests["is_shadow"].astype(bool)]
    referrals = float((served["decision"] == DECISION_REFER_TO_HUMAN).mean()) if len(served) else None
    agreement, pairs = _agreement(requests, thresholds)
    return agreement, pairs, referrals


def _agreement(requests: Any, thresholds: MonitoringThresholds) -> tuple[float | None, int]:
    pairs = pairs_from_logs(requests)
    return (compare_paired(pairs, thresholds.paired).agreement if len(pairs) else None), len(pairs)


def window_summary(log_dir: Path, start: Any, end: Any, model_name: str, thresholds: MonitoringThresholds) -> dict[str, Any]:
    """What a window's result.json keeps for the timeline: agreement, pairs and referrals from its logs
    (shadow copies included: the agreement is the shadowed candidate's against stable).

    The same numbers as `log_summary` of the window read into pandas, but streamed: only the
    shadowed requests' rows are held (monitoring/served_values.py ShadowedRequests).
    """
    from monitoring.served_values import summarize_shadowed_requests

    window = summarize_shadowed_requests(Path(log_dir), start, end, model_name=model_name, referral=DECISION_REFER_TO_HUMAN)
    agreement, pairs = _agreement(window.requests, thresholds) if len(window.requests) else (None, 0)
    referrals = float(window.referred / window.served) if window.served else None
    return {"agreement": agreement, "pairs": pairs, "referrals": referrals}


def window_point(document: Mapping[str, Any], requests: Any, thresholds: MonitoringThresholds,
                 artifact_id: int | None = None, retraining: str | None = None) -> WindowPoint:
    """One window from its result document (`MonitoringResult.to_json()` or result.json) and its logged requests
    (None: the document's `window_summary`, which run_monitoring writes, has them)."""
    drift = _check(document, DATA_DRIFT)
    metrics = (_check(document, PERFORMANCE_ESTIMATE).get("evidence") or {}).get("metrics") or {}
    accuracy, auc = metrics.get("accuracy") or {}, metrics.get("auc") or {}
    if requests is None:
        summary = document.get("window_summary") or {}
        agreement, pairs, referrals = _number(summary.get("agreement")), int(summary.get("pairs") or 0), _number(summary.get("referrals"))
    else:
        agreement, pairs, referrals = log_summary(requests, thresholds)
    judged = (drift.get("evidence") or {}).get("judged") is not False
    return WindowPoint(
        window_start=str(document.get("window_start")), window_end=str(document.get("window_end")),
        artifact_id=artifact_id, rows=int(document.get("rows") or 0),
        data_drift=_number(drift.get("value")) if judged else None, data_drift_threshold=_number(drift.get("threshold")),
        estimated_accuracy=_number(accuracy.get("estimated")), realized_accuracy=_number(accuracy.get("realized")),
        baseline_accuracy=_number(accuracy.get("baseline")), accuracy_limit=_number(accuracy.get("limit")),
        estimated_auc=_number(auc.get("estimated")), realized_auc=_number(auc.get("realized")),
        agreement=agreement, pairs=pairs, referrals=referrals,
        failed_checks=tuple(document.get("failed_checks") or ()), retraining=retraining)


def retraining_by_check(store: Any) -> dict[int, str]:
    """DriftCheckResult id -> what followed it: a training run it triggered, or a recorded refusal."""
    from metadata.recorder import properties_of

    found: dict[int, str] = {}
    for execution in store.get_executions_by_type("RetrainingDecision"):
        props = properties_of(execution)
        if isinstance(props.get("result_drift_check_artifact_id"), int):
            found[props["result_drift_check_artifact_id"]] = f"refused: {props.get('result_decision')}"
    for context in store.get_contexts_by_type("PipelineRun"):
        props = properties_of(context)
        trigger = props.get("trigger")
        trigger = json.loads(trigger) if isinstance(trigger, str) else trigger
        if props.get("trigger_kind") == "drift_check" and isinstance(trigger, Mapping):
            artifact_id = trigger.get("drift_check_artifact_id")
            if isinstance(artifact_id, int):
                found[artifact_id] = f"triggered: {context.name}"
    return found


def recorded_timeline(store: Any, model_name: str, version: int, thresholds: MonitoringThresholds) -> list[WindowPoint]:
    """Every recorded window of the model version, oldest first (a result whose files are gone is skipped)."""
    from metadata.queries import drift_checks_of
    from serving.prediction_log import read_prediction_logs

    followed = retraining_by_check(store)
    points = []
    for check in drift_checks_of(store, model_name, version)[-MAX_WINDOWS:]:
        result_file = Path(check["uri"]) / RESULT_FILE
        if not result_file.is_file():
            continue
        document = json.loads(result_file.read_text(encoding="utf-8"))
        log_dir = document.get("log_dir")
        if "window_summary" in document:
            requests = None
        elif log_dir and Path(log_dir).is_dir():  # a result written before window_summary existed
            requests = read_prediction_logs(Path(log_dir), check["window_start"], check["window_end"], model_name=model_name)
        else:
            requests = _empty_requests()
        points.append(window_point(document, requests, thresholds, check["id"], followed.get(check["id"])))
    return points


def _empty_requests() -> Any:
    from serving.prediction_log import REQUEST_SCHEMA

    return REQUEST_SCHEMA.empty_table().to_pandas()


@dataclasses.dataclass(frozen=True)
class Timeline:
    points: tuple[WindowPoint, ...]  # oldest first; the window being checked last
    drift_threshold: float | None  # the limits drawn as lines (the latest window's)
    accuracy_limit: float | None
    agreement_floor: float


def build_timeline(store: Any, model_name: str, version: int, thresholds: MonitoringThresholds,
                   current: Mapping[str, Any] | None = None, current_requests: Any = None) -> Timeline:
    """The last MAX_WINDOWS recorded windows of the model version, plus the one being checked (`current`, not
    recorded yet; its agreement and referrals from `current_requests`, else from its `window_summary`)."""
    points = recorded_timeline(store, model_name, version, thresholds)
    if current is not None:
        points.append(window_point(current, current_requests, thresholds))
    latest_drift = next((p.data_drift_threshold for p in reversed(points) if p.data_drift_threshold is not None), None)
    latest_floor = next((p.accuracy_limit for p in reversed(points) if p.accuracy_limit is not None), None)
    return Timeline(tuple(points), latest_drift, latest_floor, 1.0 - thresholds.paired.max_disagreement)
