"""taxi_training: the training pipeline, one task per step, in the ML runtime.

A declaration only: stdlib, pendulum and airflow.sdk at module level (the scheduler parses this
file every few seconds). Each task runs `mlops.airflow.tasks.run_training_task` in the ML environment
through `@task.external_python`, with explicit arguments: the config file, the Airflow run, the
params as JSON, and the outcomes of the steps before it (XCom).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pendulum
from airflow.sdk import Asset, ExceptionRetryPolicy, Param, RetryAction, RetryRule, dag, task

REPO_ROOT = Path(__file__).resolve().parent.parent
# The launcher's defaults (mlops.airflow.launcher.AirflowLayout), for a DagBag outside Airflow.
ML_PYTHON = os.environ.get("MLOPS_ML_PYTHON") or str(REPO_ROOT / ".venvs" / "ml" / "bin" / "python")
CONFIG_PATH = os.environ.get("MLOPS_CONFIG") or str(REPO_ROOT / "mlops.toml")
# taxi_rollout is scheduled on this asset: every successful push starts a rollout.
PUSHED_MODEL = Asset(name="taxi_pushed_model", uri="mlops://models/taxi")

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
    # Transient failures (a locked metadata DB, a slow disk, a restarting server) are retried with
    # exponential backoff; a user error (the exit codes above -> CalledProcessError) fails at once.
    "retries": 2,
    "retry_delay": pendulum.duration(seconds=30),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": pendulum.duration(minutes=10),
    "retry_policy": ExceptionRetryPolicy(rules=[RetryRule(
        exception="subprocess.CalledProcessError", action=RetryAction.FAIL,
        reason="the ML process reported an error a retry cannot fix (see the ERROR lines above)")]),
    "on_failure_callback": explain_failure,
}

# What every task passes to the ML runtime: the config, the Airflow run and the params.
RUN = {
    "config_path": CONFIG_PATH,
    "dag_id": "taxi_training",
    "airflow_run_id": "{{ run_id }}",
    "run_type": "{{ dag_run.run_type }}",
    "params_json": "{{ params | tojson }}",
}
ML_TASK = {"python": ML_PYTHON, "expect_airflow": False, "multiple_outputs": False}
# One task per pipeline step, in order (a copy of mlops.steps.STEP_NAMES: tests/dags/test_dag_copies.py).
STEP_DOCS = {
    "ingest": "CSV → tf.Example splits for the window (Beam); rejected rows kept with reasons.",
    "clean": "Duplicates, missing and impossible values → cleaned examples + rejected rows with reasons (Beam).",
    "validate": "TFDV statistics of the cleaned rows against the curated schema, and the share of rejected rows "
                "against its limits; anomalies or a broken feed stop the run.",
    "transform": "TF Transform analyze-and-transform; the transform graph ships inside the model.",
    "train": "Trains the wide-and-deep model and exports a SavedModel with both serving signatures.",
    "evaluate": "Metrics overall and per slice against the served model; a model that is not blessed stops the run.",
    "push": "Copies the blessed model into TF Serving's model base path (atomic) and updates the `taxi_pushed_model` asset.",
}
# Beside validate: transform's Beam job before validation has judged its input, and its teardown.
PREPARE_TRANSFORM_DOC = (
    "Setup task beside `validate`: from `transform_beside_validation_from_rows` cleaned rows (mlops.toml) on, when "
    "`clean` ran (not reused) and the worker has 2+ cores, runs transform's Beam job on the cleaned rows into "
    "`<run dir>/.transform-prepared`, so `transform` only adopts it once validation passed (~30 s of ~200 at 1.5M "
    "rows). Otherwise, or when that job fails, it ends green without preparing and says why in its log; `transform` "
    "then runs the job itself and reports any error.")
DISCARD_DOC = (
    "Teardown of `prepare_transform`: removes `<run dir>/.transform-prepared` once `transform` is done, whatever "
    "happened: nothing but a record after an adoption, the whole prepared transform (~1 GB at 1.5M rows) when "
    "validation failed.")

DAG_DOC = """
### Train, evaluate and push the taxi tip model

One task per pipeline step, each recorded in ML Metadata under one `PipelineRun` context that names
this DAG, the Airflow run id and what triggered it (manual, or a drift check with its evidence):

```
ingest → clean ─┬→ validate ────────────┬→ transform → train → evaluate → push
                └→ prepare_transform ───┤      │
                   (setup)              └──────┴→ discard_prepared_transform (teardown)
```

