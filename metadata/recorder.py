"""Recording steps in ML Metadata as they run, so lineage is complete by construction.

A pipeline run is a `PipelineRun` context. Each step is a `with run.step(...)` block: the
execution is written as RUNNING with its input events on entry, and COMPLETE with its output
artifacts (or FAILED with the error) on exit, in one transaction each, so an execution is never
COMPLETE without its outputs. A step whose process died, or whose database connection was lost
(MLMD's client does not reconnect), stays RUNNING; the next attempt of the same work in the same
run marks it FAILED ("abandoned") before it starts, so no RUNNING is left behind by a retry. A step whose fingerprint (inputs, parameters,
code) matches an earlier COMPLETE execution whose outputs still exist is not run again: a CACHED
execution links the same inputs to the earlier outputs, and the caller is told what was reused.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import time
import uuid
from typing import Any, Iterator, Mapping, Sequence

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from core.errors import MlopsError
from core.version import code_version, source_hash
from metadata.store import ARTIFACT_TYPES, CONTEXT_TYPES, EXECUTION_PROPERTIES, Store

log = logging.getLogger(__name__)

Execution = metadata_store_pb2.Execution
Event = metadata_store_pb2.Event


class MetadataRecordingError(MlopsError):
    """A step's work is done but ML Metadata failed while recording it (e.g. its database restarted):
    nothing of it is recorded as COMPLETE, and a retry redoes the step."""


@dataclasses.dataclass(frozen=True)
class ArtifactRef:
    """A recorded artifact, small enough to pass between processes (Airflow XCom) as JSON."""

    id: int
    type_name: str
    uri: str
    properties: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "type_name": self.type_name, "uri": self.uri, "properties": dict(self.properties)}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> "ArtifactRef":
        return cls(int(value["id"]), str(value["type_name"]), str(value["uri"]), dict(value.get("properties", {})))


@dataclasses.dataclass(frozen=True)
class Trigger:
    """Who or what started a pipeline run: manual, schedule, cli, test, or a drift check."""

    kind: str = "manual"
    details: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def set_value(value_proto: metadata_store_pb2.Value, value: Any) -> None:
    if isinstance(value, bool):
        value_proto.int_value = int(value)
    elif isinstance(value, int):
        value_proto.int_value = value
    elif isinstance(value, float):
        value_proto.double_value = value
    elif isinstance(value, str):
        value_proto.string_value = value
    else:
        value_proto.string_value = json.dumps(value, sort_keys=True, default=str)


def get_value(value_proto: metadata_store_pb2.Value) -> Any:
    kind = value_proto.WhichOneof("value")
    return getattr(value_proto, kind) if kind else None


def _maybe_json(value: Any) -> Any:
    """Results that were dicts or lists are stored as JSON strings; give them back as such."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def properties_of(node: Any) -> dict[str, Any]:
    """Typed and custom properties of an artifact, execution or context as one plain dict."""
    result = {key: _maybe_json(get_value(value)) for key, value in node.custom_properties.items()}
    result.update({key: _maybe_json(get_value(value)) for key, value in node.properties.items()})
    return result


def _fill_properties(node: Any, typed_names: Mapping[str, int], values: Mapping[str, Any]) -> None:
    for key, value in values.items():
        if value is None:
            continue
        target = node.properties if key in typed_names else node.custom_properties
        set_value(target[key], value)


def _ref(artifact: metadata_store_pb2.Artifact, type_name: str) -> ArtifactRef:
    return ArtifactRef(artifact.id, type_name, artifact.uri, properties_of(artifact))


def _event(event_type: int, key: str, index: int | None = None) -> metadata_store_pb2.Event:
    event = Event(type=event_type)
    event.path.steps.add().key = key
    if index is not None:
        event.path.steps.add().index = index
    return event


# PostgreSQL refuses indexed MLMD strings over ~2.7 kB: a trigger's evidence is cut to fit, and
# what is cut stays reachable through the ids it carries (e.g. drift_check_artifact_id).
MAX_TRIGGER_JSON = 2600


def _bounded_trigger_json(details: Mapping[str, Any]) -> str:
    text = json.dumps(dict(details), sort_keys=True, default=str)
    if len(text.encode()) <= MAX_TRIGGER_JSON:
        return text
    kept = {k: v for k, v in details.items() if isinstance(v, (str, int, float, bool)) or v is None}
    kept = {k: (v[:200] if isinstance(v, str) else v) for k, v in kept.items()}
    kept["truncated"] = f"evidence of {len(text)} characters cut to fit; see the artifact ids above"
    return json.dumps(kept, sort_keys=True, default=str)


