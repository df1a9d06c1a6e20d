"""Airflow with the CeleryExecutor: its parts as separate processes, tasks run by N Celery workers.

`airflow standalone` runs everything in one process tree with the LocalExecutor, which is the
project's default. When `AIRFLOW__CORE__EXECUTOR=CeleryExecutor` is set (Airflow's own setting),
`python -m mlops.airflow start` starts instead what a multi-machine deployment runs: `airflow db
migrate`, then api-server, scheduler, dag-processor, triggerer and `MLOPS_CELERY_WORKERS` (default
2) `airflow celery worker` processes, each in its own process group (so one can be stopped or
killed alone), its own Celery hostname `workerN@<host>`, its own log server port, and its own
task-instance hostname (`mlops.airflow.worker_identity`), so the UI and the metadata DB say which
worker ran a task. The pid file lists `<part> <process group>` per line; `stop` ends them all.

What Airflow needs for Celery comes from Airflow's own settings, as in docker-compose.yaml:
`AIRFLOW__CELERY__BROKER_URL` (a Redis URL), `AIRFLOW__DATABASE__SQL_ALCHEMY_CONN` (PostgreSQL or
MySQL: Airflow refuses SQLite with the CeleryExecutor). The result backend defaults to
`db+<the metadata DB>` (Airflow's Celery provider does that when `AIRFLOW__CELERY__RESULT_BACKEND`
is unset). stdlib and core only, like the launcher.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Mapping

EXECUTOR_ENV = "AIRFLOW__CORE__EXECUTOR"
WORKERS_ENV = "MLOPS_CELERY_WORKERS"
WORKER_HOSTNAME_ENV = "MLOPS_WORKER_HOSTNAME"
BROKER_ENV = "AIRFLOW__CELERY__BROKER_URL"
DATABASE_ENV = "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"
EXECUTORS = ("LocalExecutor", "CeleryExecutor")
DEFAULT_WORKERS = 2
# Worker N's log server listens on the API port + WORKER_LOG_PORT_OFFSET + N (the scheduler's and
# the triggerer's are + 713 and + 714, see launcher.airflow_env).
WORKER_LOG_PORT_OFFSET = 715
SERVICES = ("api-server", "scheduler", "dag-processor", "triggerer")


class CeleryConfigError(ValueError):
    """A setting the CeleryExecutor needs is missing or wrong; the message names it."""


def executor(environ: Mapping[str, str] = os.environ) -> str:
    """The executor chosen by Airflow's own setting; LocalExecutor (`airflow standalone`) by default."""
    name = environ.get(EXECUTOR_ENV, "LocalExecutor").strip() or "LocalExecutor"
    # Airflow accepts the class path too.
    short = name.rsplit(".", 1)[-1]
    if short not in EXECUTORS:
        raise CeleryConfigError(f"{EXECUTOR_ENV} must be one of {', '.join(EXECUTORS)} for this launcher, got {name!r}")
    return short


def worker_count(environ: Mapping[str, str] = os.environ) -> int:
    text = environ.get(WORKERS_ENV, str(DEFAULT_WORKERS)).strip()
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise CeleryConfigError(f"{WORKERS_ENV} must be a number of Celery workers in 1..64, got {text!r}")
    return int(text)


def check_celery_settings(environ: Mapping[str, str], port: int) -> int:
    """Refuses, before anything starts, what Airflow would only refuse later; returns the worker count."""
    workers = worker_count(environ)
    broker = environ.get(BROKER_ENV, "")
    if not broker.startswith(("redis://", "rediss://")):
        raise CeleryConfigError(f"{BROKER_ENV} must be a Redis URL (redis://host:port/db) with the CeleryExecutor, "
                                f"got {broker!r}")
    database = environ.get(DATABASE_ENV, "")
    if not database or database.startswith("sqlite"):
        raise CeleryConfigError(f"{DATABASE_ENV} must name a PostgreSQL or MySQL database with the CeleryExecutor "
                                f"(Airflow refuses SQLite there), got {database or 'nothing (SQLite)'!r}")
    if port + WORKER_LOG_PORT_OFFSET + workers > 65535:
        raise CeleryConfigError(f"the worker log server ports (API port {port} + {WORKER_LOG_PORT_OFFSET} + 1.."
                                f"{workers}) exceed 65535: choose a lower MLOPS_AIRFLOW_PORT")
    return workers


def redis_address(broker_url: str) -> tuple[str, int]:
    """(host, port) of a redis:// URL, for a reachability check."""
    from urllib.parse import urlsplit

    parts = urlsplit(broker_url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise CeleryConfigError(f"{BROKER_ENV} must be a Redis URL (redis://host:port/db), got {broker_url!r}")
    return parts.hostname, parts.port or 6379


def worker_name(index: int) -> str:
    return f"worker{index}"


def worker_env(env: Mapping[str, str], root: Path, port: int, index: int) -> dict[str, str]:
    """Worker `index`'s environment: its own log server port and the hostname its task instances record."""
    return {
        **env,
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(port + WORKER_LOG_PORT_OFFSET + index),
        WORKER_HOSTNAME_ENV: worker_name(index),
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "mlops.airflow.worker_identity.hostname",
        # The hostname callable above lives in this checkout.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH", "")])),
    }


def part_commands(airflow: Path, workers: int, concurrency: int = 1) -> dict[str, list[str]]:
    """Every long-running part of the cluster and its command line, in start order."""
    commands = {service: [str(airflow), service] for service in SERVICES}
    for index in range(1, workers + 1):
        commands[worker_name(index)] = [str(airflow), "celery", "worker", "--celery-hostname",
                                        f"{worker_name(index)}@%h", "--concurrency", str(concurrency)]
    return commands


def start_parts(airflow: Path, root: Path, home: Path, env: Mapping[str, str], port: int,
                workers: int) -> dict[str, int]:
    """Migrates the metadata DB, then starts every part in its own session; returns part -> process group.

    Each part logs to `<home>/<part>.log`.
    """
    home.mkdir(parents=True, exist_ok=True)
    with (home / "db-migrate.log").open("ab") as log:
        migrated = subprocess.run([str(airflow), "db", "migrate"], env=dict(env), stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, cwd=root)
    if migrated.returncode != 0:
        raise CeleryConfigError(f"`airflow db migrate` failed (exit {migrated.returncode}); see {home / 'db-migrate.log'}")
    groups: dict[str, int] = {}
    for part, command in part_commands(airflow, workers).items():
        index = int(part.removeprefix("worker")) if part.startswith("worker") else 0
        part_env = worker_env(env, root, port, index) if index else dict(env)
        with (home / f"{part}.log").open("ab") as log:
            process = subprocess.Popen(command, env=part_env, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, cwd=root, start_new_session=True)
        groups[part] = process.pid
    return groups
