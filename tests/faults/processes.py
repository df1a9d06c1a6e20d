"""The real processes the fault scenarios start, kill and restart, and the load they put on them.

The model server and the gateway run as the programs a user starts (`python -m serving.model_server`,
`python -m serving.gateway`), so a `kill -9` takes down exactly what it would in production.
Shared by the tests under tests/faults/ and by benchmarks/fault_table.py.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import requests

from serving.protocol import MODEL_LABEL_HEADER, MODEL_VERSION_HEADER
from tests.fixtures.polling import poll_until
from tests.fixtures.servers import free_port, model_server_process
from tests.serving.gateway.helpers import ADMIN_TOKEN, MODEL, instances

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


class ModelServerProcess:
    """`python -m serving.model_server` on ports fixed at construction (free_port), so a restart is
    found where the gateway looks."""

    def __init__(self, config: Path, stderr: Path, *, rest_port: int | None = None, grpc_port: int | None = None) -> None:
        self.config, self.stderr = config, stderr
        self.rest_port = rest_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> "ModelServerProcess":
        """Starts the server and returns once it answers REST (its versions may still be loading)."""
        self.process = model_server_process(
            [f"--port={self.grpc_port}", f"--rest_api_port={self.rest_port}", f"--model_config_file={self.config}",
             "--model_config_file_poll_wait_seconds=0.2", "--file_system_poll_wait_seconds=0.2"],
            self.stderr, append=True)
        for line in self.process.stdout:
            if line.startswith("Exporting HTTP/REST API"):
                break
        else:
            raise AssertionError(f"the model server did not start (exit {self.process.wait()}); see {self.stderr}")
        threading.Thread(target=self.process.stdout.read, daemon=True).start()  # never block it on a full pipe
        return self

    def wait_available(self, versions: list[int], timeout: float = 120) -> None:
        def available() -> bool:
            states = {}
            for version in versions:
                answer = requests.get(f"{self.rest_url}/v1/models/{MODEL}/versions/{version}", timeout=5)
                states[version] = answer.ok and answer.json()["model_version_status"][0]["state"] == "AVAILABLE"
            return all(states.values())

        poll_until(available, f"versions {versions} available", timeout=timeout, interval=0.1,
                   retry_on=(requests.ConnectionError,))

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Gateway:
    """`python -m serving.gateway` on free ports, as a user starts it (admin token in the environment)."""

    def __init__(self, model_server: Any, config: Path, log_dir: Path, state_file: Path, stderr: Path,
                 *extra: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "serving.gateway", "--rest-port", "0", "--grpc-port", "0",
             "--model-server-rest", model_server.rest_url, "--model-server-grpc", model_server.grpc_target,
             "--model-config-file", str(config), "--log-dir", str(log_dir), "--state-file", str(state_file), *extra],
            cwd=PROJECT_ROOT, env={**ENV, "MLOPS_GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN, **(env or {})},
            stdout=subprocess.PIPE, stderr=stderr.open("ab"), text=True)
        line = self.process.stdout.readline()
        if not line.startswith("gateway: REST"):
            self.process.kill()
            raise AssertionError(f"the gateway did not start (exit {self.process.wait()}); see {stderr}")
        self.url = line.split()[2]

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.process.stdout.close()

    def stop(self) -> int:
        if self.process.poll() is not None:
            return self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=120)
        self.process.stdout.close()
        return code


@dataclasses.dataclass(frozen=True)
class Answer:
    request_id: str
    instances: int
    status: int  # 0: no answer (connection refused or reset)
    version: int | None
    label: str | None
    error: str
    sent_at: float  # time.monotonic()
    latency_s: float


class Load:
    """`clients` threads sending predict requests of 1 to 3 instances until stopped, every answer kept."""

    def __init__(self, url: str, trips: list, *, clients: int = 4, prefix: str = "load", timeout: float = 60,
                 stop_on_connection_error: bool = False) -> None:
        self.url, self.trips, self.prefix, self.timeout = url, trips, prefix, timeout
        self.stop_on_connection_error = stop_on_connection_error
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(c,), daemon=True) for c in range(clients)]

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 30)

    def count(self, status: int | None = 200) -> int:
        with self._lock:
            return sum(1 for a in self.answers if status is None or a.status == status)

    def snapshot(self) -> list[Answer]:
        with self._lock:
            return list(self.answers)

    def _client(self, client: int) -> None:
        session = requests.Session()
        number = 0
        while not self._stop.is_set():
            count = 1 + number % 3
            request_id = f"{self.prefix}-c{client}-{number}"
            number += 1
            started = time.monotonic()
            try:
                response = session.post(f"{self.url}/v1/models/{MODEL}:predict",
                                        json={"instances": instances(self.trips[:count])},
                                        headers={"X-Request-Id": request_id}, timeout=self.timeout)
            except requests.ConnectionError as err:
                answer = Answer(request_id, count, 0, None, None, repr(err), started, time.monotonic() - started)
                with self._lock:
                    self.answers.append(answer)
                if self.stop_on_connection_error:
                    return
                time.sleep(0.05)  # the gateway is gone: do not spin
                continue
            version = response.headers.get(MODEL_VERSION_HEADER)
            answer = Answer(request_id, count, response.status_code, int(version) if version else None,
                            response.headers.get(MODEL_LABEL_HEADER), "" if response.ok else response.text[:300],
                            started, time.monotonic() - started)
            with self._lock:
                self.answers.append(answer)
            if not response.ok:
                time.sleep(0.01)  # as a client backing off would: a tight loop of 503s starves a 2-core machine
