"""taxi_training end to end with `dag.test()`: every step in the ML runtime, a pushed model, its lineage.

The order is the story a data engineer lives: a corrupt CSV fails the run at ingest with a clear
message (not retried, nothing pushed), the fixed file trains and pushes, and the pushed model's
MLMD lineage names this Airflow run and what triggered it. The config starts transform's Beam job
beside validation from 1 cleaned row: the fixed run's transform adopts it, and a run whose
validation fails leaves neither a prepared transform nor a Transform execution.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from tests.dags.conftest import TAXI_CSV, captured_logs, parse_dag, run_in_ml, task_states, write_config, xcom_value

pytestmark = pytest.mark.slow

WINDOW = {"start": "2013-01-01", "end": "2013-04-01"}
STEPS = ("ingest", "clean", "validate", "transform", "train", "evaluate", "push")
# Beside validate: the setup that runs transform's Beam job early, and its teardown.
BESIDE = ("prepare_transform", "discard_prepared_transform")


def write_trips(path: Path, *, corrupt_every: int | None = None, column: str = "fare", value: str = "n/a") -> Path:
    """The shipped trips; with `corrupt_every`, every n-th `column` is `value` (by default the fare 'n/a':
    far above ingest's 1 % limit)."""
    with TAXI_CSV.open(newline="") as source, path.open("w", newline="") as target:
        reader = csv.DictReader(source)
        writer = csv.DictWriter(target, fieldnames=reader.fieldnames)
        writer.writeheader()
        for index, row in enumerate(reader):
            if corrupt_every and index % corrupt_every == 0:
                row[column] = value
            writer.writerow(row)
    return path


def run_dir(root: Path, dag_run) -> Path:
    """Where the steps of `dag_run` write (mlops.airflow.tasks.pipeline_run_id)."""
    return root / "pipeline" / "runs" / re.sub(r"[^A-Za-z0-9._-]+", "_", f"taxi_training__{dag_run.run_id}").strip("_")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, airflow_db: Path):
    root = tmp_path_factory.mktemp("training_dag")
    config = write_config(root, transform_beside_validation_from_rows=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLOPS_CONFIG", str(config))  # read by the DAG file when it is parsed
        yield root


@pytest.fixture(scope="module")
def corrupt_run(workspace: Path):
    trips = write_trips(workspace / "trips.csv", corrupt_every=10)
    dag = parse_dag("taxi_training")
    lines: list[str] = []
    with captured_logs(lines):
        dag_run = dag.test(run_conf={**WINDOW, "csv_path": str(trips)})
    return dag_run, "\n".join(lines)


@pytest.fixture(scope="module")
def fixed_run(workspace: Path, corrupt_run):
    write_trips(workspace / "trips.csv")  # the same path, now with good data
    dag = parse_dag("taxi_training")
    return dag.test(run_conf={**WINDOW, "csv_path": str(workspace / "trips.csv"), "hidden_units": [16, 8]})


@pytest.fixture(scope="module")
def invalid_run(tmp_path_factory: pytest.TempPathFactory, airflow_db: Path):
    """A run whose validation fails (half the trips paid in 'Bitcoin', outside the schema's domain),
    in a workspace of its own: its MLMD holds this run only."""
    root = tmp_path_factory.mktemp("training_dag_invalid")
    trips = write_trips(root / "bitcoin.csv", corrupt_every=2, column="payment_type", value="Bitcoin")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLOPS_CONFIG", str(write_config(root, transform_beside_validation_from_rows=1)))
        dag_run = parse_dag("taxi_training").test(run_conf={**WINDOW, "csv_path": str(trips)})
    return root, dag_run


def test_a_corrupt_csv_fails_ingest_once_with_a_clear_message_and_pushes_nothing(workspace, corrupt_run):
    dag_run, output = corrupt_run
    states = task_states(dag_run)
    assert dag_run.state == "failed"
    assert states["ingest"] == ("failed", 1)  # a data error is not retried
    assert {states[task][0] for task in STEPS[1:] + BESIDE} == {"upstream_failed"}
    assert not (workspace / "models" / "taxi").exists()
    [error] = [line for line in output.splitlines() if "ERROR ingest failed: DataError" in line]
    assert "trips.csv" in error and "unparseable" in error, error
    assert re.search(r"column 'fare' has \d+ values that are not a finite number .*'n/a'", output)
    assert "ERROR ingest: fix the input or the parameters" in output
    assert "Task ingest of run" in output and "not retried" in output  # the failure callback's reason


def test_after_fixing_the_input_a_rerun_trains_and_pushes(workspace, fixed_run):
    states = task_states(fixed_run)
    assert fixed_run.state == "success", states
    assert states == {task: ("success", 1) for task in STEPS + BESIDE}
    version_dir = workspace / "models" / "taxi" / "1"
    assert (version_dir / "saved_model.pb").is_file()
    assert "stable" in (workspace / "models.config").read_text()
    outcomes = xcom_value(fixed_run, "push")
    assert list(outcomes) == list(STEPS)  # each task passes every outcome so far on to the next
    assert outcomes["push"]["results"]["version"] == 1
    assert outcomes["evaluate"]["results"]["blessed"] == 1
    assert re.match(r"\d+ rows read", outcomes["ingest"]["summary"])


def test_transform_adopts_the_job_that_ran_beside_validation_and_its_folder_is_removed(workspace, fixed_run):
    prepared = xcom_value(fixed_run, "prepare_transform")
    folder = run_dir(workspace, fixed_run) / ".transform-prepared"
    assert prepared["folder"] == str(folder) and prepared["prepared"] is True, prepared
    assert re.fullmatch(r"[\d,]+ cleaned rows >= transform_beside_validation_from_rows 1: "
                        r"transform's Beam job starts beside validation", prepared["reason"]), prepared
    transform = xcom_value(fixed_run, "push")["transform"]
    assert transform["results"]["beside_validation"] is True
    assert "(its Beam job ran beside validation)" in transform["summary"]
    # The transform's outputs were moved out of the folder; the teardown removed what was left.
    assert Path(transform["outputs"]["transform_graph"]["uri"]).parent == run_dir(workspace, fixed_run) / "transform"
    assert xcom_value(fixed_run, "discard_prepared_transform")["removed"] == str(folder)
    assert not folder.exists()


def test_a_failed_validation_never_transforms_and_leaves_no_prepared_transform(invalid_run):
    root, dag_run = invalid_run
    states = task_states(dag_run)
    assert dag_run.state == "failed", states
    assert states["validate"] == ("failed", 1)  # schema anomalies: not retried
    assert states["prepare_transform"] == ("success", 1) and xcom_value(dag_run, "prepare_transform")["prepared"] is True
    assert {states[step][0] for step in STEPS[3:]} == {"upstream_failed"}  # transform never ran
    # The teardown ran after the setup and the failed work, and removed a whole prepared transform.
    assert states["discard_prepared_transform"] == ("success", 1)
    discarded = xcom_value(dag_run, "discard_prepared_transform")
    assert discarded["removed"] == str(run_dir(root, dag_run) / ".transform-prepared") and discarded["bytes"] > 100_000
    assert not (run_dir(root, dag_run) / ".transform-prepared").exists()
    assert not (run_dir(root, dag_run) / "transform").exists()
    executions = run_in_ml(
        """
        import json, sys
        from core.config import load_config
        from metadata.store import connect

        store = connect(load_config(sys.argv[1]).metadata)
        print(json.dumps({kind: len(store.get_executions_by_type(kind)) for kind in ("Validate", "Transform")}))
        """,
        str(root / "mlops.toml"),
    )
    assert executions == {"Validate": 1, "Transform": 0}


def test_the_pushed_models_lineage_names_the_airflow_run_and_its_trigger(workspace, corrupt_run, fixed_run):
    lineage = run_in_ml(
        """
        import json, sys
        from metadata.lineage import model_lineage
        from metadata.recorder import properties_of
        from metadata.store import connect
        from core.config import load_config

        config = load_config(sys.argv[1])
        store = connect(config.metadata)
        graph = model_lineage(store, "taxi", 1)
        runs = {}
        for context in store.get_contexts_by_type("PipelineRun"):
            runs[context.name] = properties_of(context)
        executions = sorted((e["type"], e["state"], e["run"].get("name", "")) for e in graph.executions.values())
        train = [e for e in graph.executions.values() if e["type"] == "Train" and e["state"] == "COMPLETE"]
        print(json.dumps({"runs": runs, "executions": executions, "train_parameters": train[0]["properties"]["parameters"],
                          "artifact_types": sorted({a["type"] for a in graph.artifacts.values()})}))
        """,
        str(workspace / "mlops.toml"),
    )
    run_name = f"taxi_training__{fixed_run.run_id}"
    run_name = re.sub(r"[^A-Za-z0-9._-]+", "_", run_name).strip("_")
    context = lineage["runs"][run_name]
    assert context["airflow_dag_id"] == "taxi_training"
    assert context["airflow_run_id"] == fixed_run.run_id
    assert context["trigger_kind"] == "manual"
    # The failed run has its own context, distinct from the run that pushed.
    assert {props["airflow_run_id"] for props in lineage["runs"].values()} == {corrupt_run[0].run_id, fixed_run.run_id}
    completed_in_run = {(kind, state) for kind, state, run in lineage["executions"] if run == run_name}
    assert {(kind, "COMPLETE") for kind in ("Ingest", "Validate", "Clean", "Transform", "Train", "Evaluate", "Push")} <= completed_in_run
    assert {"RawData", "Schema", "Examples", "CleanedExamples", "TransformGraph", "Model", "ModelBlessing",
            "PushedModel"} <= set(lineage["artifact_types"])
    assert lineage["train_parameters"]["hidden_units"] == [16, 8]  # the run's param overrode mlops.toml
    assert lineage["train_parameters"]["train_steps"] == 100  # mlops.toml's value where no param was given

