"""mlops.airflow.launcher and its command line, without a running Airflow: the environment every
Airflow process gets, the port, the admin login, and a bad `--conf` refused before anything starts.

It runs in the Airflow environment on purpose: the package must stay importable without the ML stack.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from mlops.airflow import celery_cluster
from mlops.airflow.launcher import (
    AirflowLayout,
    LauncherError,
    admin_password,
    airflow_env,
    airflow_port,
    ensure_admin_password,
    login_banner,
    read_process_groups,
)
from tests.dags.conftest import PROJECT_ROOT
from tests.fixtures.servers import free_port


def test_every_airflow_process_gets_the_projects_home_dags_ml_python_config_and_path(tmp_path):
    layout = AirflowLayout(root=PROJECT_ROOT)
    env = airflow_env(layout, 8080, base={"PATH": "/usr/bin", "HOME": "/root"})
    assert env["AIRFLOW_HOME"] == str(PROJECT_ROOT / "airflow_home")
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(PROJECT_ROOT / "dags")
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1" and env["AIRFLOW__API__PORT"] == "8080"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:8080/execution/"
    assert env["MLOPS_ML_PYTHON"] == str(PROJECT_ROOT / ".venvs" / "ml" / "bin" / "python")
    assert env["MLOPS_CONFIG"] == str(PROJECT_ROOT / "mlops.toml")
    assert env["PATH"].split(os.pathsep)[:2] == [str(PROJECT_ROOT / ".venvs" / "airflow" / "bin"), "/usr/bin"]
    assert env["TF_USE_LEGACY_KERAS"] == "1"
    assert env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "False"  # the project's DAGs run once Airflow sees them
    assert (env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"], env["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"]) == ("8793", "8794")
    # A config or ML python chosen by the caller (a test, a deployment) is kept.
    kept = airflow_env(layout, 9000, base={"MLOPS_CONFIG": str(tmp_path / "x.toml"), "MLOPS_ML_PYTHON": "/opt/ml/python"})
    assert (kept["MLOPS_CONFIG"], kept["MLOPS_ML_PYTHON"]) == (str(tmp_path / "x.toml"), "/opt/ml/python")
    paused = airflow_env(layout, 9000, base={"AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True"})
    assert paused["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "True"
    assert AirflowLayout(root=PROJECT_ROOT, home_override=tmp_path).home == tmp_path


def test_standalone_s_sqlite_waits_out_a_busy_lock_and_a_chosen_database_is_kept(tmp_path):
    layout = AirflowLayout(root=PROJECT_ROOT, home_override=tmp_path)
    env = airflow_env(layout, 8080, base={"PATH": "/usr/bin"})
    # Airflow's own file under AIRFLOW_HOME, with a lock wait longer than Python's 5 s (a 5 s wait ended the scheduler).
    assert env[celery_cluster.DATABASE_ENV] == f"sqlite:///{tmp_path}/airflow.db?timeout=25"
    chosen = "postgresql+psycopg2://airflow@127.0.0.1:5432/airflow"
    assert airflow_env(layout, 8080, base={celery_cluster.DATABASE_ENV: chosen})[celery_cluster.DATABASE_ENV] == chosen
    # The CeleryExecutor needs a real database: nothing is chosen for it, so its check names what is missing.
    celery = airflow_env(layout, 8080, base={celery_cluster.EXECUTOR_ENV: "CeleryExecutor"})
    assert celery_cluster.DATABASE_ENV not in celery


def test_the_port_comes_from_the_environment_and_is_checked():
    assert airflow_port({}) == 8080
    assert airflow_port({"MLOPS_AIRFLOW_PORT": "18080"}) == 18080
    for bad in ("http", "80", "65000", "-1"):
        with pytest.raises(LauncherError, match="MLOPS_AIRFLOW_PORT"):
            airflow_port({"MLOPS_AIRFLOW_PORT": bad})


def test_the_admin_password_is_read_from_the_file_airflow_generates(tmp_path):
    layout = AirflowLayout(root=PROJECT_ROOT, home_override=tmp_path)
    with pytest.raises(LauncherError, match="does not exist yet"):
        admin_password(layout)
    layout.password_file.write_text('{"admin": "s3cret"}')
    assert admin_password(layout) == "s3cret"
    assert "admin / s3cret" in login_banner(layout, 8080, show_password=True)
    # Captured output (pytest's here, a CI log, `make run > file`) names the file, not the password.
    assert "s3cret" not in login_banner(layout, 8080) and str(layout.password_file) in login_banner(layout, 8080)


def test_the_admin_password_is_written_before_airflow_starts_so_airflow_never_prints_it(tmp_path):
    layout = AirflowLayout(root=PROJECT_ROOT, home_override=tmp_path / "home")
    ensure_admin_password(layout)
    password = admin_password(layout)
    assert len(password) >= 16 and layout.password_file.stat().st_mode & 0o777 == 0o600
    ensure_admin_password(layout)
    assert admin_password(layout) == password  # kept: it is the login of an existing Airflow
    layout.password_file.write_text('{"viewer": "v1ewer-pw"}')
    ensure_admin_password(layout)
    assert json.loads(layout.password_file.read_text())["viewer"] == "v1ewer-pw" and admin_password(layout) != password


def test_the_command_line_refuses_bad_conf_before_touching_airflow(tmp_path):
    env = {**os.environ, "MLOPS_AIRFLOW_HOME": str(tmp_path)}
    result = subprocess.run([os.sys.executable, "-m", "mlops.airflow", "trigger", "taxi_training", "--conf", "[1, 2]"],
                            capture_output=True, text=True, cwd=PROJECT_ROOT, env=env, timeout=120)
    assert result.returncode == 1
    assert "--conf must be a JSON object, got list" in result.stderr
    assert not (tmp_path / "standalone.pid").exists()


# --- The CeleryExecutor's parts (mlops.airflow.celery_cluster) -----------------------------------

CELERY_ENV = {"AIRFLOW__CORE__EXECUTOR": "CeleryExecutor", "AIRFLOW__CELERY__BROKER_URL": "redis://127.0.0.1:6379/0",
              "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql+psycopg2://airflow:pw@127.0.0.1:5432/airflow"}


def test_the_executor_is_airflows_own_setting_local_by_default():
    assert celery_cluster.executor({}) == "LocalExecutor"
    assert celery_cluster.executor({"AIRFLOW__CORE__EXECUTOR": "CeleryExecutor"}) == "CeleryExecutor"
    assert celery_cluster.executor(
        {"AIRFLOW__CORE__EXECUTOR": "airflow.providers.celery.executors.celery_executor.CeleryExecutor"}) == "CeleryExecutor"
    with pytest.raises(celery_cluster.CeleryConfigError, match="AIRFLOW__CORE__EXECUTOR must be one of LocalExecutor, CeleryExecutor"):
        celery_cluster.executor({"AIRFLOW__CORE__EXECUTOR": "KubernetesExecutor"})


@pytest.mark.parametrize(("change", "message"), [
    ({"AIRFLOW__CELERY__BROKER_URL": ""}, "AIRFLOW__CELERY__BROKER_URL must be a Redis URL"),
    ({"AIRFLOW__CELERY__BROKER_URL": "amqp://guest@localhost//"}, "AIRFLOW__CELERY__BROKER_URL must be a Redis URL"),
    ({"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "sqlite:////tmp/airflow.db"}, "Airflow refuses SQLite there"),
    ({"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": ""}, "must name a PostgreSQL or MySQL database"),
    ({"MLOPS_CELERY_WORKERS": "0"}, "MLOPS_CELERY_WORKERS must be a number of Celery workers in 1..64, got '0'"),
    ({"MLOPS_CELERY_WORKERS": "two"}, "MLOPS_CELERY_WORKERS must be a number"),
])
def test_celery_settings_are_refused_before_anything_starts(change, message):
    assert celery_cluster.check_celery_settings(CELERY_ENV, 8080) == 2  # two workers by default
    with pytest.raises(celery_cluster.CeleryConfigError, match=message):
        celery_cluster.check_celery_settings({**CELERY_ENV, **change}, 8080)


def test_each_worker_has_its_own_celery_hostname_log_port_and_task_hostname():
    commands = celery_cluster.part_commands(Path("/venv/bin/airflow"), workers=3)
    assert list(commands) == ["api-server", "scheduler", "dag-processor", "triggerer", "worker1", "worker2", "worker3"]
    assert commands["worker2"] == ["/venv/bin/airflow", "celery", "worker", "--celery-hostname", "worker2@%h",
                                   "--concurrency", "1"]
    env = celery_cluster.worker_env({"PYTHONPATH": "/x"}, PROJECT_ROOT, 18080, 2)
    assert env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] == str(18080 + 715 + 2)
    assert env["MLOPS_WORKER_HOSTNAME"] == "worker2"
    assert env["PYTHONPATH"].split(os.pathsep) == [str(PROJECT_ROOT), "/x"]
    # The hostname callable Airflow is given imports and names the worker.
    module, name = env["AIRFLOW__CORE__HOSTNAME_CALLABLE"].rsplit(".", 1)
    script = f"import {module} as m; print(m.{name}())"
    done = subprocess.run([os.sys.executable, "-c", script], env={**os.environ, **env}, capture_output=True, text=True)
    assert done.stdout.strip() == "worker2", done.stderr
    assert celery_cluster.redis_address("redis://broker.internal:6380/0") == ("broker.internal", 6380)
    assert celery_cluster.redis_address("redis://127.0.0.1/1") == ("127.0.0.1", 6379)


def test_the_pid_file_lists_every_part_and_still_reads_standalones(tmp_path):
    layout = AirflowLayout(root=PROJECT_ROOT, home_override=tmp_path)
    layout.pid_file.write_text("4242\n")
    assert read_process_groups(layout) == {"standalone": 4242}
    layout.pid_file.write_text("api-server 11\nscheduler 12\nworker1 13\n")
    assert read_process_groups(layout) == {"api-server": 11, "scheduler": 12, "worker1": 13}


def test_start_with_the_celery_executor_on_sqlite_is_refused_before_anything_starts(tmp_path):
    env = {**os.environ, **CELERY_ENV, "MLOPS_AIRFLOW_HOME": str(tmp_path), "MLOPS_AIRFLOW_PORT": str(free_port()),
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path}/airflow.db"}
    result = subprocess.run([os.sys.executable, "-m", "mlops.airflow", "start"], capture_output=True, text=True,
                            cwd=PROJECT_ROOT, env=env, timeout=120)
    assert result.returncode == 1
    assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN must name a PostgreSQL or MySQL database" in result.stderr
    assert not (tmp_path / "standalone.pid").exists() and not (tmp_path / "scheduler.log").exists()
    standalone = subprocess.run([os.sys.executable, "-m", "mlops.airflow", "standalone"], capture_output=True, text=True,
                                cwd=PROJECT_ROOT, env=env, timeout=120)
    assert standalone.returncode == 1 and "runs the LocalExecutor only" in standalone.stderr


def test_airflow_s_openlineage_provider_writes_where_our_steps_do_unless_openlineage_is_configured(tmp_path):
    config = tmp_path / "mlops.toml"
    config.write_text('pipeline_root = "pipe"\n')
    layout = AirflowLayout(root=PROJECT_ROOT)
    env = airflow_env(layout, 9000, base={"MLOPS_CONFIG": str(config), "HOME": str(tmp_path)})
    assert env["AIRFLOW__OPENLINEAGE__NAMESPACE"] == "mlops-suite"  # the namespace of our jobs
    assert json.loads(env["AIRFLOW__OPENLINEAGE__TRANSPORT"]) == {
        "type": "file", "log_file_path": str(tmp_path / "pipe" / "openlineage" / "events.jsonl"), "append": True}
    assert (tmp_path / "pipe" / "openlineage").is_dir()  # the file transport makes no folder
    # OpenLineage's own configuration (read by the provider and our steps alike) or the provider's is left alone.
    for chosen in ({"OPENLINEAGE_URL": "http://marquez:5000"}, {"OPENLINEAGE__TRANSPORT__TYPE": "console"},
                   {"OPENLINEAGE_DISABLED": "true"}, {"AIRFLOW__OPENLINEAGE__TRANSPORT": '{"type": "console"}'}):
        kept = airflow_env(layout, 9000, base={"MLOPS_CONFIG": str(config), "HOME": str(tmp_path), **chosen})
        assert kept.get("AIRFLOW__OPENLINEAGE__TRANSPORT") == chosen.get("AIRFLOW__OPENLINEAGE__TRANSPORT"), chosen
    named = airflow_env(layout, 9000, base={"MLOPS_CONFIG": str(config), "OPENLINEAGE_NAMESPACE": "prod"})
    assert "AIRFLOW__OPENLINEAGE__NAMESPACE" not in named
    # No readable project config: no transport, so the provider disables itself (quietly).
    missing = airflow_env(layout, 9000, base={"MLOPS_CONFIG": str(tmp_path / "missing.toml")})
    assert "AIRFLOW__OPENLINEAGE__TRANSPORT" not in missing


def test_stop_ends_the_task_processes_airflow_left_in_their_own_groups_and_no_others(tmp_path):
    """Airflow runs each task in a process group of its own; `stop` must not leave one running."""
    from mlops.airflow.launcher import AirflowLayout, _processes_with_home, stop

    layout = AirflowLayout(home_override=tmp_path / "airflow_home")
    layout.home.mkdir(parents=True)

    def sleeper(home: Path) -> subprocess.Popen:
        # A task runner with its child (the ML process), in a session of its own like Airflow's.
        return subprocess.Popen(["bash", "-c", "sleep 600 & wait"], start_new_session=True,
                                env={**os.environ, "AIRFLOW_HOME": str(home)})

    task, other = sleeper(layout.home), sleeper(tmp_path / "another_home")
    try:
        lines: list[str] = []
        assert stop(layout, progress=lines.append) is False  # nothing from the pid file was running
        assert task.wait(timeout=30) is not None  # the leftover task ended
        assert _processes_with_home(layout.home) == {}  # its child (the ML process) too
        assert len(_processes_with_home(tmp_path / "another_home")) == 2
        assert any("ending" in line and "task processes" in line for line in lines), lines
        assert other.poll() is None  # another Airflow's task is not touched
    finally:
        for process in (task, other):
            if process.poll() is None:
                os.killpg(process.pid, 9)
                process.wait()
