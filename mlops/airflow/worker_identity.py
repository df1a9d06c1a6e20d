"""The hostname a Celery worker's task instances record (Airflow's `[core] hostname_callable`).

Several workers on one machine (the Celery test, `python -m mlops.airflow start` with the
CeleryExecutor) would all record the machine's name; each gets `MLOPS_WORKER_HOSTNAME` instead, so
the task instance's `hostname` says which worker ran it. Containers (docker compose's `--scale`)
have their own hostnames and leave the variable unset. Imported by Airflow inside the worker: stdlib only.
"""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    return os.environ.get("MLOPS_WORKER_HOSTNAME") or socket.getfqdn()
