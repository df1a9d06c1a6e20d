"""A real serving stack for the rollout DAG tests, run in the ML runtime as a separate process.

    python -m tests.dags.serving_stack CONFIG_TOML [--no-traffic]

Starts the embedded model server (TF Serving stand-in) and the gateway on free loopback ports,
over the config's model base path and models.config, and a client that keeps sending real trips
(one per request, ~25 requests/s) so the gateway has canary and stable traffic to compare;
`--no-traffic` leaves the client out, for a test that sends (and counts) all the traffic itself. Prints
one JSON line `{"gateway_url": ..., "model_server_url": ...}` when ready, and stops everything
when its stdin closes (the test process ending closes it too, so nothing outlives the tests).
The admin token comes from MLOPS_GATEWAY_ADMIN_TOKEN, as for a deployed gateway.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from core.config import load_config
from serving.client import read_trips_csv
from serving.gateway.app import start_gateway
from serving.gateway.config import GatewaySettings
from serving.model_server import start_model_server

TAXI_CSV = Path(__file__).resolve().parents[2] / "data" / "taxi" / "data.csv"


def send_traffic(url: str, stop: threading.Event) -> None:
    trips = [trip.to_instance(missing="null") for trip, _ in read_trips_csv(TAXI_CSV, limit=500)]
    index = 0
    while not stop.is_set():
        body = json.dumps({"instances": [trips[index % len(trips)]]}).encode()
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                response.read()
        except (urllib.error.URLError, OSError):
            pass  # counted by the gateway as an error if it reached it; the judge decides
        index += 1
        stop.wait(0.04)


def main() -> None:
    config_path, *options = sys.argv[1:]
    unknown = set(options) - {"--no-traffic"}
    if unknown:
        raise SystemExit(f"unknown options {sorted(unknown)}; usage: python -m tests.dags.serving_stack CONFIG_TOML [--no-traffic]")
    config = load_config(config_path)
    root = Path(config_path).parent
    server = start_model_server(port=0, rest_api_port=0, model_config_file=config.serving.model_config_file,
                                model_config_file_poll_wait_seconds=0.2)
    gateway = start_gateway(GatewaySettings(
        rest_port=0, grpc_port=0, model_server_rest=server.rest_url, model_server_grpc=server.grpc_target,
        model_config_file=config.serving.model_config_file, config_poll_seconds=0.2,
        log_dir=root / "prediction_logs", state_file=root / "gateway_state.json",
        admin_token=os.environ["MLOPS_GATEWAY_ADMIN_TOKEN"], log_flush_seconds=0.5,
    ))
    stop = threading.Event()
    traffic = threading.Thread(target=send_traffic, args=(f"{gateway.url}/v1/models/{config.serving.model_name}:predict", stop),
                               daemon=True)
    if "--no-traffic" not in options:
        traffic.start()
    print(json.dumps({"gateway_url": gateway.url, "model_server_url": server.rest_url}), flush=True)
    try:
        sys.stdin.read()  # until the test closes our stdin
    finally:
        stop.set()
        if traffic.is_alive():
            traffic.join(5)
        gateway.stop()
        server.stop()


if __name__ == "__main__":
    main()
