"""taxi_rollout with `approval=required`, run by Airflow's own scheduler, answered over the REST API v2.

A real `airflow standalone` (temp AIRFLOW_HOME, free ports), a real gateway and model server with
live traffic (tests/dags/serving_stack.py), tiny real SavedModels: 1 (stable), 2 and 3 (healthy
canaries). The story runs in order: canary 2 is approved by `admin` and promoted (the approval,
with its approver and evidence, is in MLMD and in `mlops lineage model`); canary 3 is rejected and
rolled back; canary 3 again gets no answer before its timeout and is rolled back. The answers go
through `PATCH .../hitlDetails` exactly as the UI's Required Actions page sends them.
The first tests need no Airflow: they check the evidence a person is shown and how an answer is read.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mlops.airflow import rollout_tasks
from serving.rollout import canary_evidence, evidence_markdown
from tests.dags.conftest import ML_PYTHON, PROJECT_ROOT, push_tiny_models, run_in_ml, write_config
from tests.dags.test_airflow_live import free_port
from tests.dags.test_rollout_dag import ADMIN_TOKEN, labels, policy

DAG_ID = "taxi_rollout"
# Short windows: two judged shares and the shadow window, ~6 s each; at ~25 requests/s the shadow
# window gives the paired comparison its 100 pairs.
FAST = {"action": "canary", "approval": "required", "observe_seconds": 6, "min_canary_requests": 5,
        "max_p99_latency_ratio": 50.0, "shares": [25, 50, 100], "approval_timeout_minutes": 30}


# --- what the person sees, and how the answer is read (no Airflow needed) --------------------------------

WINDOW = {"share": 25, "healthy": True, "reasons": [],
          "canary": {"requests": 30, "error_rate": 0.0, "latency_p90_ms": 3.0, "mean_probability": 0.31},
          "stable": {"requests": 90, "error_rate": 0.01, "latency_p90_ms": 2.0, "mean_probability": 0.30}}


def test_the_evidence_shows_each_judged_window_and_a_paired_divergence():
    paired = {"pairs": 140, "judged": True, "agreement": 0.62, "diverged": True,
              "reasons": ["slice payment_type=Cash: agreement 0.40"], "report": "/runs/r/deploy/paired-2/report.html"}
    evidence = canary_evidence([WINDOW], paired)
    [window] = evidence["windows"]
    assert (window["canary_requests"], window["stable_requests"], window["latency_quantile"]) == (30, 90, "p90")
    assert window["latency_ratio"] == 1.5 and window["mean_probability_shift"] == pytest.approx(0.01)
    text = evidence_markdown("taxi", 2, 1, evidence)
    assert "| 25 % | 30 / 90 | 0.000 / 0.010 | 1.50x (p90) | +0.010 |" in text
    assert "**DIVERGED**: slice payment_type=Cash: agreement 0.40" in text and "140 requests" in text
    assert "(the canary shadowed stable, same requests)" in text  # no `paired_from`: the shadow window
    canaried = evidence_markdown("taxi", 2, 1, canary_evidence([WINDOW], {**paired, "paired_from": "canaried requests"}))
    assert "(stable also answered the canaried requests, same requests)" in canaried
    without = evidence_markdown("taxi", 2, 1, canary_evidence([WINDOW], {"diverged": False, "judged": False, "reasons": []}))
    assert "Paired comparison: not run" in without


def test_an_answer_is_read_as_approved_rejected_timed_out_or_missing():
    assert rollout_tasks.answer_decision({"chosen": "Approve", "responded_by": "admin", "timed_out": False}) == "approved"
    assert rollout_tasks.answer_decision({"chosen": "Reject", "responded_by": "admin", "timed_out": False}) == "rejected"
    assert rollout_tasks.answer_decision({"chosen": "Reject", "responded_by": None, "timed_out": True}) == "timed_out"
    assert rollout_tasks.answer_decision(None) == "no_answer"


# --- the live story ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory):
    from mlops.airflow.hitl_client import HITLClient
    from mlops.airflow.launcher import ADMIN_USER, AirflowLayout, admin_password, base_url

    root = tmp_path_factory.mktemp("rollout_approval")
    config = write_config(root)
    assert push_tiny_models(config, [1.0, 1.05, 1.02]) == [1, 2, 3]
    stack_env = {**os.environ, "MLOPS_GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}
    stack = subprocess.Popen([str(ML_PYTHON), "-m", "tests.dags.serving_stack", str(config)], cwd=PROJECT_ROOT, env=stack_env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    port = free_port()
    env = {
        **os.environ,
        "MLOPS_CONFIG": str(config),
        "MLOPS_AIRFLOW_HOME": str(root / "airflow_home"),
        "MLOPS_AIRFLOW_PORT": str(port),
        "MLOPS_GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",  # no hourly monitoring runs meanwhile
        # The scheduler resolves timed-out required actions on this period (default 15 s).
        "AIRFLOW__SCHEDULER__TRIGGER_TIMEOUT_CHECK_INTERVAL": "2",
    }

    def launcher(*args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mlops.airflow", *args], cwd=PROJECT_ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout)

    try:
        ready = stack.stdout.readline()
        assert ready, "the serving stack did not start (see its stderr above)"
        gateway_url = json.loads(ready)["gateway_url"]
        env["MLOPS_GATEWAY_URL"] = gateway_url
        started = launcher("start", "--timeout", "1100")
        assert started.returncode == 0, started.stdout + started.stderr
        layout = AirflowLayout(home_override=root / "airflow_home")
        client = HITLClient(base_url(port), ADMIN_USER, admin_password(layout))
        client.wait_for_dag(DAG_ID)
        client.set_paused(DAG_ID, False)
        yield root, gateway_url, client
    finally:
        launcher("stop", timeout=300)
        stack.stdin.close()
        stack.wait(timeout=120)


def trigger_canary(client, root: Path, version: int, answerable: bool = True, **overrides) -> tuple[str, dict]:
    """Triggers a canary that needs approval; returns the run id and the required action once it asks
    (and, when `answerable`, once it can be answered: hitl_client.HITLClient.wait_for_request)."""
    conf = {**FAST, "version": version, "log_dir": str(root / "prediction_logs"), **overrides}
    run_id = client.trigger(DAG_ID, conf)["dag_run_id"]
    return run_id, client.wait_for_request(DAG_ID, run_id, rollout_tasks.APPROVAL_TASK, timeout=900, answerable=answerable)


def finish(client, run_id: str) -> tuple[str, dict[str, str]]:
    from mlops.airflow.rest_client import wait_for_run

    state, task_instances = wait_for_run(client, DAG_ID, run_id, timeout=900, progress=lambda line: None)
    return state, {ti["task_id"]: ti.get("state") for ti in task_instances}


def deploys(root: Path, version: int) -> list[dict]:
    """The Deploy executions of one version, oldest first: decision, reasons, approval."""
    return run_in_ml(
        """
        import json, sys
        from core.config import load_config
        from metadata.lineage import find_pushed_model
        from metadata.queries import rollouts_of
        from metadata.store import connect

        store = connect(load_config(sys.argv[1]).metadata)
        print(json.dumps(rollouts_of(store, find_pushed_model(store, "taxi", int(sys.argv[2])).id)))
        """,
        str(root / "mlops.toml"), str(version),
    )


def lineage_text(root: Path, version: int) -> str:
    result = subprocess.run([str(ML_PYTHON), "-m", "mlops", "--config", str(root / "mlops.toml"), "lineage", "model", f"taxi:{version}"],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_an_approved_canary_is_promoted_and_the_approver_is_in_the_lineage(live):
    root, gateway_url, client = live
    run_id, request = trigger_canary(client, root, 2)

    assert request["subject"] == "Promote taxi:2 to stable?"
    assert request["options"] == ["Approve", "Reject"] and request["defaults"] == ["Reject"]
    assert "| 25 % |" in request["body"] and "| 50 % |" in request["body"]  # each judged window
    assert re.search(r"Paired comparison \((stable also answered the canaried requests|the canary shadowed stable), "
                     r"same requests\): [1-9]", request["body"])
    waiting = policy(gateway_url)
    assert (waiting["stable_version"], waiting["canary_share"]) == (1, 0.0)  # no canary traffic while it waits
    answer = client.respond(DAG_ID, run_id, rollout_tasks.APPROVAL_TASK, ["Approve"])
    assert answer["responded_by"]["name"] == "admin"

    state, tasks = finish(client, run_id)
    assert state == "success", tasks
    assert (tasks["canary"], tasks["approve_promotion"], tasks["promote_canary"], tasks["roll_back_canary"]) == (
        "success", "success", "success", "skipped")
    assert policy(gateway_url)["stable_version"] == 2 and labels(root)["stable"] == 2
    waited, promoted = deploys(root, 2)
    assert (waited["decision"], promoted["decision"]) == ("awaiting_approval", "promoted")
    approval = promoted["approval"]
    assert (approval["decision"], approval["responded_by"]) == ("approved", "admin")
    assert approval["canary_deploy_execution"] == waited["id"]
    assert [w["share"] for w in approval["evidence"]["windows"]] == [25, 50]
    assert approval["evidence"]["paired"]["pairs"] > 0
    text = lineage_text(root, 2)
    assert f"approved by admin at {approval['responded_at']} on evidence: 25%:" in text, text


@pytest.mark.slow
def test_a_rejected_canary_is_rolled_back_and_stable_is_untouched(live):
    root, gateway_url, client = live
    run_id, _ = trigger_canary(client, root, 3)
    client.respond(DAG_ID, run_id, rollout_tasks.APPROVAL_TASK, ["Reject"])

    state, tasks = finish(client, run_id)
    assert state == "failed"  # not deployed: red, like an automatic rollback
    assert (tasks["approve_promotion"], tasks["promote_canary"], tasks["roll_back_canary"]) == ("success", "skipped", "failed")
    current = policy(gateway_url)
    assert (current["stable_version"], current["canary_share"]) == (2, 0.0)
    rolled_back = deploys(root, 3)[-1]
    assert rolled_back["decision"] == "rolled_back"
    assert (rolled_back["approval"]["decision"], rolled_back["approval"]["responded_by"]) == ("rejected", "admin")
    assert "rejected by admin at" in lineage_text(root, 3)


@pytest.mark.slow
def test_a_canary_nobody_approves_in_time_is_rolled_back(live):
    root, gateway_url, client = live
    # Nobody answers: the request is read as soon as it is asked (its 15 s may end before it is answerable).
    run_id, request = trigger_canary(client, root, 3, answerable=False, approval_timeout_minutes=0.25)
    assert request["response_received"] is False

    state, tasks = finish(client, run_id)  # nobody answers
    assert state == "failed"
    assert (tasks["approve_promotion"], tasks["promote_canary"], tasks["roll_back_canary"]) == ("success", "skipped", "failed")
    current = policy(gateway_url)
    assert (current["stable_version"], current["canary_share"]) == (2, 0.0)
    timed_out = deploys(root, 3)[-1]
    assert (timed_out["decision"], timed_out["approval"]["decision"], timed_out["approval"]["responded_by"]) == (
        "rolled_back", "timed_out", None)
