"""taxi_batch_predict: score a CSV of trips with the served model, as a Beam job, recorded in MLMD.

A declaration only: stdlib, pendulum and airflow.sdk at module level. The Beam job is
`beam_jobs/batch_predict.py`, run in the ML runtime by `mlops.airflow.tasks.run_batch_predict_task`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pendulum
from airflow.sdk import ExceptionRetryPolicy, Param, RetryAction, RetryRule, dag, task

REPO_ROOT = Path(__file__).resolve().parent.parent
# The launcher's defaults (mlops.airflow.launcher.AirflowLayout), for a DagBag outside Airflow.
ML_PYTHON = os.environ.get("MLOPS_ML_PYTHON") or str(REPO_ROOT / ".venvs" / "ml" / "bin" / "python")
CONFIG_PATH = os.environ.get("MLOPS_CONFIG") or str(REPO_ROOT / "mlops.toml")

log = logging.getLogger(__name__)

# mlops.airflow.tasks ends the ML process with these codes for errors no retry can fix
# (a copy: tests/dags/test_dag_copies.py ties it to the EXIT_* constants there).
USER_ERRORS = {2: "bad input or parameters", 3: "the model is not blessed", 4: "the canary was rolled back"}


def explain_failure(context: dict) -> None:
    """on_failure_callback: one log line that says why the task failed and what to do."""
    ti, error = context["ti"], context.get("exception")
    code = getattr(error, "returncode", None)
    if code in USER_ERRORS:
        reason = f"{USER_ERRORS[code]} (see the ERROR lines above); not retried: fix it and trigger a new run"
    elif code is not None:
        reason = f"the ML process ended with exit code {code} (killed by the system?); see the log above"
    else:
        reason = f"{type(error).__name__}: {str(error).strip()[-600:]}"
    log.error("Task %s of run %s failed (try %s): %s", ti.task_id, ti.run_id, ti.try_number, reason)


DEFAULT_ARGS = {
    "owner": "mlops",
    "retries": 2,
    "retry_delay": pendulum.duration(seconds=30),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": pendulum.duration(minutes=10),
    "retry_policy": ExceptionRetryPolicy(rules=[RetryRule(
        exception="subprocess.CalledProcessError", action=RetryAction.FAIL,
        reason="the ML process reported an error a retry cannot fix (see the ERROR lines above)")]),
    "on_failure_callback": explain_failure,
}

DAG_DOC = """
### Score a CSV of trips with the served model

`score` runs the Beam job `beam_jobs/batch_predict.py`: it parses the CSV as ingest does (line
numbers kept; the `tips` column is not needed), scores the rows in batches with `RunInference`
through the SavedModel's `serving_examples` signature (the model's own TF Transform graph, so
batch and online predictions agree), and writes one record per row: the input's line number,
`probability`, `class` and `model_version`. Rows that cannot be parsed go to `rejected/` with the
reason; the run fails if more than 1 % of the rows are rejected.

* **Params**: `csv_path` (a CSV, or a folder of CSVs scored in name order, each prediction then
  naming its `file`; empty = the shipped data), `output_path` (empty =
  `var/pipeline/batch_predictions/<run>/`), `model_version` (empty = the version labelled `stable`
  in TF Serving's `models.config`), `output_format` (jsonl or csv).
* The run is a `BatchPredict` execution in ML Metadata: inputs the CSV (`RawData`) and the
  `PushedModel` version used, output the `BatchPredictions`.
"""


@dag(
    dag_id="taxi_batch_predict",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    default_args=DEFAULT_ARGS,
    doc_md=DAG_DOC,
    tags=["mlops", "serving"],
    # The defaults are mlops.airflow.tasks' DEFAULT_* values (tests/dags/test_dag_copies.py).
    params={
        "csv_path": Param("", type="string", title="CSV to score",
                          description="A CSV of trips with the serving columns, plain or .gz/.bz2/.xz, or a folder of "
                                      "them (read in name order); empty = data/taxi/data.csv."),
        "output_path": Param("", type="string", title="Output directory",
                             description="Must not hold an earlier run's output; empty = a run-scoped directory."),
        "model_version": Param(None, type=["null", "integer"], minimum=1,
                               description="The model version to score with; empty = the `stable` one."),
        "output_format": Param("jsonl", type="string", enum=["jsonl", "csv"], description="jsonl or csv."),
    },
)
def taxi_batch_predict() -> None:
    @task.external_python(task_id="score", python=ML_PYTHON, expect_airflow=False, multiple_outputs=False,
                          doc_md="The batch scoring Beam job, recorded in MLMD with the model version used.")
    def score(config_path: str, dag_id: str, airflow_run_id: str, run_type: str, params_json: str) -> dict:
        from mlops.airflow.tasks import run_batch_predict_task

        return run_batch_predict_task(config_path=config_path, dag_id=dag_id, airflow_run_id=airflow_run_id,
                                      run_type=run_type, params_json=params_json)

    score(config_path=CONFIG_PATH, dag_id="taxi_batch_predict", airflow_run_id="{{ run_id }}",
          run_type="{{ dag_run.run_type }}", params_json="{{ params | tojson }}")


taxi_batch_predict()
