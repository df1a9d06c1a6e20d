"""`make run`: the whole loop on this machine, through Airflow's own scheduler.

1. Start Airflow (`airflow standalone`, UI on http://localhost:8080) unless one is running.
2. Start the embedded TF Serving stand-in and the gateway (`mlops serve`) in the background.
3. Trigger `taxi_training` on the 2013-2014 trips through Airflow's REST API and follow it task by
   task; the push starts `taxi_rollout` (an Airflow Asset event).
4. Send real 2015-2016 trips through the gateway, with their ground truth as feedback.
5. Trigger `taxi_monitoring` on the window of that traffic. The trips of 2015-2016 differ from
   the training years, so a drift check fails and the DAG triggers `taxi_training` again with the
   evidence; follow that retraining run and the rollout of its model while traffic continues.
6. Trigger `taxi_review`: a scripted reviewer answers the first review cases through the REST
   API, prints how often it agreed with the model, and says where the other cases wait in the UI.
7. Print where everything is. Airflow and the servers keep running: `make stop` stops them.

Only stdlib, requests and this project's light modules are imported: the heavy work happens in
Airflow tasks and in the `mlops serve` process.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import itertools
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from mlops.airflow import hitl_client, launcher, rest_client
from mlops.airflow.tasks import DEFAULT_TRAINING_WINDOW
from mlops.automation import LOCAL_TOKEN_FILE
from core.config import load_config
from transforms import features

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = ROOT / "var" / "run"
GATEWAY_URL = "http://127.0.0.1:8000"
TOKEN_FILE = ROOT / LOCAL_TOKEN_FILE  # where `mlops automation` finds it too
SERVE_PID = RUN_DIR / "serve.pid"
SERVE_LOG = RUN_DIR / "serve.log"
TRAINING_WINDOW = DEFAULT_TRAINING_WINDOW  # taxi_training's own default: the 2013-2014 trips
TRAFFIC_YEARS = (2015, 2016)

say: Callable[[str], None] = lambda line: print(line, flush=True)  # noqa: E731


def _get(url: str, timeout: float = 2.0) -> Any:
    import requests

    try:
        return requests.get(url, timeout=timeout)
    except requests.RequestException:
        return None


def admin_token() -> str:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    if not TOKEN_FILE.exists():
        TOKEN_FILE.write_text(secrets.token_urlsafe(32))
        TOKEN_FILE.chmod(0o600)
    return TOKEN_FILE.read_text().strip()


def seed_model_config(config: Any) -> None:
    """A models.config naming the model with no version yet, so serving starts before the first
    push (as the compose platform's volume init does); push adds versions and the `stable` label."""
    from tensorflow_serving.config import model_server_config_pb2

    from serving import model_config

    serving = config.serving
    if serving.model_config_file.exists():
        return
    (serving.model_base_dir / serving.model_name).mkdir(parents=True, exist_ok=True)
    seeded = model_server_config_pb2.ModelServerConfig()
    model_config.ensure_model(seeded, serving.model_name, str(serving.model_base_dir / serving.model_name))
    model_config.write_model_config(seeded, serving.model_config_file)


def start_serving(config: Any, timeout: float = 300.0) -> None:
    """`mlops serve` in its own session, unless a gateway already answers."""
    health = _get(f"{GATEWAY_URL}/healthz")
    if health is not None and health.status_code == 200:
        say(f"Gateway already running at {GATEWAY_URL}")
        return
    seed_model_config(config)
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, MLOPS_GATEWAY_ADMIN_TOKEN=admin_token(), MLOPS_CONFIG=str(ROOT / "mlops.toml"))
    with SERVE_LOG.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlops.cli", "serve"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
    SERVE_PID.write_text(str(process.pid))
    say(f"Starting the model server and the gateway (pid {process.pid}, log {SERVE_LOG.relative_to(ROOT)}) ...")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"mlops serve exited with {process.returncode}; see {SERVE_LOG}")
        health = _get(f"{GATEWAY_URL}/healthz")
        if health is not None and health.status_code == 200:
            say(f"Gateway up at {GATEWAY_URL} (TF Serving REST/gRPC protocol; admin token in {TOKEN_FILE.relative_to(ROOT)})")
            return
        time.sleep(1.0)
    raise SystemExit(f"the gateway did not become healthy in {timeout:.0f}s; see {SERVE_LOG}")


