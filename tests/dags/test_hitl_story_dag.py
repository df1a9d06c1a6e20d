"""The check of issue 15 through Airflow: the taxi_review DAG run by Airflow's own scheduler on traffic
in `partial`, its required actions answered through the REST API v2 by a scripted reviewer who agrees
with the model on Cash trips and disagrees on Credit Card trips; then, in the ML runtime, the agreement
per slice, `mlops automation status`'s verdict, an approved move and its lineage.

The serving stack and the live Airflow are tests/dags/test_review_dag.py's fixture (its own instance
for this module). Every case is answered here (no timeout to wait for): the unanswered path is in
test_review_dag.py and tests/mlops/test_hitl_story.py.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import time

import pytest

from mlops.airflow import rest_client
from mlops.airflow.tasks import pipeline_run_id
from tests.dags.conftest import ML_PYTHON, PROJECT_ROOT, run_in_ml
from tests.dags.test_review_dag import ADMIN_TOKEN, case_of, model_answer, other, pending_actions, review  # noqa: F401

pytestmark = pytest.mark.slow

CASES = 30
AGREEING, DISAGREEING = "Cash", "Credit Card"
# Thresholds a test reaches with a few dozen cases; only the per-slice rule is out of reach of a slice at 0 %.
AUTOMATION = """
[automation]
min_slice_cases = 2
full_min_reviewed = 10
full_min_agreement = 0.5
full_min_slice_agreement = 0.9
full_max_referral_rate = 1.0
partial_floor = 0.5
floor_min_reviewed = 5
"""


def mlops(root, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(ML_PYTHON.parent / "mlops"), "--config", str(root / "mlops.toml"), *args], cwd=PROJECT_ROOT,
                          env={**os.environ, "MLOPS_GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}, capture_output=True, text=True,
                          timeout=600)


def answer(client, run_id: str, ti: dict, option: str, attempts: int = 6) -> None:
    """Answers one required action through the REST API. Airflow's SQLite database, busy with the
    scheduler's dozens of mapped tasks on 2 cores, sometimes answers 500 "Database error": asked
    again; a 409 after such a try means the first one went through, which the action's detail confirms."""
    for attempt in range(attempts):
        try:
            client.respond("taxi_review", run_id, ti["task_id"], [option], map_index=ti["map_index"])
            return
        except rest_client.AirflowApiError as err:
            if err.status == 409 and attempt:
                detail = client.hitl_detail("taxi_review", run_id, ti["task_id"], ti["map_index"])
                assert detail.get("chosen_options") == [option], detail
                return
            if err.status != 500 or attempt == attempts - 1:
                raise
            time.sleep(3)


