"""OpenLineage run events of recorded steps, read back through the openlineage-python client's own
event and facet classes: START/COMPLETE/FAIL per step with input and output datasets, reused steps,
the custom facets against their JSON schemas in docs/openlineage/, the transport choice, and (slow)
the chain raw CSV -> model -> pushed version rebuilt from the events of a real pipeline run alone.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.generated.dataset_version_dataset import DatasetVersionDatasetFacet
from openlineage.client.generated.error_message_run import ErrorMessageRunFacet
from openlineage.client.generated.parent_run import Job as ParentJob
from openlineage.client.generated.parent_run import ParentRunFacet
from openlineage.client.generated.parent_run import Run as ParentRun
from openlineage.client.generated.tags_run import TagsRunFacet, TagsRunFacetFields
from openlineage.client.serde import Serde

from core.config import MetadataConfig
from metadata import openlineage as ol
from metadata import openlineage_facets as facets
from metadata.recorder import PipelineRun, Trigger
from metadata.store import connect
from tests.conftest import PROJECT_ROOT, TAXI_CSV

SCHEMAS = PROJECT_ROOT / "docs" / "openlineage"


# --- reading events back with the client's classes -------------------------------------------


# The custom facets: (event part, facet key) -> class; each class's name is its schema's in docs/openlineage/.
CUSTOM_FACETS = {("run", "mlops_execution"): facets.MlopsExecutionRunFacet, ("run", "mlops_drift_check"): facets.MlopsDriftCheckRunFacet,
                 ("run", "mlops_rollout"): facets.MlopsRolloutRunFacet, ("dataset", "mlops_artifact"): facets.MlopsArtifactDatasetFacet,
                 ("dataset", "mlops_served_model"): facets.MlopsServedModelDatasetFacet}


def _facet(kind: str, name: str, value: dict[str, Any]) -> Any:
    fields = {k: v for k, v in value.items() if not k.startswith("_")}
    producer = value["_producer"]
    if (kind, name) == ("run", "parent"):
        return ParentRunFacet(run=ParentRun(runId=fields["run"]["runId"]),
                              job=ParentJob(namespace=fields["job"]["namespace"], name=fields["job"]["name"]), producer=producer)
    if (kind, name) == ("run", "tags"):
        return TagsRunFacet(tags=[TagsRunFacetFields(**tag) for tag in fields["tags"]], producer=producer)
    classes = {("run", "errorMessage"): ErrorMessageRunFacet, ("dataset", "version"): DatasetVersionDatasetFacet, **CUSTOM_FACETS}
    assert (kind, name) in classes, f"unexpected {kind} facet {name!r}"
    return classes[(kind, name)](**fields, producer=producer)


def _check_custom_facets(kind: str, facets: dict[str, Any]) -> None:
    """Each custom facet names its own schema in docs/openlineage/ and is valid against it."""
    for name, value in facets.items():
        cls = CUSTOM_FACETS.get((kind, name))
        if cls is None:
            continue
        schema = cls.__name__
        document = json.loads((SCHEMAS / f"{schema}.json").read_text())
        assert value["_schemaURL"].endswith(f"docs/openlineage/{schema}.json#/$defs/{schema}")
        jsonschema.validate(value, document["$defs"][schema]["allOf"][1])


def _datasets(cls: type, items: list[dict[str, Any]]) -> list[Any]:
    return [cls(namespace=d["namespace"], name=d["name"],
                facets={k: _facet("dataset", k, v) for k, v in d.get("facets", {}).items()}) for d in items]


def read_event(line: str) -> RunEvent:
    """One JSON line as the client's RunEvent; it must serialize back to the same JSON."""
    raw = json.loads(line)
    event = RunEvent(
        eventType=RunState(raw["eventType"]), eventTime=raw["eventTime"], producer=raw["producer"],
        run=Run(runId=raw["run"]["runId"], facets={k: _facet("run", k, v) for k, v in raw["run"]["facets"].items()}),
        job=Job(namespace=raw["job"]["namespace"], name=raw["job"]["name"]),
        inputs=_datasets(InputDataset, raw["inputs"]), outputs=_datasets(OutputDataset, raw["outputs"]))
    assert Serde.to_dict(event) == raw, "the event does not round-trip through the client's classes"
    # A step's events carry its MLMD execution; a rollout's START goes out before MLMD records it.
    assert "mlops_execution" in raw["run"]["facets"] or "mlops_rollout" in raw["run"]["facets"], raw["run"]["facets"]
    _check_custom_facets("run", raw["run"]["facets"])
    for dataset in raw["inputs"] + raw["outputs"]:
        _check_custom_facets("dataset", dataset.get("facets", {}))
    return event


