"""taxi_rollout: deploy a pushed model safely: canary with automatic ramp or rollback, blue-green, rollback.

A declaration only: stdlib, pendulum and Airflow at module level. The work runs in the ML
runtime (`mlops.airflow.rollout_tasks`), which talks to the gateway's admin API and records a
`Deploy` execution in ML Metadata. The one piece of Airflow code here, `CanaryApproval`, adapts
the standard provider's ApprovalOperator to the run's params and lets each answer run its own task.
"""

from __future__ import annotations

import datetime
import logging
import os
from pathlib import Path

import pendulum
from airflow.providers.standard.operators.hitl import ApprovalOperator, HITLOperator
from airflow.sdk import Asset, ExceptionRetryPolicy, Param, RetryAction, RetryRule, dag, task

REPO_ROOT = Path(__file__).resolve().parent.parent
# The launcher's defaults (mlops.airflow.launcher.AirflowLayout), for a DagBag outside Airflow.
ML_PYTHON = os.environ.get("MLOPS_ML_PYTHON") or str(REPO_ROOT / ".venvs" / "ml" / "bin" / "python")
CONFIG_PATH = os.environ.get("MLOPS_CONFIG") or str(REPO_ROOT / "mlops.toml")
# Updated by taxi_training's push task.
PUSHED_MODEL = Asset(name="taxi_pushed_model", uri="mlops://models/taxi")
# mlops.airflow.tasks.ROLLOUT_ACTIONS; each is also a task id.
ACTIONS = ("canary", "blue_green", "rollback")
# mlops.airflow.rollout_tasks: APPROVAL_MODES, AWAITING_APPROVAL, APPROVAL_TASK, APPROVAL_OUTCOMES, ANSWER_KEY.
APPROVAL_MODES = ("none", "required")
AWAITING_APPROVAL = "awaiting_approval"
APPROVAL_TASK = "approve_promotion"
APPROVAL_OUTCOMES = ("promote_canary", "roll_back_canary")
ANSWER_KEY = "answer"
# The task each of ApprovalOperator's two answers runs.
OUTCOME_OF_ANSWER = dict(zip((ApprovalOperator.APPROVE, ApprovalOperator.REJECT), APPROVAL_OUTCOMES))

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


class CanaryApproval(ApprovalOperator):
    """The provider's ApprovalOperator (Approve / Reject, the default answer taken on timeout), whose
    Reject runs `roll_back_canary` instead of only skipping what follows: a rejected canary must be
    rolled back, recorded, and fail the run. Approve runs `promote_canary` and skips the rollback.

    The wait is read from the run's `approval_timeout_minutes` (the provider takes
    `response_timeout` only when the DAG is parsed), and the answer is pushed as plain JSON under
    the XCom key `answer` before the branch: skipping ends the task by raising, so its return value
    never reaches XCom, and it holds a pendulum DateTime, which the ML runtime (no pendulum) cannot read."""

    def execute(self, context):
        # A datetime.timedelta: the task runner sends it to its supervisor, which cannot encode a pendulum Duration.
        self.response_timeout = datetime.timedelta(minutes=float(context["params"]["approval_timeout_minutes"]))
        return super().execute(context)

    def execute_complete(self, context, event):
        if "error" not in event:
            user = event.get("responded_by_user") or {}
            context["ti"].xcom_push(key=ANSWER_KEY, value={
                "chosen": (event.get("chosen_options") or [None])[0], "responded_by": user.get("name"),
                "responded_by_id": user.get("id"), "responded_at": event["responded_at"].isoformat(),
                "timed_out": bool(event.get("timedout"))})
        # HITLOperator's completion validates the answer; ApprovalOperator's own would skip both outcomes on Reject.
        answer = HITLOperator.execute_complete(self, context=context, event=event)
        chosen = answer["chosen_options"][0]
        self.hitl_summary_extra["approved"] = chosen == self.APPROVE
        self.skip_all_except(context["ti"], OUTCOME_OF_ANSWER[chosen])  # raises: the other outcome is skipped
        return answer


DEFAULT_ARGS = {
    "owner": "mlops",
    # The gateway may be restarting: retry (with backoff) what did not reach it; a rolled-back
    # canary or a bad parameter (a CalledProcessError from the ML process) is final.
    "retries": 2,
    "retry_delay": pendulum.duration(seconds=20),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": pendulum.duration(minutes=5),
    "retry_policy": ExceptionRetryPolicy(rules=[RetryRule(
        exception="subprocess.CalledProcessError", action=RetryAction.FAIL,
        reason="the ML process reported an error a retry cannot fix (see the ERROR lines above)")]),
    "on_failure_callback": explain_failure,
}

