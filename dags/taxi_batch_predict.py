"""taxi_batch_predict: score a CSV of trips with the served model, as a Beam job, recorded in MLMD.

A declaration only: stdlib, pendulum, airflow.sdk and the DAGs' shared `mlops_dag_defaults` at
module level. The Beam job is `beam_jobs/batch_predict.py`, run in the ML runtime by
`mlops.airflow.run_batch_predict_task`.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task

from mlops_dag_defaults import config_path, default_args, ml_python

ML_PYTHON = ml_python()
CONFIG_PATH = config_path()
DEFAULT_ARGS = default_args()

DAG_DOC = """
### Score a CSV of trips with the served model

`score` runs the Beam job `beam_jobs/batch_predict.py`: it parses the CSV as ingest does (line
numbers kept; the `tips` column is not needed), scores the rows in batches with `RunInference`
through the SavedModel's `serving_examples` signature (the model's own TF Transform graph, so
batch and online predictions agree), and writes one record per row: the input's line number,
`probability`, `class` and `model_version`. Rows that cannot be parsed go to `rejected/` with the
reason; the run fails if more than 1 % of the rows are rejected.

* **Params**: `csv_path` (empty = the shipped data), `output_path` (empty =
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
    params={
        "csv_path": Param("", type="string", title="CSV to score",
                          description="A CSV of trips with the serving columns; empty = data/taxi/data.csv."),
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
        from mlops.airflow import run_batch_predict_task

        return run_batch_predict_task(config_path=config_path, dag_id=dag_id, airflow_run_id=airflow_run_id,
                                      run_type=run_type, params_json=params_json)

    score(config_path=CONFIG_PATH, dag_id="taxi_batch_predict", airflow_run_id="{{ run_id }}",
          run_type="{{ dag_run.run_type }}", params_json="{{ params | tojson }}")


taxi_batch_predict()
