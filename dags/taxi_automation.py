"""taxi_automation: moves the served model up a degree of automation when it has earned it and a person approves,
and down at once when its agreement with the reviewers fell.

A declaration only: stdlib, pendulum and airflow.sdk/providers at module level. The work runs in the
ML runtime (`mlops.airflow.automation_tasks` -> `mlops.automation`).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path

import pendulum
from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import CronTriggerTimetable, ExceptionRetryPolicy, Param, RetryAction, RetryRule, dag, task

REPO_ROOT = Path(__file__).resolve().parent.parent
# The launcher's defaults (mlops.airflow.launcher.AirflowLayout), for a DagBag outside Airflow.
ML_PYTHON = os.environ.get("MLOPS_ML_PYTHON") or str(REPO_ROOT / ".venvs" / "ml" / "bin" / "python")
CONFIG_PATH = os.environ.get("MLOPS_CONFIG") or str(REPO_ROOT / "mlops.toml")
# mlops.airflow.automation_tasks exits with this code when no approval was asked: the task is skipped.
EXIT_NOTHING_TO_DO = 99
# A day to answer: the reviewer may be in another time zone; no answer leaves the model where it is.
DEFAULT_RESPONSE_TIMEOUT_SECONDS = 86_400

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
### Degrees of automation: shadow → assist → partial → full

`check_readiness` reads the gateway's policy (the degree the served model answers in) and the
model's reviews of the last `automation.window_days` (mlops.toml), and judges them against the
readiness rule for the next degree (agreement overall and per slice, reviewed cases, override and
referral rates; `mlops automation status` shows the same). `decide` then branches:

* **up** → `ask_approval` shows the evidence in *Required Actions* and asks a person. *Approve* →
  `apply_move` changes the gateway's policy through its admin API and records an `AutomationChange`
  in ML Metadata naming who approved. *Reject*, or no answer before `response_timeout` →
  `record_refusal` records that nothing moved, and why.
* **down** (agreement fell under the current degree's floor) → `move_down` moves one degree down
  at once: a safe change needs no approval. Recorded the same way.
* **stay** → `stay` logs why.
"""


class RecordedApproval(ApprovalOperator):
    """An ApprovalOperator whose answer is kept as the XCom `answer` before a Reject skips what follows.

    A Reject ends the task by skipping its downstream tasks, so its return value never becomes an
    XCom; record_refusal still needs to know who rejected, and when.
    """

    def execute_complete(self, context: dict, event: dict) -> dict:
        if "error" not in event:
            responded_by = event.get("responded_by_user") or {}
            context["ti"].xcom_push("answer", {"chosen": (event.get("chosen_options") or [""])[0],
                                               "responded_by": responded_by.get("name") or "",
                                               "responded_at": str(event.get("responded_at") or "")})
        return super().execute_complete(context=context, event=event)


def set_response_timeout(context: dict) -> None:
    """pre_execute of ask_approval: the `response_timeout` param (seconds) becomes the operator's response timeout."""
    seconds = int(context["params"].get("response_timeout") or DEFAULT_RESPONSE_TIMEOUT_SECONDS)
    context["task"].response_timeout = dt.timedelta(seconds=seconds)


