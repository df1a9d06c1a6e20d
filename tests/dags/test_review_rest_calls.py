"""The REST client's helpers for required actions (the live calls are in test_review_dag.py)."""

from __future__ import annotations

import datetime as dt
import time

from mlops.airflow import rest_client


def action(state: str, created_ago: float, answered: bool = False) -> dict:
    created = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=created_ago)
    return {"created_at": created.isoformat().replace("+00:00", "Z"), "response_received": answered,
            "task_instance": {"state": state, "dag_run_id": "manual__1", "task_id": "review_case.ask", "map_index": 3}}


def test_an_action_is_answered_only_once_its_worker_parked_long_enough_ago():
    settle = rest_client.REQUIRED_ACTION_SETTLE_SECONDS
    now = time.time()
    parked_long_ago, parked_just_now = now - settle - 2, now - 0.5
    assert rest_client.ready_to_answer(action("awaiting_input", settle + 5), parked_long_ago)
    # Created long ago but parked a moment ago (a slow worker): the scheduler may not have seen its exit yet.
    assert not rest_client.ready_to_answer(action("awaiting_input", settle + 5), parked_just_now)
    assert not rest_client.ready_to_answer(action("running", settle + 5), parked_long_ago)
    assert not rest_client.ready_to_answer(action("awaiting_input", settle + 5, answered=True), parked_long_ago)
    # No event log entry yet: the request's creation (before the park) stands in.
    assert rest_client.ready_to_answer(action("awaiting_input", settle + 2), None)
    assert not rest_client.ready_to_answer(action("awaiting_input", 1.0), None)
    assert rest_client.action_key(action("awaiting_input", 0)) == ("manual__1", "review_case.ask", 3)


def test_the_page_of_a_mapped_case_is_under_its_map_index():
    ti = {"dag_id": "taxi_review", "dag_run_id": "manual__2026-12-05T22:02:18+00:00", "task_id": "review_case", "map_index": 3}
    assert rest_client.required_action_url("http://localhost:8080/", ti) == (
        "http://localhost:8080/dags/taxi_review/runs/manual__2026-12-05T22%3A02%3A18%2B00%3A00/tasks/review_case/mapped/3/required_actions")
    assert rest_client.required_action_url("http://localhost:8080", {**ti, "map_index": -1}).endswith("/tasks/review_case/required_actions")
