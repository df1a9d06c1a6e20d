"""taxi_monitoring with `dag.test()`: real checks on real prediction logs; drift triggers taxi_training.

Set-up (in the ML runtime): the training pipeline trains and pushes a model on 2013 Q1 trips (the
monitoring baseline is that model's training lineage); two hours of prediction logs are written
the way the gateway writes them, with the pushed model's own probabilities: the first hour from
the training window's trips, the second from 2016 trips (real distribution change).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.dags.conftest import parse_dag, run_in_ml, task_states, write_config, xcom_value

pytestmark = pytest.mark.slow

TRAINING_WINDOW = ("2013-01-01", "2013-04-01")
CALM_HOUR = ("2026-11-20T10:00:00+00:00", "2026-11-20T11:00:00+00:00")
DRIFTED_HOUR = ("2026-11-20T11:00:00+00:00", "2026-11-20T12:00:00+00:00")
EMPTY_HOUR = ("2026-11-20T13:00:00+00:00", "2026-11-20T14:00:00+00:00")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, airflow_db: Path):
    root = tmp_path_factory.mktemp("monitoring_dag")
    config = write_config(root)
    run_in_ml(
        """
        import csv, datetime as dt, json, sys
        from pathlib import Path
        from core.config import load_config
        from mlops.pipeline import run_pipeline
        from tests.conftest import TAXI_CSV
        from tests.monitoring.logs import score, taxi_frame, write_requests, year_of

        config = load_config(sys.argv[1])
        result = run_pipeline(config, start=sys.argv[2], end=sys.argv[3], progress=lambda line: None)
        model_dir = Path(result.pushed.results["path"])
        with TAXI_CSV.open(newline="") as handle:
            frame = taxi_frame(list(csv.DictReader(handle)))
        stamps = frame["trip_start_timestamp"].astype("int64")
        window = (stamps >= dt.datetime.fromisoformat(sys.argv[2] + "T00:00:00+00:00").timestamp()) & (
            stamps < dt.datetime.fromisoformat(sys.argv[3] + "T00:00:00+00:00").timestamp())
        log_dir = Path(sys.argv[1]).parent / "prediction_logs"
        for part, hour in ((frame[window].reset_index(drop=True), json.loads(sys.argv[4])),
                           (frame[year_of(frame) == 2016].reset_index(drop=True), json.loads(sys.argv[5]))):
            write_requests(log_dir, part, score(model_dir, part), dt.datetime.fromisoformat(hour[0]),
                           dt.datetime.fromisoformat(hour[1]), model_version=result.pushed.results["version"])
        print(json.dumps({"version": result.pushed.results["version"], "log_dir": str(log_dir)}))
        """,
        str(config), *TRAINING_WINDOW, json.dumps(CALM_HOUR), json.dumps(DRIFTED_HOUR),
        timeout=1800,
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLOPS_CONFIG", str(config))
        yield root


def monitor(root: Path, hour: tuple[str, str], retrain: tuple[str, str] = ("2013-01-01", "2017-01-01")):
    return parse_dag("taxi_monitoring").test(run_conf={
        "window_start": hour[0], "window_end": hour[1], "log_dir": str(root / "prediction_logs"),
        "retrain_start": retrain[0], "retrain_end": retrain[1]})


def triggered_training_runs() -> list:
    from airflow.models import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        runs = session.query(DagRun).filter(DagRun.dag_id == "taxi_training").all()
        return [(run.run_id, dict(run.conf or {}), str(run.triggered_by)) for run in runs]


def test_logs_like_the_training_data_pass_every_check_and_trigger_nothing(workspace):
    before = triggered_training_runs()
    dag_run = monitor(workspace, CALM_HOUR)

    states = task_states(dag_run)
    assert dag_run.state == "success", states
    assert states["check_drift"][0] == "success" and states["no_retraining"][0] == "success"
    assert states["trigger_training"][0] == "skipped"
    result = xcom_value(dag_run, "check_drift", "result")
    assert result["passed"] is True and result["rows"] > 500, result["failed_checks"]
    assert result["artifact"]["type_name"] == "DriftCheckResult"  # recorded in MLMD even when all pass
    assert triggered_training_runs() == before


def test_a_drifted_window_triggers_training_with_the_failed_checks_and_their_evidence(workspace):
    before = {run_id for run_id, _, _ in triggered_training_runs()}
    dag_run = monitor(workspace, DRIFTED_HOUR)

    states = task_states(dag_run)
    assert dag_run.state == "success", states
    assert states["trigger_training"][0] == "success" and states["no_retraining"][0] == "skipped"
    failed = xcom_value(dag_run, "check_drift", "failed_checks")
    assert failed, "2016 trips must fail at least one drift check"
    [(run_id, conf, _)] = [run for run in triggered_training_runs() if run[0] not in before]
    trigger = conf["trigger"]
    assert trigger["kind"] == "drift_check"
    assert trigger["checks"] == failed
    assert set(trigger["evidence"]) == set(failed) and all("threshold" in e for e in trigger["evidence"].values())
    assert isinstance(trigger["drift_check_artifact_id"], int)
    assert trigger["monitoring_run_id"].startswith("taxi_monitoring__")
    assert (trigger["window_start"], trigger["window_end"]) == DRIFTED_HOUR
    assert (conf["start"], conf["end"]) == ("2013-01-01", "2017-01-01")


def test_drift_without_new_data_is_raised_once_and_starts_no_training(workspace):
    """The retraining window is the served model's own: a retraining would change nothing."""
    before = triggered_training_runs()
    first = monitor(workspace, DRIFTED_HOUR, retrain=TRAINING_WINDOW)

    states = task_states(first)
    assert first.state == "failed", states  # raised to people: a failed run saying why
    assert states["no_new_data"][0] == "failed" and states["trigger_training"][0] == "skipped"
    decision = xcom_value(first, "check_drift", "retraining")
    assert decision["action"] == "no_new_data" and "no new data to learn from" in decision["message"]
    assert f"{TRAINING_WINDOW[0]}..{TRAINING_WINDOW[1]}" in decision["message"]

    again = monitor(workspace, DRIFTED_HOUR, retrain=TRAINING_WINDOW)  # the next window, the same cause
    states = task_states(again)
    assert again.state == "success", states
    assert states["no_retraining"][0] == "success" and states["no_new_data"][0] == "skipped"
    repeated = xcom_value(again, "check_drift", "retraining")
    assert repeated["action"] == "already_raised" and repeated["execution_id"] == decision["execution_id"]
    assert triggered_training_runs() == before
    # Metered once: the counter the alert metrics file exposes (Prometheus text format).
    metrics = (workspace / "pipeline" / "metrics" / "retraining_alerts.prom").read_text()
    assert 'mlops_retraining_alerts_total{decision="no_new_data"} 1\n' in metrics, metrics


