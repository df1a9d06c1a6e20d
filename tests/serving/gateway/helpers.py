"""Plain helpers for the gateway tests (and for tests/serving/test_client.py and the benchmark):
the model's name and versions, models.config writing, real trips, requests to a running gateway.
The fixtures that start servers are in conftest.py.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import requests

from serving import model_config as mc
from serving.client import TaxiTrip
from serving.gateway.app import GatewayHandle

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


