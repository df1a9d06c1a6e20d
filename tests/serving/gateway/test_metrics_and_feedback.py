"""Prometheus metrics (names the Grafana dashboard reads, and their counts) and the feedback endpoint."""

from __future__ import annotations

import collections

from serving.client import GrpcPredictionClient
from serving.gateway.config import ModelPolicy
from serving.prediction_log import join_feedback, read_feedback, read_prediction_logs
from tests.serving.gateway.helpers import MODEL, STABLE_VERSION, instances, metric_value, predict, real_trips

DASHBOARD_METRICS = (
    "mlops_gateway_request_latency_seconds", "mlops_gateway_requests_total", "mlops_gateway_null_outputs_total",
    "mlops_gateway_missing_inputs_total", "mlops_gateway_prediction_score", "mlops_gateway_referrals_total",
    "mlops_gateway_in_flight_requests", "mlops_gateway_shadow_dropped_total", "mlops_gateway_upstream_call_requests",
    "mlops_gateway_upstream_waiting_requests",
)


def test_metrics_have_the_dashboard_names_and_count_the_traffic(start_gw, http):
    gateway = start_gw(models={MODEL: ModelPolicy(automation="partial", band=(0.1, 0.5))})
    trips = real_trips(60)
    sent = instances(trips)
    missing = collections.Counter(name for row in sent for name, value in row.items() if value is None)
    assert missing  # the real rows do have missing values
    referred = 0
    for start in range(0, 60, 3):  # 20 REST requests of 3 examples
        response = predict(http, gateway, {"instances": sent[start:start + 3]})
        assert response.status_code == 200, response.text
        referred += sum(p["decision"] == "refer_to_human" for p in response.json()["predictions"])
    with GrpcPredictionClient(gateway.grpc_target, MODEL) as client:  # 5 gRPC requests of 2 examples
        for start in range(0, 10, 2):
            result = client.predict(trips[start:start + 2])
            referred += sum(p.decision == "refer_to_human" for p in result.predictions)
            for name, value in sent[start].items():
                missing[name] += value is None
            for name, value in sent[start + 1].items():
                missing[name] += value is None
    for _ in range(4):
        assert predict(http, gateway, None, raw=b"{oops").status_code == 400
    assert http.post(f"{gateway.url}/v1/models/rocket:predict", json={"instances": sent[:1]}, timeout=10).status_code == 404

    text = http.get(f"{gateway.url}/metrics", timeout=10).text
    for name in DASHBOARD_METRICS:
        assert f"# TYPE {name} " in text, name
    assert metric_value(text, "mlops_gateway_requests_total", model=MODEL, label="stable", code="200") == 25
    assert metric_value(text, "mlops_gateway_requests_total", model=MODEL, label="none", code="400") == 4
    assert metric_value(text, "mlops_gateway_requests_total", model="unknown", label="none", code="404") == 1
    # One request at a time: each went to the model server alone, none waited.
    assert metric_value(text, "mlops_gateway_upstream_call_requests_count") == 25
    assert metric_value(text, "mlops_gateway_upstream_call_requests_sum") == 25
    assert metric_value(text, "mlops_gateway_upstream_waiting_requests") == 0
    version = str(STABLE_VERSION)
    assert metric_value(text, "mlops_gateway_request_latency_seconds_count", model=MODEL, version=version, label="stable") == 25
    assert metric_value(text, "mlops_gateway_request_latency_seconds_sum", model=MODEL, version=version, label="stable") > 0
    assert metric_value(text, "mlops_gateway_prediction_score_count", model=MODEL, version=version) == 70
    for feature, count in missing.items():
        assert metric_value(text, "mlops_gateway_missing_inputs_total", model=MODEL, feature=feature) == count, feature
    assert referred > 0
    assert metric_value(text, "mlops_gateway_referrals_total", model=MODEL) == referred
    assert metric_value(text, "mlops_gateway_in_flight_requests") == 0
    assert metric_value(text, "process_cpu_seconds_total") > 0
    assert metric_value(text, "process_resident_memory_bytes") > 0


def test_feedback_is_validated_and_joins_the_request_log(start_gw, http, tmp_path):
    gateway = start_gw()
    body = {"instances": instances(real_trips(3))}
    first = predict(http, gateway, body, request_id="trip-batch-1").headers["X-Request-Id"]
    second = predict(http, gateway, body).headers["X-Request-Id"]
    assert first == "trip-batch-1"  # a client-provided request id is kept

    feedback = [
        {"request_id": first, "instance_index": 0, "ground_truth": 1},
        {"request_id": first, "instance_index": 2, "human_decision": "not_big_tipper", "source": "reviewer"},
        {"request_id": second, "instance_index": 1, "ground_truth": 0},
    ]
    response = http.post(f"{gateway.url}/v1/feedback", json=feedback, timeout=10)
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": 3, "unmatched": []}
    late = http.post(f"{gateway.url}/v1/feedback", json={"request_id": "from-last-week", "ground_truth": 1}, timeout=10)
    assert late.status_code == 200 and late.json() == {"accepted": 1, "unmatched": [0]}

    bad = [
        ({"request_id": first, "instance_index": 5, "ground_truth": 1}, "had 3 instances"),
        ({"request_id": first, "ground_truth": 2}, "ground_truth must be 0 or 1"),
        ({"request_id": first, "ground_truth": True}, "ground_truth must be 0 or 1"),
        ({"request_id": first, "human_decision": "maybe"}, "human_decision must be one of"),
        ({"request_id": first}, "give ground_truth"),
        ({"request_id": first, "ground_truth": 1, "label": 1}, "unknown keys ['label']"),
        ({"request_id": "", "ground_truth": 1}, "request_id"),
    ]
    for item, words in bad:
        rejected = http.post(f"{gateway.url}/v1/feedback", json=item, timeout=10)
        assert rejected.status_code == 400 and words in rejected.json()["error"], (item, rejected.text)
    # One bad item rejects the whole batch: nothing of it is written.
    batch = http.post(f"{gateway.url}/v1/feedback", json=[feedback[0], bad[1][0]], timeout=10)
    assert batch.status_code == 400 and "feedback 1" in batch.json()["error"]

    gateway.stop()
    stored = read_feedback(tmp_path / "logs")
    assert len(stored) == 4
    joined = join_feedback(read_prediction_logs(tmp_path / "logs"), stored).set_index(["request_id", "instance_index"])
    assert len(joined) == 6  # every served example once, labelled or not
    assert joined.loc[(first, 0), "ground_truth"] == 1
    assert joined.loc[(first, 2), "human_decision"] == "not_big_tipper"
    assert joined.loc[(first, 2), "feedback_source"] == "reviewer"
    assert joined.loc[(second, 1), "ground_truth"] == 0
    assert joined["ground_truth"].notna().sum() == 2
    assert joined.loc[(first, 0), "model_version"] == STABLE_VERSION
