"""Drifted, labelled traffic through the gateway retrains the model on it, and the new model is rolled out:
taxi_monitoring -> taxi_training -> taxi_rollout with `dag.test()`, against a real serving stack.

Set-up (in the ML runtime): the training pipeline trains and pushes taxi:1 on 2013 Q1 trips; the
real model server and gateway (tests/dags/serving_stack.py, without its background traffic) serve
it. The 2016 trips (a real distribution change) are sent through the gateway's REST predict API,
and ground truth for most of them comes back through its feedback endpoint, under the request ids
the gateway gave; the gateway writes both to its Parquet log. The monitoring run on that window
fails its checks and triggers `taxi_training` with its data policy ("the CSV's last 366 days
before 2017 plus the labelled requests of the gateway's log"); the training run learns from the
labelled production rows, evaluates the candidate against taxi:1 on the held-out recent traffic
and pushes taxi:2; a blue-green `taxi_rollout` makes taxi:2 the gateway's stable version. The same
trips, sent again and served by taxi:2, pass every check of the next window against taxi:2's
baseline, and nothing is triggered.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.dags.conftest import ML_PYTHON, PROJECT_ROOT, parse_dag, run_in_ml, task_states, write_config, xcom_value

pytestmark = pytest.mark.slow

TRAINING_WINDOW = ("2013-01-01", "2013-04-01")
LABELLED = 600  # of the 833 trips of 2016 sent in the drifted window; the rest never get feedback
ADMIN_TOKEN = "retraining-test-admin-token-0123456789"

SEND_2016_TRAFFIC = """
import csv, json, sys
from pathlib import Path
from tests.conftest import TAXI_CSV
from tests.monitoring.logs import big_tipper, serve_through_gateway, taxi_frame, year_of

gateway_url, log_dir, labelled = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
with TAXI_CSV.open(newline="") as handle:
    frame = taxi_frame(list(csv.DictReader(handle)))
frame = frame[year_of(frame) == 2016].reset_index(drop=True)
print(json.dumps(serve_through_gateway(gateway_url, log_dir, frame, big_tipper(frame).astype(int), labelled=labelled)))
"""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, airflow_db: Path):
    """taxi:1 trained and pushed, served by a real model server and gateway; yields (root, gateway URL)."""
    root = tmp_path_factory.mktemp("retraining_dag")
    # A model trained on fewer, later rows may trail taxi:1 a little on the eval split: 5 points of AUC allowed.
    config = write_config(root, evaluation={"auc_tolerance": 0.05})
    first = run_in_ml(
        """
        import json, sys
        from core.config import load_config
        from mlops.pipeline import run_pipeline

        result = run_pipeline(load_config(sys.argv[1]), start=sys.argv[2], end=sys.argv[3], progress=lambda line: None)
        print(json.dumps({"version": result.pushed.results["version"], "path": result.pushed.results["path"]}))
        """,
        str(config), *TRAINING_WINDOW, timeout=1800,
    )
    assert first["version"] == 1
    env = {**os.environ, "MLOPS_GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}
    stack = subprocess.Popen([str(ML_PYTHON), "-m", "tests.dags.serving_stack", str(config), "--no-traffic"],
                             cwd=PROJECT_ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        ready = stack.stdout.readline()
        assert ready, "the serving stack did not start (see its stderr above)"
        gateway_url = json.loads(ready)["gateway_url"]
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("MLOPS_CONFIG", str(config))
            patch.setenv("MLOPS_GATEWAY_ADMIN_TOKEN", ADMIN_TOKEN)  # inherited by the rollout task's ML process
            yield root, gateway_url
    finally:
        stack.stdin.close()
        try:
            stack.wait(timeout=120)
        except subprocess.TimeoutExpired:
            stack.kill()
            stack.wait()


def log_dir(root: Path) -> Path:
    return root / "prediction_logs"  # where serving_stack's gateway logs requests and feedback


def send_2016_traffic(root: Path, gateway_url: str, labelled: int) -> tuple[tuple[str, str], dict]:
    """The 2016 trips through the gateway (ground truth for the first `labelled`); returns the window that holds them."""
    start = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    sent = run_in_ml(SEND_2016_TRAFFIC, gateway_url, str(log_dir(root)), str(labelled), timeout=600)
    end = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) + dt.timedelta(seconds=1)
    return (start.isoformat(), end.isoformat()), sent


def gateway_policy(gateway_url: str) -> dict:
    request = urllib.request.Request(f"{gateway_url}/admin/models/taxi/policy", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def monitor(root: Path, window: tuple[str, str]):
    return parse_dag("taxi_monitoring").test(run_conf={
        "window_start": window[0], "window_end": window[1], "log_dir": str(log_dir(root)),
        "retrain_start": "2013-01-01", "retrain_end": "2017-01-01", "csv_days": 366})


def triggered_training_confs(root: Path) -> list[dict]:
    """The taxi_training runs triggered with this test's traffic (Airflow's test database is shared
    with the other DAG tests, whose monitoring runs trigger training too)."""
    from airflow.models import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        return [dict(run.conf or {}) for run in session.query(DagRun).filter(DagRun.dag_id == "taxi_training").all()
                if (run.conf or {}).get("trigger") and (run.conf or {}).get("production_logs") == str(log_dir(root))]


def training_records(config: Path, run_name: str) -> dict:
    """What ML Metadata says about the training run: its ingest's production counts, its evaluation, its push."""
    return run_in_ml(
        """
        import json, sys
        from core.config import load_config
        from metadata.queries import model_audit
        from metadata.recorder import properties_of
        from metadata.store import connect

        store = connect(load_config(sys.argv[1]).metadata)
        context = store.get_context_by_type_and_name("PipelineRun", sys.argv[2])
        props = {store.get_execution_types_by_id([e.type_id])[0].name: properties_of(e)
                 for e in store.get_executions_by_context(context.id)}
        version = props["Push"]["result_version"]
        print(json.dumps({"production": props["Ingest"]["result_production"], "window": props["Ingest"]["parameters"],
                          "recent": props["Evaluate"]["result_recent_traffic"], "version": version,
                          "trigger": properties_of(context)["trigger"],
                          "audit": model_audit(store, "taxi", version)["data"]["production"]}, default=str))
        """,
        str(config), run_name,
    )


