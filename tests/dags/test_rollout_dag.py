"""taxi_rollout with `dag.test()` against a real model server and gateway carrying live traffic.

Versions (tiny real SavedModels): 1 (stable), 2 (almost the same predictions: a healthy canary),
3 (the opposite predictions: its mean probability shifts, so its canary must be rolled back).
The story runs in order: canary 2 is ramped and promoted, a manual rollback restores 1, a
blue-green switch makes 2 stable again, canary 3 is observed, judged and rolled back; every
decision is a Deploy execution in MLMD linked to its PushedModel.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.dags.conftest import ML_PYTHON, PROJECT_ROOT, parse_dag, push_tiny_models, run_in_ml, task_states, write_config, xcom_value

pytestmark = pytest.mark.slow

ADMIN_TOKEN = "rollout-test-admin-token-0123456789"
FAST = {"observe_seconds": 4, "min_canary_requests": 5, "max_p99_latency_ratio": 50.0, "shares": [25, 50, 100]}
# Version 3 moves the mean score by ~0.35 (score sd ~0.34): at an even split, 20 requests a side already
# make that 3.3 standard errors, so the judge sees it even on a slow, loaded machine.
FAST_EVEN_SPLIT = {**FAST, "observe_seconds": 6, "shares": [50, 100]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, airflow_db: Path):
    root = tmp_path_factory.mktemp("rollout_dag")
    config = write_config(root)
    assert push_tiny_models(config, [1.0, 1.05, -1.0]) == [1, 2, 3]
    env = {**os.environ, "MLOPS_GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}
    process = subprocess.Popen([str(ML_PYTHON), "-m", "tests.dags.serving_stack", str(config)], cwd=PROJECT_ROOT, env=env,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        ready = process.stdout.readline()
        assert ready, "the serving stack did not start (see its stderr above)"
        urls = json.loads(ready)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("MLOPS_CONFIG", str(config))
            patch.setenv("MLOPS_GATEWAY_ADMIN_TOKEN", ADMIN_TOKEN)  # inherited by the task's ML process
            patch.setenv("MLOPS_GATEWAY_URL", urls["gateway_url"])
            yield root, urls["gateway_url"]
    finally:
        process.stdin.close()
        process.wait(timeout=120)


def policy(gateway_url: str) -> dict:
    request = urllib.request.Request(f"{gateway_url}/admin/models/taxi/policy", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def labels(root: Path) -> dict[str, int]:
    """TF Serving's version labels, read with the project's own models.config reader."""
    return run_in_ml(
        """
        import json, sys
        from serving.model_config import labels, read_model_config

        print(json.dumps(labels(read_model_config(sys.argv[1]), "taxi")))
        """,
        str(root / "models.config"),
    )


def deploy_record(root: Path, execution_id: int) -> dict:
    return run_in_ml(
        """
        import json, sys
        from metadata.recorder import properties_of
        from metadata.store import connect
        from core.config import load_config

        store = connect(load_config(sys.argv[1]).metadata)
        [execution] = store.get_executions_by_id([int(sys.argv[2])])
        inputs = [e.artifact_id for e in store.get_events_by_execution_ids([execution.id]) if e.type == e.INPUT]
        versions = [properties_of(a).get("version") for a in store.get_artifacts_by_id(inputs)]
        props = properties_of(execution)
        print(json.dumps({"type": store.get_execution_types_by_id([execution.type_id])[0].name,
                          "decision": props.get("result_decision"), "reasons": props.get("result_reasons"),
                          "pushed_model_versions": versions, "parameters": props.get("parameters")}))
        """,
        str(root / "mlops.toml"), str(execution_id),
    )


def deploy_decisions(root: Path) -> list[dict]:
    """Every Deploy execution's decision, reasons and version, oldest first."""
    return run_in_ml(
        """
        import json, sys
        from metadata.recorder import properties_of
        from metadata.store import connect
        from core.config import load_config

        store = connect(load_config(sys.argv[1]).metadata)
        deploys = [properties_of(e) for e in store.get_executions_by_type("Deploy")]
        print(json.dumps([{"decision": d.get("result_decision"), "reasons": d.get("result_reasons"),
                           "version": d.get("result_version")} for d in deploys]))
        """,
        str(root / "mlops.toml"),
    )


def rollout(conf: dict):
    return parse_dag("taxi_rollout").test(run_conf=conf)


def test_a_healthy_canary_is_ramped_and_promoted(stack):
    root, gateway_url = stack
    dag_run = rollout({"action": "canary", "version": 2, **FAST})

    states = task_states(dag_run)
    assert dag_run.state == "success", (states, deploy_decisions(root)[-1:])
    assert states["canary"] == ("success", 1)
    assert states["blue_green"][0] == states["rollback"][0] == "skipped"
    result = xcom_value(dag_run, "canary")
    assert result["decision"] == "promoted"
    assert [o["share"] for o in result["observations"]] == [25, 50]
    assert all(o["healthy"] and o["canary"]["requests"] >= 5 for o in result["observations"])
    assert policy(gateway_url)["stable_version"] == 2
    assert labels(root)["stable"] == 2  # the gateway moved TF Serving's label, so the model server follows
    record = deploy_record(root, result["execution_id"])
    assert (record["type"], record["decision"], record["pushed_model_versions"]) == ("Deploy", "promoted", [2])


def test_a_manual_rollback_restores_the_previous_stable_version(stack):
    root, gateway_url = stack
    dag_run = rollout({"action": "rollback"})

    assert dag_run.state == "success", task_states(dag_run)
    result = xcom_value(dag_run, "rollback")
    assert (result["decision"], result["version"], result["stable"]) == ("rolled_back", 2, 1)
    assert policy(gateway_url)["stable_version"] == 1 and labels(root)["stable"] == 1
    assert deploy_record(root, result["execution_id"])["pushed_model_versions"] == [1]


def test_a_blue_green_switch_moves_all_traffic_at_once(stack):
    root, gateway_url = stack
    dag_run = rollout({"action": "blue_green", "version": 2})

    assert dag_run.state == "success", task_states(dag_run)
    assert xcom_value(dag_run, "blue_green")["decision"] == "switched"
    current = policy(gateway_url)
    assert (current["stable_version"], current["previous_stable"], current["canary_share"]) == (2, 1, 0.0)


def test_a_version_that_is_already_stable_is_left_alone(stack):
    root, _ = stack
    dag_run = rollout({"action": "canary", "version": 2, **FAST})

    assert dag_run.state == "success"
    assert xcom_value(dag_run, "canary")["decision"] == "already_stable"


def test_a_canary_whose_predictions_shift_is_rolled_back_and_the_run_fails_visibly(stack):
    root, gateway_url = stack
    dag_run = rollout({"action": "canary", "version": 3, **FAST_EVEN_SPLIT})

    assert dag_run.state == "failed"
    assert task_states(dag_run)["canary"] == ("failed", 1)  # a rolled-back canary is final: no retry
    current = policy(gateway_url)
    assert (current["stable_version"], current["canary_share"]) == (2, 0.0)
    assert labels(root)["stable"] == 2
    records = deploy_decisions(root)
    [rolled_back] = [r for r in records if r["version"] == 3]
    assert rolled_back["decision"] == "rolled_back"
    assert any("mean predicted probability moved" in reason for reason in rolled_back["reasons"]), rolled_back
