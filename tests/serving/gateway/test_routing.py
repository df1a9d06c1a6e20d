"""Routing policies through a real gateway in front of the real model server (two model versions)."""

from __future__ import annotations

import concurrent.futures

import pytest
import requests

from monitoring.paired import pairs_from_logs
from serving.gateway.config import ModelPolicy
from serving.prediction_log import read_prediction_logs
from tests.serving.gateway.helpers import (
    CANARY_VERSION,
    MODEL,
    STABLE_VERSION,
    admin,
    instances,
    metric_value,
    predict,
    real_trips,
)


def test_blue_green_sends_everything_to_stable(start_gw, http, reference):
    gateway = start_gw()
    trips = real_trips(40)
    expected = reference(STABLE_VERSION, trips)
    for index, trip in enumerate(trips):
        response = predict(http, gateway, {"instances": instances([trip])}, key=f"rider-{index}")
        assert response.status_code == 200, response.text
        assert response.headers["X-Model-Label"] == "stable"
        assert response.headers["X-Model-Version"] == str(STABLE_VERSION)
        [prediction] = response.json()["predictions"]
        assert prediction["probability"] == pytest.approx(expected[index], abs=1e-6)


def test_canary_share_is_respected_and_sticky_per_key(start_gw, http, reference):
    gateway = start_gw(models={MODEL: ModelPolicy(policy="canary", canary_share=0.05)})
    trip = real_trips(1)
    stable_p, canary_p = reference(STABLE_VERSION, trip)[0], reference(CANARY_VERSION, trip)[0]
    assert abs(stable_p - canary_p) > 0.1  # the two versions are distinguishable

    body = {"instances": instances(trip)}
    first: dict[str, str] = {}
    for index in range(2000):
        response = predict(http, gateway, body, key=f"rider-{index}")
        assert response.status_code == 200, response.text
        label = response.headers["X-Model-Label"]
        version = int(response.headers["X-Model-Version"])
        probability = response.json()["predictions"][0]["probability"]
        # The label, the version and the answer agree: canary requests really went to version 2.
        assert (label, version) in (("stable", STABLE_VERSION), ("canary", CANARY_VERSION))
        assert probability == pytest.approx(canary_p if label == "canary" else stable_p, abs=1e-6)
        first[f"rider-{index}"] = label
    canary_keys = {key for key, label in first.items() if label == "canary"}
    assert 0.035 <= len(canary_keys) / 2000 <= 0.065, len(canary_keys)

    # Sticky: the same key lands on the same side every time.
    for key in list(first)[:300]:
        assert predict(http, gateway, body, key=key).headers["X-Model-Label"] == first[key]

    # Ramp to 20 %: every canary key stays on canary, and about 20 % of keys are on canary now.
    assert admin(http, gateway, "PUT", f"/models/{MODEL}/share", {"share": 0.2}).status_code == 200
    ramped = {key: predict(http, gateway, body, key=key).headers["X-Model-Label"] for key in list(first)[:1000]}
    assert all(ramped[key] == "canary" for key in canary_keys if key in ramped)
    assert 0.16 <= sum(label == "canary" for label in ramped.values()) / 1000 <= 0.24


def test_canary_without_a_key_is_random_at_the_share(start_gw, http):
    gateway = start_gw(models={MODEL: ModelPolicy(policy="canary", canary_share=0.5)})
    body = {"instances": instances(real_trips(1))}
    labels = [predict(http, gateway, body).headers["X-Model-Label"] for _ in range(400)]
    assert 0.40 <= labels.count("canary") / 400 <= 0.60


def test_shadow_candidate_is_logged_but_never_returned(start_gw, http, reference, tmp_path):
    gateway = start_gw(models={MODEL: ModelPolicy(policy="shadow", shadow_version=CANARY_VERSION)})
    trips = real_trips(5)
    stable_p, candidate_p = reference(STABLE_VERSION, trips), reference(CANARY_VERSION, trips)
    request_ids = []
    for _ in range(10):
        response = predict(http, gateway, {"instances": instances(trips)})
        assert response.status_code == 200, response.text
        assert response.headers["X-Model-Version"] == str(STABLE_VERSION)
        assert [p["probability"] for p in response.json()["predictions"]] == pytest.approx(stable_p, abs=1e-6)
        request_ids.append(response.headers["X-Request-Id"])
    gateway.stop()  # sends the queued shadow copies, then writes every row

    logs = read_prediction_logs(tmp_path / "logs")
    served, shadow = logs[~logs["is_shadow"]], logs[logs["is_shadow"]]
    assert len(served) == len(shadow) == 10 * len(trips)
    assert set(shadow["request_id"]) == set(request_ids)
    assert set(shadow["label"]) == {"shadow"} and set(shadow["model_version"]) == {CANARY_VERSION}
    assert set(served["label"]) == {"stable"} and set(served["model_version"]) == {STABLE_VERSION}
    for request_id in request_ids:
        rows = shadow[shadow["request_id"] == request_id].sort_values("instance_index")
        assert rows["probability"].tolist() == pytest.approx(candidate_p, abs=1e-6)
        assert (rows["status_code"] == 200).all()


