"""OpenLineage run events for every step ML Metadata records, for the lineage services companies
already run (Marquez, DataHub, OpenMetadata, ...): START when a step's execution opens, COMPLETE
with its output datasets or FAIL with the error when it closes; a reused step sends both at once.

Transport: the openlineage-python client's own configuration when there is one (`OPENLINEAGE_URL`,
`OPENLINEAGE_CONFIG`, `./openlineage.yml`, `~/.openlineage/openlineage.yml`,
`OPENLINEAGE__TRANSPORT__*`, or `OPENLINEAGE_DISABLED=true`); otherwise a file transport that
appends one JSON event per line to `<pipeline_root>/openlineage/events.jsonl`
(core/openlineage_transport.py: the launcher points Airflow's OpenLineage provider at the same file).

Names: job namespace `mlops-suite`, job `<pipeline>.<step>` (the MLMD execution type, lower case);
the run id is a UUID derived from the store and the MLMD execution id. The `parent` facet names the
Airflow task run when Airflow runs the step (metadata/openlineage_airflow.py: the ids Airflow's
OpenLineage provider gives its task events, so a lineage service joins them), else our pipeline run.
The drift check and the rollout add datasets and facets of their own (metadata/openlineage_ml.py);
a rollout's START goes out when it begins (`StepEvents.announced`), before MLMD records its Deploy. A dataset is an artifact: namespace `file`, name its path (OpenLineage's
naming for local files); facets `version` (its sha256, fingerprint or MLMD id) and `mlops_artifact`.
The run carries `mlops_execution`. Every custom facet has its JSON schema in docs/openlineage/.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime as dt
import logging
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from openlineage.client import OpenLineageClient
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.generated.dataset_version_dataset import DatasetVersionDatasetFacet
from openlineage.client.generated.error_message_run import ErrorMessageRunFacet
from openlineage.client.generated.parent_run import Job as ParentJob
from openlineage.client.generated.parent_run import ParentRunFacet
from openlineage.client.generated.parent_run import Run as ParentRun

from core.openlineage_transport import (  # noqa: F401 - re-exported: where events go by default
    DEFAULT_EVENTS_FILE,
    NAMESPACE,
    default_transport,
    user_configured,
)
from core.version import code_version
from metadata.openlineage_airflow import current_task_run
from metadata.openlineage_facets import (  # noqa: F401 - re-exported: the names every event uses
    DATASET_NAMESPACE,
    PRODUCER,
    MlopsArtifactDatasetFacet,
    MlopsExecutionRunFacet,
    json_safe,
)
from metadata.openlineage_ml import EXTRAS

if TYPE_CHECKING:
    from metadata.recorder import ArtifactRef, StepRecord

log = logging.getLogger(__name__)

_IDS = uuid.UUID("6f0b7a34-5d1e-4c52-9a55-2f6b0c1d9e11")  # uuid5 namespace of this project's run ids


def default_client(pipeline_root: Path) -> OpenLineageClient:
    if user_configured():
        return OpenLineageClient()
    transport = default_transport(pipeline_root)
    Path(transport["log_file_path"]).parent.mkdir(parents=True, exist_ok=True)
    return OpenLineageClient(config={"transport": transport})


def run_uuid(store_description: str, kind: str, key: Any) -> str:
    """A stable UUID for an MLMD execution or pipeline run, so every event of one run shares it."""
    return str(uuid.uuid5(_IDS, f"{store_description}/{kind}/{key}"))


def _dataset_facets(ref: ArtifactRef) -> dict[str, Any]:
    version = ref.properties.get("sha256") or ref.properties.get("fingerprint") or f"mlmd-artifact-{ref.id}"
    return {"version": DatasetVersionDatasetFacet(datasetVersion=str(version), producer=PRODUCER),
            "mlops_artifact": MlopsArtifactDatasetFacet(artifactType=ref.type_name, artifactId=ref.id,
                                                        properties=json_safe(ref.properties), producer=PRODUCER)}


def _dataset_name(uri: str) -> str:
    return os.path.abspath(uri)


@dataclasses.dataclass
class Announcement:
    """A START sent before ML Metadata records the step: a rollout decides first and records its
    Deploy execution after, but its START belongs at the beginning and its FAIL to any error before
    the record (`StepEvents.announced`). The step's own events then reuse this run id."""

    execution_type: str
    run_id: str
    served_namespace: str = ""  # where the deployed version is served (the gateway's URL)
    claimed_by: int | None = None  # the MLMD execution that took it over
    finished: bool = False


_ANNOUNCED: contextvars.ContextVar[Announcement | None] = contextvars.ContextVar("mlops_openlineage_announced", default=None)


def parent_facet(pipeline_name: str, pipeline_run_uuid: str) -> ParentRunFacet:
    """The Airflow task run this process runs for (metadata/openlineage_airflow.py), else our own pipeline run."""
    task_run = current_task_run()
    if task_run is not None:
        return ParentRunFacet(run=ParentRun(runId=task_run.run_id), job=ParentJob(namespace=task_run.namespace,
                                                                                   name=task_run.job_name), producer=PRODUCER)
    return ParentRunFacet(run=ParentRun(runId=pipeline_run_uuid), job=ParentJob(namespace=NAMESPACE, name=pipeline_name),
                          producer=PRODUCER)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


