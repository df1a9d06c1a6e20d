"""`python -m mlops.airflow standalone | start | stop | status | trigger DAG_ID [--conf JSON] [--wait]`.

Used by the Makefile (`make airflow`, `make airflow-stop`), docs/AIRFLOW.md and the live tests.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from mlops.airflow.launcher import (
    AirflowLayout,
    LauncherError,
    airflow_port,
    health,
    is_healthy,
    login_banner,
    standalone,
    start,
    stop,
)
from mlops.airflow.rest_client import trigger_and_wait


def _parse_conf(text: str) -> dict[str, Any]:
    try:
        conf = json.loads(text)
    except ValueError as err:
        raise LauncherError(f"--conf must be a JSON object, e.g. '{{\"start\": \"2013-01-01\"}}' ({err})") from None
    if not isinstance(conf, dict):
        raise LauncherError(f"--conf must be a JSON object, got {type(conf).__name__}")
    return conf


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlops.airflow",
                                     description="Airflow for this project: start it, drive it through its REST API.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("standalone", help="run airflow standalone in the foreground (UI, scheduler, workers)")
    start_parser = commands.add_parser("start", help="start Airflow in the background and wait until it is healthy")
    start_parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for health (default 600)")
    commands.add_parser("stop", help="stop the Airflow started with `start`")
    commands.add_parser("status", help="print Airflow's health")
    trigger_parser = commands.add_parser("trigger", help="trigger a DAG run through the REST API")
    trigger_parser.add_argument("dag_id")
    trigger_parser.add_argument("--conf", default="{}", help="the run's conf as a JSON object (the DAG's params)")
    trigger_parser.add_argument("--wait", action="store_true", help="follow the run and exit non-zero if it fails")
    trigger_parser.add_argument("--timeout", type=float, default=7200.0, help="seconds to wait for the run (default 7200)")
    args = parser.parse_args(argv)

    layout = AirflowLayout.from_env()
    try:
        port = airflow_port()
        if args.command == "standalone":
            return standalone(layout, port)
        if args.command == "start":
            start(layout, port, timeout=args.timeout)
            print(login_banner(layout, port))
            return 0
        if args.command == "stop":
            stop(layout)
            return 0
        if args.command == "status":
            document = health(port)
            print(json.dumps(document, indent=2) if document else f"no Airflow answers on port {port}")
            return 0 if is_healthy(document) else 1
        conf = _parse_conf(args.conf)
        start(layout, port)
        return trigger_and_wait(layout, port, args.dag_id, conf, wait=args.wait, timeout=args.timeout)
    except LauncherError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
