"""The REST client's helpers for required actions (the live calls are in test_review_dag.py)."""

from __future__ import annotations

import datetime as dt

from mlops.airflow import rest_client


def action(state: str, seconds_ago: float, answered: bool = False) -> dict:
    created = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=seconds_ago)
    return {"created_at": created.isoformat().replace("+00:00", "Z"), "response_received": answered,
            "task_instance": {"state": state}}


def test_an_action_is_answered_only_once_it_waits_and_its_worker_had_time_to_park():
    settle = rest_client.REQUIRED_ACTION_SETTLE_SECONDS
    assert rest_client.ready_to_answer(action("awaiting_input", settle + 2))
    assert not rest_client.ready_to_answer(action("awaiting_input", 0.5))  # the worker may still be exiting
    assert not rest_client.ready_to_answer(action("running", settle + 2))
    assert not rest_client.ready_to_answer(action("awaiting_input", settle + 2, answered=True))


def test_the_page_of_a_mapped_case_is_under_its_map_index():
    ti = {"dag_id": "taxi_review", "dag_run_id": "manual__2026-12-05T22:02:18+00:00", "task_id": "review_case", "map_index": 3}
    assert rest_client.required_action_url("http://localhost:8080/", ti) == (
        "http://localhost:8080/dags/taxi_review/runs/manual__2026-12-05T22%3A02%3A18%2B00%3A00/tasks/review_case/mapped/3/required_actions")
    assert rest_client.required_action_url("http://localhost:8080", {**ti, "map_index": -1}).endswith("/tasks/review_case/required_actions")
