"""The statistics Beam job over the gateway's Parquet logs: the right rows, the same numbers as TFDV in memory."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from beam_jobs.statistics import load_statistics
from core.errors import DataError
from monitoring import drift
from monitoring.log_statistics import generate_log_statistics, run, statistics_of_frame
from tests.monitoring import logs

START = dt.datetime(2026, 3, 1, 23, 0, tzinfo=dt.timezone.utc)  # the window crosses midnight: two partitions
END = START + dt.timedelta(hours=2)
BEAM = ["--runner=DirectRunner", "--direct_num_workers=1", "--direct_running_mode=in_memory"]


@pytest.fixture(scope="module")
def logged(taxi, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("logs")
    window = taxi[taxi["year"] == 2014].sample(400, random_state=1).reset_index(drop=True)
    window.loc[window.index % 4 == 0, "fare"] = np.nan  # NaN is missing, like null
    probabilities = np.full(len(window), 0.3)
    logs.write_requests(log_dir, window, probabilities, START, END, shadow_probabilities=probabilities, shadow_version=2)
    logs.write_requests_not_to_count(log_dir, taxi, START, END)
    return log_dir, window


def test_the_job_counts_served_requests_of_the_window_and_model_only(logged, tmp_path):
    log_dir, window = logged
    path = generate_log_statistics(log_dir, START, END, tmp_path / "stats.pb", model_name="taxi", beam_args=BEAM)
    statistics = load_statistics(path)
    assert drift.dataset(statistics).num_examples == len(window)  # shadow copies, other hours, other model left out
    in_memory = statistics_of_frame(window)
    by_job, expected = drift.feature_statistics(statistics), drift.feature_statistics(in_memory)
    assert set(by_job) == set(expected)
    for name in ("fare", "trip_miles", "trip_start_hour"):
        assert by_job[name].num_stats.mean == pytest.approx(expected[name].num_stats.mean, rel=1e-6)
        assert by_job[name].num_stats.common_stats.num_non_missing == expected[name].num_stats.common_stats.num_non_missing
    assert drift.missing_rate(statistics, "fare") == pytest.approx(0.25)
    assert drift.missing_rate(statistics, "company") == pytest.approx(window["company"].isna().mean())
    payment = {v.value: v.frequency for v in by_job["payment_type"].string_stats.top_values}
    assert payment == window["payment_type"].value_counts().to_dict()


def test_the_program_takes_flags_like_any_beam_job(logged, tmp_path):
    log_dir, window = logged
    output = run([f"--log_dir={log_dir}", f"--window_start={START.isoformat()}", f"--window_end={END.isoformat()}",
                  f"--statistics_output={tmp_path / 'stats.pb'}", *BEAM])
    # Without --model_name every model's served requests count.
    assert drift.dataset(load_statistics(output)).num_examples == len(window) + 80


def test_no_logs_or_nothing_served_is_a_clear_error(logged, tmp_path):
    log_dir, _ = logged
    with pytest.raises(DataError, match="no request logs between"):
        generate_log_statistics(tmp_path / "empty", START, END, tmp_path / "a.pb", beam_args=BEAM)
    with pytest.raises(DataError, match="no served requests logged .* for model nobody"):
        generate_log_statistics(log_dir, START, END, tmp_path / "b.pb", model_name="nobody", beam_args=BEAM)
    with pytest.raises(DataError, match="is not after"):
        generate_log_statistics(log_dir, END, START, tmp_path / "c.pb", beam_args=BEAM)
