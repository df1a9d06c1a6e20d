"""OpenLineage events of the drift check and the rollout, and the Airflow task run as their parent.

Every event is read back through the client's classes and the facets' JSON schemas
(tests/metadata/test_openlineage.py `read_events`). The slow test follows the chain raw CSV ->
model -> pushed version -> served version through the events alone, after a real pipeline, real
drift checks and a real blue-green rollout on a real gateway.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import pytest
from openlineage.client.event_v2 import RunState
from openlineage.client.uuid import generate_static_uuid

from core.config import MetadataConfig
from metadata import openlineage as ol
from metadata import openlineage_airflow as ola
from metadata.recorder import PipelineRun, Trigger
from metadata.store import connect
from tests.metadata.test_openlineage import read_events

AIRFLOW_TASK = {"AIRFLOW_CTX_DAG_ID": "taxi_training", "AIRFLOW_CTX_TASK_ID": "ingest", "AIRFLOW_CTX_TRY_NUMBER": "2",
                "AIRFLOW_CTX_DAG_RUN_ID": "manual__2026-12-06T00:52:04.123456+00:00_Xk3PqZ9a"}


@pytest.fixture(autouse=True)
def outside_airflow(monkeypatch):
    """Each test says itself whether it runs under Airflow."""
    for name in (*AIRFLOW_TASK, "AIRFLOW_CTX_LOGICAL_DATE", "AIRFLOW__OPENLINEAGE__NAMESPACE", "OPENLINEAGE_NAMESPACE"):
        monkeypatch.delenv(name, raising=False)


def events_file(pipeline_root: Path) -> Path:
    return pipeline_root / ol.DEFAULT_EVENTS_FILE


# --- the Airflow task run as the parent ------------------------------------------------------


def test_the_airflow_task_run_is_named_as_the_openlineage_provider_names_it():
    logical = {**AIRFLOW_TASK, "AIRFLOW_CTX_LOGICAL_DATE": "2026-12-05T00:00:00+00:00"}
    task = ola.current_task_run(logical)
    assert (task.namespace, task.job_name, task.try_number, task.map_index) == ("default", "taxi_training.ingest", 2, -1)
    # The provider's build_task_instance_run_id: "<namespace>.<dag_id>.<task_id>.<try_number>.<map_index>" at the logical date.
    instant = dt.datetime(2026, 12, 5, tzinfo=dt.timezone.utc)
    assert task.run_id == str(generate_static_uuid(instant=instant, data=b"default.taxi_training.ingest.2.-1"))
    assert task.run_id == "01a24380-2000-75dd-ae7a-0466da8bdff6"  # pinned: a change of derivation would orphan our events
    # Airflow 3 runs without a logical date (manual, asset-triggered): run_after, from the run id Airflow generated.
    after = ola.current_task_run(AIRFLOW_TASK)
    assert after.date == dt.datetime(2026, 12, 6, 0, 52, 4, 123456, tzinfo=dt.timezone.utc) and after.run_id != task.run_id
    assert ola.current_task_run({**logical, "AIRFLOW__OPENLINEAGE__NAMESPACE": "prod"}).namespace == "prod"
    assert ola.current_task_run({**logical, "OPENLINEAGE_NAMESPACE": "team"}).namespace == "team"
    # A run id chosen by hand carries no date: no parent rather than a wrong one; outside Airflow, none.
    assert ola.current_task_run({**AIRFLOW_TASK, "AIRFLOW_CTX_DAG_RUN_ID": "my-own-run"}) is None
    assert ola.current_task_run({}) is None


def test_a_step_run_by_airflow_names_the_task_run_as_its_parent(tmp_path, monkeypatch):
    for name, value in AIRFLOW_TASK.items():
        monkeypatch.setenv(name, value)
    store = connect(MetadataConfig(sqlite_path=tmp_path / "mlmd.sqlite"))
    run = PipelineRun(store, "taxi", "taxi_training__manual", Trigger("manual"), airflow_dag_id="taxi_training",
                      airflow_run_id=AIRFLOW_TASK["AIRFLOW_CTX_DAG_RUN_ID"], events=ol.step_events(tmp_path / "pipeline", "taxi"))
    raw = run.register_artifact("RawData", str(tmp_path / "data.csv"), {"sha256": "abc"}, identity=("sha256",))
    with run.step("Ingest", {"raw_data": raw}, {}) as step:
        step.output("examples", "Examples", str(tmp_path / "examples"), {"rows": 1})
    expected = ola.current_task_run(AIRFLOW_TASK)
    for event in read_events(events_file(tmp_path / "pipeline")):
        parent = event.run.facets["parent"]
        assert (parent.job.namespace, parent.job.name, parent.run.runId) == ("default", "taxi_training.ingest", expected.run_id)
        assert event.run.facets["mlops_execution"].pipelineRun == "taxi_training__manual"  # our own run stays named


# --- the drift check -------------------------------------------------------------------------


def test_a_drift_check_reads_the_windows_request_log_partitions_and_reports_every_check(tmp_path):
    store = connect(MetadataConfig(sqlite_path=tmp_path / "mlmd.sqlite"))
    run = PipelineRun(store, "taxi-monitoring", "monitor-1", Trigger("schedule"),
                      events=ol.step_events(tmp_path / "pipeline", "taxi-monitoring"))
    log_dir = tmp_path / "logs"
    for day in ("2026-11-19", "2026-11-20", "2026-11-21", "2026-11-22"):
        (log_dir / "requests" / f"date={day}").mkdir(parents=True)
    window = {"window_start": "2026-11-20T23:00:00+00:00", "window_end": "2026-11-22T00:00:00+00:00"}
    prediction_log = run.register_artifact("PredictionLog", str(log_dir), {**window, "rows": 3}, identity=("window_start",))
    statistics = run.register_artifact("ExampleStatistics", str(tmp_path / "statistics"), {}, identity=())
    schema = run.register_artifact("Schema", str(tmp_path / "schema.pbtxt"), {"sha256": "s"}, identity=("sha256",))
    checks = [{"name": "data_drift", "passed": False, "value": 0.41, "threshold": 0.2, "evidence": {"drifted_features": ["payment_type"]}},
              {"name": "skew", "passed": True, "value": None, "threshold": 0.2, "evidence": {"judged": False}}]
    out = tmp_path / "drift_check"
    out.mkdir()
    (out / "result.json").write_text(json.dumps({"passed": False, "checks": checks}))
    with run.step("DriftCheck", {"prediction_log": prediction_log, "baseline_statistics": statistics, "schema": schema},
                  window, use_cache=False) as record:
        record.output("result", "DriftCheckResult", str(out), {
            "passed": 0, "model_name": "taxi", "model_version": 1, "rows": 3, "failed_checks": ["data_drift"],
            "report": str(out / "report.html"), **window})
    start, complete = read_events(events_file(tmp_path / "pipeline"))
    assert complete.job.name == "taxi-monitoring.driftcheck" and start.run.runId == complete.run.runId
    partitions = [str((log_dir / "requests" / f"date={day}").resolve()) for day in ("2026-11-20", "2026-11-21")]
    for event in (start, complete):
        names = [d.name for d in event.inputs]
        assert names[-2:] == partitions and str(log_dir) in names and str(tmp_path / "schema.pbtxt") in names
    assert "mlops_drift_check" not in start.run.facets
    verdict = complete.run.facets["mlops_drift_check"]
    assert (verdict.passed, verdict.failedChecks, verdict.modelVersion, verdict.rows) == (False, ["data_drift"], 1, 3)
    assert verdict.checks == [{"name": "data_drift", "passed": False, "value": 0.41, "threshold": 0.2},
                              {"name": "skew", "passed": True, "threshold": 0.2}]  # not judged: no value
    execution = complete.run.facets["mlops_execution"]
    assert execution.executionId == record.execution_id and execution.trigger == {"kind": "schedule"} and execution.codeVersion
    [result] = complete.outputs
    assert result.facets["mlops_artifact"].artifactId == record.outputs["result"].id


# --- the rollout -----------------------------------------------------------------------------


def _rollout_config(tmp_path: Path) -> Path:
    path = tmp_path / "mlops.toml"
    path.write_text("\n".join([
        'pipeline_name = "taxi"', f'pipeline_root = "{tmp_path / "pipeline"}"', "[serving]",
        f'model_base_dir = "{tmp_path / "models"}"', f'model_config_file = "{tmp_path / "models.config"}"',
        "[metadata]", f'sqlite_path = "{tmp_path / "mlmd.sqlite"}"']) + "\n")
    return path


def _push_version(config_path: Path, version: int):
    from core.config import load_config

    config = load_config(config_path)
    path = config.serving.model_base_dir / "taxi" / str(version)
    path.mkdir(parents=True)
    run = PipelineRun(connect(config.metadata), "taxi", f"push-{version}", Trigger("test"))
    return run.register_artifact("PushedModel", str(path), {"model_name": "taxi", "version": version}, identity=("version",))


def _task_recording(decision):
    """A rollout task as the DAG runs it, wrapped like run_rollout_task, that records `decision` with the real _record_deploy."""
    from mlops import steps
    from mlops.airflow.rollout_lineage import emits_rollout_lineage
    from mlops.airflow.rollout_tasks import _record_deploy
    from mlops.airflow.tasks import exit_on_user_error, load_task_config, pipeline_run_id

    @emits_rollout_lineage
    def task(action, *, config_path, dag_id, airflow_run_id, run_type, params_json):
        with exit_on_user_error(action):
            ctx = steps.open_run(load_task_config(config_path), pipeline_run_id(dag_id, airflow_run_id), Trigger("manual"),
                                 airflow_dag_id=dag_id, airflow_run_id=airflow_run_id)
            decided = decision(ctx)
            return _record_deploy(ctx, action, decided["version"], params_json, decided)

    return task


def test_a_rollout_starts_when_it_begins_and_completes_with_the_served_version_its_evidence_and_approval(tmp_path):
    config_path = _rollout_config(tmp_path)
    pushed = _push_version(config_path, 2)
    approval = {"decision": "approved", "responded_by": "ana", "responded_at": "2026-12-06T01:00:00+00:00",
                "evidence": {"observations": 2}, "canary_deploy_execution": 7}
    observations = [{"share": 10, "healthy": True, "reasons": [], "canary": {"requests": 40}, "stable": {"requests": 360}}]
    task = _task_recording(lambda ctx: {"decision": "promoted", "version": 2, "previous_stable": 1, "share": 100,
                                        "reasons": ["approved by ana"], "observations": observations, "approval": approval})
    outcome = task("canary", config_path=str(config_path), dag_id="taxi_rollout", airflow_run_id="r1", run_type="manual",
                   params_json={"gateway_url": "http://gateway.example:8000"})
    start, complete = read_events(events_file(tmp_path / "pipeline"))
    assert (start.eventType, complete.eventType) == (RunState.START, RunState.COMPLETE)
    assert start.run.runId == complete.run.runId and start.job.name == complete.job.name == "taxi.deploy"
    assert start.run.facets["mlops_rollout"].decision is None and start.run.facets["mlops_rollout"].action == "canary"
    [pushed_in] = complete.inputs
    assert pushed_in.name == pushed.uri and pushed_in.facets["mlops_artifact"].artifactId == pushed.id
    [served] = complete.outputs
    assert (served.namespace, served.name) == ("http://gateway.example:8000", "v1/models/taxi/versions/2")
    facet = served.facets["mlops_served_model"]
    assert (facet.modelVersion, facet.label, facet.pushedModel, facet.previousStable) == (2, "stable", pushed.uri, 1)
    rollout = complete.run.facets["mlops_rollout"]
    assert (rollout.decision, rollout.modelVersion, rollout.approval) == ("promoted", 2, approval)
    assert rollout.evidence["observations"] == observations
    assert complete.run.facets["mlops_execution"].executionId == outcome["execution_id"]


def test_a_rolled_back_canary_serves_nothing_new_and_an_early_error_ends_the_run_with_fail(tmp_path):
    from core.errors import DataError
    from mlops.airflow.tasks import EXIT_DATA_ERROR

    config_path = _rollout_config(tmp_path)
    _push_version(config_path, 3)
    call = dict(config_path=str(config_path), dag_id="taxi_rollout", run_type="manual", params_json={})
    rolled_back = _task_recording(lambda ctx: {"decision": "rolled_back", "version": 3, "stable": 1, "share": 10,
                                               "reasons": ["error rate 0.2 > 0.05"]})
    rolled_back("canary", airflow_run_id="r2", **call)

    def unreachable(ctx):
        raise DataError("taxi version 4 is not in the model base path")

    with pytest.raises(SystemExit) as failed:
        _task_recording(unreachable)("canary", airflow_run_id="r3", **call)
    assert failed.value.code == EXIT_DATA_ERROR
    start, complete, fail_start, fail = read_events(events_file(tmp_path / "pipeline"))
    assert complete.outputs == [] and complete.run.facets["mlops_rollout"].reasons == ["error rate 0.2 > 0.05"]
    assert (fail_start.eventType, fail.eventType) == (RunState.START, RunState.FAIL) and fail.run.runId == fail_start.run.runId
    assert fail.run.facets["errorMessage"].message == "DataError: taxi version 4 is not in the model base path"
    assert fail.job.name == "taxi.deploy" and fail.outputs == []


# --- the chain in the events of real runs ----------------------------------------------------


@pytest.mark.slow
def test_the_events_alone_lead_from_the_served_version_back_to_the_raw_csv_and_show_the_drift_checks(tmp_path_factory, taxi_rows):
    import os
    import subprocess
    import sys

    from core.config import load_config
    from mlops.airflow.rollout_tasks import run_rollout_task
    from tests.conftest import PROJECT_ROOT, TAXI_CSV
    from tests.monitoring import logs
    from tests.monitoring.story import story

    taxi = logs.taxi_frame(taxi_rows)
    taxi["year"] = logs.year_of(taxi)  # as tests/monitoring/conftest.py's `taxi`
    root = tmp_path_factory.mktemp("lineage-story")
    told = story("openlineage-sqlite", root, MetadataConfig(backend="sqlite", sqlite_path=root / "mlmd.sqlite"), taxi)
    config = load_config(told.config_file)
    token = "lineage-test-admin-token-0123456789"
    process = subprocess.Popen([sys.executable, "-m", "tests.dags.serving_stack", str(told.config_file)], cwd=PROJECT_ROOT,
                               env={**os.environ, "MLOPS_GATEWAY_ADMIN_TOKEN": token}, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    try:
        ready = process.stdout.readline()
        assert ready, "the serving stack did not start (see its stderr above)"
        gateway = json.loads(ready)["gateway_url"]
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("MLOPS_GATEWAY_ADMIN_TOKEN", token)
            switched = run_rollout_task("blue_green", config_path=str(told.config_file), dag_id="taxi_rollout",
                                        airflow_run_id="switch-2", run_type="manual",
                                        params_json={"version": 2, "gateway_url": gateway})
    finally:
        process.stdin.close()
        process.wait(timeout=120)
    assert switched["decision"] == "switched"

    events = read_events(events_file(config.pipeline_root))
    complete = [e for e in events if e.eventType == RunState.COMPLETE]
    assert sorted(e.run.runId for e in events if e.eventType == RunState.START) == sorted(e.run.runId for e in complete)
    producers = {(d.namespace, d.name): e for e in complete for d in e.outputs}
    [served] = [d for e in complete if e.job.name == "taxi.deploy" for d in e.outputs]
    assert (served.namespace, served.name) == (gateway, "v1/models/taxi/versions/2")
    jobs, frontier, sources = [], [served], []
    while frontier:
        dataset = frontier.pop()
        producer = producers.get((dataset.namespace, dataset.name))
        if producer is None:
            sources.append(dataset)
        elif producer.run.runId not in {j.run.runId for j in jobs}:
            jobs.append(producer)
            frontier += producer.inputs
    steps = {job.job.name for job in jobs}
    assert {f"taxi.{s}" for s in ("deploy", "push", "evaluate", "train", "transform", "validate", "clean", "ingest")} <= steps
    raw = [d for d in sources if "mlops_artifact" in d.facets and d.facets["mlops_artifact"].artifactType == "RawData"]
    assert raw and {d.name for d in raw} == {str(TAXI_CSV)}
    assert {d.facets["version"].datasetVersion for d in raw} == {hashlib.sha256(TAXI_CSV.read_bytes()).hexdigest()}
    # The retraining's push is the one served; its run names the drift check that triggered it. (Other pushes
    # are in the chain too: evaluate compares the candidate with the model served before.)
    [deploy] = [job for job in jobs if job.job.name == "taxi.deploy"]
    [pushed] = deploy.inputs
    push = producers[(pushed.namespace, pushed.name)]
    assert push.job.name == "taxi.push" and pushed.name == str(config.serving.model_base_dir / "taxi" / "2")
    assert push.run.facets["mlops_execution"].trigger["kind"] == told.retrain_trigger.kind == "drift_check"

    checks = [e for e in complete if e.job.name == "taxi-monitoring.driftcheck"]
    assert [c.run.facets["mlops_drift_check"].passed for c in checks][:2] == [True, False]
    drifted = checks[1]
    assert set(drifted.run.facets["mlops_drift_check"].failedChecks) == {c.name for c in told.drifted.failed}
    partitions = [d.name for d in drifted.inputs if "/requests/date=" in d.name]
    assert partitions == [str((told.log_dir / "requests" / "date=2026-11-20").resolve())]
    assert drifted.run.facets["mlops_execution"].executionId > 0
    assert any(d.facets.get("mlops_artifact") and d.facets["mlops_artifact"].artifactType == "ExampleStatistics"
               for d in drifted.inputs)