def stop_serving() -> None:
    if not SERVE_PID.exists():
        return
    pid = int(SERVE_PID.read_text())
    try:
        os.killpg(pid, signal.SIGTERM)  # the gateway flushes its prediction log on SIGTERM
        say(f"Stopped the model server and gateway (pid {pid}).")
    except ProcessLookupError:
        pass
    SERVE_PID.unlink(missing_ok=True)


def traffic_rows(csv_path: Path, limit: int) -> list[dict[str, str]]:
    """Real trips of 2015-2016, in file order: "production traffic" the model never saw."""
    rows = []
    with csv_path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            stamp = row.get(features.TIMESTAMP_KEY) or ""
            if stamp.isdigit() and dt.datetime.fromtimestamp(int(stamp), dt.timezone.utc).year in TRAFFIC_YEARS:
                rows.append(row)
                if len(rows) >= limit:
                    break
    return rows


def ground_truth(row: dict[str, str]) -> int | None:
    try:
        return int(features.is_big_tipper(float(row[features.TIPS_KEY]), float(row[features.FARE_KEY])))
    except (KeyError, ValueError):
        return None


def send_traffic(rows: list[dict[str, str]], model_name: str, stop: threading.Event | None = None, *,
                 repeat: bool = False) -> tuple[int, int]:
    """Scores each trip through the gateway (sticky by row number) and posts its ground truth.

    With `repeat`, replays the trips until `stop` is set: live traffic for a rollout to observe.
    """
    import requests

    from serving.client import PredictionError, RestPredictionClient, TaxiTrip

    served = labelled = failed = 0
    session = requests.Session()
    with RestPredictionClient(GATEWAY_URL, model_name, timeout=10.0) as client:
        for index, row in itertools.cycle(enumerate(rows)) if repeat else enumerate(rows):
            if stop is not None and stop.is_set():
                break
            trip = TaxiTrip.from_csv_row(row, source="traffic", line=index + 2)
            try:
                result = client.predict([trip], request_key=f"trip-{index}")
            except PredictionError as err:
                # A client keeps going through a failed request; the gateway counted and logged it.
                failed += 1
                if failed <= 3:
                    say(f"  request trip-{index} failed: {err}")
                continue
            served += 1
            truth = ground_truth(row)
            if truth is not None and result.request_id:
                try:
                    answer = session.post(f"{GATEWAY_URL}/v1/feedback", json={
                        "request_id": result.request_id, "instance_index": 0, "ground_truth": truth, "source": "make run"},
                        timeout=10.0)
                except requests.RequestException:
                    continue
                labelled += answer.status_code == 200
    if failed:
        say(f"  {failed} requests failed (see the gateway's log and /metrics)")
    return served, labelled


def latest_run(client: rest_client.AirflowClient, dag_id: str, after: str, predicate: Callable[[dict], bool] = lambda r: True) -> dict | None:
    runs = [r for r in client.list_runs(dag_id, limit=25) if (r.get("logical_date") or r.get("run_after") or "") >= after or
            (r.get("start_date") or "") >= after]
    runs = [r for r in runs if predicate(r)]
    return max(runs, key=lambda r: r.get("start_date") or r.get("run_after") or "") if runs else None


def follow(client: rest_client.AirflowClient, dag_id: str, run_id: str, timeout: float) -> str:
    """Follows the run to its end; a failed run also prints its failing tasks' log tails."""
    say(f"Following {dag_id} run {run_id}")
    state, task_instances = rest_client.wait_for_run(client, dag_id, run_id, timeout=timeout, progress=say)
    say(f"{dag_id} run {run_id}: {state}")
    if state == "failed":
        say(rest_client.failure_report(client, dag_id, run_id, task_instances, tail=6))
    return state


