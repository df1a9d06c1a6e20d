"""A step run by Airflow names the Airflow task run as its OpenLineage parent, with the ids the
OpenLineage provider gives that task run, so a lineage service joins Airflow's events and ours.

`dag.test()` of a one-task DAG whose `@task.external_python` task records a step in the ML runtime
(real MLMD, the real openlineage-python client, a file transport), in a fresh Airflow process so
the provider reads the environment it is given:
- with no OpenLineage configuration (the provider disables itself), the expected run id is
  re-derived here the way `apache-airflow-providers-openlineage` does (`build_task_instance_run_id`);
- with the settings the launcher gives every Airflow process (`openlineage_env`), the provider's own
  task events land in the file ours go to, and the join is checked against them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mlops.airflow.launcher import openlineage_env
from tests.dags.conftest import ML_PYTHON, PROJECT_ROOT, run_in_ml, write_config

JOB = "openlineage_parent_probe.record_step"

DAG_FILE = textwrap.dedent('''
    import pendulum
    from airflow.sdk import dag, task

    @dag(dag_id="openlineage_parent_probe", schedule=None, start_date=pendulum.datetime(2024, 1, 1, tz="UTC"), catchup=False)
    def openlineage_parent_probe():
        @task.external_python(task_id="record_step", python=%(python)r, expect_airflow=False)
        def record_step(root: str) -> dict:
            from pathlib import Path

            from core.config import MetadataConfig
            from metadata.openlineage import DEFAULT_EVENTS_FILE, step_events
            from metadata.recorder import PipelineRun, Trigger
            from metadata.store import connect

            store = connect(MetadataConfig(sqlite_path=Path(root) / "mlmd.sqlite"))
            run = PipelineRun(store, "taxi", "probe", Trigger("test"), events=step_events(Path(root) / "pipeline", "taxi"))
            raw = run.register_artifact("RawData", str(Path(root) / "data.csv"), {"sha256": "abc"}, identity=("sha256",))
            with run.step("Ingest", {"raw_data": raw}, {}) as step:
                step.output("examples", "Examples", str(Path(root) / "examples"), {"rows": 1})
            return {"events": str(Path(root) / "pipeline" / DEFAULT_EVENTS_FILE)}

        record_step(%(root)r)

    openlineage_parent_probe()
''')


# Runs in the Airflow environment's python, in the session's AIRFLOW_HOME (migrated by `airflow_db`).
RUN_PROBE = textwrap.dedent('''
    import json, sys
    from pathlib import Path
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.models import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    bag = DagBag(dag_folder=sys.argv[1])
    assert bag.import_errors == {}, bag.import_errors
    # dag.test() runs serialized DAGs: this one is serialized under the configured bundle, like the project's.
    DagBundlesManager().sync_bundles_to_db()
    sync_bag_to_db(bag, "dags-folder", None)
    dag_run = bag.dags["openlineage_parent_probe"].test()
    with create_session() as session:
        ti = session.query(TaskInstance).filter_by(dag_id=dag_run.dag_id, run_id=dag_run.run_id, task_id="record_step").one()
        xcom = session.query(XComModel).filter_by(dag_id=dag_run.dag_id, run_id=dag_run.run_id, task_id="record_step",
                                                  key="return_value").one_or_none()
        value = xcom.value if xcom is not None else None
        Path(sys.argv[2]).write_text(json.dumps({"state": str(getattr(ti.state, "value", ti.state)), "try_number": ti.try_number,
                          "date": (dag_run.logical_date or dag_run.run_after).isoformat(),
                          "events": (json.loads(value) if isinstance(value, (str, bytes)) else value or {}).get("events")}))
''')


def run_probe(tmp_path: Path, environ: dict[str, str]) -> dict:
    """Writes the probe DAG, runs it with dag.test() in a fresh Airflow process with `environ`; what it ran."""
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "openlineage_parent_probe.py").write_text(DAG_FILE % {"python": str(ML_PYTHON), "root": str(tmp_path)})
    probe_file = tmp_path / "probe.json"  # not stdout: Airflow's logging writes there too
    result = subprocess.run([sys.executable, "-c", RUN_PROBE, str(dags), str(probe_file)], capture_output=True, text=True, timeout=900,
                            cwd=PROJECT_ROOT, env={**environ, "PYTHONPATH": str(PROJECT_ROOT)})
    assert result.returncode == 0, result.stderr[-4000:]
    probe = json.loads(probe_file.read_text())
    assert probe["state"] == "success", (probe, result.stderr[-4000:])
    probe["log"] = result.stdout + result.stderr
    return probe


def read_events(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def provider_complaints(log: str) -> list[str]:
    """The OpenLineage provider's warnings and errors in a dag.test() log (structlog: `[warning  ] ... [airflow.providers.openlineage...]`)."""
    return [line for line in log.splitlines()
            if "providers.openlineage" in line and any(f"[{level}" in line for level in ("warning", "error", "critical"))]


