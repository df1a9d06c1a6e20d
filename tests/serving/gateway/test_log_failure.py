"""A failing disk under the request log: with `log_failure = "refuse"` the gateway answers 503 (REST)
or UNAVAILABLE (gRPC) naming the log problem instead of serving unlogged, says so in /healthz and
/metrics, and serves again by itself once the disk works; with "serve" it answers, logged in memory."""

from __future__ import annotations

import shutil

import grpc
import pytest

from serving.client import GrpcPredictionClient
from serving.gateway.config import GatewayConfigError, GatewaySettings
from serving.prediction_log import read_feedback, read_prediction_logs
from serving.request_journal import JOURNAL_DIR
from serving.tensor_protos import serving_apis
from tests.fixtures.polling import poll_until
from tests.serving.gateway.helpers import MODEL, instances, metric_value, predict, real_trips

BODY = {"instances": instances(real_trips(2))}


def _break(directory) -> None:
    """The journal's disk fails: its directory (and the open segment) is gone and a file is in its place."""
    shutil.rmtree(directory)
    directory.write_text("not a directory")


def test_a_failing_log_refuses_requests_says_so_and_recovers_by_itself(start_gw, http, tmp_path):
    gateway = start_gw()
    journal = tmp_path / "logs" / JOURNAL_DIR
    assert predict(http, gateway, BODY, request_id="before").status_code == 200
    health = http.get(f"{gateway.url}/healthz", timeout=5)
    assert health.status_code == 200 and health.json()["log"] == "durable" and health.json()["log_problem"] is None

    _break(journal)
    refused = predict(http, gateway, BODY, request_id="during")
    assert refused.status_code == 503, refused.text
    assert "log journal cannot be written" in refused.json()["error"] and JOURNAL_DIR in refused.json()["error"]
    assert 'log_failure = "refuse"' in refused.json()["error"]
    with GrpcPredictionClient(gateway.grpc_target, MODEL) as client, grpc.insecure_channel(gateway.grpc_target) as channel:
        stub = serving_apis().prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predict(client.build_request(real_trips(1)), metadata=(("x-request-id", "during-grpc"),), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE and "log journal" in caught.value.details()
    feedback = http.post(f"{gateway.url}/v1/feedback", json={"request_id": "before", "ground_truth": 1}, timeout=10)
    assert feedback.status_code == 503 and "log journal" in feedback.json()["error"]

    health = http.get(f"{gateway.url}/healthz", timeout=5)
    assert health.status_code == 503 and health.json()["status"] == "log_failing"
    assert "log journal cannot be written" in health.json()["log_problem"]
    text = http.get(f"{gateway.url}/metrics", timeout=10).text
    assert metric_value(text, "mlops_gateway_log_healthy", log="requests") == 0
    assert metric_value(text, "mlops_gateway_log_journal_failures_total", log="requests") >= 2
    assert metric_value(text, "mlops_gateway_requests_total", model=MODEL, label="stable", code="503") == 2

    journal.unlink()  # the disk works again: no request needed, the journal checks by itself
    poll_until(lambda: http.get(f"{gateway.url}/healthz", timeout=5).status_code == 200, "/healthz to say the log works")
    assert predict(http, gateway, BODY, request_id="after").status_code == 200
    assert metric_value(http.get(f"{gateway.url}/metrics", timeout=10).text, "mlops_gateway_log_healthy", log="requests") == 1
    gateway.flush_logs()
    frame = read_prediction_logs(tmp_path / "logs")
    assert sorted(set(frame["request_id"])) == ["after", "before"]  # nothing refused was logged
    assert len(read_feedback(tmp_path / "logs")) == 0


def test_log_failure_serve_answers_and_keeps_the_rows_in_memory(start_gw, http, tmp_path):
    gateway = start_gw(log_failure="serve")
    journal = tmp_path / "logs" / JOURNAL_DIR
    assert predict(http, gateway, BODY, request_id="before").status_code == 200
    _break(journal)
    assert predict(http, gateway, BODY, request_id="during").status_code == 200
    health = http.get(f"{gateway.url}/healthz", timeout=5)
    assert health.status_code == 200 and health.json()["status"] == "log_failing" and health.json()["log_failure"] == "serve"
    text = http.get(f"{gateway.url}/metrics", timeout=10).text
    assert metric_value(text, "mlops_gateway_log_not_durable_requests_total") == 1
    assert metric_value(text, "mlops_gateway_log_not_durable_rows_total", log="requests") == 2
    journal.unlink()
    gateway.flush_logs()
    assert sorted(set(read_prediction_logs(tmp_path / "logs")["request_id"])) == ["before", "during"]


def test_log_failure_is_checked_at_start(tmp_path):
    with pytest.raises(GatewayConfigError, match=r"gateway.log_failure must be one of \['refuse', 'serve'\], got 'ignore'"):
        GatewaySettings(log_failure="ignore")