@dag(
    dag_id="taxi_automation",
    # Daily, and no run at the moment it is switched on (no start date: the next 06:00 UTC).
    schedule=CronTriggerTimetable("0 6 * * *", timezone="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    doc_md=DAG_DOC,
    tags=["mlops", "automation", "human-in-the-loop"],
    params={
        "response_timeout": Param(DEFAULT_RESPONSE_TIMEOUT_SECONDS, type="integer", minimum=1,
                                  description="Seconds a person has to approve a move up; no answer = no move."),
        "log_dir": Param("", type="string", description="The gateway's prediction log directory; empty = var/logs/predictions."),
        "gateway_url": Param("", type="string", description="The gateway's base URL; empty = MLOPS_GATEWAY_URL or http://127.0.0.1:8000."),
    },
)
def taxi_automation() -> None:
    common = {"config_path": CONFIG_PATH, "dag_id": "taxi_automation", "airflow_run_id": "{{ run_id }}",
              "run_type": "{{ dag_run.run_type }}", "params_json": "{{ params | tojson }}"}
    # The approval's answer (RecordedApproval's XCom `answer`), read in templates: a task taking it as an
    # argument would be a direct downstream of ask_approval, which a Reject skips.
    chosen = "{{ (ti.xcom_pull(task_ids='ask_approval', key='answer') or {}).get('chosen', '') }}"
    responded_by = "{{ (ti.xcom_pull(task_ids='ask_approval', key='answer') or {}).get('responded_by', '') }}"
    responded_at = "{{ (ti.xcom_pull(task_ids='ask_approval', key='answer') or {}).get('responded_at', '') }}"
    readiness = "ti.xcom_pull(task_ids='check_readiness', key='{}')"

    @task.external_python(task_id="check_readiness", python=ML_PYTHON, expect_airflow=False, multiple_outputs=True,
                          doc_md="Judges the served model's reviews against the readiness rule of its degree.")
    def check_readiness(config_path: str, dag_id: str, airflow_run_id: str, run_type: str, params_json: str) -> dict:
        from mlops.airflow.automation_tasks import check_readiness_task

        return check_readiness_task(config_path=config_path, dag_id=dag_id, airflow_run_id=airflow_run_id,
                                    run_type=run_type, params_json=params_json)

    @task.branch(task_id="decide", doc_md="up → ask_approval; down → move_down; otherwise stay.")
    def decide(action: str) -> str:
        return {"up": "ask_approval", "down": "move_down"}.get(action, "stay")

    @task(task_id="stay", doc_md="Logs that the model stays in its degree.")
    def stay(model: str, current: str, following: str | None) -> str:
        message = f"{model} stays in {current}" + (f": not ready for {following}" if following else "")
        log.info(message)
        return message

    @task.external_python(task_id="move_down", python=ML_PYTHON, expect_airflow=False,
                          doc_md="Agreement fell under the floor: one degree down at once, no approval needed.")
    def move_down(config_path: str, dag_id: str, airflow_run_id: str, run_type: str, params_json: str, to: str) -> dict:
        from mlops.airflow.automation_tasks import move_down_task

        return move_down_task(config_path=config_path, dag_id=dag_id, airflow_run_id=airflow_run_id, run_type=run_type,
                              params_json=params_json, to=to)

    ask_approval = RecordedApproval(
        task_id="ask_approval",
        subject="Move {{ " + readiness.format("model") + " }} from {{ " + readiness.format("current") + " }} to {{ "
                + readiness.format("next") + " }}?",
        body="{{ " + readiness.format("evidence") + " }}",
        defaults="Reject",  # no answer before the timeout: no move
        pre_execute=set_response_timeout,
        doc_md="A person approves or rejects the move up (Required Actions page, or REST API v2 hitlDetails).",
    )

    @task.external_python(task_id="apply_move", python=ML_PYTHON, expect_airflow=False,
                          doc_md="Approved: moves up through the gateway's admin API, recording who approved.")
    def apply_move(config_path: str, dag_id: str, airflow_run_id: str, run_type: str, params_json: str, to: str,
                   chosen: str, responded_by: str) -> dict:
        from mlops.airflow.automation_tasks import apply_approved_move_task

        return apply_approved_move_task(config_path=config_path, dag_id=dag_id, airflow_run_id=airflow_run_id,
                                        run_type=run_type, params_json=params_json, to=to, chosen=chosen,
                                        responded_by=responded_by)

    # Runs when apply_move was skipped: after a Reject or a timeout (and exits 99, skipped, when nobody was asked).
    @task.external_python(task_id="record_refusal", python=ML_PYTHON, expect_airflow=False, trigger_rule="all_skipped",
                          skip_on_exit_code=EXIT_NOTHING_TO_DO,
                          doc_md="Rejected or unanswered: records that the model stays, and why.")
    def record_refusal(config_path: str, dag_id: str, airflow_run_id: str, run_type: str, params_json: str, to: str,
                       chosen: str, responded_by: str, responded_at: str) -> dict:
        from mlops.airflow.automation_tasks import record_refusal_task

        return record_refusal_task(config_path=config_path, dag_id=dag_id, airflow_run_id=airflow_run_id,
                                   run_type=run_type, params_json=params_json, to=to, chosen=chosen,
                                   responded_by=responded_by, responded_at=responded_at)

    check = check_readiness(**common)
    applied = apply_move(**common, to=check["next"], chosen=chosen, responded_by=responded_by)
    # `to` as a template here: an argument from check_readiness would make it an upstream that never skips.
    ask_approval >> applied >> record_refusal(**common, to="{{ " + readiness.format("next") + " }}", chosen=chosen,
                                             responded_by=responded_by, responded_at=responded_at)
    decide(check["action"]) >> [ask_approval, move_down(**common, to=check["move_down_to"]),
                                stay(check["model"], check["current"], check["next"])]


taxi_automation()
