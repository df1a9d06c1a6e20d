"""taxi_review with Airflow's own scheduler against a real gateway in `partial` automation.

A live `airflow standalone` (temp AIRFLOW_HOME, free loopback ports) runs the DAG; the required
actions are answered through the REST API v2 as a reviewer would (never through the database):
one agreeing with the model, one disagreeing, one "cannot tell", one left to time out. The
decisions must reach the gateway's feedback log with the reviewer as source, the ledger must say
what became of every case, the close must be a ReviewRun in ML Metadata with the counts and the
reviewer, and a second run must not ask about the same requests again. Then a headless Chromium opens the Required Actions page of a case and reads what a reviewer sees. Last,
`dag.test()` on a window where nobody is needed: no required action, and a clean close.
"""

from __future__ import annotations

import datetime as dt
import html
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from mlops.airflow import launcher, rest_client
from mlops.airflow.hitl_client import HITLClient
from mlops.airflow.tasks import pipeline_run_id
from tests.dags.conftest import ML_PYTHON, PROJECT_ROOT, push_tiny_models, run_in_ml, write_config
from tests.dags.test_airflow_live import free_port

pytestmark = pytest.mark.slow

ADMIN_TOKEN = "review-test-admin-token-0123456789"
CASES_PER_RUN = 4
# Debian's headless Chromium (as tests/monitoring/browser.py finds it; that module needs numpy, absent here).
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def review(tmp_path_factory: pytest.TempPathFactory):
    """(root, Airflow client, Airflow port, the run conf): the serving stack in `partial`, and a live Airflow."""
    root = tmp_path_factory.mktemp("review_dag")
    config = write_config(root)
    push_tiny_models(config, [1.0])
    stack = subprocess.Popen([str(ML_PYTHON), "-m", "tests.dags.serving_stack", str(config)], cwd=PROJECT_ROOT,
                             env={**os.environ, "MLOPS_GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN},
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    port = free_port()
    env = {**os.environ, "MLOPS_CONFIG": str(config), "MLOPS_AIRFLOW_HOME": str(root / "airflow_home"),
           "MLOPS_AIRFLOW_PORT": str(port), "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
           # The scheduler closes timed-out required actions on this interval (default 15 s).
           "AIRFLOW__SCHEDULER__TRIGGER_TIMEOUT_CHECK_INTERVAL": "2"}
    layout = launcher.AirflowLayout(home_override=root / "airflow_home")
    try:
        ready = stack.stdout.readline()
        assert ready, "the serving stack did not start (see its stderr above)"
        gateway_url = json.loads(ready)["gateway_url"]
        # Every answer inside the band [0, 1] is referred to a person: all traffic from now on is a case.
        admin = urllib.request.Request(f"{gateway_url}/admin/models/taxi/automation", method="PUT",
                                       data=json.dumps({"mode": "partial", "band": [0.0, 1.0]}).encode(),
                                       headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"})
        urllib.request.urlopen(admin, timeout=10).read()
        start = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1)
        time.sleep(4)  # the stack sends ~25 requests/s; its log flushes every 0.5 s
        conf = {"window_start": start.isoformat(), "window_end": (start + dt.timedelta(seconds=2)).isoformat(),
                "log_dir": str(root / "prediction_logs"), "gateway_url": gateway_url,
                "max_open_cases": CASES_PER_RUN, "response_timeout_minutes": 1.0}
        started = subprocess.run([sys.executable, "-m", "mlops.airflow", "start", "--timeout", "1100"], cwd=PROJECT_ROOT,
                                 env=env, capture_output=True, text=True, timeout=1200)
        assert started.returncode == 0, started.stdout + started.stderr
        client = HITLClient(launcher.base_url(port), launcher.ADMIN_USER, launcher.admin_password(layout))
        client.wait_for_dag("taxi_review")
        client.set_paused("taxi_review", False)
        yield root, client, port, conf
    finally:
        subprocess.run([sys.executable, "-m", "mlops.airflow", "stop"], cwd=PROJECT_ROOT, env=env,
                       capture_output=True, timeout=300)
        stack.stdin.close()
        stack.wait(timeout=120)


def ledger(root: Path) -> dict[str, dict]:
    return json.loads((root / "pipeline" / "review" / "cases.json").read_text())["cases"]


def pending_actions(client: HITLClient, run_id: str, count: int, timeout: float = 600) -> list[dict]:
    """The run's unanswered required actions once `count` of them wait, by map index."""
    deadline = time.monotonic() + timeout
    while True:
        actions = client.answerable_actions("taxi_review", run_id)
        if len(actions) >= count:
            return sorted(actions, key=lambda a: a["task_instance"]["map_index"])
        assert time.monotonic() < deadline, f"only {len(actions)} required actions after {timeout:.0f}s"
        time.sleep(2)


def case_of(root: Path, action: dict) -> dict:
    """The ledger's case that a required action asks about (its subject names the request)."""
    return next(case for case in ledger(root).values()
                if f"Trip {case['request_id']} #{case['instance_index']} " in action["subject"])


def model_answer(case: dict) -> str:
    return "big_tipper" if case["probability"] >= 0.5 else "not_big_tipper"


def other(decision: str) -> str:
    return "not_big_tipper" if decision == "big_tipper" else "big_tipper"


def feedback_rows(root: Path) -> list[list]:
    return run_in_ml(
        """
        import json, sys
        from serving.prediction_log import read_feedback

        frame = read_feedback(sys.argv[1])
        print(json.dumps(sorted([r, int(i), d, s] for r, i, d, s in zip(
            frame["request_id"], frame["instance_index"], frame["human_decision"], frame["source"]) if s.startswith("review:"))))
        """,
        str(root / "prediction_logs"))


def test_answers_reach_the_gateway_and_a_timed_out_case_is_closed_unanswered(review):
    root, client, _, conf = review
    # Long enough for the answered cases' write-backs to land while the 4th still waits.
    run_id = client.trigger("taxi_review", {**conf, "response_timeout_minutes": 2.5})["dag_run_id"]
    actions = pending_actions(client, run_id, CASES_PER_RUN)
    cases = [case_of(root, action) for action in actions]
    assert len({case["request_id"] for case in cases}) == CASES_PER_RUN
    assert all(action["options"] == ["big_tipper", "not_big_tipper", "cannot tell"] for action in actions)
    assert all(case["state"] == "open" and case["reason"] == "referred" and case["automation"] == "partial" for case in cases)
    assert [c["logged_at"] for c in cases] == sorted(c["logged_at"] for c in cases)  # oldest first

    chosen = [model_answer(cases[0]), other(model_answer(cases[1])), "cannot tell"]  # the 4th is left to time out
    for action, option in zip(actions, chosen):
        ti = action["task_instance"]
        answer = client.respond("taxi_review", run_id, ti["task_id"], [option], map_index=ti["map_index"])
        assert answer["chosen_options"] == [option] and answer["responded_by"]["name"] == "admin"
    with pytest.raises(rest_client.AirflowApiError) as again:  # an answer is final
        ti = actions[0]["task_instance"]
        client.respond("taxi_review", run_id, ti["task_id"], ["cannot tell"], map_index=ti["map_index"])
    assert again.value.status == 409

    expected = sorted([[cases[0]["request_id"], cases[0]["instance_index"], chosen[0], "review:admin"],
                       [cases[1]["request_id"], cases[1]["instance_index"], chosen[1], "review:admin"]])
    # Each decision reaches the gateway as soon as it is given, while the 4th case still waits for its timeout.
    deadline = time.monotonic() + 300
    while feedback_rows(root) != expected and time.monotonic() < deadline:
        time.sleep(1)  # the gateway writes its feedback Parquet every 0.5 s
    assert feedback_rows(root) == expected, feedback_rows(root)  # "cannot tell" is never sent as a decision
    assert [a["task_instance"]["map_index"] for a in client.required_actions("taxi_review", run_id)] == [3]
    assert ledger(root)[f"{cases[3]['request_id']}#{cases[3]['instance_index']}"]["state"] == "open"

    state, task_instances = rest_client.wait_for_run(client, "taxi_review", run_id, timeout=600, progress=lambda _: None)
    assert state == "success"
    reviews = {ti["map_index"]: ti["state"] for ti in task_instances if ti["task_id"] == "review_case.ask"}
    assert reviews == {0: "success", 1: "success", 2: "success", 3: "failed"}  # the timeout fails its action only
    write_backs = {ti["map_index"]: ti["state"] for ti in task_instances if ti["task_id"] == "review_case.write_back"}
    assert write_backs == {0: "success", 1: "success", 2: "success", 3: "upstream_failed"}

    closed = {key: ledger(root)[key] for key in (f"{c['request_id']}#{c['instance_index']}" for c in cases)}
    assert [(c["state"], c["answer"], c["answered_by"], c["written_back"]) for c in closed.values()] == [
        ("answered", chosen[0], "admin", True), ("answered", chosen[1], "admin", True),
        ("cannot_tell", "cannot tell", "admin", False), ("unanswered", None, None, False)]
    assert feedback_rows(root) == expected  # the close sent nothing twice, and nothing for the timeout
    log = "\n".join(client.task_log("taxi_review", run_id, "close_cases", 1))
    assert "2 answered (1 agree with the model, 1 disagree), 1 cannot tell, 1 unanswered" in log
    # The close is a ReviewRun in ML Metadata: counts by outcome and who answered.
    [recorded] = [run for run in review_runs(root) if run["review_run"] == pipeline_run_id("taxi_review", run_id)]
    assert {k: recorded[k] for k in ("cases", "answered", "agree", "disagree", "cannot_tell", "unanswered")} == {
        "cases": 4, "answered": 2, "agree": 1, "disagree": 1, "cannot_tell": 1, "unanswered": 1}
    assert {k: recorded["reviewers"]["admin"][k] for k in ("answered", "cannot_tell")} == {"answered": 2, "cannot_tell": 1}
    assert f"recorded as ReviewRun {recorded['execution_id']} in ML Metadata" in log


def review_runs(root: Path) -> list[dict]:
    return run_in_ml(
        """
        import json, sys
        from core.config import load_config
        from metadata.review import all_review_runs
        from metadata.store import connect

        print(json.dumps(all_review_runs(connect(load_config(sys.argv[1]).metadata))))
        """,
        str(root / "mlops.toml"))


def test_the_required_actions_page_shows_the_trip_and_a_second_run_asks_about_new_requests(review):
    root, client, port, conf = review
    before = set(ledger(root))
    run_id = client.trigger("taxi_review", {**conf, "response_timeout_minutes": 1.5})["dag_run_id"]
    actions = pending_actions(client, run_id, CASES_PER_RUN)
    cases = [case_of(root, action) for action in actions]
    assert not {f"{c['request_id']}#{c['instance_index']}" for c in cases} & before  # nobody is asked twice
    assert len(ledger(root)) == len(before) + CASES_PER_RUN

    # The cases wait 1.5 minutes: long enough for a loaded machine to render both pages before they time out.
    page = visible_text(reviewer_page(client, rest_client.required_action_url(f"http://localhost:{port}", actions[0]["task_instance"])))
    case = cases[0]
    shown = [f"Trip {case['request_id']} #{case['instance_index']}", f"{case['probability']:.3f}", f"version {case['model_version']}",
             "partial", "refer_to_human", "big_tipper", "not_big_tipper", "cannot tell", "Awaiting Input"]
    for name, value in case["features"].items():  # every feature, with its value or "(missing)"
        shown += [name, "(missing)" if value is None else str(value)]
    missing = [seen for seen in shown if seen not in page]
    assert not missing, f"not on the case's Required Actions page: {missing}\n{page[:3000]}"
    listing = visible_text(reviewer_page(client, f"http://localhost:{port}/required_actions"))
    assert all(action["subject"] in listing for action in actions), listing[:3000]  # the reviewer's inbox

    state, _ = rest_client.wait_for_run(client, "taxi_review", run_id, timeout=600, progress=lambda _: None)
    assert state == "success"
    assert {ledger(root)[f"{c['request_id']}#{c['instance_index']}"]["state"] for c in cases} == {"unanswered"}


def visible_text(page: str) -> str:
    """The text a person reads on the page: one line per text node, no markup, scripts or styles."""
    text = re.sub(r"<style.*?</style>|<script.*?</script>", " ", page, flags=re.DOTALL)
    return "\n".join(html.unescape(line.strip()) for line in re.sub(r"<[^>]+>", "\n", text).splitlines() if line.strip())


def reviewer_page(client: HITLClient, target: str) -> str:
    """A page of Airflow's UI as headless Chromium renders it for the logged-in admin (the DOM after its scripts ran).

    The UI keeps its login in the `_token` cookie, which its login page sets from JavaScript; a page
    on another loopback port sets the same cookie (cookies are per host, not per port) and goes on.
    """
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (make setup installs it)")
    login = (f"<script>document.cookie = '_token={client.token}; path=/';"
             f"location.replace({json.dumps(target)});</script>").encode()

    class LoginPage(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(login)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), LoginPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with tempfile.TemporaryDirectory(prefix="chromium-") as profile:  # a fresh profile: no cookie of an earlier run
            done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                   f"--user-data-dir={profile}", "--virtual-time-budget=30000", "--dump-dom",
                                   f"http://localhost:{server.server_port}/"], capture_output=True, text=True, timeout=180)
    finally:
        server.shutdown()
    return done.stdout


def test_a_window_where_nobody_is_needed_asks_nothing_and_closes_cleanly(tmp_path, airflow_db):
    """`dag.test()` on an empty window: no required action is created, and the run still succeeds."""
    from tests.dags.conftest import parse_dag, task_states, xcom_value

    config = write_config(tmp_path)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLOPS_CONFIG", str(config))
        dag_run = parse_dag("taxi_review").test(run_conf={
            "window_start": "2026-11-23T09:00:00Z", "window_end": "2026-11-23T10:00:00Z",
            "log_dir": str(tmp_path / "no_logs"), "gateway_url": "http://127.0.0.1:9"})
    states = task_states(dag_run)
    assert str(dag_run.state) in ("success", "DagRunState.SUCCESS"), states
    assert states["collect_cases"][0] == "success" and states["close_cases"][0] == "success"
    assert states["review_case.ask"][0] == "skipped"  # mapped over no case
    assert xcom_value(dag_run, "close_cases") == {"run_id": xcom_value(dag_run, "collect_cases")["run_id"], "answered": 0,
                                                  "cannot_tell": 0, "unanswered": 0, "agree": 0, "disagree": 0, "written_back": 0}
