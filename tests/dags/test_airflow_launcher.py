"""mlops.airflow's decisions that need no running Airflow: its environment, progress lines, canary
judgement, retraining conf, windows, and which errors end a task for good.

It runs in the Airflow environment on purpose: the module must stay importable without the ML stack.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess

import pytest

from mlops import airflow as launcher
from mlops.airflow import (
    EXIT_DATA_ERROR,
    EXIT_NOT_BLESSED,
    AirflowLayout,
    CanaryThresholds,
    RunWatcher,
    airflow_env,
    airflow_port,
    exit_on_user_error,
    judge_canary,
    log_lines,
    monitoring_window,
    pipeline_run_id,
    retraining_conf,
)
from core.errors import DataError, ModelNotBlessedError
from tests.dags.conftest import PROJECT_ROOT


def test_every_airflow_process_gets_the_projects_home_dags_ml_python_config_and_path(tmp_path):
    layout = AirflowLayout(root=PROJECT_ROOT)
    env = airflow_env(layout, 8080, base={"PATH": "/usr/bin", "HOME": "/root"})
    assert env["AIRFLOW_HOME"] == str(PROJECT_ROOT / "airflow_home")
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(PROJECT_ROOT / "dags")
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1" and env["AIRFLOW__API__PORT"] == "8080"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:8080/execution/"
    assert env["MLOPS_ML_PYTHON"] == str(PROJECT_ROOT / ".venvs" / "ml" / "bin" / "python")
    assert env["MLOPS_CONFIG"] == str(PROJECT_ROOT / "mlops.toml")
    assert env["PATH"].split(os.pathsep)[:2] == [str(PROJECT_ROOT / ".venvs" / "airflow" / "bin"), "/usr/bin"]
    assert env["TF_USE_LEGACY_KERAS"] == "1"
    assert env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "False"  # the project's DAGs run once Airflow sees them
    assert (env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"], env["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"]) == ("8793", "8794")
    # A config or ML python chosen by the caller (a test, a deployment) is kept.
    kept = airflow_env(layout, 9000, base={"MLOPS_CONFIG": str(tmp_path / "x.toml"), "MLOPS_ML_PYTHON": "/opt/ml/python"})
    assert (kept["MLOPS_CONFIG"], kept["MLOPS_ML_PYTHON"]) == (str(tmp_path / "x.toml"), "/opt/ml/python")
    paused = airflow_env(layout, 9000, base={"AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True"})
    assert paused["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "True"
    assert AirflowLayout(root=PROJECT_ROOT, home_override=tmp_path).home == tmp_path


def test_the_port_comes_from_the_environment_and_is_checked():
    assert airflow_port({}) == 8080
    assert airflow_port({"MLOPS_AIRFLOW_PORT": "18080"}) == 18080
    for bad in ("http", "80", "65000", "-1"):
        with pytest.raises(launcher.LauncherError, match="MLOPS_AIRFLOW_PORT"):
            airflow_port({"MLOPS_AIRFLOW_PORT": bad})


def test_the_admin_password_is_read_from_the_file_airflow_generates(tmp_path):
    layout = AirflowLayout(root=PROJECT_ROOT, home_override=tmp_path)
    with pytest.raises(launcher.LauncherError, match="does not exist yet"):
        launcher.admin_password(layout)
    layout.password_file.write_text('{"admin": "s3cret"}')
    assert launcher.admin_password(layout) == "s3cret"
    assert "admin / s3cret" in launcher.login_banner(layout, 8080)


def test_one_progress_line_per_task_state_change():
    watcher = RunWatcher(task_order=["ingest", "validate"])
    first = watcher.changes([{"task_id": "ingest", "state": "running", "try_number": 1},
                             {"task_id": "validate", "state": None, "try_number": 0}])
    again = watcher.changes([{"task_id": "ingest", "state": "running", "try_number": 1},
                             {"task_id": "validate", "state": "scheduled", "try_number": 0}])
    done = watcher.changes([{"task_id": "ingest", "state": "success", "try_number": 1, "duration": 12.34},
                            {"task_id": "validate", "state": "up_for_retry", "try_number": 1}])
    retry = watcher.changes([{"task_id": "validate", "state": "running", "try_number": 2}])
    assert [line.split() for line in first] == [["ingest", "running"]]
    assert again == []
    assert [line.split() for line in done] == [["ingest", "success", "(12.3s)"], ["validate", "up_for_retry"]]
    assert [line.split() for line in retry] == [["validate", "running", "try", "2"]]


def test_tasks_that_finish_in_one_poll_are_listed_in_the_order_they_ran():
    # The task order was fixed before the branch ran; a poll then sees both the branch and its follower done.
    watcher = RunWatcher(task_order=["check_drift", "trigger_training", "decide", "no_retraining"])
    lines = watcher.changes([
        {"task_id": "trigger_training", "state": "success", "try_number": 1, "start_date": "2026-11-23T13:19:52.1+00:00"},
        {"task_id": "no_retraining", "state": "skipped", "try_number": 0, "start_date": None},
        {"task_id": "decide", "state": "success", "try_number": 1, "start_date": "2026-11-23T13:19:50.7+00:00"},
    ])
    assert [line.split()[0] for line in lines] == ["decide", "trigger_training", "no_retraining"]


def test_structured_task_logs_become_readable_lines():
    lines = log_lines([
        {"timestamp": "2026-11-23T09:05:02.993190Z", "level": "info", "event": "ERROR ingest failed: DataError: x.csv: bad"},
        {"timestamp": "2026-11-23T09:05:07.9Z", "level": "error", "event": "Task failed with exception",
         "error_detail": [{"exc_type": "CalledProcessError", "exc_value": "exit status 2"}]},
        "a plain line",
    ])
    assert lines[0] == "09:05:02 info    ERROR ingest failed: DataError: x.csv: bad"
    assert lines[2].strip() == "CalledProcessError: exit status 2"
    assert lines[3] == "a plain line"


STABLE = {"requests": 400, "errors": 0, "error_rate": 0.0, "latency_p99_ms": 10.0, "mean_probability": 0.30}


def test_a_healthy_canary_passes_every_check():
    canary = {"requests": 40, "errors": 0, "error_rate": 0.0, "latency_p99_ms": 12.0, "mean_probability": 0.33}
    judgement = judge_canary({"stable": STABLE, "canary": canary}, CanaryThresholds())
    assert judgement.healthy and judgement.reasons == []


@pytest.mark.parametrize("canary, expected", [
    ({"requests": 40, "error_rate": 0.10, "latency_p99_ms": 10.0, "mean_probability": 0.3}, "error rate 0.100 > 0.020"),
    ({"requests": 40, "error_rate": 0.0, "latency_p99_ms": 30.0, "mean_probability": 0.3}, "p99 latency 30.0 ms is 3.00x"),
    ({"requests": 40, "error_rate": 0.0, "latency_p99_ms": 10.0, "mean_probability": 0.75}, "mean predicted probability moved by 0.450"),
    ({"requests": 3, "error_rate": 0.0, "latency_p99_ms": 10.0, "mean_probability": 0.3}, "only 3 requests reached the canary"),
    ({}, "only 0 requests reached the canary"),
])
def test_an_unhealthy_canary_is_named_with_the_reason(canary, expected):
    judgement = judge_canary({"stable": STABLE, "canary": canary}, CanaryThresholds())
    assert not judgement.healthy
    assert any(expected in reason for reason in judgement.reasons), judgement.reasons


def test_a_mean_shift_within_sampling_noise_does_not_roll_back_a_canary():
    # Bimodal scores (sd 0.4): 25 canary requests against 75 stable ones differ by 0.12 by chance.
    stable = {**STABLE, "requests": 75, "scored": 75, "mean_probability": 0.50, "probability_std": 0.4}
    canary = {"requests": 25, "error_rate": 0.0, "latency_p99_ms": 10.0, "scored": 25, "mean_probability": 0.62,
              "probability_std": 0.4}
    assert judge_canary({"stable": stable, "canary": canary}, CanaryThresholds()).healthy
    # The same shift over many requests is real.
    many = {**canary, "requests": 2_000, "scored": 2_000}
    judgement = judge_canary({"stable": {**stable, "scored": 6_000}, "canary": many}, CanaryThresholds())
    assert not judgement.healthy
    assert "mean predicted probability moved by 0.120" in judgement.reasons[0] and "standard errors" in judgement.reasons[0]


def test_tail_latency_is_p90_on_few_requests_and_small_differences_are_tolerated():
    stable = {**STABLE, "requests": 60, "latency_p90_ms": 4.0, "latency_p99_ms": 5.0}
    cold_start = {"requests": 30, "error_rate": 0.0, "mean_probability": 0.3, "latency_p90_ms": 5.0, "latency_p99_ms": 900.0}
    assert judge_canary({"stable": stable, "canary": cold_start}, CanaryThresholds()).healthy
    few_ms_slower = {**cold_start, "latency_p90_ms": 12.0}  # 3x, but 8 ms: below the tolerance
    assert judge_canary({"stable": stable, "canary": few_ms_slower}, CanaryThresholds()).healthy
    slow = {**cold_start, "latency_p90_ms": 40.0}
    judgement = judge_canary({"stable": stable, "canary": slow}, CanaryThresholds())
    assert judgement.reasons == ["p90 latency 40.0 ms is 10.00x the stable version's 4.0 ms (max 1.50x + 10 ms)"]


def test_retraining_conf_carries_the_failed_checks_and_their_evidence():
    result = {
        "window_start": "2026-11-23T09:00:00+00:00", "window_end": "2026-11-23T10:00:00+00:00",
        "artifact": {"id": 42, "type_name": "DriftCheckResult"},
        "checks": [
            {"name": "data_drift", "passed": False, "value": 0.31, "threshold": 0.1, "evidence": {"fare": {"psi": 0.31}}},
            {"name": "missing_values", "passed": True, "value": 0.01, "threshold": 0.05, "evidence": {}},
            {"name": "prediction_drift", "passed": False, "value": 0.2, "threshold": 0.1, "evidence": {"mean": 0.5}},
        ],
    }
    conf = retraining_conf(result, {"retrain_start": "2014-01-01", "retrain_end": "2017-01-01"}, "taxi_monitoring__run1")
    trigger = conf["trigger"]
    assert trigger["kind"] == "drift_check"
    assert trigger["checks"] == ["data_drift", "prediction_drift"]
    assert trigger["evidence"]["data_drift"] == {"value": 0.31, "threshold": 0.1, "fare": {"psi": 0.31}}
    assert trigger["drift_check_artifact_id"] == 42 and trigger["monitoring_run_id"] == "taxi_monitoring__run1"
    assert (conf["start"], conf["end"]) == ("2014-01-01", "2017-01-01")


def test_the_monitoring_window_is_explicit_or_the_data_interval_or_the_last_hour():
    explicit = monitoring_window({"window_start": "2026-11-23T08:00:00Z", "window_end": "2026-11-23T09:30:00Z"}, None, None)
    assert [t.isoformat() for t in explicit] == ["2026-11-23T08:00:00+00:00", "2026-11-23T09:30:00+00:00"]
    interval = monitoring_window({}, "2026-11-23T09:00:00+00:00", "2026-11-23T10:00:00+00:00")
    assert [t.hour for t in interval] == [9, 10]
    now = dt.datetime(2026, 11, 23, 10, 17, tzinfo=dt.timezone.utc)
    manual = monitoring_window({}, "None", "None", now=now)  # a manual run without a logical date
    assert [t.isoformat() for t in manual] == ["2026-11-23T09:00:00+00:00", "2026-11-23T10:00:00+00:00"]
    with pytest.raises(DataError, match="both window_start and window_end"):
        monitoring_window({"window_start": "2026-11-23"}, None, None)
    with pytest.raises(DataError, match="window is empty"):
        monitoring_window({"window_start": "2026-11-23T10:00:00Z", "window_end": "2026-11-23T09:00:00Z"}, None, None)
    with pytest.raises(DataError, match="window_start must be an ISO 8601"):
        monitoring_window({"window_start": "yesterday", "window_end": "today"}, None, None)


def test_the_mlmd_run_name_is_readable_and_safe_as_a_directory():
    name = pipeline_run_id("taxi_training", "manual__2026-11-23T09:03:30.705303+00:00")
    assert name == "taxi_training__manual__2026-11-23T09_03_30.705303_00_00"
    assert "/" not in pipeline_run_id("x", "../../etc") and not pipeline_run_id("x", "../../etc").startswith(".")


def test_user_errors_end_the_process_with_their_code_and_one_clear_line(capsys):
    with pytest.raises(SystemExit) as data_error:
        with exit_on_user_error("ingest"):
            raise DataError("trips.csv: column 'fare' has 12 values that are not a finite number")
    assert data_error.value.code == EXIT_DATA_ERROR
    with pytest.raises(SystemExit) as not_blessed:
        with exit_on_user_error("evaluate"):
            raise ModelNotBlessedError("auc 0.61 < floor 0.85")
    assert not_blessed.value.code == EXIT_NOT_BLESSED
    err = capsys.readouterr().err
    assert "ERROR ingest failed: DataError: trips.csv: column 'fare' has 12 values" in err
    assert "ERROR evaluate failed: ModelNotBlessedError: auc 0.61 < floor 0.85" in err


def test_transient_failures_propagate_so_airflow_retries_them():
    from serving.rollout import AdminApiError

    for transient in (AdminApiError("gateway unreachable after 3 attempts"), AdminApiError("HTTP 503", status=503),
                      OSError("No space left on device")):
        with pytest.raises(type(transient)):
            with exit_on_user_error("canary"):
                raise transient
    with pytest.raises(SystemExit) as refused:
        with exit_on_user_error("canary"):
            raise AdminApiError("HTTP 401: bad token", status=401)
    assert refused.value.code == EXIT_DATA_ERROR


def test_the_command_line_refuses_bad_conf_before_touching_airflow(tmp_path):
    env = {**os.environ, "MLOPS_AIRFLOW_HOME": str(tmp_path)}
    result = subprocess.run([os.sys.executable, "-m", "mlops.airflow", "trigger", "taxi_training", "--conf", "[1, 2]"],
                            capture_output=True, text=True, cwd=PROJECT_ROOT, env=env, timeout=120)
    assert result.returncode == 1
    assert "--conf must be a JSON object, got list" in result.stderr
    assert not (tmp_path / "standalone.pid").exists()
