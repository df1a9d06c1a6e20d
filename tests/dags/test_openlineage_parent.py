"""A step run by Airflow names the Airflow task run as its OpenLineage parent, with the ids the
OpenLineage provider gives that task run, so a lineage service joins Airflow's events and ours.

`dag.test()` of a one-task DAG whose `@task.external_python` task records a step in the ML runtime
(real MLMD, the real openlineage-python client, a file transport); the expected run id is computed
here from the task instance Airflow ran, the way `apache-airflow-providers-openlineage` does
(`build_task_instance_run_id`, with the client's `generate_static_uuid`, in the ML runtime: the
provider and the client are not in the Airflow environment).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tests.dags.conftest import ML_PYTHON, run_in_ml, task_states, xcom_value

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


@pytest.mark.slow
def test_a_step_under_airflow_names_the_task_run_the_openlineage_provider_names(airflow_db, tmp_path: Path):
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "openlineage_parent_probe.py").write_text(DAG_FILE % {"python": str(ML_PYTHON), "root": str(tmp_path)})
    bag = DagBag(dag_folder=str(dags))
    assert bag.import_errors == {}, bag.import_errors
    # dag.test() runs serialized DAGs: this one is serialized under the configured bundle, like the project's.
    DagBundlesManager().sync_bundles_to_db()
    sync_bag_to_db(bag, "dags-folder", None)
    dag_run = bag.dags["openlineage_parent_probe"].test()
    assert task_states(dag_run)["record_step"][0] == "success", task_states(dag_run)
    _, try_number = task_states(dag_run)["record_step"]
    events = [json.loads(line) for line in Path(xcom_value(dag_run, "record_step")["events"]).read_text().splitlines()]
    assert [e["eventType"] for e in events] == ["START", "COMPLETE"]

    # The provider: namespace "default" unless configured, job "<dag_id>.<task_id>", run id from the
    # logical date (or run_after when the run has none) and "<namespace>.<dag_id>.<task_id>.<try>.<map_index>".
    date = (dag_run.logical_date or dag_run.run_after).isoformat()
    expected = run_in_ml("""
        import datetime as dt, json, sys
        from openlineage.client.uuid import generate_static_uuid
        print(json.dumps(str(generate_static_uuid(instant=dt.datetime.fromisoformat(sys.argv[1]), data=sys.argv[2].encode()))))
    """, date, f"default.openlineage_parent_probe.record_step.{try_number}.-1")
    for event in events:
        parent = event["run"]["facets"]["parent"]
        assert (parent["job"]["namespace"], parent["job"]["name"]) == ("default", "openlineage_parent_probe.record_step")
        assert parent["run"]["runId"] == expected
