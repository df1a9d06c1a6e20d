"""taxi_monitoring: hourly drift checks on the prediction logs; a failed check triggers retraining.

A declaration only: stdlib, pendulum and airflow.sdk/providers at module level. The checks run in
the ML runtime (`mlops.airflow.tasks.run_monitoring_task` -> `monitoring.monitor.run_monitoring`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pendulum
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import CronDataIntervalTimetable, ExceptionRetryPolicy, Param, RetryAction, RetryRule, dag, task

REPO_ROOT = Path(__file__).resolve().parent.parent
# The launcher's defaults (mlops.airflow.launcher.AirflowLayout), for a DagBag outside Airflow.
ML_PYTHON = os.environ.get("MLOPS_ML_PYTHON") or str(REPO_ROOT / ".venvs" / "ml" / "bin" / "python")
CONFIG_PATH = os.environ.get("MLOPS_CONFIG") or str(REPO_ROOT / "mlops.toml")
# mlops.airflow.tasks exits with this code when the window holds no predictions: the task is skipped.
EXIT_NOTHING_TO_CHECK = 99

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
    "max_retry_delay": pendulum.duration(minutes=5),
    "retry_policy": ExceptionRetryPolicy(rules=[RetryRule(
        exception="subprocess.CalledProcessError", action=RetryAction.FAIL,
        reason="the ML process reported an error a retry cannot fix (see the ERROR lines above)")]),
    "on_failure_callback": explain_failure,
}

DAG_DOC = """
### Drift checks on the served predictions → retraining

Every hour (and on demand) `check_drift` reads the gateway's prediction logs of the run's data
interval (or the explicit `window_start`/`window_end` params) and runs the checks of
`monitoring.checks`: data drift and training/serving skew per feature, missing-value rates, the
prediction distribution, and concept drift from labelled feedback. The result is recorded in ML
Metadata (a `DriftCheck` execution and its `DriftCheckResult`) whatever it says.

`decide` then branches:

* a check failed → `trigger_training` starts `taxi_training` with the reason and the evidence in
  its conf (`{"trigger": {"kind": "drift_check", "checks": [...], "evidence": {...},
  "drift_check_artifact_id": ..., "monitoring_run_id": ...}, "start": ..., "end": ...}`), which the
  training run records on its MLMD context; the training window is `retrain_start`..`retrain_end`.
* a check failed but a retraining would learn from exactly what trained the served model (same
  data, window, schema, hyperparameters and code: `mlops.retraining`) → `no_new_data` fails with
  "drift persists; no new data to learn from" and the evidence (recorded in MLMD as a
  `RetrainingDecision`), so people see it. The next windows with the same cause go to
  `no_retraining` and say it was already raised; new data or another failed check decides anew.
* all checks passed → `no_retraining` logs that nothing was triggered.
* the served model came from a drift-triggered retraining and fails one of the checks that
  triggered it again → `still_failing` fails with "still failing after retraining", naming the
  training run and the monitoring run that triggered it (a `RetrainingDecision` with decision
  `still_failing` in MLMD), alongside whatever else `decide` chose. Once per model and checks.

