"""taxi_review: served predictions that need a person become required actions in Airflow's UI.

A declaration only: stdlib, pendulum and airflow.sdk/providers at module level. The cases are
picked and closed in the ML runtime (`mlops.airflow.review_tasks` -> `monitoring.review_queue`).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path

import pendulum
from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import ExceptionRetryPolicy, Param, RetryAction, RetryRule, dag, get_current_context, task, task_group

REPO_ROOT = Path(__file__).resolve().parent.parent
# The launcher's defaults (mlops.airflow.launcher.AirflowLayout), for a DagBag outside Airflow.
ML_PYTHON = os.environ.get("MLOPS_ML_PYTHON") or str(REPO_ROOT / ".venvs" / "ml" / "bin" / "python")
CONFIG_PATH = os.environ.get("MLOPS_CONFIG") or str(REPO_ROOT / "mlops.toml")
# What a reviewer may answer (a copy of mlops.airflow.review_tasks.REVIEW_OPTIONS, tests/dags/test_dag_copies.py).
REVIEW_OPTIONS = ["big_tipper", "not_big_tipper", "cannot tell"]
# The mapped group holding one case's required action (`ask`) and its write-back; its task ids are `review_case.<task>`.
CASE_GROUP = "review_case"

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


class CaseReview(HITLOperator):
    """One case's required action. The wait comes from the case (`response_timeout_seconds`, a
    templated field: the provider takes `response_timeout` only when the DAG is parsed), and the
    answer is returned as plain JSON (`chosen`, `user`, `responded_at`): the provider's holds a
    pendulum DateTime, which the ML runtime (no pendulum) cannot read."""

    template_fields = (*HITLOperator.template_fields, "response_timeout_seconds")

    def __init__(self, *, response_timeout_seconds: float | str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.response_timeout_seconds = response_timeout_seconds

    def execute(self, context):
        # A datetime.timedelta: the task runner sends it to its supervisor, which cannot encode a pendulum Duration.
        self.response_timeout = dt.timedelta(seconds=float(self.response_timeout_seconds))
        return super().execute(context)

    def execute_complete(self, context, event):
        response = super().execute_complete(context, event)
        user = response.get("responded_by_user") or {}
        return {"chosen": response["chosen_options"][0], "user": user.get("name") or user.get("id") or "unknown",
                "responded_at": str(response.get("responded_at") or "")}


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
### Review queue: people check the model's answers

`collect_cases` reads the gateway's request log (the last day, or the `window_start`/`window_end`
params) and opens the cases that need a person: every `refer_to_human` answer, a sample of the
answers given in `shadow` and `assist`, and an audit sample of confident `full` answers (rates in
mlops.toml's `[review]`; the sample is fixed by the request id, so a re-run picks the same ones).
At most `max_open_cases` per run, oldest first; a request already reviewed is never asked again.

Each case is one **required action** (`review_case.ask`, Browse > Required Actions): the trip's
features, the model's probability and version, the degree of automation, and the options
`big_tipper`, `not_big_tipper` or `cannot tell`. A case nobody answers within
`response_timeout_minutes` fails its required action and is closed as *unanswered*: never guessed.

As soon as a case is answered, its `review_case.write_back` sends the decision to the gateway as
feedback (`human_decision`, source `review:<user>`), where monitoring reads it like a late label;
"cannot tell" stays in the case ledger (`<pipeline_root>/review/cases.json`) only. When every
case is answered or timed out, `close_cases` closes the rest as unanswered, sends any decision a
write-back could not deliver, and records the run; its log says how many were answered, agreed
with the model, could not tell, or were left unanswered.
"""


