"""A dead or stalled model server, bursts, and shutdown: the gateway answers, recovers, and logs every served example."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import requests

from serving.prediction_log import read_prediction_logs
from tests.fixtures.polling import poll_until
from tests.serving.gateway.helpers import (
    ADMIN_TOKEN,
    MODEL,
    STABLE_VERSION,
    instances,
    metric_value,
    predict,
    real_trips,
    write_model_config,
)

PROJECT_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def own_server(model_root, tmp_path):
    """A model server this test may kill and restart on the same ports."""
    from serving.model_server import start_model_server

    config = write_model_config(tmp_path / "own" / "models.config", model_root, served=[1, 2], stable=1, canary=2)
    servers = [start_model_server(port=0, rest_api_port=0, model_config_file=config)]

    def restart():
        old = servers[-1]
        servers.append(start_model_server(port=old.grpc_port, rest_api_port=old.rest_port, model_config_file=config))
        return servers[-1]

    yield servers[0], restart, config
    for server in servers:
        server.stop()


def test_dead_model_server_gives_503_fast_and_the_gateway_recovers(own_server, start_gw, http):
    server, restart, config = own_server
    # A long upstream timeout: a 503 arriving within the client's 5 s shows the gateway did not wait for it.
    gateway = start_gw(model_server_rest=server.rest_url, model_config_file=config, upstream_timeout_s=60.0,
                       breaker_failure_threshold=2, breaker_reset_s=0.5)
    body = {"instances": instances(real_trips(2))}
    assert predict(http, gateway, body).status_code == 200
    server.stop()
    for _ in range(6):
        response = http.post(f"{gateway.url}/v1/models/{MODEL}:predict", json=body, timeout=5)
        assert response.status_code == 503, response.text
        assert "model server" in response.json()["error"]
    assert http.get(f"{gateway.url}/healthz", timeout=5).json()["model_server"] == "down"

    restart()

    def served_again() -> requests.Response | None:
        response = http.post(f"{gateway.url}/v1/models/{MODEL}:predict", json=body, timeout=5)
        if response.status_code == 200:
            return response
        assert response.status_code == 503, response.text
        return None

    response = poll_until(served_again, "the gateway to serve once the model server is back", timeout=60, interval=0.2)
    assert response.headers["X-Model-Version"] == str(STABLE_VERSION)
    assert http.get(f"{gateway.url}/healthz", timeout=5).json()["model_server"] == "up"


@pytest.fixture
def stalling_server():
    """A real TCP server that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    listener.close()


def test_stalled_model_server_gives_504_and_logs_nothing(stalling_server, start_gw, http, tmp_path):
    gateway = start_gw(model_server_rest=stalling_server, upstream_timeout_s=0.5, breaker_failure_threshold=100)
    response = predict(http, gateway, {"instances": instances(real_trips(1))})
    assert response.status_code == 504, response.text
    assert "did not answer within 0.5s" in response.json()["error"]
    gateway.stop()
    assert len(read_prediction_logs(tmp_path / "logs")) == 0  # not served, so not logged


def test_every_example_of_a_concurrent_burst_is_logged_exactly_once(start_gw, tmp_path):
    # A tiny log queue forces back-pressure: requests wait for the writer instead of dropping rows.
    gateway = start_gw(log_queue_rows=64, log_flush_rows=32, log_flush_seconds=0.2)
    trips = real_trips(32)
    sizes = [1 + (i * 7) % 32 for i in range(240)]

    def send(size: int) -> tuple[str, int]:
        with requests.Session() as session:
            response = predict(session, gateway, {"instances": instances(trips[:size])})
            assert response.status_code == 200, response.text
            return response.headers["X-Request-Id"], size

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        served = dict(pool.map(send, sizes))
    assert len(served) == len(sizes)
    metrics = requests.get(f"{gateway.url}/metrics", timeout=10).text
    assert metric_value(metrics, "mlops_gateway_log_backpressure_waits_total") > 0  # the queue really was full at times
    gateway.stop()

    logs = read_prediction_logs(tmp_path / "logs")
    assert len(logs) == sum(sizes)
    assert not logs.duplicated(["request_id", "instance_index"]).any()
    assert logs.groupby("request_id")["instance_index"].max().add(1).to_dict() == served
    assert gateway.gateway.core.request_log.files_written > 1  # it flushed by size along the way, not just at the end
    files = list((tmp_path / "logs" / "requests").rglob("*"))
    assert not [f for f in files if f.name.startswith(".")], "temp files left behind"
    assert sum(pq.read_metadata(f).num_rows for f in files if f.suffix == ".parquet") == sum(sizes)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_gateway_process_writes_its_log_when_signalled(signum, model_server, gateway_config_file, tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text(
        "[gateway]\n"
        "rest_port = 0\ngrpc_port = 0\n"
        f'model_config_file = "{gateway_config_file}"\n'
        'log_dir = "logs"\nstate_file = "state.json"\n'
        "log_flush_seconds = 3600.0\n"  # nothing is written before the signal arrives
        "[models.taxi]\npolicy = \"blue_green\"\n"
    )
    env = {**os.environ, "MLOPS_GATEWAY_MODEL_SERVER_REST": model_server.rest_url, "MLOPS_GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
           "PYTHONPATH": str(PROJECT_ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "serving.gateway", "--config", str(config)], cwd=PROJECT_ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = process.stdout.readline()
        assert banner.startswith("gateway: REST http://"), banner + process.stderr.read()
        url = banner.split()[2]
        body = {"instances": instances(real_trips(3))}
        with requests.Session() as session:
            for _ in range(25):
                assert session.post(f"{url}/v1/models/{MODEL}:predict", json=body, timeout=30).status_code == 200
            policy = session.get(f"{url}/admin/models/{MODEL}/policy", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)
            assert policy.status_code == 200  # the token came from MLOPS_GATEWAY_ADMIN_TOKEN
        assert not (tmp_path / "logs" / "requests").exists() or not list((tmp_path / "logs" / "requests").rglob("*.parquet"))
        process.send_signal(signum)
        assert process.wait(timeout=60) == 0, process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()
    assert len(read_prediction_logs(tmp_path / "logs")) == 25 * 3


def test_a_gateway_that_cannot_start_leaves_nothing_running(start_gw, tmp_path):
    first = start_gw()
    writers_before = [t for t in threading.enumerate() if t.name.endswith("-log")]
    with pytest.raises(OSError):
        start_gw(rest_port=first.rest_port, log_dir=tmp_path / "second-logs")  # the port is taken
    assert [t for t in threading.enumerate() if t.name.endswith("-log")] == writers_before
    assert not [t for t in threading.enumerate() if t.name == "gateway-loop" and t is not first._thread]
