"""The data policy params of a (re)training run: the config's [data] values unless a param says otherwise."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from core.config import config_from_dict
from core.errors import DataError
from mlops.airflow.tasks import retraining_conf
from mlops.data_policy import POLICY_PARAMS, retraining_policy


def config(root: Path, **data):
    return config_from_dict({"data": {"production_logs_dir": "var/gateway-log", **data}}, root)


def test_empty_params_keep_the_configs_values(tmp_path):
    policy = retraining_policy(config(tmp_path, label_policy="ground_truth_or_human"), {name: None for name in POLICY_PARAMS})
    assert policy.production_data is True and policy.label_policy == "ground_truth_or_human"
    assert policy.production_logs == str((tmp_path / "var/gateway-log").resolve())
    assert (policy.production_window_days, policy.max_production_share, policy.csv_days) == (30, 0.5, None)
    assert policy.csv_window(dt.date(2013, 1, 1), dt.date(2017, 1, 1)) == (dt.date(2013, 1, 1), dt.date(2017, 1, 1))


def test_params_override_the_config_and_the_csv_window_slides(tmp_path):
    params = {"production_data": False, "production_logs": str(tmp_path / "other"), "label_policy": "ground_truth_or_human",
              "production_window_days": 7, "max_production_share": 0.25, "csv_days": 90}
    policy = retraining_policy(config(tmp_path), params)
    applied = policy.apply(config(tmp_path)).data
    assert (applied.production_data, applied.production_logs_dir, applied.label_policy, applied.production_window_days,
            applied.max_production_share) == (False, str(tmp_path / "other"), "ground_truth_or_human", 7, 0.25)
    assert policy.csv_window(dt.date(2013, 1, 1), dt.date(2017, 1, 1)) == (dt.date(2016, 10, 3), dt.date(2017, 1, 1))


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("production_data", "yes", "true or false"),
    ("label_policy", "majority_vote", "one of ground_truth, ground_truth_or_human"),
    ("production_window_days", 0, "whole number >= 1"),
    ("production_window_days", 2.5, "whole number >= 1"),
    ("max_production_share", 1.0, "share in [0, 1)"),
    ("csv_days", True, "whole number >= 1"),
    ("production_logs", 3, "directory path"),
])
def test_a_bad_param_is_refused_naming_it_and_what_it_must_be(tmp_path, name, value, expected):
    with pytest.raises(DataError, match=rf"the param {name} must be ") as caught:
        retraining_policy(config(tmp_path), {name: value})
    assert expected in str(caught.value) and repr(value) in str(caught.value)


def test_a_drift_triggered_retraining_learns_from_the_logs_that_drifted_under_the_monitoring_runs_policy(tmp_path):
    result = {"checks": [{"name": "prediction_drift", "passed": False, "value": 0.3, "threshold": 0.1}]}
    conf = retraining_conf(result, {"log_dir": "/logs/gw", "max_production_share": 0.2, "csv_days": None}, "run")
    assert (conf["production_logs"], conf["max_production_share"]) == ("/logs/gw", 0.2) and "csv_days" not in conf
    assert conf["trigger"]["data_policy"] == {"production_logs": "/logs/gw", "max_production_share": 0.2}
    mine = retraining_conf(result, {"log_dir": "/logs/gw", "production_logs": "/logs/labelled"}, "run")
    assert mine["production_logs"] == "/logs/labelled"


def test_production_since_narrows_the_production_window_and_a_day_still_ahead_reads_nothing(tmp_path):
    from mlops.production_source import production_source

    now = dt.datetime(2026, 12, 6, 1, 0, tzinfo=dt.timezone.utc)
    (tmp_path / "var/gateway-log").mkdir(parents=True)
    whole = production_source(config(tmp_path), None, now)
    assert (whole.window_start.date(), whole.window_end.date()) == (dt.date(2026, 11, 7), dt.date(2026, 12, 7))
    policy = retraining_policy(config(tmp_path), {"production_since": "2026-12-01"})
    assert policy.production_since == "2026-12-01"
    since = production_source(policy.apply(config(tmp_path)), None, now)
    assert (since.window_start.date(), since.window_end.date()) == (dt.date(2026, 12, 1), dt.date(2026, 12, 7))
    ahead = retraining_policy(config(tmp_path), {"production_since": "2026-12-07"}).apply(config(tmp_path))
    assert production_source(ahead, None, now) is None  # nothing served since the served model's data ended


def test_production_since_must_be_a_date_and_served_model_is_the_monitoring_runs_to_resolve(tmp_path):
    for value in ("last week", "served_model"):
        with pytest.raises(DataError, match="the param production_since must be a date YYYY-MM-DD") as caught:
            retraining_policy(config(tmp_path), {"production_since": value})
        assert repr(value) in str(caught.value)
