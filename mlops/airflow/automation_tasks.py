"""What the `taxi_automation` DAG's tasks run, in the ML runtime (`@task.external_python`).

`check_readiness_task` judges the served model on its reviews (mlops.automation.automation_status)
and says what to do: `up` (ready: a person is asked), `down` (agreement fell under the floor: moved
at once, no approval) or `stay`. `apply_approved_move_task` moves up after an approval, naming the
person who approved (the HITL response's `responded_by`); `record_refusal_task` records a rejected
or unanswered request; `move_down_task` moves down. Each change or refusal is an `AutomationChange`
in ML Metadata (metadata.automation).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from mlops.airflow.tasks import exit_on_user_error, load_task_config, pipeline_run_id, task_params, trigger_of

# The task ends with this code when there is nothing to do (no approval was asked): Airflow skips it.
EXIT_NOTHING_TO_DO = 99
APPROVE = "Approve"  # airflow.providers.standard.operators.hitl.ApprovalOperator.APPROVE


def _context(config_path: str, params_json: str) -> tuple[Any, Any, dict[str, Any]]:
    from mlops.automation import admin_client

    config = load_task_config(config_path)
    params = task_params(params_json)
    return config, admin_client(params.get("gateway_url") or None), params


def _log_dir(params: dict[str, Any]) -> Any:
    from pathlib import Path

    return Path(params["log_dir"]) if params.get("log_dir") else None


def _run_args(dag_id: str, airflow_run_id: str, run_type: str) -> dict[str, Any]:
    return {"run_id": pipeline_run_id(dag_id, airflow_run_id), "trigger": trigger_of(None, run_type),
            "airflow_dag_id": dag_id, "airflow_run_id": airflow_run_id}


def check_readiness_task(*, config_path: str, dag_id: str, airflow_run_id: str, run_type: str,
                         params_json: str) -> dict[str, Any]:
    """The served model's verdict: `action` (up | down | stay), the degrees, and the evidence as text for the approver."""
    from mlops.automation import automation_status

    with exit_on_user_error("check_readiness"):
        config, admin, params = _context(config_path, params_json)
        status = automation_status(config, admin, log_dir=_log_dir(params))
        print(status.describe(), flush=True)
        verdict = status.verdict
        return {"action": verdict.action, "model": f"{status.model_name}:{status.model_version}",
                "current": status.degree, "next": verdict.next, "move_down_to": verdict.move_down_to,
                "evidence": _approval_body(status)}


def _approval_body(status: Any) -> str:
    """Markdown for the approval page: what was measured, against which rule."""
    verdict = status.verdict
    lines = [f"**{status.model_name}:{status.model_version}** answers in **{status.degree}**; the readiness rules for "
             f"**{verdict.next}** are {'met' if verdict.meets else 'not met'}.", "",
             f"Evidence: requests served {status.window_start:%Y-%m-%d %H:%M} to {status.window_end:%Y-%m-%d %H:%M} UTC "
             "and their reviews.", ""]
    evidence = verdict.evidence
    if evidence is not None:
        lines.append(f"- reviewed cases: {evidence.reviewed} of {evidence.served} served")
        lines.append(f"- agreement with the reviewers: {evidence.agreement:.1%}"
                     + (f", Cohen's kappa {evidence.kappa:.3f}" if evidence.kappa is not None else ""))
    lines += [f"- {rule.describe()}" for rule in verdict.rules]
    if evidence is not None and evidence.slices:
        lines += ["", "| slice | reviewed | agreement |", "|---|---|---|"]
        lines += [f"| {s.feature} = {s.value} | {s.reviewed} | {s.agreement:.1%} |"
                  for s in sorted(evidence.slices, key=lambda s: s.agreement)[:12]]
    lines += ["", f"Approve moves the model to {verdict.next} on the gateway now; Reject (or no answer before the "
                  "timeout) leaves it where it is. Either way the answer is recorded in ML Metadata."]
    return "\n".join(lines)


def apply_approved_move_task(*, config_path: str, dag_id: str, airflow_run_id: str, run_type: str, params_json: str,
                             to: str, chosen: str, responded_by: str) -> dict[str, Any]:
    """After an approval: re-checks the rule on the evidence as it is now and moves up, naming the approver."""
    from core.errors import DataError
    from mlops.automation import move_automation

    with exit_on_user_error("apply_move"):
        if chosen != APPROVE or not responded_by:
            raise DataError(f"apply_move runs only after an approval by a person; got {chosen!r} by {responded_by!r}")
        config, admin, params = _context(config_path, params_json)
        move = move_automation(config, admin, to, approved_by=responded_by, log_dir=_log_dir(params),
                               **_run_args(dag_id, airflow_run_id, run_type))
        print(f"{move.model_name}:{move.model_version} moved {move.from_degree} -> {move.to_degree}, approved by "
              f"{responded_by}; AutomationChange {move.execution_id}", flush=True)
        return move.to_json()


def record_refusal_task(*, config_path: str, dag_id: str, airflow_run_id: str, run_type: str, params_json: str,
                        to: str, chosen: str, responded_by: str, responded_at: str) -> dict[str, Any]:
    """A request to move up that was rejected or timed out: nothing moves, the answer is recorded."""
    from mlops.automation import automation_status, record_decision

    if not chosen:
        print("no approval was asked in this run: nothing to record", flush=True)
        raise SystemExit(EXIT_NOTHING_TO_DO)
    with exit_on_user_error("record_refusal"):
        config, admin, params = _context(config_path, params_json)
        status = automation_status(config, admin, log_dir=_log_dir(params))
        reason = (f"rejected by {responded_by} at {responded_at}" if responded_by
                  else f"no answer before the response timeout ({responded_at or dt.datetime.now(dt.timezone.utc).isoformat()})")
        execution_id = record_decision(config, status, to, applied=False, approved_by="", reason=reason,
                                       **_run_args(dag_id, airflow_run_id, run_type))
        print(f"{status.model_name}:{status.model_version} stays in {status.degree}: {reason}; "
              f"AutomationChange {execution_id}", flush=True)
        return {"model": f"{status.model_name}:{status.model_version}", "degree": status.degree, "to": to,
                "reason": reason, "execution_id": execution_id}


def move_down_task(*, config_path: str, dag_id: str, airflow_run_id: str, run_type: str, params_json: str,
                   to: str) -> dict[str, Any]:
    """Agreement fell under the floor: moves down at once, without approval."""
    from mlops.automation import move_automation

    with exit_on_user_error("move_down"):
        config, admin, params = _context(config_path, params_json)
        move = move_automation(config, admin, to, log_dir=_log_dir(params), **_run_args(dag_id, airflow_run_id, run_type))
        print(f"{move.model_name}:{move.model_version} moved down {move.from_degree} -> {move.to_degree}: {move.reason}; "
              f"AutomationChange {move.execution_id}", flush=True)
        return move.to_json()