DAG_DOC = """
### Roll a pushed model out to the gateway

Runs after every push (the `taxi_pushed_model` asset) and on demand. `choose_action` branches on
the `action` param:

* **canary** (default, and what a push starts): gives the version `shares[0]` % of the traffic
  through the gateway's admin API (the gateway labels it `canary` in TF Serving's `models.config`,
  so the model server serves it), observes it for `observe_seconds` against the stable version (error rate,
  tail latency ratio, a significant shift of the mean predicted probability, a minimum of requests), then ramps
  through `shares`, shadows stable for one more window (both versions answer every request, compared
  request by request) and promotes it to `stable`; it sets its traffic back to 0 at the first
  unhealthy window, and holds it when its decisions diverge from stable's on a slice unless
  `approve_divergence` is set (the task then fails, visibly). A version that is already stable is left alone.
* **approval** `required` (default: `[serving] rollout_approval` in mlops.toml, `none`): the canary
  ramps and shadows as above but is not promoted. `approve_promotion` asks a person in **Required
  Actions** (Browse menu, or the REST API's `hitlDetails`), showing each judged window (requests,
  error rates, latency ratio, mean probability shift) and the paired comparison, a divergence
  included; the canary gets no traffic meanwhile. **Approve** runs `promote_canary`; **Reject**, or
  no answer within `approval_timeout_minutes`, runs `roll_back_canary` (canary traffic 0, stable
  untouched; the run ends failed, as for an automatic rollback). The answer (who, when, on which
  evidence) is recorded on the rollout's Deploy execution and shown by `mlops lineage model`.
  With `none`, `approval_required` skips all three.
* **blue_green**: switches `stable` to `version` at once (the previous stable is kept for rollback).
* **rollback**: instantly puts the previous stable version back.

Each decision, with the observed statistics, is a `Deploy` execution in ML Metadata whose input
is the `PushedModel`. The gateway's admin token comes from `MLOPS_GATEWAY_ADMIN_TOKEN` in
Airflow's environment, its URL from `gateway_url` or `MLOPS_GATEWAY_URL`.
"""


