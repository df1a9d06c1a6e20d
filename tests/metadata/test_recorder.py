"""The step recorder on real ML Metadata stores: SQLite and real PostgreSQL and MySQL (MariaDB) servers."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest
from ml_metadata.proto import metadata_store_pb2

from core.config import MetadataConfig
from metadata.lineage import LineageNotFoundError, model_lineage, walk
from metadata.recorder import PipelineRun, Trigger, properties_of
from metadata.store import connect

Execution = metadata_store_pb2.Execution


SERVER_FIXTURES = {"postgresql": "postgres_metadata", "mysql": "mysql_metadata"}


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        return connect(MetadataConfig(sqlite_path=tmp_path / "m.sqlite"))
    return connect(request.getfixturevalue(SERVER_FIXTURES[request.param]))


def _unique(store, tmp_path: Path) -> str:
    # The database servers are shared by the session: keep names apart per test.
    return tmp_path.name


def _run_chain(store, tmp_path: Path, run_id: str, parameter: int = 1, train_code: str | None = None):
    run = PipelineRun(store, f"taxi-{_unique(store, tmp_path)}", run_id, Trigger("test", {"why": "unit"}))
    raw = run.register_artifact("RawData", str(tmp_path / "data.csv"), {"sha256": f"sha-{tmp_path.name}"}, identity=("sha256",))
    out = tmp_path / f"examples-{parameter}"
    with run.step("Ingest", {"raw_data": raw}, {"parameter": parameter}) as ingest:
        if not ingest.cached:
            out.mkdir(exist_ok=True)
            ingest.output("examples", "Examples", str(out), {"rows": 10})
            ingest.record(rows=10, by_split={"train": 7, "eval": 3})
    model_dir = tmp_path / f"model-{parameter}"
    with run.step("Train", {"examples": ingest.outputs["examples"]}, {"learning_rate": 0.1}, code_digest=train_code) as train:
        if not train.cached:
            model_dir.mkdir(exist_ok=True)
            train.output("model", "Model", str(model_dir), {"fingerprint": f"fp-{parameter}"})
    with run.step("Push", {"model": train.outputs["model"]}, {}, use_cache=False) as push:
        push.output("pushed_model", "PushedModel", str(model_dir), {"model_name": f"m-{_unique(store, tmp_path)}", "version": parameter})
    return run, ingest, train, push


def test_a_step_records_inputs_outputs_parameters_and_code(store, tmp_path):
    run, ingest, train, push = _run_chain(store, tmp_path, f"run-a-{tmp_path.name}")
    [execution] = store.get_executions_by_id([ingest.execution_id])
    assert execution.last_known_state == Execution.COMPLETE
    props = properties_of(execution)
    assert props["parameters"] == {"parameter": 1}
    assert props["code_version"].startswith("git:")
    assert props["result_rows"] == 10 and props["result_by_split"] == {"train": 7, "eval": 3}
    events = store.get_events_by_execution_ids([ingest.execution_id])
    kinds = sorted((e.type, e.path.steps[0].key) for e in events)
    assert kinds == [(metadata_store_pb2.Event.INPUT, "raw_data"), (metadata_store_pb2.Event.OUTPUT, "examples")]
    contexts = store.get_contexts_by_execution(ingest.execution_id)
    run_context = next(c for c in contexts if c.name == run.run_id)
    assert properties_of(run_context)["trigger_kind"] == "test"
    assert json.loads(run_context.properties["trigger"].string_value) == {"why": "unit"}


def test_same_inputs_reuse_outputs_and_say_so(store, tmp_path):
    _, first_ingest, first_train, _ = _run_chain(store, tmp_path, f"run-1-{tmp_path.name}")
    _, ingest, train, _ = _run_chain(store, tmp_path, f"run-2-{tmp_path.name}")
    assert ingest.cached and train.cached
    assert ingest.cached_from == first_ingest.execution_id
    assert ingest.outputs["examples"].id == first_ingest.outputs["examples"].id
    assert train.outputs["model"].id == first_train.outputs["model"].id
    assert ingest.results["by_split"] == {"train": 7, "eval": 3}
    [cached] = store.get_executions_by_id([ingest.execution_id])
    assert cached.last_known_state == Execution.CACHED


def test_changed_parameters_or_missing_outputs_run_again(store, tmp_path):
    _, first, _, _ = _run_chain(store, tmp_path, f"run-1-{tmp_path.name}")
    _, other, _, _ = _run_chain(store, tmp_path, f"run-2-{tmp_path.name}", parameter=2)
    assert not other.cached
    Path(first.outputs["examples"].uri).rmdir()
    _, again, _, _ = _run_chain(store, tmp_path, f"run-3-{tmp_path.name}")
    assert not again.cached


def test_a_step_runs_again_when_its_own_code_changes_and_only_then(store, tmp_path):
    _, _, first, _ = _run_chain(store, tmp_path, f"run-1-{tmp_path.name}", train_code="trainer-code-v1")
    ingest_cached_before = first.cached
    _, ingest, same, _ = _run_chain(store, tmp_path, f"run-2-{tmp_path.name}", train_code="trainer-code-v1")
    assert same.cached and same.cached_from == first.execution_id and not ingest_cached_before
    _, ingest, changed, _ = _run_chain(store, tmp_path, f"run-3-{tmp_path.name}", train_code="trainer-code-v2")
    assert ingest.cached  # its code did not change
    assert not changed.cached and changed.fingerprint != first.fingerprint


def test_a_failing_step_is_recorded_as_failed_with_the_error(store, tmp_path):
    run = PipelineRun(store, "taxi", f"run-f-{tmp_path.name}")
    with pytest.raises(ValueError, match="fare column"):
        with run.step("Clean", {}, {}) as record:
            raise ValueError("fare column is all strings")
    [execution] = store.get_executions_by_id([record.execution_id])
    assert execution.last_known_state == Execution.FAILED
    assert "fare column is all strings" in execution.properties["error"].string_value
    assert not store.get_events_by_execution_ids([record.execution_id]) or all(
        e.type == metadata_store_pb2.Event.INPUT for e in store.get_events_by_execution_ids([record.execution_id])
    )


def test_lineage_walks_from_pushed_model_to_raw_data(store, tmp_path):
    _, ingest, train, push = _run_chain(store, tmp_path, f"run-l-{tmp_path.name}")
    graph = model_lineage(store, f"m-{_unique(store, tmp_path)}", 1)
    types = {a["type"] for a in graph.artifacts.values()}
    assert types == {"PushedModel", "Model", "Examples", "RawData"}
    assert {e["type"] for e in graph.executions.values()} == {"Push", "Train", "Ingest"}
    train_execution = graph.executions[train.execution_id]
    assert train_execution["properties"]["parameters"] == {"learning_rate": 0.1}
    down = walk(store, [ingest.outputs["examples"].id], direction="downstream")
    assert any(a["type"] == "PushedModel" for a in down.artifacts.values())
    with pytest.raises(LineageNotFoundError, match="no pushed model nope:3"):
        model_lineage(store, "nope", 3)


def _write_many(path: str, worker: int, count: int) -> None:
    store = connect(MetadataConfig(sqlite_path=Path(path)))
    run = PipelineRun(store, "taxi", f"worker-{worker}")
    for index in range(count):
        with run.step("Ingest", {}, {"worker": worker, "index": index}, use_cache=False) as record:
            record.output("examples", "Examples", f"/tmp/w{worker}-{index}", {"rows": index})


def test_two_processes_write_one_sqlite_store_at_once(tmp_path):
    path = tmp_path / "shared.sqlite"
    connect(MetadataConfig(sqlite_path=path))
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_many, args=(str(path), worker, 25)) for worker in range(2)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=300)
    assert [p.exitcode for p in workers] == [0, 0]
    store = connect(MetadataConfig(sqlite_path=path))
    assert len(store.get_executions_by_type("Ingest")) == 50
    assert len(store.get_artifacts_by_type("Examples")) == 50
