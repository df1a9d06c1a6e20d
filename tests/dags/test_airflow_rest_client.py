"""mlops.airflow.rest_client's output without a running Airflow: one progress line per task state
change, in the order the tasks ran, and Airflow 3's structured task logs as readable lines."""

from __future__ import annotations

from mlops.airflow.rest_client import RunWatcher, log_lines


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
