"""Lineage queries: walk MLMD events from an artifact to everything it came from (or led to)."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

from ml_metadata.proto import metadata_store_pb2

from metadata.recorder import ArtifactRef, properties_of
from metadata.store import Store

Event = metadata_store_pb2.Event
UPSTREAM, DOWNSTREAM = "upstream", "downstream"


class LineageNotFoundError(LookupError):
    """The model, request or dataset asked about is not in ML Metadata."""


@dataclasses.dataclass
class LineageGraph:
    """Artifacts and executions reached by the walk, and the events that connect them."""

    artifacts: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)
    executions: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)
    edges: list[tuple[str, int, str, int, str]] = dataclasses.field(default_factory=list)  # (kind, from, kind, to, name)

    def artifacts_of_type(self, type_name: str) -> list[dict[str, Any]]:
        return [a for a in self.artifacts.values() if a["type"] == type_name]

    def executions_of_type(self, type_name: str) -> list[dict[str, Any]]:
        return [e for e in self.executions.values() if e["type"] == type_name]

    def to_json(self) -> dict[str, Any]:
        return {
            "artifacts": list(self.artifacts.values()),
            "executions": list(self.executions.values()),
            "edges": [
                {"from": f"{a}:{b}", "to": f"{c}:{d}", "name": name} for a, b, c, d, name in self.edges
            ],
        }


def _type_names(store: Store) -> tuple[dict[int, str], dict[int, str]]:
    artifact_types = {t.id: t.name for t in store.get_artifact_types()}
    execution_types = {t.id: t.name for t in store.get_execution_types()}
    return artifact_types, execution_types


def _describe_artifact(artifact: metadata_store_pb2.Artifact, type_name: str) -> dict[str, Any]:
    return {
        "id": artifact.id,
        "type": type_name,
        "uri": artifact.uri,
        "properties": properties_of(artifact),
        "created_ms": artifact.create_time_since_epoch,
    }


_STATES = {v: k for k, v in metadata_store_pb2.Execution.State.items()}


def _describe_execution(store: Store, execution: metadata_store_pb2.Execution, type_name: str) -> dict[str, Any]:
    contexts = store.get_contexts_by_execution(execution.id)
    run = next((properties_of(c) | {"name": c.name} for c in contexts if c.properties.get("pipeline_name")), {})
    return {
        "id": execution.id,
        "type": type_name,
        "state": _STATES.get(execution.last_known_state, "UNKNOWN"),
        "properties": properties_of(execution),
        "run": run,
    }


def walk(store: Store, artifact_ids: Iterable[int], direction: str = UPSTREAM, max_hops: int = 50) -> LineageGraph:
    """Breadth-first walk over events. Upstream: artifact <- producing execution <- its inputs."""
    artifact_types, execution_types = _type_names(store)
    graph = LineageGraph()
    frontier = list(dict.fromkeys(artifact_ids))
    for artifact in store.get_artifacts_by_id(frontier):
        graph.artifacts[artifact.id] = _describe_artifact(artifact, artifact_types[artifact.type_id])
    seen_executions: set[int] = set()
    toward_execution = Event.OUTPUT if direction == UPSTREAM else Event.INPUT
    away_from_execution = Event.INPUT if direction == UPSTREAM else Event.OUTPUT
    for _ in range(max_hops):
        if not frontier:
            break
        events = [e for e in store.get_events_by_artifact_ids(frontier) if e.type == toward_execution]
        execution_ids = sorted({e.execution_id for e in events} - seen_executions)
        if not execution_ids:
            break
        seen_executions.update(execution_ids)
        for execution in store.get_executions_by_id(execution_ids):
            graph.executions[execution.id] = _describe_execution(store, execution, execution_types[execution.type_id])
        for event in events:
            name = event.path.steps[0].key if event.path.steps else ""
            if direction == UPSTREAM:
                graph.edges.append(("execution", event.execution_id, "artifact", event.artifact_id, name))
            else:
                graph.edges.append(("artifact", event.artifact_id, "execution", event.execution_id, name))
        next_events = [e for e in store.get_events_by_execution_ids(execution_ids) if e.type == away_from_execution]
        next_ids = sorted({e.artifact_id for e in next_events} - set(graph.artifacts))
        for artifact in store.get_artifacts_by_id(next_ids) if next_ids else []:
            graph.artifacts[artifact.id] = _describe_artifact(artifact, artifact_types[artifact.type_id])
        for event in next_events:
            name = event.path.steps[0].key if event.path.steps else ""
            if direction == UPSTREAM:
                graph.edges.append(("artifact", event.artifact_id, "execution", event.execution_id, name))
            else:
                graph.edges.append(("execution", event.execution_id, "artifact", event.artifact_id, name))
        frontier = next_ids
    return graph


def find_pushed_model(store: Store, model_name: str, version: int) -> metadata_store_pb2.Artifact:
    matches = [
        a
        for a in store.get_artifacts_by_type("PushedModel")
        if properties_of(a).get("model_name") == model_name and properties_of(a).get("version") == version
    ]
    if not matches:
        known = sorted(
            f"{properties_of(a).get('model_name')}:{properties_of(a).get('version')}"
            for a in store.get_artifacts_by_type("PushedModel")
        )
        raise LineageNotFoundError(
            f"no pushed model {model_name}:{version} in ML Metadata ({store.description}); known: {', '.join(known) or 'none'}"
        )
    return max(matches, key=lambda a: a.id)


def find_pushed_model_or_none(store: Store, model_name: str, version: int) -> metadata_store_pb2.Artifact | None:
    """`find_pushed_model`, or None for a version pushed outside the pipeline (no lineage to follow)."""
    try:
        return find_pushed_model(store, model_name, version)
    except LineageNotFoundError:
        return None


def pushed_model_ref(store: Store, model_name: str, version: int) -> ArtifactRef | None:
    """`find_pushed_model` as the reference a step records as its input; None when that version was never pushed."""
    artifact = find_pushed_model_or_none(store, model_name, version)
    if artifact is None:
        return None
    return ArtifactRef(artifact.id, "PushedModel", artifact.uri, properties_of(artifact))


def model_lineage(store: Store, model_name: str, version: int) -> LineageGraph:
    """Everything upstream of a pushed model version: data, schema, transform, parameters, code."""
    pushed = find_pushed_model(store, model_name, version)
    return walk(store, [pushed.id], UPSTREAM)
