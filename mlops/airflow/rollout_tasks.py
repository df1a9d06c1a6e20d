"""The taxi_rollout DAG's tasks, run in the ML runtime: canary, blue-green, rollback, and the approval's outcome.

`run_rollout_task` runs the `canary`, `blue_green` and `rollback` tasks. With approval required
(the `approval` param, default `[serving] rollout_approval` in mlops.toml) the canary stops after
its last judged window and returns its evidence (`AWAITING_APPROVAL`); the DAG's approval task
(Airflow's human-in-the-loop Approve / Reject) shows it to a person, and `run_approval_outcome_task` does what the answer says: `promote_canary`
promotes an approved canary, `roll_back_canary` rolls a rejected or timed-out one back. Each records a Deploy execution with the answer (who, when,
on which evidence) in ML Metadata, so `mlops lineage model` shows it.

Module level imports are stdlib only (the DAG tests import this in the Airflow environment).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from pathlib import Path
from typing import Any, Mapping

from mlops.airflow.rollout_lineage import emits_rollout_lineage
from mlops.airflow.tasks import (
    DEFAULT_CANARY_SHARES,
    DEFAULT_OBSERVE_SECONDS,
    ROLLOUT_ACTIONS,
    RolledBackError,
    exit_on_user_error,
    gateway_client,
    load_task_config,
    newest_version,
    pipeline_run_id,
    serving_labels,
    task_params,
    trigger_of,
    xcom_jsonable,
)

# A canary whose decisions diverged from stable's (monitoring/paired.py): stopped before promotion.
HELD_FOR_APPROVAL = "held_for_approval"
# A healthy canary at 0 % traffic, waiting for a person's answer (approval=required).
AWAITING_APPROVAL = "awaiting_approval"
# core.config.ROLLOUT_APPROVAL_MODES; the DAG's `approval` param offers these.
APPROVAL_MODES = ("none", "required")
# The approval task's id and its two outcomes' (each also the `outcome` of run_approval_outcome_task).
APPROVAL_TASK = "approve_promotion"
APPROVAL_OUTCOMES = ("promote_canary", "roll_back_canary")
# The XCom key under which the approval task leaves the answer, as plain JSON:
# {"chosen": "Approve" | "Reject", "responded_by", "responded_by_id", "responded_at", "timed_out"}.
ANSWER_KEY = "answer"
# The answer's decision as recorded in MLMD.
APPROVED, REJECTED, TIMED_OUT, NO_ANSWER = "approved", "rejected", "timed_out", "no_answer"

# How long a rollout waits for the model server to load a freshly pushed version.
MODEL_LOAD_TIMEOUT_S = 300.0


def approval_mode(params: Mapping[str, Any], config: Any) -> str:
    """The run's `approval` param, else the config's `[serving] rollout_approval`."""
    from core.errors import DataError

    mode = params.get("approval") or config.serving.rollout_approval
    if mode not in APPROVAL_MODES:
        raise DataError(f"approval must be one of {list(APPROVAL_MODES)}, got {mode!r}")
    return str(mode)


def answer_decision(answer: Mapping[str, Any] | None) -> str:
    """approved | rejected | timed_out | no_answer, from the approval task's XCom (None: it never answered)."""
    if not answer:
        return NO_ANSWER
    if answer.get("timed_out"):
        return TIMED_OUT
    return APPROVED if answer.get("chosen") == "Approve" else REJECTED


def _json_or_none(text: str | Mapping[str, Any] | None, name: str) -> Any:
    from core.errors import DataError

    if text is None or isinstance(text, Mapping):
        return text
    try:
        return json.loads(text) if text.strip() not in ("", "None") else None
    except ValueError as err:
        raise DataError(f"{name} is not JSON ({err}): {text[:200]!r}") from None


