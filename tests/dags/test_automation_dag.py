"""taxi_automation run by Airflow's own scheduler (`airflow standalone`, as tests/dags/test_airflow_live.py)
against a real gateway and model server (tests/dags/serving_stack.py), the approval answered through
the REST API v2 (PATCH .../taskInstances/ask_approval/-1/hitlDetails), as the Required Actions page does.

The story, in order: a scripted reviewer's shadow traffic earns assist, a person approves, the
gateway answers in assist and the AutomationChange names the approver; assist traffic earning
partial is rejected, then left unanswered until the timeout: the model stays in assist and both
refusals are recorded; agreement then falls under assist's floor and the model moves down to
shadow without anyone being asked.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from mlops.airflow.hitl_client import HITLClient
from mlops.airflow.rest_client import AirflowClient, wait_for_run
from tests.dags.conftest import ML_PYTHON, PROJECT_ROOT, push_tiny_models, run_in_ml, write_config
from tests.dags.test_airflow_live import free_port

pytestmark = pytest.mark.slow

DAG_ID = "taxi_automation"
ADMIN_TOKEN = "automation-test-admin-token-0123456789"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory):
    """The serving stack, then Airflow standalone whose tasks reach it; yields (root, gateway URL, REST client)."""
    root = tmp_path_factory.mktemp("automation_dag")
    config = write_config(root)
    assert push_tiny_models(config, [1.0]) == [1]
    env = {**os.environ, "MLOPS_GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN, "MLOPS_CONFIG": str(config)}
    stack = subprocess.Popen([str(ML_PYTHON), "-m", "tests.dags.serving_stack", str(config)], cwd=PROJECT_ROOT, env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        ready = stack.stdout.readline()
        assert ready, "the serving stack did not start (see its stderr above)"
        gateway_url = json.loads(ready)["gateway_url"]
        port = free_port()
        env.update({"MLOPS_GATEWAY_URL": gateway_url, "MLOPS_AIRFLOW_HOME": str(root / "airflow_home"),
                    "MLOPS_AIRFLOW_PORT": str(port), "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True"})

        def launcher(*args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "mlops.airflow", *args], cwd=PROJECT_ROOT, env=env,
                                  capture_output=True, text=True, timeout=timeout)

        started = launcher("start", "--timeout", "1100")
        try:
            assert started.returncode == 0, started.stdout + started.stderr
            password = json.loads((root / "airflow_home" / "simple_auth_manager_passwords.json.generated").read_text())["admin"]
            client = HITLClient(f"http://127.0.0.1:{port}", "admin", password)
            client.wait_for_dag(DAG_ID)
            # No start date and a cron trigger: unpausing starts nothing until the next 06:00 UTC.
            client.set_paused(DAG_ID, False)
            admin("PUT", gateway_url, "automation", {"mode": "shadow"})
            yield root, gateway_url, client
        finally:
            launcher("stop", timeout=300)
    finally:
        stack.stdin.close()
        stack.wait(timeout=120)


def admin(method: str, gateway_url: str, action: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(f"{gateway_url}/admin/models/taxi/{action}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def reviewed_traffic(root, automation: str, agreeing: int, disagreeing: int, disagree_every: int, seed: int) -> None:
    """A scripted reviewer's cases of the last hour, written into the gateway's log directory."""
    start = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)).isoformat()
    run_in_ml(
        """
        import datetime as dt, json, sys
        from tests.monitoring.reviews import scripted_traffic

        cases = scripted_traffic(sys.argv[1], start=dt.datetime.fromisoformat(sys.argv[2]), automation=sys.argv[3],
                                 model_version=1, agreeing=int(sys.argv[4]), disagreeing=int(sys.argv[5]),
                                 disagree_every=int(sys.argv[6]), seed=int(sys.argv[7]))
        print(json.dumps(len(cases)))
        """,
        str(root / "prediction_logs"), start, automation, str(agreeing), str(disagreeing), str(disagree_every), str(seed),
    )


def changes(root) -> list[dict]:
    """The AutomationChange history of taxi:1, as `mlops lineage model` reads it."""
    return run_in_ml(
        """
        import json, sys
        from core.config import load_config
        from metadata.automation import automation_changes_of
        from metadata.lineage import find_pushed_model
        from metadata.store import connect

        store = connect(load_config(sys.argv[1]).metadata)
        print(json.dumps(automation_changes_of(store, find_pushed_model(store, "taxi", 1)), default=str))
        """,
        str(root / "mlops.toml"),
    )


def trigger(client: AirflowClient, root, **conf) -> str:
    return client.trigger(DAG_ID, {"log_dir": str(root / "prediction_logs"), **conf})["dag_run_id"]


def wait_for_question(client: HITLClient, run_id: str, timeout: float = 600) -> dict:
    """Waits until ask_approval waits for a person (and can be answered safely); returns what the person is shown."""
    return client.wait_for_request(DAG_ID, run_id, "ask_approval", timeout=timeout)


def answer(client: HITLClient, run_id: str, option: str) -> dict:
    return client.respond(DAG_ID, run_id, "ask_approval", [option])


def finish(client: AirflowClient, run_id: str) -> dict[str, str]:
    state, task_instances = wait_for_run(client, DAG_ID, run_id, timeout=900, progress=lambda _: None)
    states = {t["task_id"]: t.get("state") for t in task_instances}
    assert state == "success", states
    return states


def test_an_earned_move_up_waits_for_a_person_and_the_approval_moves_the_gateway(live):
    root, gateway_url, client = live
    # Cash always agreed, every 8th Credit Card case overridden: 562/600 = 93.7 % overall, 87.3 % on Credit Card.
    reviewed_traffic(root, "shadow", agreeing=300, disagreeing=300, disagree_every=8, seed=1)
    run_id = trigger(client, root, response_timeout=900)
    question = wait_for_question(client, run_id)
    assert question["subject"] == "Move taxi:1 from shadow to assist?"
    assert "rules for **assist** are met" in question["body"] and "payment_type = Credit Card | 300 | 87.3%" in question["body"]
    assert admin("GET", gateway_url, "policy")["automation"] == "shadow"  # nothing moves before the answer

    assert answer(client, run_id, "Approve")["responded_by"]["name"] == "admin"
    states = finish(client, run_id)
    assert (states["apply_move"], states["record_refusal"], states["move_down"]) == ("success", "skipped", "skipped")
    assert admin("GET", gateway_url, "policy")["automation"] == "assist"
    [change] = changes(root)
    assert (change["from_degree"], change["to_degree"], change["applied"], change["approved_by"]) == ("shadow", "assist", True, "admin")
    assert change["evidence"]["reviewed"] == 600 and change["evidence"]["rules"]["min_slice_agreement"]["met"]


def test_a_rejected_or_unanswered_move_up_leaves_the_model_where_it_is_and_is_recorded(live):
    root, gateway_url, client = live
    # In assist: 1,100 reviews, 25 suggestions overridden (2.3 %), Credit Card at 95 %: partial is earned.
    reviewed_traffic(root, "assist", agreeing=600, disagreeing=500, disagree_every=20, seed=2)
    run_id = trigger(client, root, response_timeout=900)
    assert wait_for_question(client, run_id)["subject"] == "Move taxi:1 from assist to partial?"
    answer(client, run_id, "Reject")
    states = finish(client, run_id)
    assert (states["apply_move"], states["record_refusal"]) == ("skipped", "success")
    assert admin("GET", gateway_url, "policy")["automation"] == "assist"

    timed_out = trigger(client, root, response_timeout=5)  # nobody answers: the default (Reject) after 5 s
    states = finish(client, timed_out)
    assert (states["ask_approval"], states["apply_move"], states["record_refusal"]) == ("success", "skipped", "success")
    assert admin("GET", gateway_url, "policy")["automation"] == "assist"
    rejected, unanswered = changes(root)[-2:]
    assert (rejected["to_degree"], rejected["applied"], rejected["approved_by"]) == ("partial", False, None)
    assert rejected["reason"].startswith("rejected by admin")
    assert not unanswered["applied"] and unanswered["reason"].startswith("no answer before the response timeout")


def test_agreement_under_the_floor_moves_down_at_once_without_asking(live):
    root, gateway_url, client = live
    # 1,000 more assist cases, every one overridden: 1,075 of 2,100 agreed (51 %), under assist's floor of 85 %.
    reviewed_traffic(root, "assist", agreeing=0, disagreeing=1000, disagree_every=1, seed=3)
    run_id = trigger(client, root)
    states = finish(client, run_id)
    assert (states["move_down"], states["ask_approval"], states["stay"]) == ("success", "skipped", "skipped")
    assert admin("GET", gateway_url, "policy")["automation"] == "shadow"
    last = changes(root)[-1]
    assert (last["from_degree"], last["to_degree"], last["direction"], last["approved_by"]) == ("assist", "shadow", "down", None)
    assert "under the floor" in last["reason"]
