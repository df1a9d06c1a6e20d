"""Degrees of automation: what the caller is told, what is logged, and referrals to humans."""

from __future__ import annotations

import pytest

from serving.gateway.config import ModelPolicy
from serving.prediction_log import read_prediction_logs
from tests.serving.gateway.helpers import MODEL, STABLE_VERSION, admin, instances, metric_value, predict, real_trips


@pytest.fixture
def trips_and_probabilities(reference):
    trips = real_trips(60)
    return trips, reference(STABLE_VERSION, trips)


def test_full_automation_decides_from_the_model(start_gw, http, trips_and_probabilities):
    trips, probabilities = trips_and_probabilities
    gateway = start_gw(models={MODEL: ModelPolicy(automation="full")})
    response = predict(http, gateway, {"instances": instances(trips)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["automation"] == "full"
    for prediction, probability in zip(body["predictions"], probabilities):
        assert prediction["probability"] == pytest.approx(probability, abs=1e-6)
        assert prediction["decision"] == ("big_tipper" if prediction["class"] == 1 else "not_big_tipper")
    assert {p["decision"] for p in body["predictions"]} == {"big_tipper", "not_big_tipper"}


def test_assist_returns_the_answer_as_a_suggestion(start_gw, http, trips_and_probabilities):
    trips, probabilities = trips_and_probabilities
    gateway = start_gw(models={MODEL: ModelPolicy(automation="assist")})
    body = predict(http, gateway, {"instances": instances(trips)}).json()
    assert body["automation"] == "assist"
    assert [p["probability"] for p in body["predictions"]] == pytest.approx(probabilities, abs=1e-6)
    assert all(p["decision"] == ("big_tipper" if p["class"] == 1 else "not_big_tipper") for p in body["predictions"])


def test_shadow_automation_withholds_the_answer_but_logs_it(start_gw, http, trips_and_probabilities, tmp_path):
    trips, probabilities = trips_and_probabilities
    gateway = start_gw(models={MODEL: ModelPolicy(automation="shadow")})
    response = predict(http, gateway, {"instances": instances(trips)})
    body = response.json()
    assert body["automation"] == "shadow"
    assert body["predictions"] == [{"decision": "none"}] * len(trips)
    gateway.stop()
    logs = read_prediction_logs(tmp_path / "logs").sort_values("instance_index")
    assert logs["probability"].tolist() == pytest.approx(probabilities, abs=1e-6)
    assert set(logs["decision"]) == {"none"} and set(logs["automation"]) == {"shadow"}


def test_partial_refers_inside_the_band_and_decides_outside(start_gw, http, trips_and_probabilities, tmp_path):
    trips, probabilities = trips_and_probabilities
    low, high = sorted(probabilities)[len(probabilities) // 3], sorted(probabilities)[2 * len(probabilities) // 3]
    gateway = start_gw(models={MODEL: ModelPolicy(automation="partial", band=(low, high))})
    body = predict(http, gateway, {"instances": instances(trips)}).json()
    referred = 0
    for prediction, probability in zip(body["predictions"], probabilities):
        if low <= probability <= high:
            assert prediction["decision"] == "refer_to_human", (probability, low, high)
            referred += 1
        else:
            assert prediction["decision"] in ("big_tipper", "not_big_tipper"), (probability, low, high)
    assert 0 < referred < len(trips)
    metrics = http.get(f"{gateway.url}/metrics", timeout=10).text
    assert metric_value(metrics, "mlops_gateway_referrals_total", model=MODEL) == referred
    gateway.stop()
    logs = read_prediction_logs(tmp_path / "logs")
    assert (logs["decision"] == "refer_to_human").sum() == referred


def test_automation_changes_through_the_admin_api(start_gw, http, trips_and_probabilities):
    trips, _ = trips_and_probabilities
    gateway = start_gw()
    changed = admin(http, gateway, "PUT", f"/models/{MODEL}/automation", {"mode": "partial", "band": [0.0, 1.0]})
    assert changed.status_code == 200, changed.text
    assert changed.json()["automation"] == "partial" and changed.json()["band"] == [0.0, 1.0]
    body = predict(http, gateway, {"instances": instances(trips[:5])}).json()
    assert [p["decision"] for p in body["predictions"]] == ["refer_to_human"] * 5
    bad = admin(http, gateway, "PUT", f"/models/{MODEL}/automation", {"mode": "partial", "band": [0.8, 0.2]})
    assert bad.status_code == 400 and "band" in bad.json()["error"]
    unknown = admin(http, gateway, "PUT", f"/models/{MODEL}/automation", {"mode": "autopilot"})
    assert unknown.status_code == 400 and "autopilot" in unknown.json()["error"]