* **Transform beside validation**: `prepare_transform` (a setup task) runs transform's Beam job while
  `validate` runs, from `transform_beside_validation_from_rows` cleaned rows on (mlops.toml, 1M; below
  that, when `clean` was reused, or on one core it ends at once and says why). `transform` needs both,
  adopts the prepared output only because `validate` passed (and only if it was made from the same
  cleaned rows by the same code), and otherwise runs the job itself. Failed validation: `transform`
  never runs and the teardown `discard_prepared_transform` removes the prepared folder.

* **Params**: the data window `start` (inclusive) and `end` (exclusive) as dates, `csv_path`
  (empty = the shipped Chicago taxi data), and hyperparameters that override `mlops.toml`
  (`learning_rate`, `train_steps`, `batch_size`, `hidden_units`, `seed`; empty = the config's).
  `trigger` is set by `taxi_monitoring` when a drift check triggers retraining.
* **Data policy**: `production_data`, `production_logs`, `label_policy`, `production_window_days`,
  `max_production_share` override `mlops.toml`'s `[data]` keys for the run (empty = the config's),
  e.g. "the CSV's last `csv_days` days before `end` plus every labelled production request of the
  last `production_window_days` days (from `production_since` on), production at most
  `max_production_share` of the examples".
  The ingest step records the policy it applied and how many production rows it learned from.
  `evaluate` also compares the candidate with the served model on the held-out recent labelled
  traffic (the production rows of the eval split).
* **Bad rows**: `ingest` and `clean` reject them one by one, each with its line and reason, and the
  run goes on. `validate` judges what is left: schema anomalies in the cleaned rows, or more rejected
  rows than `[data] max_rejected_share` (per reason: `max_rejected_share_by_reason`) allows, fail it
  with a report (the task log and `validate/rejected_share.txt`).
* **Stops before push, visibly**: schema anomalies fail `validate`, a model that is not better than
  the served one fails `evaluate` (`ModelNotBlessedError`). The task log says what and why.
* **Retries**: I/O failures are retried twice with exponential backoff (30 s, 60 s); data errors are
  not retried. Every run writes below `var/pipeline/runs/<dag>__<run id>/`, so a retried task is
  idempotent, and unchanged steps reuse earlier outputs (MLMD cache).
* **After push** the `taxi_pushed_model` asset is updated: `taxi_rollout` starts a canary.