def serving_summary(model_name: str) -> str:
    """What the gateway serves now, from its admin API."""
    from serving.rollout import AdminApiError, GatewayAdminClient

    try:
        policy = GatewayAdminClient(GATEWAY_URL, admin_token()).get_policy(model_name)
    except AdminApiError as err:
        return f"Serving: could not ask the gateway ({err})"
    canary = f", canary {model_name}:{policy['canary_version']} at {policy['canary_share']:.0%}" if policy.get("canary_share") else ""
    previous = f" (previous stable {policy['previous_stable']} kept for rollback)" if policy.get("previous_stable") else ""
    return f"Serving: {model_name}:{policy.get('stable_version')} is stable{canary}{previous}, policy {policy.get('policy')}"


def model_summary(config: Any) -> str:
    """Where the stable model is, its evaluation metrics and blessing, and how to see its lineage (from MLMD)."""
    from metadata import queries
    from metadata.store import connect
    from mlops.production_source import summary_line
    from serving import model_config

    name = config.serving.model_name
    stable = model_config.labels(model_config.read_model_config(config.serving.model_config_file), name).get("stable")
    if stable is None:
        return f"No stable version of {name} yet."
    audit = queries.model_audit(connect(config.metadata), name, stable)
    evaluation = audit["evaluation"]
    metrics = ", ".join(f"{key} {float(evaluation['metrics'][key]):.4f}" for key in ("auc", "accuracy", "precision", "recall", "f1", "log_loss")
                        if key in evaluation["metrics"])
    trigger = audit["run"].get("trigger_kind") or "manual"
    return "\n".join([
        f"== The stable model: {name}:{stable}",
        f"  served from     {audit['model']['uri']}",
        f"  eval metrics    {metrics}",
        f"  blessed         {evaluation['blessed']} (report {evaluation['report']})",
        f"  trained by      {audit['run']['id']} (triggered by {trigger})",
        f"  trained on      {audit['data']['rows']} rows, among them {summary_line(audit['data'].get('production'))}",
        f"  lineage         .venvs/ml/bin/mlops lineage model {name}:{stable}   (add --json, --html FILE or --svg FILE)",
    ])


def wait_for_triggered(client: rest_client.AirflowClient, dag_id: str, after: str, predicate: Callable[[dict], bool],
                       timeout: float = 300.0) -> dict | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = latest_run(client, dag_id, after, predicate)
        if run is not None:
            return run
        time.sleep(3.0)
    return None


REVIEW_DAG = "taxi_review"
SCRIPTED_ANSWERS = 5  # the scripted reviewer answers this many cases; the rest wait for people
_TABLE_ROW = re.compile(r"^\| (\w+) \| (.*) \|$", re.MULTILINE)
_PROBABILITY = re.compile(r"probability of a big tipper: \*\*([0-9.]+)\*\*")


def scripted_answer(body: str) -> str:
    """The scripted reviewer's rule, from what the case shows: card payers tip big (cash tips are not
    recorded in the Chicago data, so a cash trip is never a big tipper)."""
    shown = dict(_TABLE_ROW.findall(body))
    return features.DECISION_BIG_TIPPER if shown.get(features.PAYMENT_TYPE_KEY) == "Credit Card" else features.DECISION_NOT_BIG_TIPPER


def model_answer(body: str, threshold: float) -> str | None:
    match = _PROBABILITY.search(body)
    if match is None:
        return None
    return features.DECISION_BIG_TIPPER if float(match.group(1)) >= threshold else features.DECISION_NOT_BIG_TIPPER


