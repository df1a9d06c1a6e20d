"""Review runs in ML Metadata: each close of a `taxi_review` run is a `ReviewRun` execution.

An auditor asks "who reviewed the requests of taxi:N, and what did they say?". The answer lives
here: a `ReviewRun` execution (pipeline `<name>-review`, one PipelineRun context per review run)
whose inputs are the `PushedModel`s of the versions reviewed (those found in ML Metadata), whose
output is a `ReviewCases` artifact (the run's cases as they were closed, one JSON file written
beside the ledger, `<pipeline_root>/review/runs/<run_id>.json`; the ledger itself keeps changing),
and whose results are the counts by outcome and the reviewers (who answered how many, when).

The cases are passed in as plain dicts (the ledger's JSON form, monitoring.review_queue.ReviewCase):
this layer sits below monitoring and reads nothing but ML Metadata and the files it recorded.
Closing the same run again with nothing changed records nothing new; a changed close (a write-back
retried) records a newer execution, and readers take the newest per run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from ml_metadata.proto import metadata_store_pb2

from metadata.lineage import LineageNotFoundError, find_pushed_model
from metadata.recorder import ArtifactRef, PipelineRun, Trigger, properties_of
from metadata.store import Store

REVIEW_RUN = "ReviewRun"
REVIEW_CASES = "ReviewCases"
REVIEW_PIPELINE_SUFFIX = "-review"
OUTCOMES = ("answered", "agree", "disagree", "cannot_tell", "unanswered", "open")
# The ledger's place under the pipeline root (monitoring.review_queue writes it; lineage reads it).
REVIEW_DIR, LEDGER_NAME = "review", "cases.json"
# Reviewers kept on the execution (MLMD indexes string properties; PostgreSQL refuses over ~2.7 kB).
MAX_REVIEWERS = 20


def ledger_path(pipeline_root: Path) -> Path:
    return Path(pipeline_root) / REVIEW_DIR / LEDGER_NAME


def review_counts(cases: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Cases by outcome: answered (of which agree / disagree with the model), cannot_tell, unanswered, open."""
    answered = [c for c in cases if c.get("state") == "answered"]
    judged = [c for c in answered if c.get("model_answer") is not None]
    agree = sum(c.get("answer") == c.get("model_answer") for c in judged)
    return {"cases": len(cases), "answered": len(answered), "agree": agree, "disagree": len(judged) - agree,
            "cannot_tell": sum(c.get("state") == "cannot_tell" for c in cases),
            "unanswered": sum(c.get("state") == "unanswered" for c in cases),
            "open": sum(c.get("state") == "open" for c in cases)}


