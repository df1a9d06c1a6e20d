"""Drifted, labelled traffic retrains the model on it: taxi_monitoring -> taxi_training with `dag.test()`.

Set-up (in the ML runtime): the training pipeline trains and pushes taxi:1 on 2013 Q1 trips; one
hour of prediction logs is written the way the gateway writes them, the 2016 trips scored by
taxi:1 (a real distribution change), and ground truth comes back for most of them as feedback.
The monitoring run on that hour fails its checks and triggers `taxi_training` with its data policy
("the CSV's last 366 days before 2017 plus the labelled requests of the gateway's log"); the
training run learns from the labelled production rows, evaluates the candidate against taxi:1 on
the held-out recent traffic and pushes taxi:2. The same traffic, served by taxi:2 in the next
hour, passes every check against taxi:2's baseline.

Not covered here: the rollout itself (taxi_rollout needs the serving stack: test_rollout_dag.py);
the next hour's requests are logged as taxi:2 served them.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest

from tests.dags.conftest import parse_dag, run_in_ml, task_states, write_config, xcom_value

pytestmark = pytest.mark.slow

TRAINING_WINDOW = ("2013-01-01", "2013-04-01")
LABELLED = 600  # of the 833 trips of 2016 served in the drifted hour; the rest never get feedback
NOW = dt.datetime.now(dt.timezone.utc).replace(minute=0, second=0, microsecond=0)
# Recent hours: the production window is the last `production_window_days` UTC days.
DRIFTED_HOUR = ((NOW - dt.timedelta(hours=3)).isoformat(), (NOW - dt.timedelta(hours=2)).isoformat())
NEXT_HOUR = ((NOW - dt.timedelta(hours=2)).isoformat(), (NOW - dt.timedelta(hours=1)).isoformat())

LOG_2016_TRAFFIC = """
import csv, datetime as dt, json, sys
from pathlib import Path
from tests.conftest import TAXI_CSV
from tests.monitoring.logs import big_tipper, score, taxi_frame, write_feedback, write_requests, year_of

model_dir, log_dir, hour, version, labelled, seed = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3]), \
    int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
with TAXI_CSV.open(newline="") as handle:
    frame = taxi_frame(list(csv.DictReader(handle)))
frame = frame[year_of(frame) == 2016].reset_index(drop=True)
ids = write_requests(log_dir, frame, score(model_dir, frame), dt.datetime.fromisoformat(hour[0]),
                     dt.datetime.fromisoformat(hour[1]), model_version=version, seed=seed)
written = write_feedback(log_dir, frame, ids, big_tipper(frame).astype(int),
                         dt.datetime.fromisoformat(hour[1]) + dt.timedelta(minutes=5), count=labelled) if labelled else 0
print(json.dumps({"rows": len(frame), "labelled": written}))
"""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, airflow_db: Path):
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
    logged = run_in_ml(LOG_2016_TRAFFIC, first["path"], str(root / "gateway-log"), json.dumps(DRIFTED_HOUR), "1",
                       str(LABELLED), "0", timeout=600)
    assert logged["labelled"] == LABELLED and logged["rows"] > LABELLED
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLOPS_CONFIG", str(config))
        yield root, logged


def monitor(root: Path, hour: tuple[str, str]):
    return parse_dag("taxi_monitoring").test(run_conf={
        "window_start": hour[0], "window_end": hour[1], "log_dir": str(root / "gateway-log"),
        "retrain_start": "2013-01-01", "retrain_end": "2017-01-01", "csv_days": 366})


def triggered_training_confs() -> list[dict]:
    from airflow.models import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        return [dict(run.conf or {}) for run in session.query(DagRun).filter(DagRun.dag_id == "taxi_training").all()
                if (run.conf or {}).get("trigger")]


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


def test_drifted_labelled_traffic_retrains_on_it_and_the_next_window_passes_against_the_new_model(workspace):
    root, logged = workspace
    first = monitor(root, DRIFTED_HOUR)
    states = task_states(first)
    assert first.state == "success", states
    assert states["trigger_training"][0] == "success" and states["still_failing"][0] == "skipped", states
    decision = xcom_value(first, "check_drift", "retraining")
    assert decision["action"] == "retrain" and "production" in decision["differences"], decision
    [conf] = triggered_training_confs()
    assert conf["production_logs"] == str(root / "gateway-log") and conf["csv_days"] == 366
    assert conf["trigger"]["data_policy"] == {"production_logs": str(root / "gateway-log"), "csv_days": 366}

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

    runs_so_far = len(triggered_training_confs())  # the drift-triggered conf, and the run above that used it
    model_dir = root / "models" / "taxi" / "2"
    run_in_ml(LOG_2016_TRAFFIC, str(model_dir), str(root / "gateway-log"), json.dumps(NEXT_HOUR), "2", "0", "1",
              timeout=600)
    after = monitor(root, NEXT_HOUR)
    states = task_states(after)
    result = xcom_value(after, "check_drift", "result")
    assert after.state == "success" and result["passed"] is True, (states, xcom_value(after, "check_drift", "failed_checks"))
    assert result["model_version"] == 2 and states["trigger_training"][0] == "skipped"
    assert len(triggered_training_confs()) == runs_so_far  # nothing triggered again