@emits_rollout_lineage
def run_approval_outcome_task(outcome: str, *, config_path: str, dag_id: str, airflow_run_id: str, run_type: str,
                              params_json: str | Mapping[str, Any], canary_json: str | Mapping[str, Any] | None,
                              answer_json: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """Does what the person answered about a canary AWAITING_APPROVAL, and records it as a Deploy execution.

    `promote_canary` (runs only on Approve) promotes it; `roll_back_canary` (runs on Reject and on
    no answer before the timeout, whose default answer is Reject) stops its traffic, leaves stable
    alone, and ends with EXIT_ROLLED_BACK so the run shows red. (Should the approval or the
    promotion fail instead, the canary stays where the wait left it: at 0 % traffic.)
    Either way the Deploy execution's input is the PushedModel and its `result_approval` says
    who answered what, when, on which evidence.
    """
    with exit_on_user_error(outcome):
        from core.errors import DataError
        from mlops import steps

        if outcome not in APPROVAL_OUTCOMES:
            raise DataError(f"outcome must be one of {list(APPROVAL_OUTCOMES)}, got {outcome!r}")
        params = task_params(params_json)
        canary = _json_or_none(canary_json, "the canary task's result")
        answer = _json_or_none(answer_json, "the approval's answer")
        if not canary or canary.get("decision") != AWAITING_APPROVAL:
            raise DataError(f"{outcome} needs a canary awaiting approval; the canary task returned {canary!r}")
        config = load_task_config(config_path)
        model, version, stable = config.serving.model_name, int(canary["version"]), canary.get("stable")
        ctx = steps.open_run(config, pipeline_run_id(dag_id, airflow_run_id), trigger_of(params.get("trigger"), run_type),
                             airflow_dag_id=dag_id, airflow_run_id=airflow_run_id)
        decided = answer_decision(answer)
        approval = {"decision": decided, "responded_by": (answer or {}).get("responded_by"),
                    "responded_by_id": (answer or {}).get("responded_by_id"), "responded_at": (answer or {}).get("responded_at"),
                    "evidence": canary.get("evidence"), "canary_deploy_execution": canary.get("execution_id")}
        client = gateway_client(params)
        current = client.get_policy(model)
        if outcome == "promote_canary":
            if decided != APPROVED:
                raise DataError(f"promote_canary runs only after an Approve; the answer was {decided}")
            if current.get("canary_version") != version:
                raise DataError(f"the gateway's canary is now {current.get('canary_version')}, not {version} (another rollout "
                                f"since?): {model}:{version} was not promoted; trigger a new rollout")
            client.promote(model, version)
            who = f"approved by {approval['responded_by']} at {approval['responded_at']}"
            print(f"promote_canary: {model}:{version} is stable now ({who}; previous stable {stable} kept for rollback)", flush=True)
            decision = {"decision": "promoted", "version": version, "previous_stable": stable, "share": 100,
                        "reasons": [who], "approval": approval}
            return _record_deploy(ctx, "canary", version, params, decision)
        reason = {REJECTED: f"rejected by {approval['responded_by']} at {approval['responded_at']}",
                  TIMED_OUT: f"no answer before the approval timeout ({approval['responded_at']})"}.get(
                      decided, f"the approval ended with {decided}")
        if current.get("canary_version") == version:
            client.rollback(model)  # after set_canary there is no promote to undo: only canary traffic stops
        else:
            reason += f"; the gateway's canary is now {current.get('canary_version')}, left as it is"
        print(f"roll_back_canary: {model}:{version} not promoted: {reason}; all traffic stays on {model}:{stable}", flush=True)
        decision = {"decision": "rolled_back", "version": version, "stable": stable, "share": canary.get("share"),
                    "reasons": [f"not promoted: {reason}"], "approval": approval}
        _record_deploy(ctx, "canary", version, params, decision)
        raise RolledBackError(f"canary {model}:{version} not promoted: {reason}")


def _sleep_observing(seconds: float, label: str) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 15.0))
        print(f"{label}: observing ... {max(deadline - time.monotonic(), 0):.0f}s left", flush=True)


