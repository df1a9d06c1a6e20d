"""Real servers on loopback for the gateway and client tests.

Two versions of the tiny real SavedModel (tests/fixtures/tiny_model.py): version 1 (weight 1.0)
and version 2 (weight -1.0) answer differently for every trip, so a response tells which version
served it. The embedded model server (serving.model_server) serves both; each test gets its own
gateway, models.config copy, state file and log directory, so admin changes never leak.

Imported by the test modules (pytest collects the fixtures from their namespace) so that
tests/serving/test_client.py can share them without a conftest outside this folder.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests

from serving import model_config as mc
from serving.client import TaxiTrip
from serving.gateway import GatewayHandle, start_gateway
from serving.gateway_config import GatewaySettings

MODEL = "taxi"
STABLE_VERSION = 1
CANARY_VERSION = 2
ADMIN_TOKEN = "test-admin-token-0123456789"
TAXI_CSV = Path(__file__).resolve().parents[3] / "data" / "taxi" / "data.csv"


def write_model_config(path: Path, model_root: Path, *, served: list[int], stable: int | None, canary: int | None) -> Path:
    """A models.config serving `served` versions of MODEL with the given labels (through serving.model_config)."""

    def edit(config: Any) -> None:
        mc.ensure_model(config, MODEL, model_root)
        mc.set_served_versions(config, MODEL, served)
        for label in list(mc.labels(config, MODEL)):
            mc.remove_label(config, MODEL, label)
        if stable is not None:
            mc.set_label(config, MODEL, mc.STABLE_LABEL, stable)
        if canary is not None:
            mc.set_label(config, MODEL, mc.CANARY_LABEL, canary)

    mc.update_model_config(path, edit)
    return path


def real_trips(count: int, *, start: int = 0) -> list[Any]:
    """`count` real trips from the shipped CSV, as TaxiTrip rows (read with the client's own parser)."""
    trips = []
    with TAXI_CSV.open(newline="") as handle:
        for index, row in enumerate(csv.DictReader(handle)):
            if index < start:
                continue
            trips.append(TaxiTrip.from_csv_row(row, source=str(TAXI_CSV), line=index + 2))
            if len(trips) == count:
                break
    return trips


def instances(trips: list[Any]) -> list[dict[str, Any]]:
    """JSON instances as a gateway client sends them: null for a missing value."""
    return [trip.to_instance(missing="null") for trip in trips]


@pytest.fixture(scope="session")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """<base>/taxi with versions 1 (weight 1.0) and 2 (weight -1.0) of the tiny real model."""
    from tests.fixtures.tiny_model import export_tiny_model

    root = tmp_path_factory.mktemp("model_base") / MODEL
    export_tiny_model(root / str(STABLE_VERSION), weight=1.0)
    export_tiny_model(root / str(CANARY_VERSION), weight=-1.0)
    return root


@pytest.fixture(scope="session")
def model_server(model_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The embedded TF Serving stand-in serving both versions (stable=1, canary=2)."""
    from serving.model_server import start_model_server

    config = write_model_config(tmp_path_factory.mktemp("server") / "models.config", model_root,
                                served=[STABLE_VERSION, CANARY_VERSION], stable=STABLE_VERSION, canary=CANARY_VERSION)
    handle = start_model_server(port=0, rest_api_port=0, model_config_file=config, model_config_file_poll_wait_seconds=0.2)
    yield handle
    handle.stop()


@pytest.fixture(scope="session")
def reference(model_server: Any) -> Callable[[int, list[Any]], list[float]]:
    """Probabilities straight from the model server for a version: what the gateway must return."""
    session = requests.Session()

    def predict(version: int, trips: list[Any]) -> list[float]:
        body = {"instances": [trip.to_instance() for trip in trips]}
        response = session.post(f"{model_server.rest_url}/v1/models/{MODEL}/versions/{version}:predict",
                                data=json.dumps(body), timeout=30)
        assert response.status_code == 200, response.text
        return [item["probability"] for item in response.json()["predictions"]]

    return predict


@pytest.fixture
def gateway_config_file(model_root: Path, tmp_path: Path) -> Path:
    """This test's own models.config (stable=1, canary=2, both served)."""
    return write_model_config(tmp_path / "models.config", model_root,
                              served=[STABLE_VERSION, CANARY_VERSION], stable=STABLE_VERSION, canary=CANARY_VERSION)


@pytest.fixture
def start_gw(model_server: Any, gateway_config_file: Path, tmp_path: Path) -> Iterator[Callable[..., GatewayHandle]]:
    """Starts gateways in front of the session's model server; all are stopped after the test."""
    handles: list[GatewayHandle] = []

    def start(**overrides: Any) -> GatewayHandle:
        values: dict[str, Any] = dict(
            rest_port=0, grpc_port=0, model_server_rest=model_server.rest_url, model_server_grpc=model_server.grpc_target,
            model_config_file=gateway_config_file, log_dir=tmp_path / "logs", state_file=tmp_path / "gateway_state.json",
            admin_token=ADMIN_TOKEN, log_flush_seconds=0.5,
        )
        values.update(overrides)
        handle = start_gateway(GatewaySettings(**values))
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        handle.stop()


@pytest.fixture
def http() -> Iterator[requests.Session]:
    session = requests.Session()
    yield session
    session.close()


def predict(http: requests.Session, gateway: GatewayHandle, body: Any, *, path: str = "", key: str | None = None,
            request_id: str | None = None, raw: bytes | None = None) -> requests.Response:
    """POST a predict request to the gateway (body as JSON, or `raw` bytes as they are)."""
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["X-Request-Key"] = key
    if request_id is not None:
        headers["X-Request-Id"] = request_id
    url = f"{gateway.url}/v1/models/{MODEL}{path}:predict"
    if raw is None:
        raw = json.dumps(body).encode()
    return http.post(url, data=raw, headers=headers, timeout=30)


def admin(http: requests.Session, gateway: GatewayHandle, method: str, path: str, body: Any = None,
          token: str | None = ADMIN_TOKEN) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return http.request(method, f"{gateway.url}/admin{path}", json=body, headers=headers, timeout=30)


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent), labels matched exactly."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0