def test_drifted_labelled_traffic_retrains_on_it_is_rolled_out_and_the_next_window_passes(workspace):
    root, gateway_url = workspace
    drifted_window, logged = send_2016_traffic(root, gateway_url, LABELLED)
    assert logged["labelled"] == LABELLED and logged["rows"] > LABELLED and logged["versions"] == [1], logged
    first = monitor(root, drifted_window)
    states = task_states(first)
    assert first.state == "success", states
    assert states["trigger_training"][0] == "success" and states["still_failing"][0] == "skipped", states
    decision = xcom_value(first, "check_drift", "retraining")
    assert decision["action"] == "retrain" and "production" in decision["differences"], decision
    [conf] = triggered_training_confs(root)
    assert conf["production_logs"] == str(log_dir(root)) and conf["csv_days"] == 366
    assert conf["trigger"]["data_policy"] == {"production_logs": str(log_dir(root)), "csv_days": 366}

    training = parse_dag("taxi_training").test(run_conf=conf)
    states = task_states(training)
    assert training.state == "success", states
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"taxi_training__{training.run_id}").strip("_")
    records = training_records(root / "mlops.toml", name)
    production = records["production"]
    # Every labelled served row, once (the cap allows them: the CSV's 2016 rows are as many).
    assert (production["rows_served"], production["rows_labelled"], production["rows_unlabelled"]) == (
        logged["rows"], LABELLED, logged["rows"] - LABELLED), production
    assert records["window"]["window_start"].startswith("2016-01-01")  # csv_days: the last 366 days before 2017
    assert records["audit"]["rows_labelled"] == LABELLED  # `mlops lineage model taxi:2` says so
    assert records["trigger"]["data_policy"]["csv_days"] == 366
    recent = records["recent"]
    assert recent["rows"] == production["split_counts"]["eval"] > 0
    assert set(recent["metrics"]) == {"candidate", "v1 (serving)"}  # evaluated against the served model
    assert recent["passed"] is True and recent["reason"].startswith("passed: recent traffic"), recent
    assert records["version"] == 2

    rollout = parse_dag("taxi_rollout").test(run_conf={"action": "blue_green", "version": 2, "gateway_url": gateway_url})
    assert rollout.state == "success", task_states(rollout)
    assert xcom_value(rollout, "blue_green")["decision"] == "switched"
    assert gateway_policy(gateway_url)["stable_version"] == 2

    runs_so_far = len(triggered_training_confs(root))  # the drift-triggered conf, and the run above that used it
    next_window, served = send_2016_traffic(root, gateway_url, 0)
    assert served["versions"] == [2], served  # every answer came from the rolled-out model
    after = monitor(root, next_window)
    states = task_states(after)
    result = xcom_value(after, "check_drift", "result")
    assert after.state == "success" and result["passed"] is True, (states, xcom_value(after, "check_drift", "failed_checks"))
    assert result["model_version"] == 2 and states["trigger_training"][0] == "skipped"
    assert len(triggered_training_confs(root)) == runs_so_far  # nothing triggered again
