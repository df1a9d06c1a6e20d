"""Airflow's stable REST API v2 from a terminal: trigger a DAG run, follow it task by task, read task logs.

`AirflowClient` authenticates with a JWT from `/auth/token` (user `admin`, the password Airflow
generated, see `launcher.admin_password`). `trigger_and_wait` (behind `python -m mlops.airflow
trigger --wait`) prints one line per task state change and, when the run fails, the failing
task's log tail, so a terminal user never has to open the UI to see why. Stdlib (and the launcher) only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Iterator, Mapping, Sequence

from mlops.airflow.launcher import ADMIN_USER, AirflowLayout, LauncherError, admin_password, base_url

FINISHED_TASK_STATES = ("success", "failed", "skipped", "upstream_failed", "removed")
FINISHED_RUN_STATES = ("success", "failed")
# Airflow 3.3.2: an answer that lands before the scheduler has seen the exit of the worker that parked
# a required action fails the task instead of resuming it ("reported that the task instance ...
# finished with state success, but the task instance's state attribute is queued"), and on SQLite
# that path ended the scheduler ("database is locked"). The exit is seen 0.1-6.4 s after the park
# on two busy cores (tests/dags/test_hitl_story_dag.py's runs); a person never answers that fast;
# a script waits this long after the park (Airflow's `awaiting_input` event log entry) first.
REQUIRED_ACTION_SETTLE_SECONDS = 15.0
# How many times a read (GET) that failed with a 500 is asked in all (see AirflowClient._send).
READ_ATTEMPTS = 4
# Airflow's [api] maximum_page_limit: the largest page a listing may ask for.
LISTING_PAGE = 100
# A run waited on is given up once the scheduler has been unhealthy this long: nothing else moves it.
# Airflow calls it unhealthy 30 s after its last heartbeat ([scheduler] scheduler_health_check_threshold).
SCHEDULER_GONE_SECONDS = 90.0


class AirflowApiError(LauncherError):
    def __init__(self, method: str, path: str, status: int, detail: str) -> None:
        super().__init__(f"Airflow API {method} {path} -> HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


class AirflowClient:
    """Airflow's stable REST API v2, authenticated with a JWT from /auth/token."""

    def __init__(self, url: str, username: str, password: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._token = self._fetch_token(username, password)

    @property
    def token(self) -> str:
        """The JWT this client sends (the UI keeps the same in its `_token` cookie)."""
        return self._token

    def _fetch_token(self, username: str, password: str) -> str:
        document = self._send("POST", "/auth/token", {"username": username, "password": password}, token=None)
        token = document.get("access_token") if isinstance(document, Mapping) else None
        if not token:
            raise LauncherError(f"{self.url}/auth/token answered without an access_token: {document!r}")
        return str(token)

    def _send(self, method: str, path: str, body: Any = None, *, token: str | None = "", query: Mapping[str, Any] | None = None) -> Any:
        """One API call; a read the server could not serve for a moment (a 500 "Database error": its
        pool of SQLite connections all waiting for the write lock) is asked again, READ_ATTEMPTS times."""
        for attempt in range(1, READ_ATTEMPTS if method == "GET" else 1):
            try:
                return self._send_once(method, path, body, token=token, query=query)
            except AirflowApiError as err:
                if err.status != 500:
                    raise
                time.sleep(2.0 * attempt)
        return self._send_once(method, path, body, token=token, query=query)

    def _send_once(self, method: str, path: str, body: Any, *, token: str | None, query: Mapping[str, Any] | None) -> Any:
        url = self.url + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if token is not None:
            headers["Authorization"] = f"Bearer {token or self._token}"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")
            with contextlib.suppress(ValueError):
                parsed = json.loads(detail)
                detail = parsed.get("detail", detail) if isinstance(parsed, dict) else detail
            raise AirflowApiError(method, path, err.code, str(detail)) from None
        except (urllib.error.URLError, OSError) as err:
            raise LauncherError(f"cannot reach Airflow at {self.url} ({err}); start it with `python -m mlops.airflow start`") from None
        return json.loads(payload) if payload else None

    @staticmethod
    def _quote(value: str) -> str:
        return urllib.parse.quote(value, safe="")

    def health(self) -> dict[str, Any]:
        """/api/v2/monitor/health: each component's status and latest heartbeat."""
        return self._send("GET", "/api/v2/monitor/health", token=None)

    def get_dag(self, dag_id: str) -> dict[str, Any]:
        return self._send("GET", f"/api/v2/dags/{self._quote(dag_id)}")

    def wait_for_dag(self, dag_id: str, timeout: float = 180.0) -> dict[str, Any]:
        """Waits until the DAG processor has parsed the DAG (a fresh Airflow needs a few seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.get_dag(dag_id)
            except AirflowApiError as err:
                if err.status != 404 or time.monotonic() > deadline:
                    raise LauncherError(
                        f"DAG {dag_id!r} is not known to Airflow ({err.detail}); check the DAG file in dags/ "
                        "and the import errors in the UI (Browse > DAG import errors)") from None
            time.sleep(3)

    def set_paused(self, dag_id: str, paused: bool) -> dict[str, Any]:
        return self._send("PATCH", f"/api/v2/dags/{self._quote(dag_id)}", {"is_paused": paused})

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None, note: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"logical_date": None, "conf": dict(conf or {})}
        if note:
            body["note"] = note
        return self._send("POST", f"/api/v2/dags/{self._quote(dag_id)}/dagRuns", body)

    def get_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self._send("GET", f"/api/v2/dags/{self._quote(dag_id)}/dagRuns/{self._quote(run_id)}")

    def list_runs(self, dag_id: str, limit: int = 25) -> list[dict[str, Any]]:
        document = self._send("GET", f"/api/v2/dags/{self._quote(dag_id)}/dagRuns",
                              query={"limit": limit, "order_by": "-run_after"})
        return list(document.get("dag_runs", []))

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Every task instance of the run, mapped ones included (the API answers 50 per page unless asked)."""
        path = f"/api/v2/dags/{self._quote(dag_id)}/dagRuns/{self._quote(run_id)}/taskInstances"
        return list(self._pages(path, "task_instances"))

    def _pages(self, path: str, field: str, query: Mapping[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Every entry of a listing, a page of LISTING_PAGE at a time."""
        seen = 0
        while True:
            document = self._send("GET", path, query={**(query or {}), "limit": LISTING_PAGE, "offset": seen})
            page = list(document.get(field, []))
            seen += len(page)
            yield from page
            if len(page) < LISTING_PAGE or seen >= int(document.get("total_entries") or 0):
                return

    def required_actions(self, dag_id: str = "~", run_id: str = "~", *, pending: bool = True,
                         limit: int = 100) -> list[dict[str, Any]]:
        """Human-in-the-loop requests (Airflow's "required actions"), oldest first; `pending` = not answered yet.

        Each has the `subject`, `body`, `options` and `task_instance` (dag_id, dag_run_id, task_id, map_index);
        `hitl_client.HITLClient.respond` answers one.
        """
        query: dict[str, Any] = {"limit": limit, "order_by": "created_at"}
        if pending:
            query["response_received"] = "false"
        document = self._send("GET", f"/api/v2/dags/{self._quote(dag_id)}/dagRuns/{self._quote(run_id)}/hitlDetails",
                              query=query)
        return list(document.get("hitl_details", []))

    def parked_times(self, dag_id: str = "~", run_id: str = "~", after: str | None = None) -> dict[tuple[str, str, int], float]:
        """(run id, task id, map index) -> when the task instance last parked to await input (epoch seconds),
        from Airflow's event log (the `awaiting_input` entries the execution API writes at the park);
        `after` (ISO time) leaves out older entries."""
        query: dict[str, Any] = {"event": "awaiting_input", "order_by": "-when"}
        query.update({name: value for name, value in (("dag_id", dag_id), ("run_id", run_id), ("after", after))
                      if value not in ("~", None)})
        parked: dict[tuple[str, str, int], float] = {}
        for entry in self._pages("/api/v2/eventLogs", "event_logs", query):
            key = (str(entry.get("run_id")), str(entry.get("task_id")), int(entry.get("map_index", -1)))
            parked.setdefault(key, _epoch(entry["when"]))  # newest first: a cleared task's latest park
        return parked

    def answerable_actions(self, dag_id: str = "~", run_id: str = "~") -> list[dict[str, Any]]:
        """The pending required actions that can be answered safely now (`ready_to_answer`), oldest first."""
        actions = self.required_actions(dag_id, run_id)
        if not actions:
            return []
        # A task parks after its request is written: older parks (the DAG's history) are not read.
        oldest = min(_epoch(action["created_at"]) for action in actions) - 1.0
        parked = self.parked_times(dag_id, run_id, after=_iso(oldest))
        return [action for action in actions if ready_to_answer(action, parked.get(action_key(action)))]

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> list[str]:
        """The task's log for one try, as text lines."""
        path = (f"/api/v2/dags/{self._quote(dag_id)}/dagRuns/{self._quote(run_id)}/taskInstances/"
                f"{self._quote(task_id)}/logs/{try_number}")
        document = self._send("GET", path, query={"full_content": "true"})
        return log_lines(document.get("content") if isinstance(document, Mapping) else document)


def _epoch(text: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()


def _iso(epoch: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat()


def action_key(action: Mapping[str, Any]) -> tuple[str, str, int]:
    """A required action's (run id, task id, map index), as `AirflowClient.parked_times` keys them."""
    ti = action.get("task_instance") or {}
    return str(ti.get("dag_run_id")), str(ti.get("task_id")), int(ti.get("map_index", -1))


def ready_to_answer(action: Mapping[str, Any], parked_at: float | None, now: float | None = None) -> bool:
    """The required action awaits an answer and parked REQUIRED_ACTION_SETTLE_SECONDS ago or more.
    With no park time (no event log entry yet), the request's creation stands in, a little earlier."""
    if (action.get("task_instance") or {}).get("state") != "awaiting_input" or action.get("response_received"):
        return False
    since = parked_at if parked_at is not None else _epoch(action["created_at"])
    return (now if now is not None else time.time()) - since >= REQUIRED_ACTION_SETTLE_SECONDS


def required_action_url(ui_url: str, task_instance: Mapping[str, Any]) -> str:
    """The UI page where a person answers one required action. A mapped task's page is under
    `/mapped/<index>/` (HITLOperator.generate_link_to_ui's `?map_index=` opens the task's summary instead)."""
    quote = AirflowClient._quote
    map_index = int(task_instance.get("map_index", -1))
    mapped = f"/mapped/{map_index}" if map_index >= 0 else ""
    return (f"{ui_url.rstrip('/')}/dags/{quote(task_instance['dag_id'])}/runs/{quote(task_instance['dag_run_id'])}"
            f"/tasks/{quote(task_instance['task_id'])}{mapped}/required_actions")


def log_lines(content: Any) -> list[str]:
    """Airflow 3 returns structured log events; turns them into readable lines."""
    if content is None:
        return []
    if isinstance(content, str):
        return content.splitlines()
    lines: list[str] = []
    for event in content:
        if isinstance(event, str):
            lines.append(event)
            continue
        text = str(event.get("event", ""))
        level = str(event.get("level", "") or "")
        stamp = str(event.get("timestamp", "") or "")[11:19]
        lines.append(f"{stamp} {level:<7} {text}".rstrip() if stamp or level else text)
        if event.get("error_detail"):
            for detail in event["error_detail"]:
                lines.append(f"         {detail.get('exc_type', '')}: {detail.get('exc_value', '')}")
    return lines


@dataclasses.dataclass
class RunWatcher:
    """Turns successive task-instance listings into one readable line per state change."""

    task_order: Sequence[str] = ()
    seen: dict[str, tuple[str, int]] = dataclasses.field(default_factory=dict)

    def changes(self, task_instances: Sequence[Mapping[str, Any]]) -> list[str]:
        order = {task_id: index for index, task_id in enumerate(self.task_order)}
        lines = []
        # Chronological within one poll (a branch's later task must not print before the branch);
        # tasks that never started (skipped) come last, in DAG order.
        for ti in sorted(task_instances, key=lambda t: (str(t.get("start_date") or "~"), order.get(t["task_id"], len(order)))):
            state = ti.get("state") or "none"
            key = (state, int(ti.get("try_number") or 0))
            if self.seen.get(ti["task_id"]) == key or state in ("none", "scheduled", "queued"):
                continue
            self.seen[ti["task_id"]] = key
            lines.append(format_task_line(ti))
        return lines


def format_task_line(ti: Mapping[str, Any]) -> str:
    state = ti.get("state") or "none"
    duration = ti.get("duration")
    timing = f"  ({float(duration):.1f}s)" if duration is not None and state in FINISHED_TASK_STATES else ""
    attempt = int(ti.get("try_number") or 0)
    retry = f"  try {attempt}" if attempt > 1 else ""
    return f"  {ti['task_id']:<22} {state:<16}{timing}{retry}"


def wait_for_run(client: AirflowClient, dag_id: str, run_id: str, *, timeout: float = 7200.0, poll: float = 3.0,
                 progress: Callable[[str], None] = print) -> tuple[str, list[dict[str, Any]]]:
    """Polls the run until it finishes; prints a line per task state change. Returns (state, task instances).
    Raises LauncherError when the run does not finish in `timeout` or Airflow's scheduler stops."""
    watcher = RunWatcher()
    deadline = time.monotonic() + timeout
    scheduler = SchedulerWatch(client)
    while True:
        run = client.get_run(dag_id, run_id)
        task_instances = client.task_instances(dag_id, run_id)
        if not watcher.task_order and task_instances:
            watcher.task_order = [t["task_id"] for t in sorted(task_instances, key=lambda t: str(t.get("start_date") or "~"))]
        for line in watcher.changes(task_instances):
            progress(line)
        if run.get("state") in FINISHED_RUN_STATES:
            return str(run["state"]), task_instances
        if time.monotonic() > deadline:
            raise LauncherError(f"run {run_id} of {dag_id} did not finish within {timeout:.0f}s (state {run.get('state')}); "
                                f"unfinished: {unfinished_summary(task_instances)}")
        if stopped := scheduler.stopped():
            raise LauncherError(f"run {run_id} of {dag_id} cannot finish: {stopped}; unfinished: "
                                f"{unfinished_summary(task_instances)}. Restart Airflow (`python -m mlops.airflow stop`, "
                                "then `start`): the run goes on from where it stopped")
        time.sleep(poll)


@dataclasses.dataclass
class SchedulerWatch:
    """Whether Airflow's scheduler has been unhealthy for SCHEDULER_GONE_SECONDS, asked every `every` seconds.
    `airflow standalone` does not restart a scheduler that ended, and a run then waits for ever."""

    client: AirflowClient
    every: float = 15.0
    gone_after: float = SCHEDULER_GONE_SECONDS
    _asked: float = float("-inf")
    _unhealthy_since: float | None = None
    _heartbeat: str = ""

    def stopped(self, now: float | None = None) -> str | None:
        now = time.monotonic() if now is None else now
        if now - self._asked >= self.every:
            self._asked = now
            try:
                part = self.client.health().get("scheduler") or {}
            except LauncherError:
                return None  # the API server itself is busy or restarting: the run's own polls say so
            if part.get("status") == "healthy":
                self._unhealthy_since = None
            elif self._unhealthy_since is None:
                self._unhealthy_since, self._heartbeat = now, str(part.get("latest_scheduler_heartbeat") or "never")
        if self._unhealthy_since is not None and now - self._unhealthy_since >= self.gone_after:
            return (f"Airflow's scheduler stopped (last heartbeat {self._heartbeat}, unhealthy for "
                    f"{now - self._unhealthy_since:.0f}s; its lines in the Airflow log say why)")
        return None


def unfinished_summary(task_instances: Sequence[Mapping[str, Any]]) -> str:
    """The tasks a run still waits for, by task and state, with the map indexes of mapped ones:
    `review_case.ask awaiting_input [3, 17]; close_cases none`."""
    waiting: dict[tuple[str, str], list[int]] = {}
    for ti in task_instances:
        state = ti.get("state") or "none"
        if state not in FINISHED_TASK_STATES:
            waiting.setdefault((ti["task_id"], state), []).append(int(ti.get("map_index", -1)))
    if not waiting:
        return "no task (the scheduler has not updated the run's state yet)"
    return "; ".join(f"{task_id} {state}" + (f" {sorted(indexes)}" if max(indexes) >= 0 else "")
                     for (task_id, state), indexes in sorted(waiting.items()))


def failure_report(client: AirflowClient, dag_id: str, run_id: str, task_instances: Sequence[Mapping[str, Any]],
                   tail: int = 40) -> str:
    """The failing tasks and the last lines of each one's log."""
    failed = [t for t in task_instances if t.get("state") == "failed"]
    if not failed:
        return f"run {run_id} of {dag_id} failed, but no task failed (was it marked failed by hand?)"
    parts = []
    for ti in failed:
        try_number = max(int(ti.get("try_number") or 1), 1)
        try:
            lines = client.task_log(dag_id, run_id, ti["task_id"], try_number)
        except LauncherError as err:
            lines = [f"(could not read the log: {err})"]
        interesting = [line for line in lines if "::group::" not in line and "::endgroup::" not in line]
        parts.append(f"Task {ti['task_id']} failed (try {try_number}). Last {min(tail, len(interesting))} log lines:\n"
                     + "\n".join(f"    {line}" for line in interesting[-tail:]))
    return "\n".join(parts)


def trigger_and_wait(layout: AirflowLayout, port: int, dag_id: str, conf: Mapping[str, Any], *, wait: bool,
                     timeout: float, progress: Callable[[str], None] = print) -> int:
    """Unpauses the DAG, triggers a run with `conf`; with `wait`, follows it to the end. Returns an exit code."""
    client = AirflowClient(base_url(port), ADMIN_USER, admin_password(layout))
    client.wait_for_dag(dag_id)
    client.set_paused(dag_id, False)
    run = client.trigger(dag_id, conf)
    run_id = run["dag_run_id"]
    progress(f"Triggered {dag_id} run {run_id}")
    progress(f"  follow it in the UI: http://localhost:{port}/dags/{urllib.parse.quote(dag_id)}/runs/{urllib.parse.quote(run_id, safe='')}")
    if not wait:
        return 0
    began = time.monotonic()
    state, task_instances = wait_for_run(client, dag_id, run_id, timeout=timeout, progress=progress)
    if state == "success":
        progress(f"{dag_id} run {run_id} succeeded in {time.monotonic() - began:.0f}s.")
        return 0
    progress(f"{dag_id} run {run_id} FAILED after {time.monotonic() - began:.0f}s.")
    progress(failure_report(client, dag_id, run_id, task_instances))
    return 1