Lineage of the pushed model: `mlops lineage model taxi:<version>`.
"""


@dag(
    dag_id="taxi_training",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    doc_md=DAG_DOC,
    tags=["mlops", "training"],
    # The defaults are mlops.airflow.tasks' DEFAULT_* values and HYPERPARAMETERS (tests/dags/test_dag_copies.py).
    params={
        "start": Param("2013-01-01", type="string", format="date", title="Window start",
                       description="First day of the training window (YYYY-MM-DD, UTC, inclusive)."),
        "end": Param("2015-01-01", type="string", format="date", title="Window end",
                     description="Day after the training window (YYYY-MM-DD, UTC, exclusive); after start."),
        "csv_path": Param("", type="string", title="CSV file",
                          description="The trips CSV, plain or .gz/.bz2/.xz, or a folder of them (read in name order); "
                                      "empty = the shipped data (data/taxi/data.csv)."),
        "learning_rate": Param(None, type=["null", "number"], exclusiveMinimum=0, exclusiveMaximum=1,
                               description="Adam learning rate; empty = mlops.toml's."),
        "train_steps": Param(None, type=["null", "integer"], minimum=1, maximum=1_000_000,
                             description="Training steps; empty = mlops.toml's."),
        "batch_size": Param(None, type=["null", "integer"], minimum=1, maximum=65_536,
                            description="Examples per step; empty = mlops.toml's."),
        "hidden_units": Param(None, type=["null", "array"], items={"type": "integer", "minimum": 1}, minItems=1,
                              description="Units of the deep part's layers, e.g. [128, 64, 32]; empty = mlops.toml's."),
        "seed": Param(None, type=["null", "integer"], minimum=0, description="Random seed; empty = mlops.toml's."),
        "beam_args": Param(None, type=["null", "array"], items={"type": "string", "pattern": "^--"}, minItems=1,
                           title="Beam options",
                           description="Pipeline options for every Beam step of this run, e.g. "
                                       '["--runner=PortableRunner", "--job_endpoint=flink-job-server:8099", '
                                       '"--environment_type=EXTERNAL", "--environment_config=beam-workers:50000"]; '
                                       "empty = mlops.toml's (beam_args, or the choice by input size)."),
        # The data policy (mlops.data_policy.POLICY_PARAMS): empty = mlops.toml's [data] value.
        "production_data": Param(None, type=["null", "boolean"], title="Production data",
                                 description="Learn from labelled production requests too; empty = [data] production_data."),
        "production_logs": Param("", type="string", title="Gateway log directory",
                                 description="The gateway's request/feedback log directory; empty = [data] production_logs_dir."),
        "label_policy": Param(None, type=["null", "string"], enum=[None, "ground_truth", "ground_truth_or_human"],
                              description="What counts as a label: ground truth only, or a reviewer's decision too; "
                                          "empty = [data] label_policy."),
        "production_window_days": Param(None, type=["null", "integer"], minimum=1,
                                        description="Labelled requests of the last N UTC days (sliding); "
                                                    "empty = [data] production_window_days."),
        "max_production_share": Param(None, type=["null", "number"], minimum=0, exclusiveMaximum=1,
                                      description="Cap: production rows at most this share of the examples; "
                                                  "empty = [data] max_production_share."),
        "production_since": Param("", type="string", title="Production since",
                                  description="Only requests from this UTC day on (YYYY-MM-DD); "
                                              "empty = [data] production_since (usually the whole window)."),
        "csv_days": Param(None, type=["null", "integer"], minimum=1, title="CSV days",
                          description="The last N days of the CSV before end (a sliding window); empty = start..end."),
        "trigger": Param({}, type="object", title="Trigger",
                         description="Who asked for this run. Set by taxi_monitoring: "
                                     '{"kind": "drift_check", "checks": [...], "evidence": {...}}. '
                                     "Empty = a manual run."),
    },
)
def taxi_training() -> None:
    def step_task(step: str, upstream=None, prepared=None):
        """The task running `step` in the ML runtime; it returns every outcome so far, for the next task (XCom)."""
        # push announces the new model version: taxi_rollout is scheduled on that asset.
        options = {"outlets": [PUSHED_MODEL]} if step == "push" else {}

        @task.external_python(task_id=step, doc_md=STEP_DOCS[step], **ML_TASK, **options)
        def run_step(step: str, config_path: str, dag_id: str, airflow_run_id: str, run_type: str, params_json: str,
                     upstream: dict | None = None, prepared: dict | None = None) -> dict:
            from mlops.airflow.tasks import run_training_task

            return run_training_task(step, config_path=config_path, dag_id=dag_id, airflow_run_id=airflow_run_id,
                                     run_type=run_type, params_json=params_json, upstream=upstream, prepared=prepared)

        handed = {name: value for name, value in (("upstream", upstream), ("prepared", prepared)) if value is not None}
        return run_step(step=step, **RUN, **handed)

    @task.external_python(task_id="prepare_transform", doc_md=PREPARE_TRANSFORM_DOC, **ML_TASK)
    def prepare_transform(config_path: str, dag_id: str, airflow_run_id: str, run_type: str, params_json: str,
                          upstream: dict) -> dict:
        from mlops.airflow.tasks import run_prepare_transform_task

        return run_prepare_transform_task(config_path=config_path, dag_id=dag_id, airflow_run_id=airflow_run_id,
                                          run_type=run_type, params_json=params_json, upstream=upstream)

    @task.external_python(task_id="discard_prepared_transform", doc_md=DISCARD_DOC, **ML_TASK)
    def discard_prepared_transform(prepared: dict) -> dict:
        from mlops.airflow.tasks import run_discard_prepared_transform_task

        return run_discard_prepared_transform_task(prepared)

    cleaned = step_task("clean", upstream=step_task("ingest"))
    validated = step_task("validate", upstream=cleaned)
    # A setup task, so its teardown removes the folder whatever happens in between. Airflow requires a
    # setup's work tasks to need its success (trigger rule all_success: a skipped or failed setup would
    # skip or fail transform too), so it ends green when it prepared nothing or its Beam job failed,
    # saying why in its log and XCom: in the UI red stays for what stopped the run (a failed validate
    # marks transform upstream_failed), and transform runs the job itself and reports its error.
    prepared = prepare_transform(**RUN, upstream=cleaned)
    transformed = step_task("transform", upstream=validated, prepared=prepared)
    transformed >> discard_prepared_transform(prepared).as_teardown(setups=prepared)
    outcomes = transformed
    for step in list(STEP_DOCS)[list(STEP_DOCS).index("transform") + 1:]:
        outcomes = step_task(step, upstream=outcomes)


taxi_training()