def finish_answering(client, run_id: str, answers: dict[int, str], timeout: float = 900.0) -> tuple[str, list[dict]]:
    """Waits for the run to end, answering again a question asked again, as a reviewer in the UI would.

    On 2 cores under the test suite's load, SQLite's write lock can keep an answered ask task's
    "success" from being recorded (a 500 after 25 s); Airflow then starts another try of it, which
    asks the same case again (seen in a fresh-clone run: 5 of 30 cases, the run then waited out
    its 15 minute response timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        for action in client.answerable_actions("taxi_review", run_id):
            ti = action["task_instance"]
            try:
                answer(client, run_id, ti, answers[ti["map_index"]])
            except rest_client.AirflowApiError as err:
                if err.status != 409:  # 409: answered between the listing and now
                    raise
        run = client.get_run("taxi_review", run_id)
        if run["state"] in ("success", "failed"):
            return run["state"], client.task_instances("taxi_review", run_id)
        assert time.monotonic() < deadline, f"run {run_id} of taxi_review still {run['state']} after {timeout:.0f}s"
        time.sleep(5)


def test_a_reviewer_in_airflow_shows_in_agreement_readiness_and_the_approved_moves_lineage(review):
    root, client, _, conf = review
    with open(root / "mlops.toml", "a") as config:
        config.write(AUTOMATION)
    # Later in the stack's trip sequence, where the shipped CSV has more card trips between the cash ones.
    start = dt.datetime.fromisoformat(conf["window_start"]) + dt.timedelta(seconds=2)
    conf = {**conf, "window_start": start.isoformat(), "window_end": (start + dt.timedelta(seconds=8)).isoformat(),
            "max_open_cases": CASES, "response_timeout_minutes": 15.0}
    client.timeout = 120.0  # the API server answers slowly while the scheduler starts dozens of mapped tasks on 2 cores
    run_id = client.trigger("taxi_review", conf)["dag_run_id"]
    actions = pending_actions(client, run_id, CASES)
    cases = [case_of(root, action) for action in actions]
    slices = [case["features"]["payment_type"] for case in cases]
    assert slices.count(AGREEING) > slices.count(DISAGREEING) >= 2, slices  # the trips of the shipped CSV in that window
    answers = [{AGREEING: model_answer(case), DISAGREEING: other(model_answer(case))}.get(payment, "cannot tell")
               for case, payment in zip(cases, slices)]
    undecided = [case for case, payment in zip(cases, slices) if payment not in (AGREEING, DISAGREEING)]
    if not undecided:  # one "cannot tell" in any case: the last Cash trip
        last_cash = max(i for i, payment in enumerate(slices) if payment == AGREEING)
        answers[last_cash], undecided = "cannot tell", [cases[last_cash]]
    for action, option in zip(actions, answers):
        answer(client, run_id, action["task_instance"], option)
    state, task_instances = finish_answering(
        client, run_id, {action["task_instance"]["map_index"]: option for action, option in zip(actions, answers)})
    assert state == "success", [(t["task_id"], t["map_index"], t["state"]) for t in task_instances if t["state"] != "success"]
    # Every mapped task instance is listed (64 of them: more than the API's default page of 50).
    write_backs = [t for t in task_instances if t["task_id"] == "review_case.write_back"]
    assert sorted(t["map_index"] for t in write_backs) == list(range(CASES)) and {t["state"] for t in write_backs} == {"success"}

    agreeing = sum(answer == model_answer(case) for case, answer in zip(cases, answers))
    decided = sum(answer != "cannot tell" for answer in answers)
    measured = run_in_ml(
        """
        import json, sys, time
        from pathlib import Path
        import datetime as dt
        from core.config import load_config
        from metadata.review import ledger_path
        from monitoring.agreement import read_agreement

        config = load_config(sys.argv[1])
        start = dt.datetime.fromisoformat(sys.argv[3])
        for _ in range(60):  # the gateway writes its feedback Parquet every 0.5 s
            # As monitoring does: the requests served since the window's start, with the reviews received by now.
            end = dt.datetime.now(dt.timezone.utc)
            group = read_agreement(Path(sys.argv[2]), "taxi", start, end, ledger_path(config.pipeline_root)).group(1, "partial")
            if group is not None and group.reviewed >= int(sys.argv[4]):
                break
            time.sleep(1)
        print(json.dumps({"reviewed": group.reviewed, "agreed": group.agreed, "cannot_tell": group.cannot_tell,
                          "unanswered": group.unanswered,
                          "payment": {s.value: s.agreement for s in group.slices if s.feature == "payment_type"}}))
        """,
        str(root / "mlops.toml"), conf["log_dir"], conf["window_start"], str(decided))
    assert (measured["reviewed"], measured["agreed"]) == (decided, agreeing)
    assert measured["payment"][AGREEING] == pytest.approx(1.0) and measured["payment"][DISAGREEING] == pytest.approx(0.0)
    assert (measured["cannot_tell"], measured["unanswered"]) == (len(undecided), 0)

    common = ["--gateway-url", conf["gateway_url"], "--log-dir", conf["log_dir"]]
    status = mlops(root, "automation", "status", "--json", *common)
    assert status.returncode == 0, status.stderr
    verdict = json.loads(status.stdout)["verdict"]
    assert (verdict["current"], verdict["next"], verdict["meets"], verdict["action"]) == ("partial", "full", False, "stay")
    assert [(rule["name"], rule["observed"]) for rule in verdict["rules"] if not rule["met"]] == [("min_slice_agreement", 0.0)]

    refused = mlops(root, "automation", "move", "--to", "full", "--approved-by", "alice", *common)
    assert refused.returncode == 2 and "does not meet the rule for partial -> full: min_slice_agreement" in refused.stderr
    moved = mlops(root, "automation", "move", "--to", "full", "--approved-by", "alice", "--force", "pilot week", *common)
    assert moved.returncode == 0, moved.stderr
    lineage = mlops(root, "lineage", "model", "taxi:1")
    assert lineage.returncode == 0, lineage.stderr
    assert "partial -> full: moved, approved by alice (pilot week, forced)" in lineage.stdout
    assert "not met: min_slice_agreement 0.0% < 90.0%" in lineage.stdout
    review_run = pipeline_run_id("taxi_review", run_id)
    assert (f"{review_run}: {CASES} cases, {decided} answered ({agreeing} agree, {decided - agreeing} disagree), "
            f"{len(undecided)} cannot tell, 0 unanswered") in lineage.stdout
    request = mlops(root, "lineage", "request", undecided[0]["request_id"], "--log-dir", conf["log_dir"])
    assert request.returncode == 0, request.stderr
    assert "cannot tell, said admin" in request.stdout and f"[{review_run}, ReviewRun " in request.stdout
