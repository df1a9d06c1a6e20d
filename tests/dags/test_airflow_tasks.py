"""mlops.airflow.tasks' decisions that need neither Airflow nor the ML stack: the retraining conf,
the monitoring window, the MLMD run name, and which errors end a task for good (exit codes) or
are retried.

It runs in the Airflow environment on purpose: the module must stay importable without the ML stack.
"""

from __future__ import annotations

import datetime as dt

import pytest

from core.errors import DataError, ModelNotBlessedError
from mlops.airflow.tasks import (
    EXIT_DATA_ERROR,
    EXIT_NOT_BLESSED,
    check_window,
    exit_on_user_error,
    monitoring_window,
    pipeline_run_id,
    retraining_conf,
)


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


def test_an_empty_or_reversed_training_window_is_refused_before_any_work():
    assert [str(d) for d in check_window("2013-01-01", "2013-04-01")] == ["2013-01-01", "2013-04-01"]
    for start, end in (("2013-04-01", "2013-01-01"), ("2013-01-01", "2013-01-01")):
        with pytest.raises(DataError, match=r"the window is empty: end 2013-0\d-01 is not after start"):
            check_window(start, end)


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


def test_the_beam_args_param_overrides_the_configs_beam_choice_for_the_run(tmp_path):
    from core.config import load_config
    from mlops.airflow.tasks import training_config

    (tmp_path / "mlops.toml").write_text('pipeline_root = "pipeline"\n')
    config = load_config(tmp_path / "mlops.toml")
    portable = ["--runner=PortableRunner", "--job_endpoint=localhost:8099", "--environment_type=EXTERNAL"]
    chosen = training_config(config, {"beam_args": portable, "train_steps": 5})
    assert chosen.beam_options(1_500_000).args == tuple(portable)
    assert chosen.training.train_steps == 5
    assert training_config(config, {"beam_args": None}).beam_options(10).args == config.beam_options(10).args
    with pytest.raises(DataError, match="beam_args param must be a non-empty list of Beam flags"):
        training_config(config, {"beam_args": ["PortableRunner"]})
