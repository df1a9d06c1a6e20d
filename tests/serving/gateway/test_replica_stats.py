"""The canary judge's stats summed over gateway replicas (two real `python -m serving.gateway`
processes on loopback sharing one state file, as behind compose's balancer): each replica counts
only the requests it answered, the judge must see all of them."""

from __future__ import annotations

import math
import socket

import pytest

from serving.rollout import GATEWAY_REPLICAS_ENV, AdminApiError, GatewayAdminClient, gateway_replica_urls, sum_replica_stats
from tests.serving.gateway.helpers import ADMIN_TOKEN, CANARY_VERSION, MODEL, real_trips
from tests.serving.gateway.test_replicas import _admin, _policy, _versions, replicas  # noqa: F401 (fixture)
from tests.fixtures.polling import poll_until

WINDOW_SECONDS = 600


def _one(url: str) -> dict:
    return GatewayAdminClient(url, ADMIN_TOKEN, replicas=()).stats(MODEL, WINDOW_SECONDS)


def test_the_judge_sees_the_traffic_of_every_replica(replicas, monkeypatch):  # noqa: F811 (the fixture)
    alpha, beta = replicas["alpha"], replicas["beta"]
    assert _admin(alpha, "PUT", "canary", {"version": CANARY_VERSION, "share": 0.5}).status_code == 200
    poll_until(lambda: _policy(beta)["policy"] == "canary", "beta never saw alpha's canary", timeout=10, interval=0.05)
    trips = real_trips(1)
    on_alpha = _versions(alpha, [f"a-{i}" for i in range(30)], trips)
    on_beta = _versions(beta, [f"b-{i}" for i in range(20)], trips)
    canary_sent = sum(v == CANARY_VERSION for v in on_alpha.values()) + sum(v == CANARY_VERSION for v in on_beta.values())
    assert 0 < canary_sent < 50

    alone_alpha, alone_beta = _one(alpha.url), _one(beta.url)
    assert alone_alpha["canary"]["requests"] < canary_sent  # what the judge saw before: one replica's share

    summed = GatewayAdminClient(alpha.url, ADMIN_TOKEN, replicas=[alpha.url, beta.url]).stats(MODEL, WINDOW_SECONDS)
    assert summed["canary"]["requests"] == canary_sent
    assert summed["stable"]["requests"] + summed["canary"]["requests"] == 50
    assert summed["canary"]["replicas"] == 2 and summed["canary"]["version"] == CANARY_VERSION
    canary = [alone_alpha["canary"], alone_beta["canary"]]
    assert summed["canary"]["scored"] == sum(side["scored"] for side in canary)
    weighted_mean = sum(side["mean_probability"] * side["scored"] for side in canary) / summed["canary"]["scored"]
    assert math.isclose(summed["canary"]["mean_probability"], weighted_mean, rel_tol=1e-9)
    assert summed["canary"]["latency_p99_ms"] == max(side["latency_p99_ms"] for side in canary)

    # From the environment, as the rollout DAG's client gets it (compose: dns+http://gateway:8000).
    monkeypatch.setenv(GATEWAY_REPLICAS_ENV, f"{alpha.url}, {beta.url}")
    assert GatewayAdminClient(alpha.url, ADMIN_TOKEN).stats(MODEL, WINDOW_SECONDS)["canary"]["requests"] == canary_sent

    # A replica that does not answer fails the read, naming it: a judgement on part of the traffic is no judgement.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        gone = f"http://127.0.0.1:{probe.getsockname()[1]}"
    with pytest.raises(AdminApiError, match=gone.replace(".", r"\.")):
        GatewayAdminClient(alpha.url, ADMIN_TOKEN, replicas=[alpha.url, gone], attempts=1).stats(MODEL, WINDOW_SECONDS)


def test_summed_spread_is_the_pooled_spread_of_all_scores():
    scores = ([0.1, 0.4, 0.35], [0.9, 0.2])

    def one_replica(values: list[float]) -> dict:
        mean = sum(values) / len(values)
        return {"canary": {"requests": len(values), "errors": 0, "scored": len(values), "mean_probability": mean,
                           "probability_std": math.sqrt(sum((v - mean) ** 2 for v in values) / len(values)),
                           "positive_rate": sum(v >= 0.5 for v in values) / len(values), "latency_p99_ms": 2.0, "version": 2}}

    everything = [v for part in scores for v in part]
    mean = sum(everything) / len(everything)
    summed = sum_replica_stats([one_replica(part) for part in scores])["canary"]
    assert math.isclose(summed["mean_probability"], mean)
    assert math.isclose(summed["probability_std"], math.sqrt(sum((v - mean) ** 2 for v in everything) / len(everything)))
    assert math.isclose(summed["positive_rate"], 1 / 5) and summed["requests"] == 5 and summed["error_rate"] == 0.0


def test_replica_urls_from_a_list_text_or_dns():
    assert gateway_replica_urls("http://a:1/, http://b:2,,http://a:1") == ["http://a:1", "http://b:2"]
    assert "http://127.0.0.1:8123" in gateway_replica_urls(["dns+http://localhost:8123"])
    with pytest.raises(ValueError, match="http"):
        gateway_replica_urls("gateway:8000")