def test_the_triggered_training_run_records_the_drift_check_on_its_mlmd_context(workspace):
    """Runs the triggered conf's first step (the others marked done) and reads the PipelineRun context."""
    [(_, conf, _)] = [run for run in triggered_training_runs() if run[1].get("trigger", {}).get("kind") == "drift_check"]
    dag_run = parse_dag("taxi_training").test(
        run_conf={**conf, "end": "2013-04-01"}, mark_success_pattern="clean|validate|prepare_transform|transform|discard_prepared_transform|train|evaluate|push")

    assert task_states(dag_run)["ingest"] == ("success", 1)
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"taxi_training__{dag_run.run_id}").strip("_")
    context = run_in_ml(
        """
        import json, sys
        from metadata.recorder import properties_of
        from metadata.store import connect
        from core.config import load_config

        store = connect(load_config(sys.argv[1]).metadata)
        print(json.dumps(properties_of(store.get_context_by_type_and_name("PipelineRun", sys.argv[2]))))
        """,
        str(workspace / "mlops.toml"), name,
    )
    assert context["trigger_kind"] == "drift_check"
    assert context["trigger"]["checks"] == conf["trigger"]["checks"]
    assert context["trigger"]["drift_check_artifact_id"] == conf["trigger"]["drift_check_artifact_id"]
    assert context["airflow_run_id"] == dag_run.run_id


def test_a_window_without_predictions_skips_the_checks(workspace):
    dag_run = monitor(workspace, EMPTY_HOUR)

    states = task_states(dag_run)
    assert dag_run.state == "success", states
    assert {states[task][0] for task in ("check_drift", "decide", "trigger_training", "no_retraining")} == {"skipped"}