@emits_rollout_lineage
def run_rollout_task(action: str, *, config_path: str, dag_id: str, airflow_run_id: str, run_type: str,
                     params_json: str | Mapping[str, Any]) -> dict[str, Any]:
    """Deploys a pushed version: canary with automatic ramp or rollback, blue-green switch, or rollback.

    Every decision is recorded as a `Deploy` execution in MLMD whose input is the PushedModel.
    A rolled-back canary ends the task with EXIT_ROLLED_BACK (after recording), so the run shows red.
    """
    with exit_on_user_error(action):
        from mlops import steps
        from core.errors import DataError

        params = task_params(params_json)
        if action not in ROLLOUT_ACTIONS:
            raise DataError(f"action must be canary, blue_green or rollback, got {action!r}")
        config = load_task_config(config_path)
        model = config.serving.model_name
        ctx = steps.open_run(config, pipeline_run_id(dag_id, airflow_run_id), trigger_of(params.get("trigger"), run_type),
                             airflow_dag_id=dag_id, airflow_run_id=airflow_run_id)
        labels = serving_labels(config)
        stable = labels.get("stable")
        if action == "rollback":
            decision = _rollback(params, model, stable)
            return _record_deploy(ctx, action, decision.get("stable"), params, decision)
        version = int(params["version"]) if params.get("version") not in (None, "") else newest_version(config)
        if version is None:
            raise DataError(f"no pushed versions of {model} under {config.serving.model_base_dir}; run taxi_training first")
        if not (Path(config.serving.model_base_dir) / model / str(version)).is_dir():
            raise DataError(f"{model} version {version} is not in {config.serving.model_base_dir / model}")
        if version == stable:
            decision = {"decision": "already_stable", "version": version,
                        "reasons": [f"version {version} is already the stable version; nothing to roll out"]}
            print(f"{action}: {decision['reasons'][0]}", flush=True)
            return _record_deploy(ctx, action, version, params, decision)
        if action == "blue_green":
            return _record_deploy(ctx, action, version, params, _blue_green(params, model, version, stable))
        decision = _canary(params, model, version, stable, ctx, approval=approval_mode(params, config))
        outcome = _record_deploy(ctx, action, version, params, decision)
        if decision["decision"] in ("rolled_back", HELD_FOR_APPROVAL):
            raise RolledBackError(f"canary {model}:{version} not promoted at {decision['share']}%: " + "; ".join(decision["reasons"]))
        return outcome


