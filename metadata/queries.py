"""The questions auditors ask of ML Metadata, answered as plain dicts (text tables and JSON are views).

- `model_audit`: for a pushed model version, the data window and files, schema, statistics,
  anomalies, rows rejected, transform graph, code version, hyperparameters, evaluation and
  blessing, push time, and what triggered the run (for a drift check: which checks, what evidence);
  then its rollouts, with the approver of a promotion that needed one (`rollouts_of`), its degree
  of automation changes and the review runs of its answers (metadata/review.py).
- `metadata/served_lineage.py` asks from the other end: from a logged request (`request_audit`) or a
  dataset (`data_audit`).
- `list_runs` / `compare_runs`: experiment tracking, parameters and metrics side by side.

The training chain is followed event by event along the steps' named inputs and outputs
(mlops/steps.py), not by a blind upstream walk: a model's evaluation also takes the *previous*
model as its baseline, and a blind walk would mix that model's data into this one's answer.
Only ml_metadata and pyarrow are imported, so the CLI answers without loading TensorFlow.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from ml_metadata.proto import metadata_store_pb2

from metadata.automation import automation_changes_of
from metadata.lineage import DOWNSTREAM, UPSTREAM, LineageGraph, LineageNotFoundError, find_pushed_model, walk
from metadata.recorder import properties_of
from metadata.review import review_runs_of
from metadata.store import Store

Event = metadata_store_pb2.Event
Execution = metadata_store_pb2.Execution
# Where the gateway writes its logs by default (serving/gateway/config.py), relative to the config's root.
DEFAULT_LOG_DIR = Path("var/logs/predictions")
_STATES = {v: k for k, v in Execution.State.items()}


# --- event-level helpers ---------------------------------------------------------------------


class _Types:
    """Type id -> name for artifacts and executions, read once per query."""

    def __init__(self, store: Store) -> None:
        self.artifacts = {t.id: t.name for t in store.get_artifact_types()}
        self.executions = {t.id: t.name for t in store.get_execution_types()}


def _artifact_json(artifact: metadata_store_pb2.Artifact, types: _Types) -> dict[str, Any]:
    return {
        "id": artifact.id,
        "type": types.artifacts.get(artifact.type_id, "?"),
        "uri": artifact.uri,
        "properties": properties_of(artifact),
        "created": _iso_ms(artifact.create_time_since_epoch),
    }


def _iso_ms(ms: int) -> str | None:
    if not ms:
        return None
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc).isoformat(timespec="seconds")


def _iso_seconds(value: Any) -> str | None:
    if isinstance(value, (int, float)) and value > 0:
        return dt.datetime.fromtimestamp(float(value), tz=dt.timezone.utc).isoformat(timespec="seconds")
    return None


def _run_of(store: Store, execution_id: int) -> dict[str, Any]:
    for context in store.get_contexts_by_execution(execution_id):
        props = properties_of(context)
        if "pipeline_name" in props or "trigger_kind" in props:
            return {"name": context.name, **props}
    return {}


def _execution_json(store: Store, execution: Execution, types: _Types) -> dict[str, Any]:
    props = properties_of(execution)
    results = {key[len("result_"):]: value for key, value in props.items() if key.startswith("result_")}
    return {
        "id": execution.id,
        "type": types.executions.get(execution.type_id, "?"),
        "state": _STATES.get(execution.last_known_state, "UNKNOWN"),
        "parameters": props.get("parameters") or {},
        "code_version": props.get("code_version", ""),
        "error": props.get("error") or None,
        "started": _iso_seconds(props.get("started_at")),
        "finished": _iso_seconds(props.get("finished_at")),
        "cached_from_execution": props.get("cached_from_execution"),
        "results": results,
        "run": _run_of(store, execution.id),
    }


def producer(store: Store, artifact_id: int) -> Execution | None:
    """The execution that created the artifact: the first COMPLETE one (later CACHED ones only reused it)."""
    events = [e for e in store.get_events_by_artifact_ids([artifact_id]) if e.type == Event.OUTPUT]
    if not events:
        return None
    executions = store.get_executions_by_id(sorted({e.execution_id for e in events}))
    complete = [e for e in executions if e.last_known_state == Execution.COMPLETE]
    return min(complete or executions, key=lambda e: e.id)


def _events_by_key(store: Store, execution_id: int, event_type: int) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for event in store.get_events_by_execution_ids([execution_id]):
        if event.type == event_type:
            key = event.path.steps[0].key if event.path.steps else ""
            found.setdefault(key, []).append(event.artifact_id)
    return found


def _artifacts(store: Store, execution_id: int, event_type: int) -> dict[str, metadata_store_pb2.Artifact]:
    """Key -> artifact of an execution's inputs (or outputs); a list input keeps its first element."""
    by_key = _events_by_key(store, execution_id, event_type)
    ids = sorted({ids[0] for ids in by_key.values()})
    artifacts = {a.id: a for a in store.get_artifacts_by_id(ids)} if ids else {}
    return {key: artifacts[ids[0]] for key, ids in by_key.items() if ids[0] in artifacts}


