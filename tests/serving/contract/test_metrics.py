"""Prometheus metrics on the REST port, under TF Serving's metric names."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.serving.contract.clients import CallError, GrpcClient, RestClient
from tests.serving.contract.layout import CONTRACT_MODEL, STABLE_VERSION

COUNT = ":tensorflow:serving:request_count"
LATENCY = ":tensorflow:serving:request_latency"


def _scrape(rest: RestClient, path: str) -> str:
    response = rest.raw("GET", path)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    return response.text


def _request_count(text: str, model: str, status: str) -> int:
    match = re.search(rf'^{re.escape(COUNT)}\{{model_name="{re.escape(model)}",status="{status}"\}} (\d+)$', text, re.M)
    return int(match.group(1)) if match else 0


def test_request_count_and_latency_follow_the_requests(
    rest: RestClient, grpc_client: GrpcClient, serving_target: Any, taxi_inputs: dict
) -> None:
    if not serving_target.metrics_path:
        pytest.skip("no monitoring path configured (TFSERVING_METRICS_PATH)")
    before = _scrape(rest, serving_target.metrics_path)
    inputs = {k: v[:2] for k, v in taxi_inputs.items()}
    for _ in range(3):
        rest.predict(CONTRACT_MODEL, inputs, version=STABLE_VERSION)
    grpc_client.predict(CONTRACT_MODEL, inputs)
    with pytest.raises(CallError):
        rest.predict(CONTRACT_MODEL, inputs, version=77)
    after = _scrape(rest, serving_target.metrics_path)

    assert f"# TYPE {COUNT} counter" in after
    assert _request_count(after, CONTRACT_MODEL, "OK") - _request_count(before, CONTRACT_MODEL, "OK") == 4
    assert _request_count(after, CONTRACT_MODEL, "NOT_FOUND") - _request_count(before, CONTRACT_MODEL, "NOT_FOUND") == 1
    assert f"# TYPE {LATENCY} histogram" in after
    if serving_target.embedded:
        labels = f'model_name="{CONTRACT_MODEL}",API="Predict",entrypoint="REST"'
        buckets = [int(v) for v in re.findall(rf'^{re.escape(LATENCY)}_bucket\{{{labels},le="[^"]+"\}} (\d+)$', after, re.M)]
        count = int(re.search(rf"^{re.escape(LATENCY)}_count\{{{labels}\}} (\d+)$", after, re.M).group(1))
        assert buckets == sorted(buckets), "histogram buckets must be cumulative"
        assert buckets[-1] == count >= 3
        assert re.search(rf'^:tensorflow:serving:runtime_latency_count\{{model_name="{CONTRACT_MODEL}",API="Predict",runtime="TF1"\}} \d+$', after, re.M)


def test_metrics_are_only_on_the_configured_path(rest: RestClient, serving_target: Any) -> None:
    if not serving_target.metrics_path:
        pytest.skip("no monitoring path configured")
    assert rest.raw("GET", serving_target.metrics_path + "/more").status_code == 404
