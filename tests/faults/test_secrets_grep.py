"""scripts/secrets_grep.py finds planted secrets where a run leaves its logs, reports and data, and
says nothing is leaked only when nothing is. (Its run over a real `make run`: test_make_run_secrets.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "secrets_grep.py"
TOKEN = "tok-Qx7pL2mZ9vB4nR8s"
AIRFLOW_PASSWORD = "AfPw3kT9wYh2"
DB_PASSWORD = "db/pw+Z7@k!9"  # URL-encoded in Airflow's database URL
MLMD_PASSWORD = "mlmd-Pw-7f3c2a91"
FERNET = "ZmVybmV0LWtleS1mb3ItdGVzdHMtMDEyMzQ1Njc4OQ=="


def plant_checkout(root: Path) -> Path:
    """A checkout after a run: the secrets where the project keeps them, logs that do not hold them."""
    (root / "var" / "run").mkdir(parents=True)
    (root / "var" / "run" / "gateway_admin_token").write_text(TOKEN + "\n")
    (root / "var" / "run" / "serve.log").write_text("gateway up\nadmin token in var/run/gateway_admin_token\n")
    home = root / "airflow_home"
    (home / "logs").mkdir(parents=True)
    (home / "simple_auth_manager_passwords.json.generated").write_text(f'{{"admin": "{AIRFLOW_PASSWORD}"}}')
    quoted = DB_PASSWORD.replace("/", "%2F").replace("+", "%2B").replace("@", "%40").replace("!", "%21")
    (home / "airflow.cfg").write_text(
        f"[core]\nfernet_key = {FERNET}\n[database]\nsql_alchemy_conn = postgresql+psycopg2://airflow:{quoted}@db:5432/airflow\n"
        "[api_auth]\njwt_secret = jwt-secret-for-tests-0123\n")
    (home / "logs" / "scheduler.log").write_text("started\n" * 3)
    (root / "mlops.toml").write_text(f'pipeline_name = "taxi"\n[metadata]\nbackend = "postgresql"\npassword = "{MLMD_PASSWORD}"\n')
    return root


def secrets_grep(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLOPS_GATEWAY_ADMIN_TOKEN"}  # only the planted secrets
    return subprocess.run([sys.executable, str(SCRIPT), "--root", str(root), *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_a_clean_run_passes_and_names_what_it_looked_for(tmp_path):
    result = secrets_grep(plant_checkout(tmp_path))

    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("the gateway admin token", "the Airflow password of 'admin'", "Airflow's database password",
                 "Airflow's [core] fernet_key", "Airflow's [api_auth] jwt_secret", "the ML Metadata database password"):
        assert name in result.stdout
    assert "no secret found" in result.stdout


def test_each_planted_secret_is_found_in_text_binary_and_encoded_form_and_never_printed(tmp_path):
    root = plant_checkout(tmp_path)
    (root / "var" / "run" / "serve.log").write_text(f"one\ntwo\nAuthorization: Bearer {TOKEN}\n")
    attempt = root / "airflow_home" / "logs" / "dag_id=taxi_training" / "attempt=1.log"
    attempt.parent.mkdir(parents=True)
    attempt.write_text("connecting to postgresql+psycopg2://airflow:db%2Fpw%2BZ7%40k%219@db/airflow\n")
    (root / "var" / "mlmd.sqlite").write_bytes(b"SQLite format 3\0" + b"\0" * 100 + AIRFLOW_PASSWORD.encode())
    # Across the scanner's 1 MiB read boundary.
    big = b"x" * ((1 << 20) - 5) + MLMD_PASSWORD.encode() + b"\n"
    (root / "var" / "pipeline" / "report.html").parent.mkdir(parents=True)
    (root / "var" / "pipeline" / "report.html").write_bytes(big)
    output = root / "make-run.out"
    output.write_text(f"Fernet {FERNET}\n")

    result = secrets_grep(root, "--also", str(output))

    assert result.returncode == 1, result.stdout + result.stderr
    leaks = sorted(line for line in result.stdout.splitlines() if line.startswith("LEAK: "))
    assert leaks == sorted([
        f"LEAK: the gateway admin token found in {root / 'var/run/serve.log'} (line 3)",
        f"LEAK: Airflow's database password found in {attempt} (line 1)",
        f"LEAK: the Airflow password of 'admin' found in {root / 'var/mlmd.sqlite'} (byte 116)",
        f"LEAK: the ML Metadata database password found in {root / 'var/pipeline/report.html'} (line 1)",
        f"LEAK: Airflow's [core] fernet_key found in {output} (line 1)",
    ]), result.stdout
    for secret in (TOKEN, AIRFLOW_PASSWORD, DB_PASSWORD, MLMD_PASSWORD, FERNET):
        assert secret not in result.stdout + result.stderr


def test_an_extra_secret_from_the_command_line_is_looked_for_too(tmp_path):
    root = plant_checkout(tmp_path)
    (root / "var" / "run" / "serve.log").write_text("GRAFANA=grafana-admin-pw-1\n")

    assert secrets_grep(root).returncode == 0
    result = secrets_grep(root, "--secret", "grafana=grafana-admin-pw-1")
    assert result.returncode == 1 and "LEAK: grafana found in" in result.stdout, result.stdout


def test_nothing_to_look_for_is_an_error_not_a_pass(tmp_path):
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "log.txt").write_text("anything\n")

    result = secrets_grep(tmp_path)

    assert result.returncode == 2
    assert "nothing was checked" in result.stderr
