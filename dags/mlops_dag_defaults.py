"""What every mlops DAG shares: where the ML runtime and the config are, retries, failure logging.

Not a DAG file (listed in `.airflowignore`); the DAG files import it from the DAGs folder, which
Airflow puts on `sys.path`. Like them it imports only the stdlib, pendulum and `airflow.sdk`, so
parsing stays fast.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import ExceptionRetryPolicy, RetryAction, RetryRule

REPO_ROOT = Path(__file__).resolve().parent.parent
# A push emits this asset; taxi_rollout is scheduled on it.
PUSHED_MODEL_ASSET = {"name": "taxi_pushed_model", "uri": "mlops://models/taxi"}

# mlops.airflow ends the ML process with these codes for errors no retry can fix.
USER_ERRORS = {2: "bad input or parameters", 3: "the model is not blessed", 4: "the canary was rolled back"}

log = logging.getLogger("mlops.dags")


# Functions, not constants: a DAG file reads the environment each time it is parsed, while this
# module is imported once per process.
def ml_python() -> str:
    """The ML runtime's interpreter, which runs every ML task (`@task.external_python`)."""
    return os.environ.get("MLOPS_ML_PYTHON") or str(REPO_ROOT / ".venvs" / "ml" / "bin" / "python")


def config_path() -> str:
    """The project config every task passes to the ML runtime."""
    return os.environ.get("MLOPS_CONFIG") or str(REPO_ROOT / "mlops.toml")


def explain_failure(context: dict) -> None:
    """on_failure_callback: one log line that says why the task failed and what to do."""
    ti, error = context["ti"], context.get("exception")
    code = getattr(error, "returncode", None)
    if code in USER_ERRORS:
        reason = f"{USER_ERRORS[code]} (see the ERROR lines above); not retried: fix it and trigger a new run"
    elif code is not None:
        reason = f"the ML process ended with exit code {code} (killed by the system?); see the log above"
    else:
        reason = f"{type(error).__name__}: {str(error).strip()[-600:]}"
    log.error("Task %s of run %s failed (try %s): %s", ti.task_id, ti.run_id, ti.try_number, reason)


def default_args(*, retry_delay_s: int = 30, max_retry_delay_min: int = 10) -> dict[str, Any]:
    """Transient failures (a locked metadata DB, a slow disk, a restarting server) are retried with
    exponential backoff; a user error (the exit codes above, a CalledProcessError) fails at once."""
    return {
        "owner": "mlops",
        "retries": 2,
        "retry_delay": pendulum.duration(seconds=retry_delay_s),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": pendulum.duration(minutes=max_retry_delay_min),
        "retry_policy": ExceptionRetryPolicy(rules=[RetryRule(
            exception="subprocess.CalledProcessError", action=RetryAction.FAIL,
            reason="the ML process reported an error a retry cannot fix (see the ERROR lines above)")]),
        "on_failure_callback": explain_failure,
    }
