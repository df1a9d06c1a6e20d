"""Airflow on Celery workers: `taxi_training` end to end through Airflow's own scheduler, the
CeleryExecutor, a real Redis broker and two `airflow celery worker` processes, with the metadata DB
(and Celery's result backend, `db+` of it) in a real PostgreSQL.

In the middle of `train`, the worker running it is killed with SIGKILL (its whole process group:
the Celery worker, its task supervisor and the ML process), as a lost machine would be. The
scheduler sees the task's heartbeat stop, marks the try failed with retries left, and the retry
runs on the other worker; the run succeeds and pushes a model.

Started through `python -m mlops.airflow start` with AIRFLOW__CORE__EXECUTOR=CeleryExecutor, as a
user would, in a temp AIRFLOW_HOME on free loopback ports. Everything started is stopped at the end.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlops.airflow.celery_cluster import WORKER_LOG_PORT_OFFSET
from mlops.airflow.launcher import ADMIN_USER, AirflowLayout, admin_password, base_url, read_process_groups
from mlops.airflow.rest_client import AirflowClient
from tests.dags.conftest import PROJECT_ROOT, write_config, write_trips_sample
from tests.fixtures.postgres import running_postgres
from tests.fixtures.redis import running_redis

pytestmark = pytest.mark.slow

WORKERS = 2
STEPS = ("ingest", "clean", "validate", "transform", "train", "evaluate", "push")
# The sample spans 2013-2016; train long enough (on a small sample) that the kill lands mid-task.
CONF = {"start": "2013-01-01", "end": "2017-01-01", "train_steps": 3000}
HEARTBEAT_TIMEOUT = 30  # seconds without a task heartbeat before the scheduler fails the try (default 300)


def free_port_block() -> int:
    """A free API port whose log server neighbours (+713, +714, +715+N for the workers) are free too."""
    offsets = (0, 713, 714, *(WORKER_LOG_PORT_OFFSET + n for n in range(1, WORKERS + 1)))
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port + max(offsets) > 65535:
            continue
        try:
            for offset in offsets:
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port + offset))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port block found")


def wait_for(condition, what: str, timeout: float, interval: float = 2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("celery")
    config = write_config(root)
    write_trips_sample(root / "trips.csv", 3000)
    with running_postgres("airflow") as database, running_redis() as broker:
        port = free_port_block()
        env = {
            **os.environ,
            "MLOPS_CONFIG": str(config),
            "MLOPS_AIRFLOW_HOME": str(root / "airflow_home"),
            "MLOPS_AIRFLOW_PORT": str(port),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "MLOPS_CELERY_WORKERS": str(WORKERS),
            "AIRFLOW__CELERY__BROKER_URL": broker,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": (f"postgresql+psycopg2://{database.user}:{database.password}"
                                                    f"@{database.host}:{database.port}/{database.database}"),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
            # Only the triggered run: no rollout after push, no hourly monitoring.
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        }
        env.pop("AIRFLOW_HOME", None)  # the conftest's SQLite home is not this Airflow's

        def launcher(*args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "mlops.airflow", *args], cwd=PROJECT_ROOT, env=env,
                                  capture_output=True, text=True, timeout=timeout)

        layout = AirflowLayout(root=PROJECT_ROOT, home_override=root / "airflow_home")
        began = time.monotonic()
        started = launcher("start", "--timeout", "1100")
        try:
            assert started.returncode == 0, started.stdout + started.stderr
            print(f"\nCelery cluster healthy after {time.monotonic() - began:.0f}s")
            yield root, env, layout, port, database
        finally:
            stopped = launcher("stop", timeout=300)
            print(stopped.stdout, stopped.stderr)
            for group in read_process_groups(layout).values():  # whatever stop could not end
                try:
                    os.killpg(group, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def query(database, sql: str, *params) -> list[tuple]:
    import psycopg2

    with psycopg2.connect(host=database.host, port=database.port, user=database.user, password=database.password,
                          dbname=database.database) as connection, connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


@pytest.fixture(scope="module")
def killed_run(cluster):
    """Triggers taxi_training, kills the worker running `train` mid-task, follows the run to its end."""
    root, env, layout, port, database = cluster
    groups = read_process_groups(layout)
    assert set(groups) == {"api-server", "scheduler", "dag-processor", "triggerer", "worker1", "worker2"}
    client = AirflowClient(base_url(port), ADMIN_USER, admin_password(layout))
    client.wait_for_dag("taxi_training", timeout=600)
    client.set_paused("taxi_training", False)
    began = time.monotonic()
    run_id = client.trigger("taxi_training", {**CONF, "csv_path": str(root / "trips.csv")})["dag_run_id"]

    def running_train():
        rows = query(database, "SELECT hostname FROM task_instance WHERE dag_id = 'taxi_training' AND run_id = %s "
                     "AND task_id = 'train' AND state = 'running' AND try_number = 1", run_id)
        return rows[0][0] if rows and rows[0][0] else None

    victim = wait_for(running_train, "train to start running", timeout=1500)
    reached_train = time.monotonic() - began
    time.sleep(5)  # mid-task: the ML process is importing TensorFlow or training
    assert running_train() == victim, "train finished before the kill: it is meant to be killed mid-task"
    os.killpg(groups[victim], signal.SIGKILL)
    killed_at = time.monotonic()

    def finished():
        state = client.get_run("taxi_training", run_id)["state"]
        return state if state in ("success", "failed") else None

    def train_retried():
        rows = query(database, "SELECT hostname FROM task_instance WHERE dag_id = 'taxi_training' AND run_id = %s "
                     "AND task_id = 'train' AND try_number = 2 AND state IN ('running', 'success')", run_id)
        return rows[0][0] if rows else None

    retry_host = wait_for(train_retried, "train's retry to start", timeout=900)
    retry_started = time.monotonic() - killed_at
    state = wait_for(finished, "the run to finish", timeout=1500, interval=3)
    timings = {"reached_train": reached_train, "retry_started_after_kill": retry_started,
               "run_total": time.monotonic() - began}
    print(f"\ntaxi_training on Celery: {json.dumps({k: round(v) for k, v in timings.items()})}, "
          f"killed {victim}, retried on {retry_host}")
    return run_id, state, victim


def test_the_run_succeeds_after_the_worker_running_train_is_killed(cluster, killed_run):
    root, _, _, _, database = cluster
    run_id, state, victim = killed_run
    assert state == "success"
    rows = query(database, "SELECT task_id, state, try_number FROM task_instance WHERE dag_id = 'taxi_training' "
                 "AND run_id = %s", run_id)
    states = {task: (state, tries) for task, state, tries in rows}
    assert {task: states[task][0] for task in STEPS} == {task: "success" for task in STEPS}
    assert states["train"][1] == 2  # the killed try and the retry
    assert (root / "models" / "taxi" / "1" / "saved_model.pb").is_file()


def test_the_killed_try_failed_on_one_worker_and_the_retry_ran_on_the_other(cluster, killed_run):
    _, _, _, _, database = cluster
    run_id, _, victim = killed_run
    [(first_host, first_state)] = query(
        database, "SELECT hostname, state FROM task_instance_history WHERE dag_id = 'taxi_training' AND run_id = %s "
        "AND task_id = 'train' AND try_number = 1", run_id)
    [(retry_host,)] = query(database, "SELECT hostname FROM task_instance WHERE dag_id = 'taxi_training' "
                            "AND run_id = %s AND task_id = 'train'", run_id)
    assert (first_host, first_state) == (victim, "failed")
    assert retry_host != victim and retry_host in {"worker1", "worker2"}


def test_the_task_instances_ran_on_both_celery_workers(cluster, killed_run):
    _, _, _, _, database = cluster
    run_id, _, _ = killed_run
    hosts = {host for (host,) in query(
        database, "SELECT hostname FROM task_instance WHERE dag_id = 'taxi_training' AND run_id = %s "
        "UNION SELECT hostname FROM task_instance_history WHERE dag_id = 'taxi_training' AND run_id = %s",
        run_id, run_id)}
    assert hosts == {"worker1", "worker2"}