def read_events(path: Path) -> list[RunEvent]:
    return [read_event(line) for line in path.read_text().splitlines()]


# --- events of recorded steps ----------------------------------------------------------------


@pytest.fixture
def run(tmp_path: Path) -> PipelineRun:
    store = connect(MetadataConfig(sqlite_path=tmp_path / "mlmd.sqlite"))
    return PipelineRun(store, "taxi", "run-1", Trigger("test", {"why": "unit"}), events=ol.step_events(tmp_path / "pipeline", "taxi"))


def _ingest(run: PipelineRun, tmp_path: Path):
    raw = run.register_artifact("RawData", str(tmp_path / "data.csv"), {"sha256": "abc123"}, identity=("sha256",))
    with run.step("Ingest", {"raw_data": raw}, {"window": "2013"}) as step:
        if not step.cached:
            (tmp_path / "examples").mkdir(exist_ok=True)
            step.output("examples", "Examples", str(tmp_path / "examples"), {"rows": 10})
            step.record(rows=10)
    return step


def test_a_step_emits_start_then_complete_with_its_datasets_and_mlmd_ids(run, tmp_path):
    step = _ingest(run, tmp_path)
    start, complete = read_events(tmp_path / "pipeline" / ol.DEFAULT_EVENTS_FILE)
    assert (start.eventType, complete.eventType) == (RunState.START, RunState.COMPLETE)
    assert start.run.runId == complete.run.runId == ol.run_uuid(run.store.description, "execution", step.execution_id)
    assert complete.job.namespace == ol.NAMESPACE and complete.job.name == "taxi.ingest"
    [raw] = complete.inputs
    assert (raw.namespace, raw.name) == ("file", str(tmp_path / "data.csv"))
    assert raw.facets["version"].datasetVersion == "abc123"
    assert start.outputs == []
    [examples] = complete.outputs
    assert examples.name == str(tmp_path / "examples")
    assert examples.facets["mlops_artifact"].artifactId == step.outputs["examples"].id
    execution = complete.run.facets["mlops_execution"]
    assert (execution.executionId, execution.parameters, execution.results) == (step.execution_id, {"window": "2013"}, {"rows": 10})
    assert execution.trigger == {"kind": "test", "why": "unit"} and execution.cachedFrom is None
    assert start.run.facets["mlops_execution"].results == {}
    parent = complete.run.facets["parent"]
    assert parent.run.runId == ol.run_uuid(run.store.description, "pipeline-run", "run-1") and parent.job.name == "taxi"


def test_a_failing_step_emits_fail_with_the_error(run, tmp_path):
    raw = run.register_artifact("RawData", str(tmp_path / "data.csv"), {"sha256": "abc123"}, identity=("sha256",))
    with pytest.raises(ValueError, match="fare is negative"):
        with run.step("Ingest", {"raw_data": raw}, {}):
            raise ValueError("fare is negative")
    start, fail = read_events(tmp_path / "pipeline" / ol.DEFAULT_EVENTS_FILE)
    assert (start.eventType, fail.eventType) == (RunState.START, RunState.FAIL)
    assert fail.run.facets["errorMessage"].message == "ValueError: fare is negative"
    assert fail.outputs == [] and [d.name for d in fail.inputs] == [str(tmp_path / "data.csv")]


def test_a_reused_step_emits_start_and_complete_naming_the_execution_it_reused(run, tmp_path):
    first = _ingest(run, tmp_path)
    again = _ingest(run, tmp_path)
    assert again.cached
    events = read_events(tmp_path / "pipeline" / ol.DEFAULT_EVENTS_FILE)
    assert [e.eventType for e in events] == [RunState.START, RunState.COMPLETE] * 2
    reused = events[-1]
    assert reused.run.facets["mlops_execution"].cachedFrom == first.execution_id
    assert [d.facets["mlops_artifact"].artifactId for d in reused.outputs] == [first.outputs["examples"].id]


