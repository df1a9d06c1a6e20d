"""Under load the gateway merges concurrent requests into fewer model-server calls; every client still gets its own answer."""

from __future__ import annotations

import concurrent.futures

import pytest
import requests

from tests.serving.gateway.helpers import STABLE_VERSION, instances, metric_value, predict, real_trips

CALLS = "mlops_gateway_upstream_call_requests"


def burst(gateway, trips, *, clients: int, rounds: int) -> list[tuple[int, list[float]]]:
    """Each request sends 1-3 consecutive trips starting at a different offset; returns (offset, probabilities)."""
    jobs = [(i % (len(trips) - 3), 1 + i % 3) for i in range(clients * rounds)]

    def send(job: tuple[int, int]) -> tuple[int, list[float]]:
        start, size = job
        with requests.Session() as session:
            response = predict(session, gateway, {"instances": instances(trips[start:start + size])})
        assert response.status_code == 200, response.text
        assert response.headers["X-Model-Version"] == str(STABLE_VERSION)
        return start, [item["probability"] for item in response.json()["predictions"]]

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        return list(pool.map(send, jobs))


@pytest.mark.parametrize("upstream_protocol", ["rest", "grpc"])
def test_concurrent_requests_share_model_server_calls_and_each_gets_its_own_predictions(start_gw, reference, upstream_protocol):
    gateway = start_gw(upstream_max_in_flight=1, upstream_protocol=upstream_protocol)
    trips = real_trips(40)
    expected = reference(STABLE_VERSION, trips)
    answers = burst(gateway, trips, clients=12, rounds=25)
    for start, probabilities in answers:
        assert probabilities == pytest.approx(expected[start:start + len(probabilities)], abs=1e-6)

    metrics = requests.get(f"{gateway.url}/metrics", timeout=10).text
    carried = metric_value(metrics, f"{CALLS}_sum")
    calls = metric_value(metrics, f"{CALLS}_count")
    assert carried == len(answers)  # every request went to the model server exactly once
    assert calls < len(answers)  # ...and some of them shared a call
    assert metric_value(metrics, f"{CALLS}_bucket", le="1.0") < calls


def test_with_merging_off_every_request_is_its_own_model_server_call(start_gw, reference):
    gateway = start_gw(upstream_max_in_flight=0)
    trips = real_trips(20)
    expected = reference(STABLE_VERSION, trips)
    for start, probabilities in burst(gateway, trips, clients=8, rounds=5):
        assert probabilities == pytest.approx(expected[start:start + len(probabilities)], abs=1e-6)
    metrics = requests.get(f"{gateway.url}/metrics", timeout=10).text
    assert metric_value(metrics, f"{CALLS}_count") == 0  # the merging path was not used at all