def new_run_id(prefix: str = "cli") -> str:
    """A fresh run id, `<prefix>-<UTC time>-<random>`: sortable by start and unique across processes."""
    return f"{prefix}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


class PipelineRun:
    """One run of the pipeline: a context that every step's execution and artifact joins."""

    def __init__(
        self,
        store: Store,
        pipeline_name: str,
        run_id: str,
        trigger: Trigger = Trigger(),
        airflow_dag_id: str = "",
        airflow_run_id: str = "",
        events: Any = None,
    ) -> None:
        self.store = store
        self.pipeline_name = pipeline_name
        self.run_id = run_id
        self.trigger = trigger
        self.airflow_dag_id = airflow_dag_id
        self.airflow_run_id = airflow_run_id
        # Told when each step starts and ends (metadata.openlineage.StepEvents), after MLMD has it.
        self.events = events
        pipeline = metadata_store_pb2.Context(type_id=store.type_id("Pipeline"), name=pipeline_name)
        existing = store.get_context_by_type_and_name("Pipeline", pipeline_name)
        self.pipeline_context = existing or self._put_context(pipeline)
        existing_run = store.get_context_by_type_and_name("PipelineRun", run_id)
        if existing_run is None:
            run = metadata_store_pb2.Context(type_id=store.type_id("PipelineRun"), name=run_id)
            _fill_properties(
                run,
                CONTEXT_TYPES["PipelineRun"],
                {
                    "pipeline_name": pipeline_name,
                    "trigger_kind": trigger.kind,
                    "trigger": _bounded_trigger_json(trigger.details),
                    "airflow_dag_id": airflow_dag_id,
                    "airflow_run_id": airflow_run_id,
                },
            )
            existing_run = self._put_context(run)
            store.put_parent_contexts(
                [metadata_store_pb2.ParentContext(child_id=existing_run.id, parent_id=self.pipeline_context.id)]
            )
        self.context = existing_run

    def _put_context(self, context: metadata_store_pb2.Context) -> metadata_store_pb2.Context:
        try:
            [context_id] = self.store.put_contexts([context])
        except Exception:  # another process created it first
            found = self.store.get_context_by_type_and_name(
                self.store.get_context_types_by_id([context.type_id])[0].name, context.name
            )
            if found is None:
                raise
            return found
        context.id = context_id
        return context

    @property
    def contexts(self) -> list[metadata_store_pb2.Context]:
        return [self.pipeline_context, self.context]

    def register_artifact(
        self, type_name: str, uri: str, properties: Mapping[str, Any], identity: Sequence[str] = ()
    ) -> ArtifactRef:
        """Records an artifact that no step produced (raw data, a curated schema).

        An artifact with the same type, uri and `identity` properties is reused, so registering
        the same file twice yields one node in the lineage graph.
        """
        for artifact in self.store.get_artifacts_by_uri(uri):
            if artifact.type_id != self.store.type_id(type_name):
                continue
            known = properties_of(artifact)
            if all(known.get(key) == properties.get(key) for key in identity):
                self._attribute([artifact.id])
                return _ref(artifact, type_name)
        artifact = metadata_store_pb2.Artifact(
            type_id=self.store.type_id(type_name), uri=uri, state=metadata_store_pb2.Artifact.LIVE
        )
        _fill_properties(artifact, ARTIFACT_TYPES[type_name], properties)
        [artifact.id] = self.store.put_artifacts([artifact])
        self._attribute([artifact.id])
        return _ref(artifact, type_name)

    def _attribute(self, artifact_ids: Sequence[int]) -> None:
        attributions = [
            metadata_store_pb2.Attribution(artifact_id=artifact_id, context_id=context.id)
            for artifact_id in artifact_ids
            for context in self.contexts
        ]
        self.store.put_attributions_and_associations(attributions, [])

    def step(
        self,
        execution_type: str,
        inputs: Mapping[str, ArtifactRef | Sequence[ArtifactRef]],
        parameters: Mapping[str, Any],
        use_cache: bool = True,
        code_digest: str | None = None,
    ) -> "StepRecord":
        """A step's record. `code_digest` identifies the code its outputs depend on (see
        `core.version.modules_hash`); without it every project source counts."""
        return StepRecord(self, execution_type, inputs, parameters, use_cache, code_digest)


def _flatten(inputs: Mapping[str, ArtifactRef | Sequence[ArtifactRef]]) -> Iterator[tuple[str, int | None, ArtifactRef]]:
    for key in sorted(inputs):
        value = inputs[key]
        if isinstance(value, ArtifactRef):
            yield key, None, value
        else:
            for index, ref in enumerate(value):
                yield key, index, ref