def test_canaried_requests_are_also_asked_of_stable_and_paired_with_it(start_gw, http, reference, tmp_path):
    gateway = start_gw(models={MODEL: ModelPolicy(policy="canary", canary_share=0.5)})
    trips = real_trips(3)
    stable_p, canary_p = reference(STABLE_VERSION, trips), reference(CANARY_VERSION, trips)
    answered: dict[str, str] = {}
    for index in range(60):
        response = predict(http, gateway, {"instances": instances(trips)}, key=f"rider-{index}")
        assert response.status_code == 200, response.text
        label = response.headers["X-Model-Label"]
        # The client gets one answer, from the version its key routes to: never the copy's.
        expected = canary_p if label == "canary" else stable_p
        assert [p["probability"] for p in response.json()["predictions"]] == pytest.approx(expected, abs=1e-6)
        answered[response.headers["X-Request-Id"]] = label
    canaried = {request_id for request_id, label in answered.items() if label == "canary"}
    assert 0 < len(canaried) < 60
    stats = admin(http, gateway, "GET", f"/models/{MODEL}/stats?since_seconds=600").json()
    gateway.stop()  # sends the queued copies, then writes every row

    logs = read_prediction_logs(tmp_path / "logs")
    served, copies = logs[~logs["is_shadow"]], logs[logs["is_shadow"]]
    assert len(served) == 60 * len(trips)
    # Only the canaried requests got a copy, asked of stable and logged as shadow.
    assert set(copies["request_id"]) == canaried and len(copies) == len(canaried) * len(trips)
    assert set(copies["label"]) == {"shadow"} and set(copies["model_version"]) == {STABLE_VERSION}
    assert set(copies["policy"]) == {"canary"}
    for request_id in canaried:
        rows = copies[copies["request_id"] == request_id].sort_values("instance_index")
        assert rows["probability"].tolist() == pytest.approx(stable_p, abs=1e-6)
    # Served traffic counts as before: copies are not stable's or the canary's requests.
    assert stats["canary"]["requests"] == len(canaried) and stats["stable"]["requests"] == 60 - len(canaried)

    pairs = pairs_from_logs(logs)
    assert len(pairs) == len(canaried) * len(trips)
    assert set(pairs["candidate_version"]) == {CANARY_VERSION} and set(pairs["stable_version"]) == {STABLE_VERSION}
    first = pairs[pairs["instance_index"] == 0]
    assert first["candidate_probability"].to_numpy() == pytest.approx([canary_p[0]] * len(first), abs=1e-6)
    assert first["stable_probability"].to_numpy() == pytest.approx([stable_p[0]] * len(first), abs=1e-6)


def test_canary_pairing_can_be_turned_off(start_gw, http, tmp_path):
    gateway = start_gw(models={MODEL: ModelPolicy(policy="canary", canary_share=1.0)}, pair_canary=False)
    for index in range(10):
        response = predict(http, gateway, {"instances": instances(real_trips(2))}, key=f"rider-{index}")
        assert response.headers["X-Model-Label"] == "canary"
    gateway.stop()
    logs = read_prediction_logs(tmp_path / "logs")
    assert len(logs) == 20 and not logs["is_shadow"].any()


def test_full_shadow_queue_drops_copies_and_counts_them(start_gw, http):
    gateway = start_gw(models={MODEL: ModelPolicy(policy="shadow", shadow_version=CANARY_VERSION)},
                       shadow_queue_size=1, shadow_workers=1)
    body = {"instances": instances(real_trips(32))}

    def one(_: int) -> int:
        with requests.Session() as session:  # one per thread: a Session is not thread-safe
            return predict(session, gateway, body).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(one, range(200)))
    assert statuses == [200] * 200  # serving is unaffected by the full shadow queue
    metrics = http.get(f"{gateway.url}/metrics", timeout=10).text
    dropped = metric_value(metrics, "mlops_gateway_shadow_dropped_total")
    gateway.stop()
    logs = read_prediction_logs(gateway.settings.log_dir)
    shadow_requests = logs[logs["is_shadow"]]["request_id"].nunique()
    assert dropped > 0
    assert shadow_requests + dropped == 200  # every copy was either sent and logged, or counted as dropped


def test_explicit_version_or_label_bypasses_the_policy(start_gw, http, reference):
    gateway = start_gw(models={MODEL: ModelPolicy(policy="canary", canary_share=1.0)})
    trips = real_trips(3)
    body = {"instances": instances(trips)}
    routed = predict(http, gateway, body)
    assert routed.headers["X-Model-Label"] == "canary"
    pinned = predict(http, gateway, body, path=f"/versions/{STABLE_VERSION}")
    assert pinned.status_code == 200, pinned.text
    assert pinned.headers["X-Model-Label"] == f"version:{STABLE_VERSION}"
    assert [p["probability"] for p in pinned.json()["predictions"]] == pytest.approx(reference(STABLE_VERSION, trips), abs=1e-6)
    labelled = predict(http, gateway, body, path="/labels/stable")
    assert labelled.headers["X-Model-Version"] == str(STABLE_VERSION)
    assert [p["probability"] for p in labelled.json()["predictions"]] == pytest.approx(reference(STABLE_VERSION, trips), abs=1e-6)
