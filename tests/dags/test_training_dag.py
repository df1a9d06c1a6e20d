"""taxi_training end to end with `dag.test()`: every step in the ML runtime, a pushed model, its lineage.

The order is the story a data engineer lives: a corrupt CSV fails the run at ingest with a clear
message (not retried, nothing pushed), the fixed file trains and pushes, and the pushed model's
MLMD lineage names this Airflow run and what triggered it.
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


def write_trips(path: Path, *, corrupt_every: int | None = None) -> Path:
    """The shipped trips; with `corrupt_every`, every n-th fare is the text 'n/a' (far above ingest's 1 % limit)."""
    with TAXI_CSV.open(newline="") as source, path.open("w", newline="") as target:
        reader = csv.DictReader(source)
        writer = csv.DictWriter(target, fieldnames=reader.fieldnames)
        writer.writeheader()
        for index, row in enumerate(reader):
            if corrupt_every and index % corrupt_every == 0:
                row["fare"] = "n/a"
            writer.writerow(row)
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, airflow_db: Path):
    root = tmp_path_factory.mktemp("training_dag")
    config = write_config(root)
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


def test_a_corrupt_csv_fails_ingest_once_with_a_clear_message_and_pushes_nothing(workspace, corrupt_run):
    dag_run, output = corrupt_run
    states = task_states(dag_run)
    assert dag_run.state == "failed"
    assert states["ingest"] == ("failed", 1)  # a data error is not retried
    assert {states[step][0] for step in STEPS[1:]} == {"upstream_failed"}
    assert not (workspace / "models" / "taxi").exists()
    [error] = [line for line in output.splitlines() if "ERROR ingest failed: DataError" in line]
    assert "trips.csv" in error and "unparseable" in error, error
    assert re.search(r"column 'fare' has \d+ values that are not a finite number .*'n/a'", output)
    assert "ERROR ingest: fix the input or the parameters" in output
    assert "Task ingest of run" in output and "not retried" in output  # the failure callback's reason


def test_after_fixing_the_input_a_rerun_trains_and_pushes(workspace, fixed_run):
    states = task_states(fixed_run)
    assert fixed_run.state == "success", states
    assert states == {step: ("success", 1) for step in STEPS}
    version_dir = workspace / "models" / "taxi" / "1"
    assert (version_dir / "saved_model.pb").is_file()
    assert "stable" in (workspace / "models.config").read_text()
    outcomes = xcom_value(fixed_run, "push")
    assert list(outcomes) == list(STEPS)  # each task passes every outcome so far on to the next
    assert outcomes["push"]["results"]["version"] == 1
    assert outcomes["evaluate"]["results"]["blessed"] == 1
    assert re.match(r"\d+ rows read", outcomes["ingest"]["summary"])


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