def inputs_of(store: Store, execution_id: int) -> dict[str, metadata_store_pb2.Artifact]:
    return _artifacts(store, execution_id, Event.INPUT)


def outputs_of(store: Store, execution_id: int) -> dict[str, metadata_store_pb2.Artifact]:
    return _artifacts(store, execution_id, Event.OUTPUT)


# --- the training chain of a model -----------------------------------------------------------


@dataclasses.dataclass
class TrainingChain:
    """The artifacts and executions that made one pushed model, by role (see mlops/steps.py)."""

    artifacts: dict[str, metadata_store_pb2.Artifact]
    executions: dict[str, Execution]

    def artifact(self, role: str) -> metadata_store_pb2.Artifact | None:
        return self.artifacts.get(role)


# (step, artifact that step produced, execution inputs to follow as role <- input key)
_CHAIN = (
    ("push", "pushed_model", {"model": "model", "blessing": "blessing"}),
    ("evaluate", "blessing", {"examples": "cleaned", "baseline_model": "baseline_model"}),
    ("train", "model", {"transformed": "transformed", "transform_graph": "transform_graph"}),
    ("transform", "transformed", {"cleaned": "cleaned", "anomalies": "anomalies"}),
    # Runs recorded before validation moved after cleaning have the checks as clean's inputs.
    ("clean", "cleaned", {"examples": "examples", "schema": "schema", "anomalies": "anomalies"}),
    ("validate", "anomalies", {"schema": "schema"}),
    ("ingest", "examples", {"raw_data": "raw_data"}),
)
# Outputs of a step that are not on the path to the model but belong to its story.
_SIDE_OUTPUTS = {
    "evaluate": {"evaluation": "evaluation"},
    "clean": {"rejected": "rejected"},
    "validate": {"statistics": "statistics", "cleaned_statistics": "cleaned_statistics"},
    "ingest": {"rejected": "ingest_rejected"},
}


def training_chain(store: Store, pushed_model: metadata_store_pb2.Artifact) -> TrainingChain:
    """Follows the pushed model back through push, evaluate, train, transform, clean, validate, ingest."""
    chain = TrainingChain({"pushed_model": pushed_model}, {})
    for step, produced_role, follow in _CHAIN:
        artifact = chain.artifacts.get(produced_role)
        if artifact is None:
            continue
        execution = producer(store, artifact.id)
        if execution is None:
            continue
        chain.executions[step] = execution
        inputs = inputs_of(store, execution.id)
        for key, role in follow.items():
            if key in inputs:
                chain.artifacts.setdefault(role, inputs[key])
        outputs = outputs_of(store, execution.id)
        for key, role in _SIDE_OUTPUTS.get(step, {}).items():
            if key in outputs:
                chain.artifacts.setdefault(role, outputs[key])
    return chain


def parse_model_ref(text: str) -> tuple[str, int]:
    """'taxi:3' -> ('taxi', 3); LineageNotFoundError with the expected form otherwise."""
    name, _, version = text.partition(":")
    if not name or not version.isdigit():
        raise LineageNotFoundError(f"expected MODEL:VERSION, e.g. taxi:1, got {text!r}")
    return name, int(version)


