"""Airflow's human-in-the-loop required actions over the REST API v2: read one, wait for it, answer it.

A required action is a task instance of an HITL operator (e.g. taxi_rollout's `approve_promotion`)
parked in the `awaiting_input` state; `GET/PATCH /api/v2/dags/{dag}/dagRuns/{run}/taskInstances/{task}/{map_index}/hitlDetails`
read and answer it (Airflow records the answering user as `responded_by`). What the UI's
Required Actions page does, for scripts and tests. Stdlib (and the REST client) only.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from mlops.airflow.rest_client import AirflowApiError, AirflowClient, action_key, ready_to_answer
from mlops.airflow.launcher import LauncherError


# Tries of an answer the API server could not record for a moment (see HITLClient.respond).
RESPOND_ATTEMPTS = 4


class HITLClient(AirflowClient):
    """An AirflowClient that also reads and answers required actions."""

    def _hitl_path(self, dag_id: str, run_id: str, task_id: str, map_index: int) -> str:
        return (f"/api/v2/dags/{self._quote(dag_id)}/dagRuns/{self._quote(run_id)}/taskInstances/"
                f"{self._quote(task_id)}/{int(map_index)}/hitlDetails")

    def hitl_detail(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict[str, Any]:
        """The request (subject, body, options, defaults) and, once answered, the response (chosen_options, responded_by_user)."""
        return self._send("GET", self._hitl_path(dag_id, run_id, task_id, map_index))

    def respond(self, dag_id: str, run_id: str, task_id: str, chosen_options: Sequence[str], map_index: int = -1,
                params_input: dict[str, Any] | None = None) -> dict[str, Any]:
        """Answers as the logged-in user; Airflow refuses (409) a second answer and (400) an unknown option.

        A 500 "Database error" (SQLite's write lock busy past its wait while the scheduler starts many
        tasks: the API server records its audit line before the answer, so nothing was answered) is
        sent again, RESPOND_ATTEMPTS times; a 409 to a later try is this answer if the recorded one is it.
        """
        body = {"chosen_options": list(chosen_options), "params_input": dict(params_input or {})}
        path = self._hitl_path(dag_id, run_id, task_id, map_index)
        attempt = 1
        while True:
            try:
                return self._send("PATCH", path, body)
            except AirflowApiError as err:
                if err.status == 409 and attempt > 1:
                    recorded = self.hitl_detail(dag_id, run_id, task_id, map_index)
                    if list(recorded.get("chosen_options") or []) == body["chosen_options"]:
                        return recorded
                if err.status != 500 or attempt == RESPOND_ATTEMPTS:
                    raise
            time.sleep(2.0 * attempt)
            attempt += 1

    def wait_for_request(self, dag_id: str, run_id: str, task_id: str, *, timeout: float = 600.0, poll: float = 2.0,
                         map_index: int = -1, answerable: bool = True) -> dict[str, Any]:
        """Waits until the task has asked (its request exists and it awaits input) and, when `answerable`,
        can be answered safely (rest_client.ready_to_answer); returns the request. A caller that only
        reads the request passes answerable=False (a short response timeout may end it before then)."""
        deadline = time.monotonic() + timeout
        last = "not asked yet"
        while time.monotonic() < deadline:
            try:
                detail = self.hitl_detail(dag_id, run_id, task_id, map_index)
                state = (detail.get("task_instance") or {}).get("state")
                if state == "awaiting_input" and (
                        not answerable or ready_to_answer(detail, self.parked_times(dag_id, run_id).get(action_key(detail)))):
                    return detail
                last = f"task state {state}"
            except AirflowApiError as err:
                if err.status != 404:
                    raise
            run = self.get_run(dag_id, run_id)
            if run.get("state") in ("success", "failed"):
                raise LauncherError(f"run {run_id} of {dag_id} ended ({run['state']}) before {task_id} asked for input")
            time.sleep(poll)
        raise LauncherError(f"{task_id} of {dag_id} run {run_id} did not ask for input within {timeout:.0f}s ({last})")