def openlineage_free(environ: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if not k.startswith(("OPENLINEAGE", "AIRFLOW__OPENLINEAGE"))}


@pytest.mark.slow
def test_a_step_under_airflow_names_the_task_run_the_openlineage_provider_names(airflow_db, tmp_path: Path):
    probe = run_probe(tmp_path, openlineage_free(dict(os.environ)))
    events = read_events(probe["events"])
    # The provider, not configured, disabled itself quietly: every event in our file is ours.
    assert [(e["job"]["name"], e["eventType"]) for e in events] == [("taxi.ingest", "START"), ("taxi.ingest", "COMPLETE")]
    assert provider_complaints(probe["log"]) == []

    # The provider: namespace "default" unless configured, job "<dag_id>.<task_id>", run id from the
    # logical date (or run_after when the run has none) and "<namespace>.<dag_id>.<task_id>.<try>.<map_index>".
    expected = run_in_ml("""
        import datetime as dt, json, sys
        from openlineage.client.uuid import generate_static_uuid
        print(json.dumps(str(generate_static_uuid(instant=dt.datetime.fromisoformat(sys.argv[1]), data=sys.argv[2].encode()))))
    """, probe["date"], f"default.{JOB}.{probe['try_number']}.-1")
    for event in events:
        parent = event["run"]["facets"]["parent"]
        assert (parent["job"]["namespace"], parent["job"]["name"]) == ("default", JOB)
        assert parent["run"]["runId"] == expected


@pytest.mark.slow
def test_under_the_launchers_settings_the_providers_task_events_and_ours_join_in_one_file(airflow_db, tmp_path: Path):
    assert importlib.util.find_spec("airflow.providers.openlineage") is not None, (
        f"{sys.prefix} has no apache-airflow-providers-openlineage: sync it with requirements/airflow.lock")
    environ = {**openlineage_free(dict(os.environ)), "MLOPS_CONFIG": str(write_config(tmp_path))}
    settings = openlineage_env(environ)
    events_file = tmp_path / "pipeline" / "openlineage" / "events.jsonl"
    assert json.loads(settings["AIRFLOW__OPENLINEAGE__TRANSPORT"]) == {"type": "file", "log_file_path": str(events_file),
                                                                         "append": True}
    probe = run_probe(tmp_path, {**environ, **settings})
    assert Path(probe["events"]) == events_file
    events = read_events(events_file)
    theirs = [e for e in events if e["job"]["name"] == JOB]
    ours = [e for e in events if e["job"]["name"] == "taxi.ingest"]
    # The provider's own task events (its producer, the provider's facets), not ones we wrote.
    assert [e["eventType"] for e in theirs] == ["START", "COMPLETE"], [(e["job"]["name"], e["eventType"]) for e in events]
    assert all(e["producer"].startswith("https://github.com/apache/airflow/tree/providers-openlineage/") for e in theirs)
    assert all("airflow" in e["run"]["facets"] for e in theirs)
    assert {e["run"]["runId"] for e in theirs} == {theirs[0]["run"]["runId"]}
    assert [e["eventType"] for e in ours] == ["START", "COMPLETE"]
    for event in ours:
        parent = event["run"]["facets"]["parent"]
        assert parent["run"]["runId"] == theirs[0]["run"]["runId"]
        assert (parent["job"]["namespace"], parent["job"]["name"]) == (theirs[0]["job"]["namespace"], theirs[0]["job"]["name"])
    assert theirs[0]["job"]["namespace"] == "mlops-suite"
    assert provider_complaints(probe["log"]) == []