@dag(
    dag_id="taxi_review",
    schedule="@daily",
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    # Runs may overlap (one waits up to response_timeout for its answers while the next starts);
    # the case ledger's lock keeps their cases apart.
    max_active_runs=4,
    default_args=DEFAULT_ARGS,
    doc_md=DAG_DOC,
    tags=["mlops", "review", "human-in-the-loop"],
    params={
        "window_start": Param("", type="string", title="Window start",
                              description="ISO date/time (UTC) of the first logged request to pick from; "
                                          "empty = the last [review] lookback_hours."),
        "window_end": Param("", type="string", title="Window end",
                            description="ISO date/time (UTC) after the last request to pick from; empty = now."),
        "log_dir": Param("", type="string", description="Prediction log directory; empty = the gateway's default."),
        "gateway_url": Param("", type="string",
                             description="Gateway that receives the answers as feedback; empty = $MLOPS_GATEWAY_URL."),
        "max_open_cases": Param(0, type="integer", minimum=0,
                                description="New cases at most in this run; 0 = mlops.toml's [review] max_open_cases."),
        "response_timeout_minutes": Param(0, type="number", minimum=0,
                                          description="Minutes a case waits for an answer before it is closed as "
                                                      "unanswered; 0 = mlops.toml's [review] response_timeout_minutes."),
    },
)
def taxi_review() -> None:
    @task.external_python(task_id="collect_cases", python=ML_PYTHON, expect_airflow=False,
                          doc_md="Opens the run's review cases from the request log (the same ones on a re-run).")
    def collect_cases(config_path: str, dag_id: str, airflow_run_id: str, params_json: str) -> dict:
        from mlops.airflow.review_tasks import collect_review_cases_task

        return collect_review_cases_task(config_path=config_path, dag_id=dag_id, airflow_run_id=airflow_run_id,
                                         params_json=params_json)

    @task(task_id="required_actions", doc_md="One required action per case: its case, subject, text and timeout.")
    def required_actions(collected: dict) -> list[dict]:
        return [{"case": case, **action, "response_timeout_seconds": collected["response_timeout_seconds"]}
                for case, action in zip(collected["cases"], collected["required_actions"])]

    @task_group(group_id=CASE_GROUP)
    def review_case(case: dict, subject: str, body: str, response_timeout_seconds: float) -> None:
        # No retries: a timed-out case is closed as unanswered, not asked again.
        answer = CaseReview(task_id="ask", subject=subject, body=body, options=REVIEW_OPTIONS, multiple=False,
                            response_timeout_seconds=response_timeout_seconds, retries=0,
                            doc_md="A reviewer's answer for one case (Browse > Required Actions).")

        @task.external_python(task_id="write_back", python=ML_PYTHON, expect_airflow=False,
                              doc_md="Sends this case's decision to the gateway as soon as it is answered.")
        def write_back(config_path: str, dag_id: str, airflow_run_id: str, params_json: str, case: dict,
                       answer: dict) -> dict:
            from mlops.airflow.review_tasks import write_back_review_answer_task

            return write_back_review_answer_task(config_path=config_path, dag_id=dag_id, airflow_run_id=airflow_run_id,
                                                 params_json=params_json, answer={**case, **answer})

        write_back(config_path=CONFIG_PATH, dag_id="taxi_review", airflow_run_id="{{ run_id }}",
                   params_json="{{ params | tojson }}", case=case, answer=answer.output)

    @task(task_id="gather_answers", trigger_rule="all_done",
          doc_md="Each case's answer (who, when, what), or None where the required action timed out.")
    def gather_answers(collected: dict) -> list:
        ti = get_current_context()["ti"]
        answers = []
        for index, case in enumerate(collected["cases"]):
            response = ti.xcom_pull(task_ids=f"{CASE_GROUP}.ask", map_indexes=index)
            answers.append({**case, **response} if response and response.get("chosen") else None)
        return answers

    @task.external_python(task_id="close_cases", python=ML_PYTHON, expect_airflow=False, trigger_rule="all_done",
                          doc_md="Closes the unanswered cases, sends any decision not yet delivered, records the run.")
    def close_cases(config_path: str, dag_id: str, airflow_run_id: str, params_json: str, answers: list) -> dict:
        from mlops.airflow.review_tasks import close_review_cases_task

        return close_review_cases_task(config_path=config_path, dag_id=dag_id, airflow_run_id=airflow_run_id,
                                       params_json=params_json, answers=answers)

    collected = collect_cases(config_path=CONFIG_PATH, dag_id="taxi_review", airflow_run_id="{{ run_id }}",
                              params_json="{{ params | tojson }}")
    reviews = review_case.expand_kwargs(required_actions(collected))
    answers = gather_answers(collected)
    reviews >> answers
    close_cases(config_path=CONFIG_PATH, dag_id="taxi_review", airflow_run_id="{{ run_id }}",
                params_json="{{ params | tojson }}", answers=answers)


taxi_review()
