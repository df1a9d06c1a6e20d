"""Real servers on loopback for the serving tests (pytest finds these fixtures by name).

Two versions of the tiny real SavedModel (tests/fixtures/tiny_model.py): version 1 (weight 1.0)
and version 2 (weight -1.0) answer differently for every trip, so a response tells which version
served it. The embedded model server (serving.model_server) serves both; each test gets its own
gateway, models.config copy, state file and log directory, so admin changes never leak.

Every test under tests/serving/ gets them by name; tests/deploy/test_live_prometheus.py, the one
user outside, imports the fixtures it uses. Plain helpers are in tests/serving/gateway/helpers.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests

from serving.gateway.app import GatewayHandle, start_gateway
from serving.gateway.config import GatewaySettings
from tests.serving.gateway.helpers import ADMIN_TOKEN, CANARY_VERSION, MODEL, STABLE_VERSION, write_model_config


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