def _error_facet(error: BaseException) -> ErrorMessageRunFacet:
    # exit_on_user_error turns a user error into SystemExit(code) `from None`: the error itself is its context.
    cause = error.__context__ if isinstance(error, SystemExit) and error.__context__ is not None else error
    return ErrorMessageRunFacet(message=f"{type(cause).__name__}: {cause}"[:4000], programmingLanguage="python",
                                producer=PRODUCER)


class StepEvents:
    """Turns a StepRecord's opening and closing into OpenLineage run events (PipelineRun(events=...))."""

    def __init__(self, client: OpenLineageClient, pipeline_name: str) -> None:
        self.client = client
        self.pipeline_name = pipeline_name

    def job_name(self, execution_type: str) -> str:
        return f"{self.pipeline_name}.{execution_type.lower()}"

    def started(self, record: StepRecord) -> None:
        announcement = _ANNOUNCED.get()
        if (announcement is not None and announcement.execution_type == record.execution_type
                and announcement.claimed_by is None and not announcement.finished):
            announcement.claimed_by = record.execution_id  # its START went out when the work began
            return
        self._emit(self.event(record, RunState.START))

    def finished(self, record: StepRecord, error: BaseException | None = None) -> None:
        self._emit(self.event(record, RunState.FAIL if error is not None else RunState.COMPLETE, error))
        announcement = self._announcement_of(record)
        if announcement is not None:
            announcement.finished = True

    def _announcement_of(self, record: StepRecord) -> Announcement | None:
        announcement = _ANNOUNCED.get()
        return announcement if announcement is not None and announcement.claimed_by == record.execution_id else None

    @contextlib.contextmanager
    def announced(self, execution_type: str, store_description: str, pipeline_run_id: str,
                  facets: dict[str, Any] | None = None, served_namespace: str = "") -> Iterator[Announcement]:
        """START now for a step recorded later in this block; FAIL if the block fails before the step finished.
        `store_description` (metadata.store.describe) and `pipeline_run_id` name the parent outside Airflow."""
        announcement = Announcement(execution_type, str(uuid.uuid4()), served_namespace)
        run_facets = {"parent": parent_facet(self.pipeline_name, run_uuid(store_description, "pipeline-run", pipeline_run_id)),
                      **(facets or {})}
        self._emit(self._bare_event(announcement, RunState.START, run_facets))
        token = _ANNOUNCED.set(announcement)
        try:
            yield announcement
        except BaseException as error:
            if not announcement.finished:
                self._emit(self._bare_event(announcement, RunState.FAIL, {**run_facets, "errorMessage": _error_facet(error)}))
            raise
        finally:
            _ANNOUNCED.reset(token)

    def _bare_event(self, announcement: Announcement, state: RunState, facets: dict[str, Any]) -> RunEvent:
        return RunEvent(eventType=state, eventTime=_now(), producer=PRODUCER, run=Run(runId=announcement.run_id, facets=facets),
                        job=Job(namespace=NAMESPACE, name=self.job_name(announcement.execution_type)), inputs=[], outputs=[])

    def event(self, record: StepRecord, state: RunState, error: BaseException | None = None) -> RunEvent:
        from metadata.recorder import _flatten  # the order MLMD records inputs in

        store = record.store.description
        run = record.run
        announcement = self._announcement_of(record)
        facets: dict[str, Any] = {
            "parent": parent_facet(self.pipeline_name, run_uuid(store, "pipeline-run", run.run_id)),
            "mlops_execution": MlopsExecutionRunFacet(
                executionType=record.execution_type, executionId=record.execution_id, pipelineRun=run.run_id,
                fingerprint=record.fingerprint, codeVersion=code_version(), parameters=json_safe(record.parameters),
                results=json_safe(record.results) if state != RunState.START else {}, cachedFrom=record.cached_from,
                trigger=json_safe({"kind": run.trigger.kind, **run.trigger.details}),
                airflow={k: v for k, v in (("dag_id", run.airflow_dag_id), ("run_id", run.airflow_run_id)) if v},
                producer=PRODUCER),
        }
        if error is not None:
            facets["errorMessage"] = _error_facet(error)
        inputs = [InputDataset(namespace=DATASET_NAMESPACE, name=_dataset_name(ref.uri), facets=_dataset_facets(ref))
                  for _, _, ref in _flatten(record.inputs)]
        outputs = [] if state != RunState.COMPLETE else [
            OutputDataset(namespace=DATASET_NAMESPACE, name=_dataset_name(ref.uri), facets=_dataset_facets(ref))
            for _, ref in sorted(record.outputs.items())]
        extra_of = EXTRAS.get(record.execution_type)
        if extra_of is not None:
            extra = extra_of(record, state, announcement)
            facets.update(extra.facets)
            inputs += extra.inputs
            outputs += extra.outputs
        run_id = announcement.run_id if announcement is not None else run_uuid(store, "execution", record.execution_id)
        return RunEvent(eventType=state, eventTime=_now(), producer=PRODUCER, run=Run(runId=run_id, facets=facets),
                        job=Job(namespace=NAMESPACE, name=self.job_name(record.execution_type)), inputs=inputs, outputs=outputs)

    def _emit(self, event: RunEvent) -> None:
        try:
            self.client.emit(event)
        except Exception as err:  # noqa: BLE001 - a lineage service outage must not fail a training run
            log.warning("OpenLineage %s event of %s not delivered: %s", event.eventType.value, event.job.name, err)


def step_events(pipeline_root: Path, pipeline_name: str) -> StepEvents:
    return StepEvents(default_client(pipeline_root), pipeline_name)