def test_openlineages_own_configuration_takes_over_from_the_file_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("OPENLINEAGE_URL", "OPENLINEAGE_CONFIG", "OPENLINEAGE_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert not ol.user_configured()
    assert type(ol.default_client(tmp_path / "p").transport).__name__ == "FileTransport"
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__TYPE", "console")
    assert ol.user_configured() and type(ol.default_client(tmp_path / "p").transport).__name__ == "ConsoleTransport"
    monkeypatch.delenv("OPENLINEAGE__TRANSPORT__TYPE")
    (tmp_path / "openlineage.yml").write_text(f"transport:\n  type: file\n  log_file_path: {tmp_path / 'mine.jsonl'}\n  append: true\n")
    client = ol.default_client(tmp_path / "p")
    assert client.transport.config.log_file_path == str(tmp_path / "mine.jsonl")


def test_an_unreachable_lineage_service_does_not_fail_the_step(tmp_path, monkeypatch, caplog):
    from tests.fixtures.servers import free_port

    # The client's HTTP transport, configured as a platform team would, without retries to keep it short.
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT", json.dumps({"type": "http", "url": f"http://127.0.0.1:{free_port()}",
                                                             "retry": {"total": 0}}))
    store = connect(MetadataConfig(sqlite_path=tmp_path / "mlmd.sqlite"))
    run = PipelineRun(store, "taxi", "run-1", events=ol.step_events(tmp_path / "pipeline", "taxi"))
    step = _ingest(run, tmp_path)
    assert step.outputs["examples"].id > 0
    assert not (tmp_path / "pipeline" / ol.DEFAULT_EVENTS_FILE).exists()
    undelivered = [r.getMessage() for r in caplog.records if "not delivered" in r.getMessage()]
    assert [m.split(" event")[0] for m in undelivered] == ["OpenLineage START", "OpenLineage COMPLETE"], undelivered


# --- the chain in the events of a real pipeline run ------------------------------------------


@pytest.mark.slow
def test_the_events_of_a_pipeline_run_alone_lead_from_the_pushed_version_back_to_the_raw_csv(tmp_path):
    from mlops.pipeline import run_pipeline
    from tests.mlops.test_pipeline import SMALL_WINDOW, small_config

    config = small_config(tmp_path)
    result = run_pipeline(config, start=SMALL_WINDOW[0], end=SMALL_WINDOW[1], progress=lambda _: None)
    events = read_events(config.pipeline_root / ol.DEFAULT_EVENTS_FILE)
    complete = [e for e in events if e.eventType == RunState.COMPLETE]
    assert sorted(e.job.name for e in events if e.eventType == RunState.START) == sorted(e.job.name for e in complete)
    producers = {(d.namespace, d.name): e for e in complete for d in e.outputs}
    [push] = [e for e in complete if e.job.name == "taxi.push"]
    [pushed] = push.outputs
    assert pushed.name == str(config.serving.model_base_dir / "taxi" / str(result.outcomes["push"].results["version"]))
    jobs, frontier, sources = set(), [pushed], []
    while frontier:
        dataset = frontier.pop()
        producer = producers.get((dataset.namespace, dataset.name))
        if producer is None:
            sources.append(dataset)
            continue
        if producer.job.name not in jobs:
            jobs.add(producer.job.name)
            frontier += producer.inputs
    assert jobs == {f"taxi.{step}" for step in ("ingest", "clean", "validate", "transform", "train", "evaluate", "push")}
    [raw] = [d for d in sources if d.facets["mlops_artifact"].artifactType == "RawData"]
    assert raw.name == str(TAXI_CSV) and raw.facets["version"].datasetVersion == hashlib.sha256(TAXI_CSV.read_bytes()).hexdigest()
    parents = {e.run.facets["parent"].run.runId for e in events}
    assert parents == {ol.run_uuid(f"sqlite:{config.metadata.sqlite_path}", "pipeline-run", result.run_id)}
