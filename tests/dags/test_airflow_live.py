"""The launcher against a real `airflow standalone`: start, reuse, trigger through the REST API and
follow the run, show a failing task's log, refuse bad params, stop.

Airflow's own scheduler and LocalExecutor run the task here (not dag.test()), in a temp
AIRFLOW_HOME on free loopback ports, so it never touches a developer's running Airflow.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.dags.conftest import PROJECT_ROOT, push_tiny_models, write_config, write_trips_sample

pytestmark = pytest.mark.slow


def free_port() -> int:
    """A port whose +713/+714 neighbours (the log servers, see mlops.airflow.launcher.airflow_env) are free too."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if not 1024 <= port <= 65535 - 714:
            continue
        try:
            for candidate in (port, port + 713, port + 714):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port block found")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("airflow_live")
    config = write_config(root)
    push_tiny_models(config, [1.0])
    write_trips_sample(root / "day.csv", 25)
    env = {
        **os.environ,
        "MLOPS_CONFIG": str(config),
        "MLOPS_AIRFLOW_HOME": str(root / "airflow_home"),
        "MLOPS_AIRFLOW_PORT": str(free_port()),
        # Keep the hourly monitoring DAG from starting runs of its own during the test.
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
    }

    def launcher(*args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mlops.airflow", *args], cwd=PROJECT_ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout)

    started = launcher("start", "--timeout", "1100")
    try:
        yield root, env, launcher, started
    finally:
        launcher("stop", timeout=300)


def test_start_waits_for_health_and_prints_the_login(live):
    root, env, launcher, started = live
    assert started.returncode == 0, started.stdout + started.stderr
    password = json.loads((root / "airflow_home" / "simple_auth_manager_passwords.json.generated").read_text())["admin"]
    assert password not in started.stdout  # captured output names the file instead (a log never holds it)
    assert f"Log in as:   admin / (the password is in {root / 'airflow_home' / 'simple_auth_manager_passwords.json.generated'})" \
        in started.stdout
    assert password not in (root / "airflow_home" / "standalone.log").read_text()  # Airflow did not print it
    assert f"http://localhost:{env['MLOPS_AIRFLOW_PORT']}" in started.stdout
    assert (root / "airflow_home" / "standalone.pid").is_file()
    assert launcher("status").returncode == 0
    again = launcher("start")
    assert again.returncode == 0 and "already running" in again.stdout  # a healthy Airflow is reused


def test_trigger_follows_the_run_with_a_line_per_task_state(live):
    root, _, launcher, _ = live
    result = launcher("trigger", "taxi_batch_predict", "--conf", json.dumps({"csv_path": str(root / "day.csv")}), "--wait")

    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(line.split()[:2] == ["score", "success"] for line in lines if line.startswith("  ")), result.stdout
    assert "succeeded" in lines[-1]
    scored = list((root / "pipeline" / "batch_predictions").glob("*/predictions/predictions-*.jsonl"))
    assert sum(len(path.read_text().splitlines()) for path in scored) == 25


def test_a_failing_run_exits_non_zero_with_the_failing_tasks_log_tail(live):
    root, _, launcher, _ = live
    missing = root / "no_such_day.csv"
    result = launcher("trigger", "taxi_batch_predict", "--conf", json.dumps({"csv_path": str(missing)}), "--wait")

    assert result.returncode == 1
    assert "FAILED" in result.stdout
    assert "Task score failed (try 1)" in result.stdout  # a data error: one try, no retries
    assert f"ERROR score failed: DataError: {missing}: no such file" in result.stdout


def test_params_are_validated_by_airflow_when_the_run_is_created(live):
    _, _, launcher, _ = live
    result = launcher("trigger", "taxi_training", "--conf", json.dumps({"start": "2013-13-01"}))

    assert result.returncode == 1
    assert "HTTP 400" in result.stderr and "Invalid input for param start" in result.stderr


def test_stop_ends_the_airflow_it_started(live):
    root, env, launcher, _ = live
    pid = int((root / "airflow_home" / "standalone.pid").read_text())
    result = launcher("stop", timeout=300)

    assert result.returncode == 0 and "Airflow stopped." in result.stdout
    assert not (root / "airflow_home" / "standalone.pid").exists()
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    assert launcher("status").returncode == 1