Both alerts are counted in `<pipeline_root>/metrics/retraining_alerts.prom`
(`mlops_retraining_alerts_total{decision="no_new_data"|"still_failing"}`, Prometheus text format
for node_exporter's textfile collector), rewritten from MLMD whenever one is recorded.

The data policy params (`production_data`, `production_logs`, `label_policy`,
`production_window_days`, `max_production_share`, `production_since`, `csv_days`; empty = `mlops.toml`'s `[data]`)
are passed on to the triggered `taxi_training` run and decide what the no-op check compares;
`production_logs` defaults to `log_dir`, the traffic that drifted.

A window without any logged prediction skips the run's tasks (nothing to check is not a failure).
"""


@dag(
    dag_id="taxi_monitoring",
    # Hourly, with data intervals: the run at 10:00 checks the requests logged from 09:00 to 10:00.
    schedule=CronDataIntervalTimetable("@hourly", timezone="UTC"),
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    doc_md=DAG_DOC,
    tags=["mlops", "monitoring"],
    # The defaults are mlops.airflow.tasks' DEFAULT_* values (tests/dags/test_dag_copies.py).
    params={
        "window_start": Param("", type="string", title="Window start",
                              description="ISO date/time (UTC) of the first logged request to check; "
                                          "empty = the run's data interval."),
        "window_end": Param("", type="string", title="Window end",
                            description="ISO date/time (UTC) after the last request to check; empty = the data interval."),
        "log_dir": Param("", type="string", description="Prediction log directory; empty = the gateway's default."),
        "retrain_start": Param("2013-01-01", type="string", format="date",
                               description="Training window start for a triggered retraining (YYYY-MM-DD)."),
        "retrain_end": Param("2017-01-01", type="string", format="date",
                             description="Training window end (exclusive) for a triggered retraining (YYYY-MM-DD)."),
        # The data policy (mlops.data_policy.POLICY_PARAMS): empty = mlops.toml's [data] value.
        "production_data": Param(None, type=["null", "boolean"], title="Production data",
                                 description="Learn from labelled production requests too; empty = [data] production_data."),
        "production_logs": Param("", type="string", title="Gateway log directory",
                                 description="The gateway's request/feedback log directory; empty = [data] production_logs_dir (here: log_dir when set)."),
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
                                  description="Only requests from this UTC day on (YYYY-MM-DD), or 'served_model': from "
                                              "the day the served model's training data ended; empty = [data] "
                                              "production_since (usually the whole window)."),
        "csv_days": Param(None, type=["null", "integer"], minimum=1, title="CSV days",
                          description="The last N days of the CSV before retrain_end (a sliding window); empty = retrain_start..retrain_end."),
    },
)
def taxi_monitoring() -> None:
    @task.external_python(task_id="check_drift", python=ML_PYTHON, expect_airflow=False, multiple_outputs=True,
                          skip_on_exit_code=EXIT_NOTHING_TO_CHECK,
                          doc_md="Runs every drift check on the window's prediction logs and records the result in MLMD.")
    def check_drift(config_path: str, dag_id: str, airflow_run_id: str, run_type: str, params_json: str,
                    interval_start: str, interval_end: str) -> dict:
        from mlops.airflow.tasks import run_monitoring_task

        return run_monitoring_task(config_path=config_path, dag_id=dag_id, airflow_run_id=airflow_run_id,
                                   run_type=run_type, params_json=params_json, interval_start=interval_start,
                                   interval_end=interval_end)

    @task.branch(task_id="decide", doc_md="A failed check → trigger_training, or no_new_data when retraining cannot "
                                          "change the model; all passed (or already raised) → no_retraining; "
                                          "and still_failing, once, when a retrained model fails the same check.")
    def decide(passed: bool, failed_checks: list, retraining: dict | None, still_failing: dict | None) -> list:
        alert = ["still_failing"] if (still_failing or {}).get("first_time") else []
        if passed:
            return ["no_retraining"]
        action = (retraining or {}).get("action", "retrain")
        if action == "no_new_data":
            return ["no_new_data", *alert]
        if action == "already_raised":
            return ["no_retraining", *alert]
        log.warning("drift checks failed: %s; triggering taxi_training", ", ".join(failed_checks))
        return ["trigger_training", *alert]

    @task(task_id="no_retraining", doc_md="Records that nothing was triggered, and why.")
    def no_retraining(rows: int, retraining: dict | None) -> str:
        if retraining:
            message = retraining["message"]
            log.warning(message)
        else:
            message = f"all drift checks passed on {rows} predictions: no retraining"
            log.info(message)
        return message

    @task(task_id="no_new_data", doc_md="Drift persists and a retraining would change nothing: fails, saying so, once per cause.")
    def no_new_data(retraining: dict) -> None:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(retraining["message"])

    @task(task_id="still_failing", doc_md="The served model came from a drift-triggered retraining and fails the "
                                          "same check again: fails, saying so and naming both runs, once.")
    def still_failing(alert: dict) -> None:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(alert["message"])

    check = check_drift(
        config_path=CONFIG_PATH,
        dag_id="taxi_monitoring",
        airflow_run_id="{{ run_id }}",
        run_type="{{ dag_run.run_type }}",
        params_json="{{ params | tojson }}",
        # Manual runs in Airflow 3 have no data interval: the task then uses the window params.
        interval_start="{{ dag_run.data_interval_start or '' }}",
        interval_end="{{ dag_run.data_interval_end or '' }}",
    )
    retrain = TriggerDagRunOperator(
        task_id="trigger_training",
        trigger_dag_id="taxi_training",
        conf=check["training_conf"],
        fail_when_dag_is_paused=True,
        doc_md="Starts taxi_training with the failed checks and their evidence in the run's conf.",
    )
    decide(check["passed"], check["failed_checks"], check["retraining"], check["still_failing"]) >> [
        retrain, no_retraining(check["rows"], check["retraining"]), no_new_data(check["retraining"]),
        still_failing(check["still_failing"])]


taxi_monitoring()
