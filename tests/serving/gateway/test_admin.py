"""The admin API through `GatewayAdminClient`: auth, canary, promote, instant rollback, persistence, stats."""

from __future__ import annotations

import json
import statistics
import threading

import pytest
import requests

from serving import model_config as mc
from serving.prediction_log import read_prediction_logs
from serving.rollout import AdminApiError, GatewayAdminClient
from tests.fixtures.polling import poll_until
from tests.serving.gateway.helpers import (
    ADMIN_TOKEN,
    CANARY_VERSION,
    MODEL,
    STABLE_VERSION,
    admin,
    instances,
    predict,
    real_trips,
    write_model_config,
)


def _client(gateway) -> GatewayAdminClient:
    return GatewayAdminClient(gateway.url, ADMIN_TOKEN)


def test_admin_needs_the_token_and_predictions_do_not(start_gw, http):
    gateway = start_gw()
    missing = admin(http, gateway, "GET", f"/models/{MODEL}/policy", token=None)
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
    basic = http.get(f"{gateway.url}/admin/models/{MODEL}/policy", headers={"Authorization": "Basic YWRtaW46YWRtaW4="}, timeout=10)
    assert basic.status_code == 401
    wrong = admin(http, gateway, "POST", f"/models/{MODEL}/promote", {"version": 2}, token="not-the-token-at-all")
    assert wrong.status_code == 403 and "wrong admin token" in wrong.json()["error"]
    assert _client(gateway).get_policy(MODEL)["stable_version"] == STABLE_VERSION  # nothing was promoted
    with pytest.raises(AdminApiError) as caught:
        GatewayAdminClient(gateway.url, "another-wrong-token").set_share(MODEL, 0.5)
    assert caught.value.status == 403
    assert predict(http, gateway, {"instances": instances(real_trips(1))}).status_code == 200


def test_admin_is_disabled_without_a_configured_token(start_gw, http):
    gateway = start_gw(admin_token="")
    response = admin(http, gateway, "GET", f"/models/{MODEL}/policy", token="anything-at-all-here")
    assert response.status_code == 403 and "disabled" in response.json()["error"]


def test_admin_rejects_impossible_changes_with_reasons(start_gw):
    client = _client(start_gw())
    with pytest.raises(AdminApiError, match=r"version 9 is not served.*\[1, 2\]") as caught:
        client.set_canary(MODEL, 9, 0.05)
    assert caught.value.status == 400
    with pytest.raises(AdminApiError, match=r"fraction in \[0, 1\]"):
        client.set_canary(MODEL, CANARY_VERSION, 5)
    with pytest.raises(AdminApiError, match="already the stable version"):
        client.promote(MODEL, STABLE_VERSION)
    with pytest.raises(AdminApiError, match="rocket") as caught:
        client.get_policy("rocket")
    assert caught.value.status == 404
    assert client.get_policy(MODEL)["policy"] == "blue_green"  # nothing changed


@pytest.fixture
def following_server(model_root, tmp_path):
    """A model server of its own that polls the same models.config the gateway writes."""
    from serving.model_server import start_model_server

    config = write_model_config(tmp_path / "shared" / "models.config", model_root,
                                served=[STABLE_VERSION, CANARY_VERSION], stable=STABLE_VERSION, canary=None)
    handle = start_model_server(port=0, rest_api_port=0, model_config_file=config, model_config_file_poll_wait_seconds=0.2)
    yield handle, config
    handle.stop()


def _label_answers_like(server, label: str, trips, expected: float) -> bool:
    """True once the model server itself answers `/labels/{label}:predict` with `expected` (it polls models.config)."""
    body = json.dumps({"instances": [trip.to_instance() for trip in trips]})
    response = requests.post(f"{server.rest_url}/v1/models/{MODEL}/labels/{label}:predict", data=body, timeout=10)
    return response.status_code == 200 and abs(response.json()["predictions"][0]["probability"] - expected) < 1e-6