def reviewers_of(cases: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per reviewer: how many decisions and "cannot tell" answers, first and last answer time."""
    reviewers: dict[str, dict[str, Any]] = {}
    for case in cases:
        user = case.get("answered_by")
        if not user:
            continue
        entry = reviewers.setdefault(user, {"answered": 0, "cannot_tell": 0, "first": None, "last": None})
        entry["cannot_tell" if case.get("state") == "cannot_tell" else "answered"] += 1
        when = str(case.get("answered_at") or "")
        if when:
            entry["first"] = min(filter(None, [entry["first"], when]))
            entry["last"] = max(filter(None, [entry["last"], when]))
    return dict(sorted(reviewers.items())[:MAX_REVIEWERS])


def record_review_run(store: Store, pipeline_name: str, run_id: str, cases: Sequence[Mapping[str, Any]], *,
                      cases_file: Path, ledger_path: Path, airflow_dag_id: str = "", airflow_run_id: str = "",
                      trigger: Trigger = Trigger("schedule")) -> int:
    """Records the close of review run `run_id`: its cases (already written to `cases_file`), their
    counts, the reviewers, and the reviewed model versions as inputs. Returns the execution id
    (the existing one when this very close was recorded before)."""
    counts = review_counts(cases)
    fingerprint = hashlib.sha256(json.dumps(list(cases), sort_keys=True, default=str).encode()).hexdigest()[:32]
    run = PipelineRun(store, f"{pipeline_name}{REVIEW_PIPELINE_SUFFIX}", run_id, trigger,
                      airflow_dag_id=airflow_dag_id, airflow_run_id=airflow_run_id)
    type_id = store.type_id(REVIEW_RUN)
    for execution in store.get_executions_by_context(run.context.id):
        props = properties_of(execution)
        if (execution.type_id == type_id and execution.last_known_state == metadata_store_pb2.Execution.COMPLETE
                and props.get("result_cases_fingerprint") == fingerprint):
            return execution.id
    versions = sorted({(str(c.get("model_name")), int(c["model_version"])) for c in cases
                       if c.get("model_version") is not None})
    models, missing = [], []
    for name, version in versions:
        try:
            pushed = find_pushed_model(store, name, version)
        except LineageNotFoundError:
            missing.append(f"{name}:{version}")
            continue
        models.append(ArtifactRef(pushed.id, "PushedModel", pushed.uri, properties_of(pushed)))
    parameters = {"review_run": run_id, "ledger": str(ledger_path)}
    with run.step(REVIEW_RUN, {"model": models} if models else {}, parameters, use_cache=False) as record:
        record.output("cases", REVIEW_CASES, str(cases_file), {"cases": len(cases), "ledger": str(ledger_path),
                                                              "review_run": run_id})
        record.record(**counts, reviewers=reviewers_of(cases), model_versions=[f"{n}:{v}" for n, v in versions],
                      models_not_in_metadata=missing, cases_fingerprint=fingerprint)
    return record.execution_id


def _review_run_json(store: Store, execution: metadata_store_pb2.Execution) -> dict[str, Any]:
    props = properties_of(execution)
    outputs = [e for e in store.get_events_by_execution_ids([execution.id]) if e.type == metadata_store_pb2.Event.OUTPUT]
    cases_file = None
    if outputs:
        [artifact] = store.get_artifacts_by_id([outputs[0].artifact_id])
        cases_file = artifact.uri
    parameters = props.get("parameters") or {}
    return {"execution_id": execution.id, "review_run": parameters.get("review_run") or props.get("run_id"),
            "at_ms": execution.create_time_since_epoch, "cases_file": cases_file, "ledger": parameters.get("ledger"),
            **{name: int(props.get(f"result_{name}") or 0) for name in ("cases", *OUTCOMES)},
            "reviewers": props.get("result_reviewers") or {}, "model_versions": props.get("result_model_versions") or []}


def _newest_per_run(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    newest: dict[str, dict[str, Any]] = {}
    for run in sorted(runs, key=lambda r: r["execution_id"]):
        newest[run["review_run"]] = run
    return sorted(newest.values(), key=lambda r: r["execution_id"])


def review_runs_of(store: Store, pushed: metadata_store_pb2.Artifact) -> list[dict[str, Any]]:
    """The review runs that reviewed this pushed model's answers (the newest record of each), oldest first."""
    type_id = store.type_id(REVIEW_RUN)
    ids = sorted({e.execution_id for e in store.get_events_by_artifact_ids([pushed.id])
                  if e.type == metadata_store_pb2.Event.INPUT})
    executions = store.get_executions_by_id(ids) if ids else []
    return _newest_per_run([_review_run_json(store, e) for e in executions
                            if e.type_id == type_id and e.last_known_state == metadata_store_pb2.Execution.COMPLETE])


def all_review_runs(store: Store) -> list[dict[str, Any]]:
    """Every recorded review run (the newest record of each), oldest first."""
    return _newest_per_run([_review_run_json(store, e) for e in store.get_executions_by_type(REVIEW_RUN)
                            if e.last_known_state == metadata_store_pb2.Execution.COMPLETE])


def _read_cases(path: Path) -> dict[str, Mapping[str, Any]]:
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
        return dict(document["cases"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def reviews_of_request(store: Store, request_id: str, ledger_path: Path | None = None) -> list[dict[str, Any]]:
    """What people said about `request_id`: per instance its state (answered, cannot_tell, unanswered,
    open), answer, reviewer, when, and the ReviewRun execution that closed it; from the recorded review
    runs' case files, and from the ledger for a case no run has closed (still open) or recorded yet."""
    found: dict[str, dict[str, Any]] = {}
    for run in all_review_runs(store):
        for key, case in _read_cases(Path(run["cases_file"] or "")).items():
            if case.get("request_id") == request_id:
                found[key] = _case_review(case) | {"review_execution": run["execution_id"], "source": run["cases_file"]}
    if ledger_path is not None:
        for key, case in _read_cases(Path(ledger_path)).items():
            if case.get("request_id") == request_id and key not in found:
                found[key] = _case_review(case) | {"review_execution": None, "source": str(ledger_path)}
    return [found[key] for key in sorted(found, key=lambda k: found[k]["instance_index"])]


def _case_review(case: Mapping[str, Any]) -> dict[str, Any]:
    return {name: case.get(name) for name in ("instance_index", "state", "answer", "answered_by", "answered_at",
                                              "closed_at", "reason", "model_version", "automation", "run_id")}