def _files(uri: str, limit: int = 50) -> list[str]:
    path = Path(uri)
    if path.is_file():
        return [str(path)]
    if not path.is_dir():
        return []
    found = sorted(str(p) for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    return found[:limit] + ([f"... and {len(found) - limit} more"] if len(found) > limit else [])


def _drift_check_evidence(store: Store, artifact_id: Any, types: _Types) -> dict[str, Any] | None:
    """The DriftCheckResult a drift-triggered run points at, with its failed checks."""
    try:
        artifact_id = int(artifact_id)
    except (TypeError, ValueError):
        return None
    found = store.get_artifacts_by_id([artifact_id])
    if not found:
        return {"id": artifact_id, "error": "no such artifact in ML Metadata"}
    result = _artifact_json(found[0], types)
    result_json = Path(found[0].uri) / "result.json"
    if result_json.is_file():
        document = json.loads(result_json.read_text(encoding="utf-8"))
        result["failed_checks"] = [
            {key: check.get(key) for key in ("name", "value", "threshold", "evidence")}
            for check in document.get("checks", []) if not check.get("passed")
        ]
    checker = producer(store, artifact_id)
    if checker is not None:
        result["judged"] = {role: _artifact_json(a, types) for role, a in inputs_of(store, checker.id).items()}
    return result


def model_audit(store: Store, model_name: str, version: int) -> dict[str, Any]:
    """Everything an auditor asks about one pushed model version (see the module docstring)."""
    pushed = find_pushed_model(store, model_name, version)
    types = _Types(store)
    chain = training_chain(store, pushed)
    art = {role: _artifact_json(a, types) for role, a in chain.artifacts.items()}
    exe = {step: _execution_json(store, e, types) for step, e in chain.executions.items()}

    def props(role: str) -> dict[str, Any]:
        return (art.get(role) or {}).get("properties", {})

    ingest_params = (exe.get("ingest") or {}).get("parameters", {})
    examples = props("examples")
    clean_results = (exe.get("clean") or {}).get("results", {})
    validate_results = (exe.get("validate") or {}).get("results", {})
    evaluation = props("evaluation")
    blessing = props("blessing")
    run = (exe.get("push") or {}).get("run") or {}
    trigger = run.get("trigger") if isinstance(run.get("trigger"), dict) else {}
    audit: dict[str, Any] = {
        "model": {"name": model_name, "version": version, "artifact_id": pushed.id, "uri": pushed.uri,
                  "fingerprint": props("pushed_model").get("fingerprint") or props("model").get("fingerprint"),
                  "pushed_at": props("pushed_model").get("pushed_at") or art["pushed_model"]["created"],
                  "trained_model": (art.get("model") or {}).get("uri")},
        "run": {"id": run.get("name"), "pipeline": run.get("pipeline_name"), "trigger_kind": run.get("trigger_kind"),
                "trigger": trigger or {}, "airflow_dag_id": run.get("airflow_dag_id") or None,
                "airflow_run_id": run.get("airflow_run_id") or None},
        "data": {
            "raw": art.get("raw_data"),
            "files": _files((art.get("raw_data") or {}).get("uri", "")),
            "window_start": ingest_params.get("window_start") or examples.get("window_start"),
            "window_end": ingest_params.get("window_end") or examples.get("window_end"),
            "rows": examples.get("rows"),
            "splits": {key[len("rows_"):]: value for key, value in examples.items() if key.startswith("rows_")},
            "examples": (art.get("examples") or {}).get("uri"),
            # Labelled production requests trained too (mlops/production_source.py): which, and whose labels.
            "production": ((exe.get("ingest") or {}).get("results") or {}).get("production"),
        },
        "schema": art.get("schema"),
        "statistics": {"uri": (art.get("statistics") or {}).get("uri"), "report": props("statistics").get("report")},
        "anomalies": {"count": props("anomalies").get("num_anomalies"), "uri": (art.get("anomalies") or {}).get("uri"),
                      "found": validate_results.get("anomalies") or {}},
        "rejected": {
            "ingest_unparseable": props("ingest_rejected").get("rows"),
            "ingest_uri": (art.get("ingest_rejected") or {}).get("uri"),
            "clean_rejected": props("rejected").get("rows"),
            "clean_by_reason": clean_results.get("rejected_by_reason") or {},
            "clean_uri": (art.get("rejected") or {}).get("uri"),
            "rows_in": clean_results.get("rows_in"), "rows_kept": clean_results.get("rows_kept"),
        },
        "transform_graph": (art.get("transform_graph") or {}).get("uri"),
        "code_version": sorted({e["code_version"] for e in exe.values() if e.get("code_version")}),
        "hyperparameters": (exe.get("train") or {}).get("parameters", {}),
        "evaluation": {
            "metrics": evaluation.get("metrics") or {}, "report": evaluation.get("report"),
            "uri": (art.get("evaluation") or {}).get("uri"),
            "blessed": bool(blessing.get("blessed")) if blessing else None, "reasons": blessing.get("reasons") or [],
            "baseline_model": props("baseline_model") and {
                "name": props("baseline_model").get("model_name"), "version": props("baseline_model").get("version")},
        },
        "executions": exe,
        "artifacts": art,
    }
    if run.get("trigger_kind") == "drift_check" and trigger.get("drift_check_artifact_id") is not None:
        audit["run"]["drift_check"] = _drift_check_evidence(store, trigger["drift_check_artifact_id"], types)
    audit["monitoring"] = drift_checks_of(store, model_name, version)
    audit["automation_changes"] = automation_changes_of(store, pushed)  # degree of automation, oldest first
    audit["review_runs"] = review_runs_of(store, pushed)  # who reviewed its answers, with the counts by outcome
    audit["rollouts"] = rollouts_of(store, pushed.id)
    return audit


def rollouts_of(store: Store, pushed_model_id: int) -> list[dict[str, Any]]:
    """The Deploy executions that took this pushed model as input, oldest first: what was decided, why,
    and, for a promotion a person had to approve, their answer (who, when, on which evidence)."""
    deploy_ids = {e.execution_id for e in store.get_events_by_artifact_ids([pushed_model_id]) if e.type == Event.INPUT}
    rollouts = []
    for execution in store.get_executions_by_id(sorted(deploy_ids)):
        props = properties_of(execution)
        if "result_decision" not in props:
            continue  # not a Deploy (e.g. a batch scoring that used the model)
        parameters = props.get("parameters") or {}
        rollouts.append({"id": execution.id, "action": parameters.get("action"), "decision": props.get("result_decision"),
                         "reasons": props.get("result_reasons") or [], "finished": _iso_seconds(props.get("finished_at")),
                         "run": _run_of(store, execution.id).get("name"), "approval": props.get("result_approval")})
    return rollouts


def drift_checks_of(store: Store, model_name: str, version: int) -> list[dict[str, Any]]:
    """The DriftCheckResult artifacts that judged this model version, oldest first."""
    checks = []
    for artifact in store.get_artifacts_by_type("DriftCheckResult"):
        props = properties_of(artifact)
        if props.get("model_name") == model_name and props.get("model_version") == version:
            checks.append({"id": artifact.id, "uri": artifact.uri, "passed": bool(props.get("passed")),
                           "window_start": props.get("window_start"), "window_end": props.get("window_end"),
                           "failed_checks": props.get("failed_checks") or [], "report": props.get("report"),
                           "concept_metrics": props.get("concept_metrics")})
    return sorted(checks, key=lambda c: (str(c["window_end"]), c["id"]))


def model_graph(store: Store, model_name: str, version: int) -> LineageGraph:
    """The lineage graph of one model version for pictures: its training chain and the drift checks that judged it.

    Built from the full upstream and one-hop downstream walks, restricted to the chain's nodes, so
    cached re-executions and the previous model (the evaluation's baseline) stay out of the picture.
    """
    pushed = find_pushed_model(store, model_name, version)
    chain = training_chain(store, pushed)
    artifact_ids = {a.id for a in chain.artifacts.values()}
    execution_ids = {e.id for e in chain.executions.values()}
    # The previous model is an input of this model's evaluation: show it, but not its own history.
    upstream = walk(store, [pushed.id], UPSTREAM)
    downstream = walk(store, [pushed.id], DOWNSTREAM, max_hops=1)
    results: set[int] = set()
    for execution in downstream.executions_of_type("DriftCheck"):
        execution_ids.add(execution["id"])
        results.update(edge[3] for edge in downstream.edges if edge[0] == "execution" and edge[1] == execution["id"])
    artifact_ids |= results
    merged = _merge(upstream, downstream)
    if results:  # what each check read: the log window, the training statistics, the evaluation
        checked = walk(store, sorted(results), UPSTREAM, max_hops=1)
        artifact_ids |= set(checked.artifacts)
        merged = _merge(merged, checked)
    return _restrict(store, merged, artifact_ids, execution_ids)


def _merge(first: LineageGraph, second: LineageGraph) -> LineageGraph:
    merged = LineageGraph(dict(first.artifacts), dict(first.executions), list(first.edges))
    merged.artifacts.update(second.artifacts)
    merged.executions.update(second.executions)
    merged.edges += [edge for edge in second.edges if edge not in merged.edges]
    return merged


def _restrict(store: Store, graph: LineageGraph, artifact_ids: set[int], execution_ids: set[int]) -> LineageGraph:
    """Only the given nodes (cached re-executions and older models drop out), with every event between them."""
    artifacts = {k: v for k, v in graph.artifacts.items() if k in artifact_ids}
    executions = {k: v for k, v in graph.executions.items() if k in execution_ids}
    edges = []
    for event in store.get_events_by_execution_ids(sorted(executions)) if executions else []:
        if event.artifact_id not in artifacts:
            continue
        name = event.path.steps[0].key if event.path.steps else ""
        if event.type == Event.INPUT:
            edges.append(("artifact", event.artifact_id, "execution", event.execution_id, name))
        elif event.type == Event.OUTPUT:
            edges.append(("execution", event.execution_id, "artifact", event.artifact_id, name))
    return LineageGraph(artifacts, executions, list(dict.fromkeys(edges)))


# --- runs ------------------------------------------------------------------------------------


def _run_summary(store: Store, context: metadata_store_pb2.Context, types: _Types) -> dict[str, Any]:
    props = properties_of(context)
    executions = sorted(store.get_executions_by_context(context.id), key=lambda e: e.id)
    steps: dict[str, dict[str, Any]] = {}
    for execution in executions:
        steps[types.executions.get(execution.type_id, "?")] = _execution_json(store, execution, types)
    train = steps.get("Train", {})
    evaluate = steps.get("Evaluate", {})
    push = steps.get("Push", {})
    ingest = steps.get("Ingest", {})
    drift = steps.get("DriftCheck", {})
    failed = [name for name, step in steps.items() if step["state"] == "FAILED"]
    return {
        "run_id": context.name,
        "pipeline": props.get("pipeline_name"),
        "created": _iso_ms(context.create_time_since_epoch),
        "trigger_kind": props.get("trigger_kind"),
        "trigger": props.get("trigger") if isinstance(props.get("trigger"), dict) else {},
        "airflow_dag_id": props.get("airflow_dag_id") or None,
        "airflow_run_id": props.get("airflow_run_id") or None,
        "status": "FAILED" if failed else ("COMPLETE" if executions else "EMPTY"),
        "failed_steps": failed,
        "steps": {name: step["state"] for name, step in steps.items()},
        "window": {key: ingest.get("parameters", {}).get(key) for key in ("window_start", "window_end")} if ingest else
                  {key: drift.get("parameters", {}).get(key) for key in ("window_start", "window_end")} if drift else {},
        "parameters": train.get("parameters", {}),
        "metrics": evaluate.get("results", {}).get("metrics") or {},
        "blessed": evaluate.get("results", {}).get("blessed"),
        "pushed_version": push.get("results", {}).get("version"),
        "drift_passed": drift.get("results", {}).get("passed") if drift else None,
        "code_version": sorted({s["code_version"] for s in steps.values() if s.get("code_version")}),
    }


def list_runs(store: Store, pipeline_name: str | None = None) -> list[dict[str, Any]]:
    """Every pipeline run (newest first), with its trigger, parameters, metrics and what it pushed."""
    types = _Types(store)
    runs = []
    for context in store.get_contexts_by_type("PipelineRun"):
        if pipeline_name is not None and properties_of(context).get("pipeline_name") != pipeline_name:
            continue
        runs.append(_run_summary(store, context, types))
    return sorted(runs, key=lambda r: (r["created"] or "", r["run_id"]), reverse=True)


def get_run(store: Store, run_id: str) -> dict[str, Any]:
    context = store.get_context_by_type_and_name("PipelineRun", run_id)
    if context is None:
        known = [c.name for c in store.get_contexts_by_type("PipelineRun")][-10:]
        raise LineageNotFoundError(f"no pipeline run {run_id!r} in ML Metadata ({store.description}); "
                                   f"recent runs: {', '.join(known) or 'none'}")
    return _run_summary(store, context, _Types(store))


def _flatten(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        flat: dict[str, Any] = {}
        for key, inner in value.items():
            flat.update(_flatten(f"{prefix}.{key}" if prefix else str(key), inner))
        return flat
    return {prefix: value}


def compare_runs(store: Store, run_ids: Sequence[str]) -> dict[str, Any]:
    """Runs side by side: one row per parameter, metric and outcome, one column per run; rows that differ are marked."""
    runs = [get_run(store, run_id) for run_id in run_ids]
    sections = {
        "parameters": [_flatten("", r["parameters"]) for r in runs],
        "window": [_flatten("", r["window"]) for r in runs],
        "metrics": [_flatten("", r["metrics"]) for r in runs],
        "outcome": [{"status": r["status"], "blessed": r["blessed"], "pushed_version": r["pushed_version"],
                     "trigger_kind": r["trigger_kind"], "code_version": ", ".join(r["code_version"])} for r in runs],
    }
    rows = []
    for section, values in sections.items():
        keys = list(dict.fromkeys(key for value in values for key in value))
        for key in keys:
            cells = [value.get(key) for value in values]
            rows.append({"section": section, "name": key, "values": cells,
                         "differs": len({json.dumps(c, sort_keys=True, default=str) for c in cells}) > 1})
    return {"runs": [r["run_id"] for r in runs], "rows": rows, "details": runs}


def as_plain(value: Any) -> Any:
    """JSON-ready copy of an audit (graphs become their JSON form)."""
    if isinstance(value, LineageGraph):
        return value.to_json()
    if isinstance(value, Mapping):
        return {str(k): as_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_plain(v) for v in value]
    return value

