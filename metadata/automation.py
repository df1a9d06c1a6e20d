"""The degree of automation in ML Metadata: each change is an `AutomationChange` execution.

A change of a model's degree (shadow, assist, partial, full) is recorded as an execution whose
input is the `PushedModel` whose answers change, with the move (`from_degree`, `to_degree`,
`direction`), who approved it (`approved_by`; empty for a move down, which needs nobody), whether
it was forced and why, and the evidence it was decided on (the readiness verdict, compact). A
refused or timed-out request to move up is recorded too (`applied` false), so the history shows
what was asked and not granted. `automation_changes_of` reads them back for lineage.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from ml_metadata.proto import metadata_store_pb2

from metadata.lineage import find_pushed_model
from metadata.recorder import ArtifactRef, PipelineRun, Trigger, new_run_id, properties_of
from metadata.store import Store

AUTOMATION_CHANGE = "AutomationChange"
AUTOMATION_PIPELINE_SUFFIX = "-automation"
# Evidence kept on the execution; MLMD indexes string properties (PostgreSQL refuses entries over 2.7 kB).
MAX_EVIDENCE_CHARS = 2000


def record_automation_change(store: Store, pipeline_name: str, model_name: str, version: int, *, from_degree: str,
                             to_degree: str, applied: bool, approved_by: str, reason: str, forced: bool,
                             evidence: Mapping[str, Any], run_id: str | None = None, trigger: Trigger = Trigger("cli"),
                             airflow_dag_id: str = "", airflow_run_id: str = "") -> int:
    """Records one change (or refused change) of `model_name:version`'s degree; returns the execution id."""
    pushed = find_pushed_model(store, model_name, version)
    model = ArtifactRef(pushed.id, "PushedModel", pushed.uri, properties_of(pushed))
    run = PipelineRun(store, f"{pipeline_name}{AUTOMATION_PIPELINE_SUFFIX}", run_id or new_run_id("automation"), trigger,
                      airflow_dag_id=airflow_dag_id, airflow_run_id=airflow_run_id)
    parameters = {"model": f"{model_name}:{version}", "from_degree": from_degree, "to_degree": to_degree}
    with run.step(AUTOMATION_CHANGE, {"model": model}, parameters, use_cache=False) as record:
        record.record(from_degree=from_degree, to_degree=to_degree, applied=int(applied), approved_by=approved_by,
                      reason=reason, forced=int(forced), direction=direction(from_degree, to_degree),
                      evidence=compact_json(evidence))
    return record.execution_id


def direction(from_degree: str, to_degree: str) -> str:
    order = ("shadow", "assist", "partial", "full")
    return "up" if order.index(to_degree) > order.index(from_degree) else "down"


def compact_json(evidence: Mapping[str, Any]) -> str:
    text = json.dumps(evidence, sort_keys=True, default=str, separators=(",", ":"))
    return text if len(text) <= MAX_EVIDENCE_CHARS else text[: MAX_EVIDENCE_CHARS - 1] + "…"


def automation_changes_of(store: Store, pushed: metadata_store_pb2.Artifact) -> list[dict[str, Any]]:
    """The AutomationChange executions of one pushed model, oldest first."""
    events = [e for e in store.get_events_by_artifact_ids([pushed.id]) if e.type == metadata_store_pb2.Event.INPUT]
    ids = sorted({e.execution_id for e in events})
    if not ids:
        return []
    type_id = store.type_id(AUTOMATION_CHANGE)
    changes = []
    for execution in store.get_executions_by_id(ids):
        if execution.type_id != type_id or execution.last_known_state != metadata_store_pb2.Execution.COMPLETE:
            continue
        props = properties_of(execution)  # parses the evidence back from JSON (a truncated one stays text)
        changes.append({"execution_id": execution.id, "at_ms": execution.create_time_since_epoch,
                        "from_degree": props.get("result_from_degree"), "to_degree": props.get("result_to_degree"),
                        "direction": props.get("result_direction"), "applied": bool(props.get("result_applied")),
                        "approved_by": props.get("result_approved_by") or None, "reason": props.get("result_reason") or "",
                        "forced": bool(props.get("result_forced")),
                        "evidence": props.get("result_evidence")})
    return sorted(changes, key=lambda c: c["execution_id"])
