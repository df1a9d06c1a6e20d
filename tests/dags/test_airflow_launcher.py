"""mlops.airflow.launcher and its command line, without a running Airflow: the environment every
Airflow process gets, the port, the admin login, and a bad `--conf` refused before anything starts.

It runs in the Airflow environment on purpose: the package must stay importable without the ML stack.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from mlops.airflow.launcher import AirflowLayout, LauncherError, admin_password, airflow_env, airflow_port, login_banner
from tests.dags.conftest import PROJECT_ROOT


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
    assert "admin / s3cret" in login_banner(layout, 8080)


def test_the_command_line_refuses_bad_conf_before_touching_airflow(tmp_path):
    env = {**os.environ, "MLOPS_AIRFLOW_HOME": str(tmp_path)}
    result = subprocess.run([os.sys.executable, "-m", "mlops.airflow", "trigger", "taxi_training", "--conf", "[1, 2]"],
                            capture_output=True, text=True, cwd=PROJECT_ROOT, env=env, timeout=120)
    assert result.returncode == 1
    assert "--conf must be a JSON object, got list" in result.stderr
    assert not (tmp_path / "standalone.pid").exists()
