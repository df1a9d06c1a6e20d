"""The task side of the `taxi_review` DAG, run inside `@task.external_python` in the ML runtime.

`collect_review_cases_task` opens the run's cases (monitoring/review_queue.py) and returns what
each required action shows; `write_back_review_answer_task` closes one case as soon as it is
answered and sends its decision; `close_review_cases_task` takes the reviewers' answers (one per case,
None where nobody answered before the timeout), writes the decisions back to the gateway as
feedback and closes the rest. Module level imports are stdlib only (the DAG tests import this
module in the Airflow environment); the ML stack is imported inside the functions.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Mapping, Sequence

from mlops.airflow.tasks import exit_on_user_error, load_task_config, pipeline_run_id, task_params

# What a reviewer may answer (monitoring.review_queue.REVIEW_OPTIONS; tests/dags/test_dag_copies.py
# ties the DAG's copy to it).
REVIEW_OPTIONS = ("big_tipper", "not_big_tipper", "cannot tell")


def review_window(params: Mapping[str, Any], lookback_hours: float, now: dt.datetime | None = None) -> tuple[dt.datetime, dt.datetime]:
    """The window of requests to pick from: the `window_start`/`window_end` params, else the last `lookback_hours`."""
    from mlops.airflow.tasks import monitoring_window

    if params.get("window_start") or params.get("window_end"):
        return monitoring_window(params, None, None)
    end = now or dt.datetime.now(dt.timezone.utc)
    return end - dt.timedelta(hours=lookback_hours), end + dt.timedelta(seconds=1)


def _review_settings(config: Any, params: Mapping[str, Any]) -> Any:
    """The config's [review] section with the run's overrides (None/0 = keep mlops.toml's), validated."""
    import dataclasses

    overrides = {name: params[name] for name in ("max_open_cases", "response_timeout_minutes") if params.get(name)}
    return dataclasses.replace(config.review, **overrides) if overrides else config.review


def _log_dir(config: Any, params: Mapping[str, Any]) -> Path:
    from metadata.queries import DEFAULT_LOG_DIR

    return Path(params.get("log_dir") or config.root / DEFAULT_LOG_DIR)


def collect_review_cases_task(*, config_path: str, dag_id: str, airflow_run_id: str,
                              params_json: str | Mapping[str, Any]) -> dict[str, Any]:
    """Opens this run's review cases (the same ones again when the run is re-run) and returns, per
    case, the required action's subject and body, with the response timeout in seconds."""
    with exit_on_user_error("collect_cases"):
        from monitoring import review_queue as rq

        params = task_params(params_json)
        config = load_task_config(config_path)
        settings = _review_settings(config, params)
        start, end = review_window(params, settings.lookback_hours)
        log_dir = _log_dir(config, params)
        run_id = pipeline_run_id(dag_id, airflow_run_id)
        ledger = rq.CaseLedger(rq.ledger_dir(config.pipeline_root))
        cases = rq.open_cases(ledger, log_dir, start, end, settings, run_id=run_id, model_name=config.serving.model_name)
        reasons = {reason: sum(case.reason == reason for case in cases) for reason in (rq.REFERRED, rq.SAMPLE, rq.AUDIT)}
        print(f"collect_cases: {len(cases)} cases from the requests of [{start.isoformat()}, {end.isoformat()}) in "
              f"{log_dir} ({', '.join(f'{n} {r}' for r, n in reasons.items())}); at most {settings.max_open_cases} "
              f"per run; ledger {ledger.path}", flush=True)
        return {
            "run_id": run_id,
            "cases": [{"request_id": case.request_id, "instance_index": case.instance_index} for case in cases],
            "required_actions": [{"subject": rq.case_subject(case), "body": rq.case_body(case)} for case in cases],
            "response_timeout_seconds": settings.response_timeout_minutes * 60.0,
        }


def _review_answer(answer: Mapping[str, Any]) -> Any:
    from monitoring import review_queue as rq

    return rq.ReviewAnswer(str(answer["request_id"]), int(answer["instance_index"]), str(answer["chosen"]),
                           str(answer["user"]), str(answer["responded_at"]))


def write_back_review_answer_task(*, config_path: str, dag_id: str, airflow_run_id: str,
                                  params_json: str | Mapping[str, Any], answer: Mapping[str, Any]) -> dict[str, Any]:
    """Closes one answered case at once and sends its decision to the gateway, while the run's other
    cases still wait; returns the case as the ledger now holds it."""
    with exit_on_user_error("write_back"):
        from monitoring import review_queue as rq
        from serving.rollout import gateway_url as resolve_gateway_url

        params = task_params(params_json)
        config = load_task_config(config_path)
        run_id = pipeline_run_id(dag_id, airflow_run_id)
        ledger = rq.CaseLedger(rq.ledger_dir(config.pipeline_root))
        given = _review_answer(answer)
        try:
            rq.close_cases(ledger, run_id, [given], resolve_gateway_url(params.get("gateway_url")),
                           threshold=config.evaluation.decision_threshold, close_unanswered=False)
        except rq.FeedbackNotDelivered as err:
            # The gateway may be restarting: Airflow retries this task, and close_cases sends it at the latest.
            raise RuntimeError(str(err)) from None
        case = ledger.read()[rq.case_key(given.request_id, given.instance_index)]
    sent = "sent to the gateway as feedback" if case.written_back else "kept in the case ledger only"
    print(f"write_back: case {case.key} {case.state} ({case.answer!r} by {case.answered_by}); {sent}", flush=True)
    return case.to_json()


def close_review_cases_task(*, config_path: str, dag_id: str, airflow_run_id: str, params_json: str | Mapping[str, Any],
                            answers: Sequence[Mapping[str, Any] | None]) -> dict[str, Any]:
    """Writes the answered decisions back to the gateway and closes every case of the run; returns the summary.

    `answers` are what the required actions returned, one per case in order: `{"request_id",
    "instance_index", "chosen", "user", "responded_at"}`, or None when nobody answered in time.
    """
    with exit_on_user_error("close_cases"):
        from monitoring import review_queue as rq

        params = task_params(params_json)
        config = load_task_config(config_path)
        run_id = pipeline_run_id(dag_id, airflow_run_id)
        ledger = rq.CaseLedger(rq.ledger_dir(config.pipeline_root))
        given = [_review_answer(a) for a in answers if a]
        from serving.rollout import gateway_url as resolve_gateway_url

        gateway_url = resolve_gateway_url(params.get("gateway_url"))
        try:
            summary = rq.close_cases(ledger, run_id, given, gateway_url, threshold=config.evaluation.decision_threshold)
        except rq.FeedbackNotDelivered as err:
            # The gateway may be restarting: Airflow retries this task (not a user error); the answers wait in the ledger.
            raise RuntimeError(str(err)) from None
        execution_id = record_review_run(config, ledger, run_id, dag_id=dag_id, airflow_run_id=airflow_run_id)
    print(f"close_cases: {summary.line()}; recorded as ReviewRun {execution_id} in ML Metadata", flush=True)
    for case in ledger.of_run(run_id):
        who = f" by {case.answered_by}" if case.answered_by else ""
        print(f"close_cases:   {case.key:<40} {case.state:<11} {case.answer or '':<15}{who}", flush=True)
    return summary.to_json()


def record_review_run(config: Any, ledger: Any, run_id: str, *, dag_id: str = "", airflow_run_id: str = "") -> int:
    """Writes the run's closed cases beside the ledger and records them as a ReviewRun execution (with
    the reviewed PushedModels as inputs) in ML Metadata; returns its id."""
    from metadata import review
    from metadata.recorder import Trigger
    from metadata.store import connect
    from monitoring import review_queue as rq

    cases_file, cases = rq.write_run_cases(ledger, run_id, threshold=config.evaluation.decision_threshold)
    return review.record_review_run(connect(config.metadata), config.pipeline_name, run_id, cases, cases_file=cases_file,
                                    ledger_path=ledger.path, airflow_dag_id=dag_id, airflow_run_id=airflow_run_id,
                                    trigger=Trigger("review"))