def review_step(client: hitl_client.HITLClient, port: int, threshold: float, timeout: float = 60.0) -> None:
    """A short human step without a person: taxi_review opens the cases, a scripted reviewer answers the
    first few through the REST API (as a person would in the UI), and the rest wait in the UI."""
    try:
        client.wait_for_dag(REVIEW_DAG, timeout=30)
        client.set_paused(REVIEW_DAG, False)
        run_id = client.trigger(REVIEW_DAG, {}, note="make run: scripted reviewer")["dag_run_id"]
        say(f"  triggered {REVIEW_DAG} run {run_id}; waiting for its required actions ...")
        deadline = time.monotonic() + timeout
        actions: list[dict] = []
        while time.monotonic() < deadline:
            # Any run's cases: the daily run that unpausing the DAG starts may have opened the oldest ones.
            actions = client.answerable_actions(REVIEW_DAG)
            task_instances = client.task_instances(REVIEW_DAG, run_id)
            cases = [t for t in task_instances if t["task_id"] == "review_case.ask" and t.get("map_index", -1) >= 0]
            collect = next((t.get("state") for t in task_instances if t["task_id"] == "collect_cases"), None)
            mine = [a for a in actions if a["task_instance"]["dag_run_id"] == run_id]
            if (len(actions) >= SCRIPTED_ANSWERS or (cases and len(mine) == len(cases))
                    or collect in rest_client.FINISHED_TASK_STATES and collect != "success"
                    or any(t["task_id"] == "gather_answers" and t.get("state") for t in task_instances)):
                break
            time.sleep(3.0)
        if not actions:
            say("  no review cases yet (nothing needed a person, or the run is still starting); "
                f"see http://localhost:{port}/dags/{REVIEW_DAG}")
            return
        agree = disagree = 0
        for action in actions[:SCRIPTED_ANSWERS]:
            ti = action["task_instance"]
            answer = scripted_answer(action.get("body") or "")
            client.respond(REVIEW_DAG, ti["dag_run_id"], ti["task_id"], [answer], map_index=ti["map_index"])
            model = model_answer(action.get("body") or "", threshold)
            agree += model == answer
            disagree += model is not None and model != answer
            say(f"  answered {action['subject']}: {answer} (the model: {model})")
        judged = agree + disagree
        share = f" ({agree / judged:.0%})" if judged else ""
        say(f"  scripted reviewer agrees with the model on {agree} of {judged} cases{share}; disagrees on {disagree}")
        delivered = wait_for_write_backs(client, [a["task_instance"] for a in actions[:SCRIPTED_ANSWERS]], timeout=240)
        say(f"  {delivered} of {min(len(actions), SCRIPTED_ANSWERS)} answers closed at once by review_case.write_back: "
            "decisions went to the gateway as feedback (source review:admin; `mlops review cases` lists them), "
            "\"cannot tell\" stays in the case ledger")
        waiting = len(client.required_actions(REVIEW_DAG))
        say(f"  {waiting} more cases wait for a person in the Airflow UI: http://localhost:{port}/required_actions "
            f"(closed as unanswered after [review] response_timeout_minutes)")
    except (launcher.LauncherError, KeyError) as err:
        say(f"  the review step was skipped: {err}")