def _canary(params: Mapping[str, Any], model: str, version: int, stable: int | None, ctx: Any = None,
            approval: str = "none") -> dict[str, Any]:
    """Ramps the canary through the shares below 100 %, judging each window; promotes or aborts.

    Every share below 100 % is observed for `observe_seconds` and judged against the stable
    version; the final 100 % is the promotion itself. An unhealthy window sets the canary's
    traffic back to 0 at once (the stable version was never changed). Before the promotion the
    two are compared request by request on the canaried requests, which the gateway also asked of
    stable (`_paired_check`; a shadow window when too few were paired). The gateway writes the `canary` and `stable` labels of TF Serving's
    models.config, so the model server follows. With `approval="required"` it stops there, the
    canary at 0 % (the paired check ends with all traffic on stable), and returns the evidence for
    the person who decides (`AWAITING_APPROVAL`); a divergence is then part of that evidence
    rather than a hold.
    """
    from core.errors import DataError
    from serving.rollout import CanaryThresholds, canary_evidence, evidence_markdown, judge_canary

    shares = [int(share) for share in params.get("shares") or DEFAULT_CANARY_SHARES]
    if not shares or any(not 0 < share <= 100 for share in shares) or shares != sorted(set(shares)):
        raise DataError(f"shares must be increasing percentages in 1..100, got {shares}")
    observe = float(params.get("observe_seconds") or DEFAULT_OBSERVE_SECONDS)
    if observe <= 0:
        raise DataError(f"observe_seconds must be > 0, got {observe}")
    thresholds = CanaryThresholds.from_mapping(params)
    client = gateway_client(params)
    _wait_until_loaded(client, model, version)
    observations: list[dict[str, Any]] = []
    ramp_start = dt.datetime.now(dt.timezone.utc)
    for index, share in enumerate(share for share in shares if share < 100):
        if index == 0:
            client.set_canary(model, version, share / 100)
        else:
            client.set_share(model, share / 100)
        print(f"canary: {model}:{version} takes {share}% of the traffic (stable: {stable}); observing {observe:.0f}s", flush=True)
        _sleep_observing(observe, "canary")
        judgement = judge_canary(client.stats(model, int(math.ceil(observe))), thresholds)
        observations.append({"share": share, "healthy": judgement.healthy, "reasons": judgement.reasons,
                             "canary": judgement.canary, "stable": judgement.stable})
        if not judgement.healthy:
            # After set_canary the gateway has no promote to undo: rollback only stops canary traffic.
            client.rollback(model)
            print(f"canary: ABORTED at {share}%: {'; '.join(judgement.reasons)}; all traffic is back on {model}:{stable}", flush=True)
            return {"decision": "rolled_back", "version": version, "stable": stable, "share": share,
                    "reasons": judgement.reasons, "observations": observations}
        print(f"canary: healthy at {share}%: {judgement.summary()}", flush=True)
    # Without a pipeline run (a caller outside the DAG) there is nowhere to record the comparison.
    paired = (_paired_check(client, params, ctx, model, version, observe, ramp_start) if ctx is not None
              else {"diverged": False, "judged": False, "reasons": []})
    if approval == "required":
        evidence = canary_evidence(observations, paired)
        print(f"canary: {model}:{version} was healthy at every share{' but DIVERGED from stable' if paired['diverged'] else ''}; "
              f"it waits for a person's approval with no traffic (all traffic on {model}:{stable})", flush=True)
        return {"decision": AWAITING_APPROVAL, "model": model, "version": version, "stable": stable,
                "share": max([share for share in shares if share < 100], default=0),
                "reasons": [f"healthy at every share of {shares} below 100%; promotion needs approval", *paired["reasons"]],
                "observations": observations, "paired": paired, "evidence": evidence,
                "evidence_markdown": evidence_markdown(model, version, stable, evidence)}
    if paired["diverged"] and not params.get("approve_divergence"):
        reasons = [*paired["reasons"], f"not promoted: trigger again with approve_divergence=true to promote anyway ({paired['report']})"]
        print(f"canary: HELD: {'; '.join(reasons)}; all traffic is on {model}:{stable}", flush=True)
        return {"decision": HELD_FOR_APPROVAL, "version": version, "stable": stable, "share": shares[-1],
                "reasons": reasons, "observations": observations, "paired": paired}
    client.promote(model, version)
    print(f"canary: promoted {model}:{version} to stable (previous stable {stable} kept for rollback)", flush=True)
    approved = ["decisions diverged from stable; promoted with approve_divergence"] if paired["diverged"] else []
    return {"decision": "promoted", "version": version, "previous_stable": stable, "share": 100, "paired": paired,
            "reasons": [f"healthy at every share of {shares} below 100%", *approved], "observations": observations}


