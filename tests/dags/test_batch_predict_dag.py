"""taxi_batch_predict with `dag.test()`: the stable model scores a CSV as a Beam job, recorded in MLMD."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.dags.conftest import (
    parse_dag,
    push_tiny_models,
    run_in_ml,
    task_states,
    write_config,
    write_trips_sample,
    xcom_value,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, airflow_db: Path):
    root = tmp_path_factory.mktemp("batch_predict_dag")
    config = write_config(root)
    assert push_tiny_models(config, [1.0, -1.0]) == [1, 2]  # stable = 1 (the first push)
    write_trips_sample(root / "day.csv", 40)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLOPS_CONFIG", str(config))
        yield root


def test_the_stable_version_scores_every_row_and_the_run_is_recorded(workspace):
    dag_run = parse_dag("taxi_batch_predict").test(run_conf={"csv_path": str(workspace / "day.csv")})

    assert dag_run.state == "success", task_states(dag_run)
    result = xcom_value(dag_run, "score")
    assert (result["model_version"], result["rows_read"], result["rows_scored"], result["rows_rejected"]) == (1, 40, 40, 0)
    output = Path(result["output_path"])
    assert output.parent == workspace / "pipeline" / "batch_predictions"  # a run-scoped directory
    records = [json.loads(line) for path in sorted((output / "predictions").glob("*.jsonl"))
               for line in path.read_text().splitlines()]
    assert sorted(r["line"] for r in records) == list(range(2, 42))
    assert {r["model_version"] for r in records} == {1}
    assert all(0.0 <= r["probability"] <= 1.0 and r["class"] in (0, 1) for r in records)

    recorded = run_in_ml(
        """
        import json, sys
        from metadata.recorder import properties_of
        from metadata.store import connect
        from core.config import load_config

        store = connect(load_config(sys.argv[1]).metadata)
        [execution] = store.get_executions_by_id([int(sys.argv[2])])
        events = store.get_events_by_execution_ids([execution.id])
        artifacts = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
        types = {t.id: t.name for t in store.get_artifact_types()}
        [context] = [c for c in store.get_contexts_by_execution(execution.id) if c.type_id == store.type_id("PipelineRun")]
        print(json.dumps({
            "type": store.get_execution_types_by_id([execution.type_id])[0].name,
            "state": execution.last_known_state,
            "results": {k: v for k, v in properties_of(execution).items() if k.startswith("result_")},
            "inputs": sorted((types[artifacts[e.artifact_id].type_id], properties_of(artifacts[e.artifact_id]).get("version"))
                             for e in events if e.type == e.INPUT),
            "outputs": sorted((types[artifacts[e.artifact_id].type_id], artifacts[e.artifact_id].uri)
                              for e in events if e.type == e.OUTPUT),
            "context": properties_of(context),
        }))
        """,
        str(workspace / "mlops.toml"), str(result["execution_id"]),
    )
    assert recorded["type"] == "BatchPredict" and recorded["state"] == 3  # COMPLETE
    assert recorded["results"]["result_model_version"] == 1 and recorded["results"]["result_rows_scored"] == 40
    assert recorded["inputs"] == [["PushedModel", 1], ["RawData", None]]
    assert recorded["outputs"] == [["BatchPredictions", str(output)]]
    assert recorded["context"]["airflow_dag_id"] == "taxi_batch_predict"
    assert recorded["context"]["airflow_run_id"] == dag_run.run_id


def test_an_explicit_version_and_csv_output_are_honoured(workspace):
    out = workspace / "scored_v2"
    dag_run = parse_dag("taxi_batch_predict").test(run_conf={
        "csv_path": str(workspace / "day.csv"), "model_version": 2, "output_format": "csv", "output_path": str(out)})

    assert dag_run.state == "success", task_states(dag_run)
    [written] = list((out / "predictions").glob("predictions-*.csv"))
    lines = written.read_text().splitlines()
    assert lines[0] == "line,probability,class,model_version" and len(lines) == 41
    assert all(line.endswith(",2") for line in lines[1:])


def test_a_missing_csv_fails_the_task_once_and_scores_nothing(workspace):
    dag_run = parse_dag("taxi_batch_predict").test(run_conf={"csv_path": str(workspace / "absent.csv")})

    assert dag_run.state == "failed"
    assert task_states(dag_run)["score"] == ("failed", 1)


def test_a_folder_of_shards_is_scored_with_each_rows_file_and_line(workspace):
    shards = workspace / "shards"
    shards.mkdir()
    write_trips_sample(shards / "part-0.csv", 5)
    write_trips_sample(shards / "part-1.csv", 7)

    dag_run = parse_dag("taxi_batch_predict").test(run_conf={"csv_path": str(shards)})

    assert dag_run.state == "success", task_states(dag_run)
    result = xcom_value(dag_run, "score")
    assert (result["rows_read"], result["rows_scored"]) == (12, 12)
    records = [json.loads(line) for path in sorted((Path(result["output_path"]) / "predictions").glob("*.jsonl"))
               for line in path.read_text().splitlines()]
    assert sorted((r["file"], r["line"]) for r in records) == (
        [("part-0.csv", line) for line in range(2, 7)] + [("part-1.csv", line) for line in range(2, 9)])