def test_canary_promote_and_instant_rollback_under_load(following_server, start_gw, reference, tmp_path):
    server, config = following_server
    gateway = start_gw(model_server_rest=server.rest_url, model_server_grpc=server.grpc_target, model_config_file=config)
    client = _client(gateway)
    trips = real_trips(1)
    probability = {STABLE_VERSION: reference(STABLE_VERSION, trips)[0], CANARY_VERSION: reference(CANARY_VERSION, trips)[0]}
    body = {"instances": instances(trips)}

    # Traffic runs the whole time; each answer is kept with its request id to check the log afterwards.
    answers: list[tuple[str, int, float]] = []
    failures: list[str] = []
    stop = threading.Event()

    def traffic(worker: int) -> None:
        with requests.Session() as session:
            index = 0
            while not stop.is_set():
                response = predict(session, gateway, body, key=f"w{worker}-{index}")
                if response.status_code != 200:
                    failures.append(response.text)
                    return
                answers.append((response.headers["X-Request-Id"], int(response.headers["X-Model-Version"]),
                                response.json()["predictions"][0]["probability"]))
                index += 1

    threads = [threading.Thread(target=traffic, args=(worker,)) for worker in range(3)]
    for thread in threads:
        thread.start()
    try:
        policy = client.set_canary(MODEL, CANARY_VERSION, 0.25)
        assert (policy["policy"], policy["canary_version"], policy["canary_share"]) == ("canary", CANARY_VERSION, 0.25)
        assert mc.labels(mc.read_model_config(config), MODEL) == {"stable": STABLE_VERSION, "canary": CANARY_VERSION}
        poll_until(lambda: _label_answers_like(server, "canary", trips, probability[CANARY_VERSION]), "the server's canary label")
        client.set_share(MODEL, 0.5)
        mark = len(answers)
        poll_until(lambda: len(answers) >= mark + 20, "traffic at a 50% canary share")

        promoted = client.promote(MODEL)
        assert promoted["stable_version"] == CANARY_VERSION and promoted["previous_stable"] == STABLE_VERSION
        assert promoted["canary_version"] is None and promoted["policy"] == "blue_green"
        mark = len(answers)
        assert _versions_after(answers, mark, 30) == {CANARY_VERSION}  # every answer after the switch
        assert mc.labels(mc.read_model_config(config), MODEL) == {"stable": CANARY_VERSION}
        poll_until(lambda: _label_answers_like(server, "stable", trips, probability[CANARY_VERSION]), "the server's stable label to move")

        rolled = client.rollback(MODEL)
        assert rolled["stable_version"] == STABLE_VERSION and rolled["rolled_back_from"] == CANARY_VERSION
        mark = len(answers)
        assert _versions_after(answers, mark, 30) == {STABLE_VERSION}
        assert mc.labels(mc.read_model_config(config), MODEL) == {"stable": STABLE_VERSION}
        poll_until(lambda: _label_answers_like(server, "stable", trips, probability[STABLE_VERSION]), "the server's stable label to move back")

        again = client.rollback(MODEL)  # nothing left to undo: harmless
        assert again["stable_version"] == STABLE_VERSION and again["rolled_back_from"] is None
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert failures == []
    for request_id, version, answered in answers:
        assert answered == pytest.approx(probability[version], abs=1e-6)  # the header told the truth
    gateway.stop()

    # Canaried requests were also asked of stable (pair_canary): those copies are logged as shadow rows.
    logs = read_prediction_logs(tmp_path / "logs", include_shadow=False)
    assert len(logs) == len(answers)  # every served request is in the log, once
    logged = dict(zip(logs["request_id"], logs["model_version"]))
    assert logged == {request_id: version for request_id, version, _ in answers}