def wait_for_write_backs(client: hitl_client.HITLClient, asked: list[dict], *, timeout: float) -> int:
    """How many of the answered cases' `review_case.write_back` tasks succeeded, waiting until all are finished."""
    deadline = time.monotonic() + timeout
    while True:
        states = {}
        for run_id in {ti["dag_run_id"] for ti in asked}:
            states.update({(run_id, t.get("map_index")): t.get("state") for t in client.task_instances(REVIEW_DAG, run_id)
                           if t["task_id"] == "review_case.write_back"})
        mine = [states.get((ti["dag_run_id"], ti["map_index"])) for ti in asked]
        if all(state in rest_client.FINISHED_TASK_STATES for state in mine) or time.monotonic() > deadline:
            return sum(state == "success" for state in mine)
        time.sleep(3.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traffic", type=int, default=1500, help="2015-2016 trips to send through the gateway")
    parser.add_argument("--stop", action="store_true", help="stop Airflow and the servers started by `make run`")
    args = parser.parse_args(argv)
    layout = launcher.AirflowLayout.from_env()
    port = launcher.airflow_port()
    if args.stop:
        stop_serving()
        launcher.stop(layout, progress=say)
        return 0

    config = load_config(ROOT / "mlops.toml")
    # Airflow's tasks (the rollout) call the gateway's admin API: they inherit this environment.
    os.environ["MLOPS_GATEWAY_ADMIN_TOKEN"] = admin_token()
    os.environ.setdefault("MLOPS_GATEWAY_URL", GATEWAY_URL)
    began = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    say("== 1. Airflow")
    launcher.start(layout, port, progress=say)
    say(launcher.login_banner(layout, port))
    client = hitl_client.HITLClient(launcher.base_url(port), launcher.ADMIN_USER, launcher.admin_password(layout))

    say("== 2. Model server and gateway")
    start_serving(config)

    say(f"== 3. taxi_training on {TRAINING_WINDOW[0]} .. {TRAINING_WINDOW[1]} (Airflow's scheduler runs each step as a task)")
    code = rest_client.trigger_and_wait(layout, port, "taxi_training", {"start": TRAINING_WINDOW[0], "end": TRAINING_WINDOW[1]},
                                    wait=True, timeout=3600, progress=say)
    if code != 0:
        return code
    rollout = wait_for_triggered(client, "taxi_rollout", began, lambda r: True, timeout=120)
    if rollout is not None:
        follow(client, "taxi_rollout", rollout["dag_run_id"], timeout=900)

    say(f"== 4. Production traffic: {args.traffic} real trips of {TRAFFIC_YEARS[0]}-{TRAFFIC_YEARS[1]} through the gateway")
    traffic_start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)
    rows = traffic_rows(config.data.csv_path, args.traffic)
    served, labelled = send_traffic(rows, config.serving.model_name)
    say(f"  {served} requests served, {labelled} with ground truth fed back")
    time.sleep(6.0)  # the gateway flushes its Parquet log every few seconds
    traffic_end = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=5)

    say("== 5. taxi_monitoring on that traffic")
    retrain_after = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    code = rest_client.trigger_and_wait(layout, port, "taxi_monitoring", {
        "window_start": traffic_start.isoformat(), "window_end": traffic_end.isoformat()}, wait=True, timeout=1800, progress=say)
    if code != 0:
        return code
    retraining = wait_for_triggered(
        client, "taxi_training", retrain_after,
        lambda r: ((r.get("conf") or {}).get("trigger") or {}).get("kind") == "drift_check", timeout=60)
    if retraining is None:
        say("No drift check failed, so nothing was retrained.")
    else:
        say("A drift check failed: taxi_monitoring triggered taxi_training with the evidence.")
        stop = threading.Event()
        background = threading.Thread(target=send_traffic, args=(rows, config.serving.model_name, stop),
                                      kwargs={"repeat": True}, daemon=True)
        background.start()  # the rollout of the retrained model observes canary vs stable on live traffic
        try:
            follow(client, "taxi_training", retraining["dag_run_id"], timeout=3600)
            rollout = wait_for_triggered(client, "taxi_rollout", retrain_after, lambda r: True, timeout=120)
            if rollout is not None:
                follow(client, "taxi_rollout", rollout["dag_run_id"], timeout=1800)
        finally:
            stop.set()
            background.join(timeout=30)
        say(serving_summary(config.serving.model_name))

    say("== 6. Human review: the cases that need a person (taxi_review)")
    review_step(client, port, config.evaluation.decision_threshold)

    say("")
    say(model_summary(config))
    say("")
    say("== Where things are")
    say(f"  Airflow UI      http://localhost:{port}  (user admin, password in {layout.password_file})")
    say(f"  Gateway         {GATEWAY_URL}/v1/models/{config.serving.model_name}:predict  (metrics: {GATEWAY_URL}/metrics)")
    say(f"  Models          {config.serving.model_base_dir / config.serving.model_name}  (labels in {config.serving.model_config_file})")
    say(f"  Prediction logs {ROOT / 'var/logs/predictions'}")
    say(f"  Review cases    http://localhost:{port}/required_actions   (ledger {config.pipeline_root / 'review' / 'cases.json'})")
    say("  Lineage         .venvs/ml/bin/mlops lineage model taxi:<version>   |   mlops runs list")
    say("  Stop everything make stop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
