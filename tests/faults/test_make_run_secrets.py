"""Nothing secret is logged by a whole `make run` (issue 16, section 4): the run happens in a clone
of this checkout's committed state (the shared .venvs linked in, never rebuilt), then
`make stop`, then scripts/secrets_grep.py searches everything under var/ and airflow_home/ and the
run's own output for the gateway admin token, the Airflow logins, Airflow's keys and every
database password the run used. About 15 minutes on two cores: marked `makerun`, run nightly with
`pytest -m makerun tests/faults/test_make_run_secrets.py`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = PROJECT_ROOT / "scripts" / "secrets_grep.py"
GATEWAY_PORT = 8000  # mlops.loop.GATEWAY_URL: fixed
# The venvs are up to date here; a fresh clone's lock files look newer, and make must not rebuild shared venvs.
KEEP = ["-o", ".venvs/ml/.installed", "-o", ".venvs/airflow/.installed", "-o", ".venvs/.system-packages"]


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.makerun
@pytest.mark.slow
def test_make_run_writes_no_secret_to_any_log_or_report(tmp_path):
    if not _port_free(GATEWAY_PORT):
        pytest.skip(f"port {GATEWAY_PORT} is taken (a `make run` of another checkout?): `make stop` there first")
    clone = tmp_path / "checkout"
    subprocess.run(["git", "clone", "-q", str(PROJECT_ROOT), str(clone)], check=True, timeout=300)
    (clone / ".venvs").symlink_to((PROJECT_ROOT / ".venvs").resolve())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        airflow_port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(clone), "MLOPS_AIRFLOW_PORT": str(airflow_port)}
    for name in ("AIRFLOW_HOME", "MLOPS_CONFIG", "MLOPS_AIRFLOW_HOME", "MLOPS_GATEWAY_ADMIN_TOKEN"):
        env.pop(name, None)
    output = tmp_path / "make-run.out"
    try:
        with output.open("wb") as out:
            run = subprocess.run(["make", "run", *KEEP], cwd=clone, env=env, stdout=out, stderr=subprocess.STDOUT,
                                 timeout=3 * 3600)
    finally:
        subprocess.run(["make", "stop", *KEEP], cwd=clone, env=env, capture_output=True, timeout=600)
    assert run.returncode == 0, output.read_text()[-4000:]

    grep = subprocess.run([sys.executable, str(SCRIPT), "--root", str(clone), "--also", str(output)],
                          capture_output=True, text=True, timeout=1800)

    assert grep.returncode == 0, grep.stdout + grep.stderr
    for what in ("the gateway admin token", "the Airflow password of 'admin'", "Airflow's [core] fernet_key"):
        assert what in grep.stdout, grep.stdout  # it looked for them