def _versions_after(answers: list, mark: int, count: int) -> set[int]:
    """Versions of the `count` answers that started after `mark` answers were in (waits for them)."""
    poll_until(lambda: len(answers) >= mark + count + 3, f"{count} more answers")
    # The 3 answers right after the mark may have been in flight during the switch: skip them.
    return {version for _, version, _ in answers[mark + 3: mark + 3 + count]}


def test_policies_survive_a_restart(start_gw, tmp_path):
    first = start_gw()
    client = _client(first)
    client.set_canary(MODEL, CANARY_VERSION, 0.1)
    client.set_automation(MODEL, "partial", (0.3, 0.7))
    before = client.get_policy(MODEL)
    first.stop()
    second = start_gw()  # same state file and models.config
    after = _client(second).get_policy(MODEL)
    assert after == before
    assert (after["policy"], after["canary_share"], after["automation"], after["band"]) == ("canary", 0.1, "partial", [0.3, 0.7])


def test_stats_per_label_match_the_traffic(start_gw, http, reference):
    gateway = start_gw()
    client = _client(gateway)
    client.set_canary(MODEL, CANARY_VERSION, 0.5)
    trips = real_trips(4)
    body = {"instances": instances(trips)}
    seen: dict[str, list[float]] = {"stable": [], "canary": []}
    for index in range(200):
        response = predict(http, gateway, body, key=f"k{index}")
        seen[response.headers["X-Model-Label"]].extend(p["probability"] for p in response.json()["predictions"])
    stats = client.stats(MODEL, since_seconds=300)
    # Copies of canaried requests asked of stable (pair_canary) are counted apart, as "shadow".
    assert {"stable", "canary"} <= set(stats) <= {"stable", "canary", "shadow"}
    for label, version in (("stable", STABLE_VERSION), ("canary", CANARY_VERSION)):
        assert stats[label]["requests"] == len(seen[label]) // len(trips)
        assert stats[label]["version"] == version
        assert stats[label]["errors"] == 0 and stats[label]["error_rate"] == 0.0
        assert stats[label]["mean_probability"] == pytest.approx(sum(seen[label]) / len(seen[label]), abs=1e-6)
        assert stats[label]["scored"] == len(seen[label])
        assert stats[label]["probability_std"] == pytest.approx(statistics.pstdev(seen[label]), abs=1e-5)
        assert 0 < stats[label]["latency_p50_ms"] <= stats[label]["latency_p90_ms"] <= stats[label]["latency_p99_ms"]
        assert 0.0 <= stats[label]["positive_rate"] <= 1.0


def test_traffic_is_never_routed_to_a_version_the_model_server_has_not_loaded(start_gw, gateway_config_file, model_root):
    # Version 3 is in models.config (just pushed) but the model server has not loaded it.
    write_model_config(gateway_config_file, model_root, served=[STABLE_VERSION, CANARY_VERSION, 3],
                       stable=STABLE_VERSION, canary=None)
    client = _client(start_gw())
    before = client.get_policy(MODEL)

    for change in (lambda: client.set_canary(MODEL, 3, 0.05), lambda: client.promote(MODEL, 3),
                   lambda: client.set_shadow(MODEL, 3)):
        with pytest.raises(AdminApiError) as refused:
            change()
        assert refused.value.status == 503
        assert "taxi version 3 is not AVAILABLE on the model server yet" in str(refused.value)
    assert client.get_policy(MODEL) == before
    assert mc.labels(mc.read_model_config(gateway_config_file), MODEL) == {"stable": STABLE_VERSION}

    assert (client.version_state(MODEL, 3), client.version_state(MODEL, CANARY_VERSION)) == (None, "AVAILABLE")
    with pytest.raises(AdminApiError, match="did not become AVAILABLE on the model server within 1s"):
        client.wait_until_available(MODEL, 3, timeout_s=1, poll_s=0.2)
    client.wait_until_available(MODEL, CANARY_VERSION, timeout_s=5)
    assert client.set_canary(MODEL, CANARY_VERSION, 0.05)["canary_version"] == CANARY_VERSION