@dag(
    dag_id="taxi_rollout",
    schedule=[PUSHED_MODEL],
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    doc_md=DAG_DOC,
    tags=["mlops", "serving"],
    # The defaults are mlops.airflow.tasks' DEFAULT_* values and serving.rollout.CanaryThresholds'
    # (tests/dags/test_dag_copies.py).
    params={
        "action": Param("canary", type="string", enum=list(ACTIONS),
                        description="canary (observe and ramp), blue_green (switch now) or rollback (previous stable)."),
        "version": Param(None, type=["null", "integer"], minimum=1,
                         description="The model version to deploy; empty = the newest pushed version."),
        "shares": Param([5, 25, 50, 100], type="array", items={"type": "integer", "minimum": 1, "maximum": 100},
                        minItems=1, description="Canary traffic shares in %, increasing; 100 = promote."),
        "observe_seconds": Param(60, type="integer", minimum=1, maximum=86_400,
                                 description="How long each share is observed before it is judged."),
        "max_error_rate": Param(0.02, type="number", minimum=0, maximum=1,
                                description="Largest acceptable share of failed canary requests."),
        "max_p99_latency_ratio": Param(1.5, type="number", exclusiveMinimum=0,
                                       description="Largest acceptable canary / stable tail latency (p99 from 100 "
                                                   "requests on each side, p90 below)."),
        "latency_tolerance_ms": Param(10.0, type="number", minimum=0,
                                      description="Latency differences up to this many ms never fail a canary."),
        "max_mean_probability_shift": Param(0.1, type="number", minimum=0, maximum=1,
                                            description="Largest acceptable |mean canary probability - mean stable probability|."),
        "min_shift_z_score": Param(3.0, type="number", minimum=0,
                                   description="A mean shift fails the canary only if it is also this many standard "
                                               "errors away from zero (not sampling noise)."),
        "min_canary_requests": Param(20, type="integer", minimum=1,
                                     description="Fewest canary requests per window needed to judge it."),
        "approve_divergence": Param(False, type="boolean",
                                    description="Promote even if the candidate's decisions diverged from stable's on a slice "
                                                "(the paired comparison before promotion, monitoring/thresholds.toml [paired]); "
                                                "with approval=required the approver sees the divergence instead."),
        "approval": Param(None, type=["null", "string"], enum=[None, *APPROVAL_MODES],
                          description="required: a person approves the promotion of a healthy canary in Required Actions; "
                                      "none: promote on the judged evidence; empty = mlops.toml's [serving] rollout_approval."),
        "approval_timeout_minutes": Param(1440, type="number", exclusiveMinimum=0, maximum=43_200,
                                          description="How long the approval waits for an answer; none in time = Reject "
                                                      "(the canary is rolled back)."),
        "log_dir": Param("", type="string", description="The gateway's prediction log directory, read for the paired "
                                                         "comparison; empty = var/logs/predictions under the config's root."),
        "gateway_url": Param("", type="string", description="The gateway's base URL; empty = MLOPS_GATEWAY_URL or http://127.0.0.1:8000."),
    },
)
def taxi_rollout() -> None:
    @task.branch(task_id="choose_action", doc_md="Picks the task for the `action` param.")
    def choose_action(action: str) -> str:
        if action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, got {action!r}")
        return action

    def deploy_task(action: str, doc: str):
        @task.external_python(task_id=action, python=ML_PYTHON, expect_airflow=False, multiple_outputs=False, doc_md=doc)
        def deploy(action: str, config_path: str, dag_id: str, airflow_run_id: str, run_type: str, params_json: str) -> dict:
            from mlops.airflow.rollout_tasks import run_rollout_task

            return run_rollout_task(action, config_path=config_path, dag_id=dag_id, airflow_run_id=airflow_run_id,
                                    run_type=run_type, params_json=params_json)

        return deploy(action=action, config_path=CONFIG_PATH, dag_id="taxi_rollout", airflow_run_id="{{ run_id }}",
                      run_type="{{ dag_run.run_type }}", params_json="{{ params | tojson }}")

    @task.short_circuit(task_id="approval_required",
                        doc_md="Goes on to the approval only when the canary waits for one; skips it otherwise.")
    def approval_required(canary_decision: str) -> bool:
        return canary_decision == AWAITING_APPROVAL

    def outcome_task(outcome: str, doc: str):
        @task.external_python(task_id=outcome, python=ML_PYTHON, expect_airflow=False, multiple_outputs=False, doc_md=doc)
        def conclude(outcome: str, config_path: str, dag_id: str, airflow_run_id: str, run_type: str, params_json: str,
                     canary_json: str, answer_json: str) -> dict:
            from mlops.airflow.rollout_tasks import run_approval_outcome_task

            return run_approval_outcome_task(outcome, config_path=config_path, dag_id=dag_id, airflow_run_id=airflow_run_id,
                                             run_type=run_type, params_json=params_json, canary_json=canary_json,
                                             answer_json=answer_json)

        return conclude(outcome=outcome, config_path=CONFIG_PATH, dag_id="taxi_rollout", airflow_run_id="{{ run_id }}",
                        run_type="{{ dag_run.run_type }}", params_json="{{ params | tojson }}",
                        canary_json="{{ ti.xcom_pull(task_ids='canary') | tojson }}",
                        answer_json=f"{{{{ ti.xcom_pull(task_ids='{APPROVAL_TASK}', key='{ANSWER_KEY}') | tojson }}}}")

    canary = deploy_task("canary", "Canary at the first share, observe, ramp, then promote, set its traffic back to 0, "
                                   "or (approval=required) stop at 0 % with the evidence for a person.")
    choose_action("{{ params.action }}") >> [
        canary,
        deploy_task("blue_green", "Switch `stable` to the version at once."),
        deploy_task("rollback", "Put the previous stable version back, instantly."),
    ]
    approval = CanaryApproval(
        task_id=APPROVAL_TASK,
        subject="Promote {{ ti.xcom_pull(task_ids='canary')['model'] }}:{{ ti.xcom_pull(task_ids='canary')['version'] }} "
                "to stable?",
        body="{{ ti.xcom_pull(task_ids='canary')['evidence_markdown'] }}",
        defaults=ApprovalOperator.REJECT,  # what a timeout answers: the safe side
        doc_md="Asks a person to approve the healthy canary's promotion, showing the judged evidence; "
               "Approve runs promote_canary, Reject (or no answer in time) roll_back_canary.",
    )
    # A failed canary fails everything after it (upstream_failed), so the run shows it failed.
    canary >> approval_required("{{ (ti.xcom_pull(task_ids='canary') or {}).get('decision', '') }}") >> approval >> [
        outcome_task("promote_canary", "Promote the approved canary to stable; record who approved it, when, on what."),
        outcome_task("roll_back_canary", "Set the unapproved canary's traffic to 0 (stable untouched); record why."),
    ]


taxi_rollout()
