"""Two gateway replicas (real `python -m serving.gateway` processes on loopback) sharing one state
file and one log directory, as compose runs them behind a load balancer: an admin change taken by
either routes on both within `policy_poll_seconds`, a request key gets the same version on both,
changes made at once on both are all kept, and every request either answered is in the shared log."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from serving import prediction_log as plog
from serving.protocol import MODEL_VERSION_HEADER
from tests.faults.processes import Gateway
from tests.fixtures.polling import poll_until
from tests.serving.gateway.helpers import ADMIN_TOKEN, CANARY_VERSION, MODEL, STABLE_VERSION, instances, real_trips

POLL_SECONDS = 0.5
REPLICAS = ("alpha", "beta")


@pytest.fixture
def replicas(model_server: Any, gateway_config_file: Path, tmp_path: Path) -> Iterator[dict[str, Gateway]]:
    started: dict[str, Gateway] = {}
    try:
        for name in REPLICAS:
            started[name] = Gateway(
                model_server, gateway_config_file, tmp_path / "logs", tmp_path / "gateway_state.json",
                tmp_path / f"{name}.stderr", env={"MLOPS_GATEWAY_POLICY_POLL_SECONDS": str(POLL_SECONDS),
                                                  "MLOPS_GATEWAY_REPLICA_ID": name})
        yield started
    finally:
        for gateway in started.values():
            gateway.stop()


def _admin(gateway: Gateway, method: str, path: str, body: Any = None) -> requests.Response:
    return requests.request(method, f"{gateway.url}/admin/models/{MODEL}/{path}", json=body,
                            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)


def _policy(gateway: Gateway) -> dict[str, Any]:
    response = _admin(gateway, "GET", "policy")
    assert response.status_code == 200, response.text
    return response.json()


def _versions(gateway: Gateway, keys: list[str], trips: list[Any]) -> dict[str, int]:
    chosen = {}
    with requests.Session() as http:
        for key in keys:
            response = http.post(f"{gateway.url}/v1/models/{MODEL}:predict", json={"instances": instances(trips)},
                                 headers={"X-Request-Key": key}, timeout=30)
            assert response.status_code == 200, response.text
            chosen[key] = int(response.headers[MODEL_VERSION_HEADER])
    return chosen


def test_an_admin_change_on_one_replica_routes_on_both_and_a_key_gets_the_same_version(replicas):
    alpha, beta = replicas["alpha"], replicas["beta"]
    trips = real_trips(1)
    keys = [f"rider-{i}" for i in range(60)]
    assert set(_versions(beta, keys, trips).values()) == {STABLE_VERSION}

    changed = _admin(alpha, "PUT", "canary", {"version": CANARY_VERSION, "share": 0.5})
    assert changed.status_code == 200, changed.text
    started = time.monotonic()
    # The bound is the poll interval; the generous timeout only keeps a slow machine from failing the test.
    poll_until(lambda: _policy(beta)["policy"] == "canary", "beta never saw alpha's canary", timeout=20 * POLL_SECONDS,
               interval=0.02)
    print(f"policy propagation alpha -> beta: {time.monotonic() - started:.3f} s (poll interval {POLL_SECONDS} s)")
    assert _policy(beta) == _policy(alpha)

    on_alpha, on_beta = _versions(alpha, keys, trips), _versions(beta, keys, trips)
    assert on_alpha == on_beta
    assert set(on_alpha.values()) == {STABLE_VERSION, CANARY_VERSION}  # the split is real, so agreement means something

    # The other way round: a promote on beta is what alpha routes by.
    promoted = _admin(beta, "POST", "promote", {})
    assert promoted.status_code == 200, promoted.text
    poll_until(lambda: _policy(alpha)["stable_version"] == CANARY_VERSION, "alpha never saw beta's promote",
               timeout=20 * POLL_SECONDS, interval=0.02)
    assert set(_versions(alpha, keys[:5], trips).values()) == {CANARY_VERSION}


def test_changes_made_at_once_on_both_replicas_are_all_kept(replicas):
    alpha, beta = replicas["alpha"], replicas["beta"]
    assert _admin(alpha, "PUT", "canary", {"version": CANARY_VERSION, "share": 0.1}).status_code == 200
    rounds = 12
    failures: list[str] = []
    barrier = threading.Barrier(2)

    def change(gateway: Gateway, path: str, body_for: Any) -> None:
        for round_ in range(rounds):
            barrier.wait(timeout=30)
            response = _admin(gateway, "PUT", path, body_for(round_))
            if response.status_code != 200:
                failures.append(f"{path} round {round_}: {response.status_code} {response.text}")

    bands = [(round(0.30 + 0.01 * r, 2), 0.7) for r in range(rounds)]
    threads = [
        threading.Thread(target=change, args=(alpha, "automation", lambda r: {"mode": "partial", "band": list(bands[r])})),
        threading.Thread(target=change, args=(beta, "share", lambda r: {"share": round(0.2 + 0.05 * r, 2)})),
    ]
    before = _policy(alpha)["revision"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures
    # Every change counted once (none overwrote another). Alpha sees beta's last change at its next
    # poll at the latest; a lost change would keep the revision short for good.
    poll_until(lambda: _policy(alpha)["revision"] >= before + 2 * rounds, "alpha never counted every change",
               timeout=20 * POLL_SECONDS, interval=0.02)
    final = _policy(alpha)
    # ... and the last of each kind is what routes.
    assert final["revision"] == before + 2 * rounds
    assert final["band"] == list(bands[-1]) and final["automation"] == "partial"
    assert final["canary_share"] == round(0.2 + 0.05 * (rounds - 1), 2)
    poll_until(lambda: _policy(beta) == final, "beta never converged", timeout=20 * POLL_SECONDS, interval=0.02)


def test_a_change_decided_on_a_stale_revision_is_refused_with_409(replicas):
    alpha, beta = replicas["alpha"], replicas["beta"]
    seen = _policy(beta)["revision"]
    assert _admin(alpha, "PUT", "automation", {"mode": "assist"}).status_code == 200
    # beta may not have polled yet: it re-reads under the lock before it judges the revision.
    stale = _admin(beta, "PUT", "automation", {"mode": "full", "expected_revision": seen})
    assert stale.status_code == 409, stale.text
    assert f"since revision {seen}" in stale.json()["error"]
    assert _policy(beta)["automation"] == "assist"
    fresh = _admin(beta, "PUT", "automation", {"mode": "full", "expected_revision": seen + 1})
    assert fresh.status_code == 200, fresh.text


def test_each_replicas_requests_are_all_in_the_shared_log(replicas, tmp_path):
    trips = real_trips(3)
    sent: dict[str, set[str]] = {name: set() for name in REPLICAS}

    def send(name: str) -> None:
        with requests.Session() as http:
            for index in range(40):
                request_id = f"{name}-{index:03d}"
                response = http.post(f"{replicas[name].url}/v1/models/{MODEL}:predict", json={"instances": instances(trips)},
                                     headers={"X-Request-Id": request_id}, timeout=30)
                assert response.status_code == 200, response.text
                sent[name].add(request_id)

    threads = [threading.Thread(target=send, args=(name,)) for name in REPLICAS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for name in REPLICAS:
        assert replicas[name].stop() == 0  # a graceful stop writes every journaled row
    log_dir = tmp_path / "logs"
    rows = plog.read_prediction_logs(log_dir)
    expected = sorted((request_id, index) for ids in sent.values() for request_id in ids for index in range(len(trips)))
    assert len(expected) == 2 * 40 * 3
    assert sorted(zip(rows["request_id"], rows["instance_index"].astype(int))) == expected
    part_files = [path.name for path in (log_dir / plog.REQUESTS_DIR).rglob("part-*.parquet")]
    for name in REPLICAS:
        assert any(f"-{name}-" in file_name for file_name in part_files), part_files