class StepRecord:
    """The execution of one step. Use as a context manager; see the module docstring."""

    def __init__(
        self,
        run: PipelineRun,
        execution_type: str,
        inputs: Mapping[str, ArtifactRef | Sequence[ArtifactRef]],
        parameters: Mapping[str, Any],
        use_cache: bool,
        code_digest: str | None = None,
    ) -> None:
        self.run = run
        self.code_digest = code_digest or source_hash()
        self.store = run.store
        self.execution_type = execution_type
        self.inputs = inputs
        self.parameters = dict(parameters)
        self.use_cache = use_cache
        self.results: dict[str, Any] = {}
        self.outputs: dict[str, ArtifactRef] = {}
        self._pending: list[tuple[str, metadata_store_pb2.Artifact]] = []
        self.execution = Execution()
        self.cached = False
        self.cached_from: int | None = None
        self.cached_run_id = ""
        self._linked: list[tuple[str, ArtifactRef]] = []
        self.fingerprint = self._fingerprint()
        self._started = 0.0

    def _fingerprint(self) -> str:
        digest = hashlib.sha256()
        digest.update(self.execution_type.encode())
        for key, index, ref in _flatten(self.inputs):
            identity = ref.properties.get("sha256") or ref.properties.get("fingerprint") or f"id:{ref.id}"
            digest.update(f"{key}[{index}]={ref.type_name}:{identity};".encode())
        digest.update(json.dumps(self.parameters, sort_keys=True, default=str).encode())
        digest.update(self.code_digest.encode())
        return digest.hexdigest()[:32]

    @property
    def execution_id(self) -> int:
        return self.execution.id

    def __enter__(self) -> "StepRecord":
        self._started = time.time()
        self.execution = Execution(
            type_id=self.store.type_id(self.execution_type), last_known_state=Execution.RUNNING
        )
        _fill_properties(
            self.execution,
            EXECUTION_PROPERTIES,
            {
                "parameters": json.dumps(self.parameters, sort_keys=True, default=str),
                "code_version": code_version(),
                "fingerprint": self.fingerprint,
            },
        )
        set_value(self.execution.custom_properties["started_at"], self._started)
        set_value(self.execution.custom_properties["run_id"], self.run.run_id)
        set_value(self.execution.custom_properties["code_digest"], self.code_digest)
        self._fail_abandoned()
        previous = self._find_cached() if self.use_cache else None
        input_events = [
            (self._artifact_proto(ref), _event(Event.INPUT, key, index)) for key, index, ref in _flatten(self.inputs)
        ]
        if previous is not None:
            execution, outputs = previous
            self.cached = True
            self.cached_from = execution.id
            self.execution.last_known_state = Execution.CACHED
            set_value(self.execution.custom_properties["cached_from_execution"], execution.id)
            earlier = properties_of(execution)
            self.cached_run_id = str(earlier.get("run_id") or "")
            for key, value in earlier.items():
                if key.startswith("result_"):
                    set_value(self.execution.custom_properties[key], value)
                    self.results[key[len("result_"):]] = _maybe_json(value)
            output_events = [(self._artifact_proto(ref), _event(Event.OUTPUT, key)) for key, ref in outputs.items()]
            self.outputs = outputs
            set_value(self.execution.custom_properties["finished_at"], time.time())
            self.execution.id, _, _ = self.store.put_execution(
                self.execution, input_events + output_events, self.run.contexts, reuse_context_if_already_exist=True
            )
            log.info("%s: reused the outputs of execution %d (same inputs, parameters and code)", self.execution_type, execution.id)
            if self.run.events is not None:
                self.run.events.started(self)
                self.run.events.finished(self)
            return self
        self.execution.id, _, _ = self.store.put_execution(
            self.execution, input_events, self.run.contexts, reuse_context_if_already_exist=True
        )
        if self.run.events is not None:
            self.run.events.started(self)
        return self

    def _fail_abandoned(self) -> None:
        """Earlier attempts of this very work in this run left RUNNING: their process is gone (Airflow
        starts a retry only after the previous try ended), so they are recorded as FAILED, saying why."""
        type_id = self.store.type_id(self.execution_type)
        abandoned = [e for e in self.store.get_executions_by_context(self.run.context.id)
                     if e.type_id == type_id and e.last_known_state == Execution.RUNNING
                     and properties_of(e).get("fingerprint") == self.fingerprint]
        for execution in abandoned:
            execution.last_known_state = Execution.FAILED
            set_value(execution.properties["error"], "abandoned: the attempt stopped before recording its end (its process "
                                                     "died or lost the metadata database); a later attempt redid the step")
            log.warning("%s: execution %d of run %s was left RUNNING by an attempt that died; recorded it as FAILED",
                        self.execution_type, execution.id, self.run.run_id)
        if abandoned:
            self.store.put_executions(abandoned)

    def _artifact_proto(self, ref: ArtifactRef) -> metadata_store_pb2.Artifact:
        [artifact] = self.store.get_artifacts_by_id([ref.id])
        return artifact

    def _find_cached(self) -> tuple[Execution, dict[str, ArtifactRef]] | None:
        query = f"properties.fingerprint.string_value = '{self.fingerprint}'"
        candidates = self.store.get_executions(list_options=metadata_store.ListOptions(filter_query=query))
        for execution in sorted(candidates, key=lambda e: -e.id):
            if execution.last_known_state != Execution.COMPLETE:
                continue
            outputs = self._outputs_of(execution.id)
            if outputs and all(os.path.exists(ref.uri) for ref in outputs.values()):
                return execution, outputs
        return None

    def _outputs_of(self, execution_id: int) -> dict[str, ArtifactRef]:
        events = [e for e in self.store.get_events_by_execution_ids([execution_id]) if e.type == Event.OUTPUT]
        if not events:
            return {}
        artifacts = {a.id: a for a in self.store.get_artifacts_by_id([e.artifact_id for e in events])}
        type_names = {t.id: t.name for t in self.store.get_artifact_types()}
        return {
            event.path.steps[0].key: _ref(artifacts[event.artifact_id], type_names[artifacts[event.artifact_id].type_id])
            for event in events
        }

    def output(self, name: str, type_name: str, uri: str, properties: Mapping[str, Any] | None = None) -> ArtifactRef:
        """Declares an output; it is written with the execution when the step completes."""
        if type_name not in ARTIFACT_TYPES:
            raise ValueError(f"unknown artifact type {type_name!r}; known: {sorted(ARTIFACT_TYPES)}")
        artifact = metadata_store_pb2.Artifact(
            type_id=self.store.type_id(type_name), uri=str(uri), state=metadata_store_pb2.Artifact.LIVE
        )
        _fill_properties(artifact, ARTIFACT_TYPES[type_name], properties or {})
        self._pending.append((name, artifact))
        ref = ArtifactRef(0, type_name, str(uri), dict(properties or {}))
        self.outputs[name] = ref
        return ref

    def link_output(self, name: str, ref: ArtifactRef) -> None:
        """Names an existing artifact as an output of this execution (e.g. a model pushed before)."""
        self._linked.append((name, ref))
        self.outputs[name] = ref

    def record(self, **results: Any) -> None:
        """Adds results (row counts, metrics, timings) to the execution."""
        self.results.update(results)

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if self.cached:
            return
        finished = time.time()
        set_value(self.execution.custom_properties["finished_at"], finished)
        set_value(self.execution.custom_properties["duration_seconds"], round(finished - self._started, 3))
        for key, value in self.results.items():
            set_value(self.execution.custom_properties[f"result_{key}"], value)
        if exc is not None:
            self.execution.last_known_state = Execution.FAILED
            set_value(self.execution.properties["error"], f"{type(exc).__name__}: {exc}"[:4000])
            try:
                self.store.put_execution(self.execution, [], self.run.contexts, reuse_context_if_already_exist=True)
            except Exception as err:  # noqa: BLE001 - the step's own error is the one to raise
                exc.add_note(f"(and ML Metadata {self.store.description} could not record execution {self.execution.id} "
                             f"as FAILED: {err}; the next attempt records it as abandoned)")
            if self.run.events is not None:
                self.run.events.finished(self, exc)
            return
        self.execution.last_known_state = Execution.COMPLETE
        try:
            artifact_and_events = [(artifact, _event(Event.OUTPUT, name)) for name, artifact in self._pending]
            artifact_and_events += [(self._artifact_proto(ref), _event(Event.OUTPUT, name)) for name, ref in self._linked]
            _, artifact_ids, _ = self.store.put_execution(
                self.execution, artifact_and_events, self.run.contexts, reuse_context_if_already_exist=True
            )
        except Exception as err:
            outputs = ", ".join(artifact.uri for _, artifact in self._pending) or "none"
            raise MetadataRecordingError(
                f"{self.execution_type} finished its work (outputs: {outputs}) but ML Metadata {self.store.description} "
                f"failed while recording execution {self.execution.id} ({err}); it is not recorded as COMPLETE, "
                f"and a retry of the run redoes the step") from err
        for (name, artifact), artifact_id in zip(self._pending, artifact_ids[: len(self._pending)]):
            self.outputs[name] = ArtifactRef(artifact_id, self.outputs[name].type_name, artifact.uri, properties_of(artifact))
        if self.run.events is not None:
            self.run.events.finished(self)