def _paired_check(client: Any, params: Mapping[str, Any], ctx: Any, model: str, version: int, observe: float,
                  ramp_start: dt.datetime) -> dict[str, Any]:
    """Candidate and stable compared request by request; a summary for MLMD, the rest below the run.

    The gateway asks stable too for every request the canary answered (its `pair_canary`), so the
    ramp's own requests are compared first. Too few of them (a gateway without pairing, little
    traffic): the candidate shadows stable for `observe` more seconds and those requests are compared.
    """
    from metadata.queries import DEFAULT_LOG_DIR
    from monitoring import paired, settings

    log_dir = Path(params.get("log_dir") or ctx.config.root / DEFAULT_LOG_DIR)
    limits = settings.load_thresholds().paired
    client.set_share(model, 0.0)  # all traffic on stable until the verdict
    start, end = ramp_start, dt.datetime.now(dt.timezone.utc)
    client.flush_logs()
    comparison = paired.compare_logged(log_dir, start, end, limits, model_name=model)
    source = "canaried requests"
    if not comparison.judged:
        source = "shadow window"
        print(f"canary: {comparison.pairs} canaried requests were paired with stable; {model}:{version} shadows {model} "
              f"for {observe:.0f}s: both versions answer every request", flush=True)
        start = dt.datetime.now(dt.timezone.utc)
        client.set_shadow(model, version)
        try:
            _sleep_observing(observe, "paired")
            end = dt.datetime.now(dt.timezone.utc)
            client.flush_logs()
        finally:
            client.set_shadow(model, None)  # all traffic on stable until the verdict, whatever happened
        comparison = paired.compare_logged(log_dir, start, end, limits, model_name=model)
    report = paired.write_comparison(ctx.run_dir / "deploy" / f"paired-{version}", comparison,
                                     f"{model}:{version} vs stable, {start:%Y-%m-%d %H:%M} UTC")
    print(f"canary: paired comparison of {comparison.pairs} requests in {log_dir}: agreement {comparison.agreement:.3f}; "
          f"{'; '.join(comparison.reasons) or 'within the limits'} ({report})", flush=True)
    return {**comparison.summary(), "report": str(report), "log_dir": str(log_dir), "paired_from": source}


def _wait_until_loaded(client: Any, model: str, version: int) -> None:
    """A rollout right after a push must not send traffic to a version the model server is still loading."""
    client.wait_until_available(model, version, timeout_s=MODEL_LOAD_TIMEOUT_S,
                                progress=lambda line: print(f"rollout: {line}", flush=True))


def _blue_green(params: Mapping[str, Any], model: str, version: int, stable: int | None) -> dict[str, Any]:
    client = gateway_client(params)
    _wait_until_loaded(client, model, version)
    client.promote(model, version)
    print(f"blue_green: {model}:{version} is stable now (previous stable {stable} kept for rollback)", flush=True)
    return {"decision": "switched", "version": version, "previous_stable": stable,
            "reasons": ["manual blue-green switch"]}


def _rollback(params: Mapping[str, Any], model: str, stable: int | None) -> dict[str, Any]:
    client = gateway_client(params)
    policy = client.rollback(model)
    restored_from = policy.get("rolled_back_from")
    if restored_from is None:
        reason = f"no promote to undo: canary traffic stopped, stable stays {model}:{stable}"
    else:
        reason = f"stable {model}:{restored_from} replaced by the previous stable {model}:{policy.get('stable_version')}"
    print(f"rollback: {reason}", flush=True)
    return {"decision": "rolled_back", "version": restored_from, "stable": policy.get("stable_version"),
            "reasons": [f"manual rollback: {reason}"], "policy": xcom_jsonable(policy)}


def _record_deploy(ctx: Any, action: str, version: int | None, params: Mapping[str, Any],
                   decision: Mapping[str, Any]) -> dict[str, Any]:
    """A Deploy execution: input = the PushedModel (when known), results = the decision and its evidence."""
    from metadata.lineage import pushed_model_ref

    config = ctx.config
    inputs = {}
    pushed = pushed_model_ref(ctx.run.store, config.serving.model_name, version) if version is not None else None
    if pushed is not None:
        inputs["pushed_model"] = pushed
    parameters = {"action": action, **{k: v for k, v in params.items() if k not in ("trigger",)}}
    with ctx.run.step("Deploy", inputs, parameters, use_cache=False) as record:
        record.record(decision=decision["decision"], version=version, reasons=list(decision.get("reasons", [])),
                      details=xcom_jsonable({k: v for k, v in decision.items() if k not in ("evidence_markdown", "approval")}))
        if decision.get("approval"):
            record.record(approval=xcom_jsonable(decision["approval"]))
    return {"execution_id": record.execution_id, "pushed_model_id": pushed.id if pushed else None, **xcom_jsonable(dict(decision))}


