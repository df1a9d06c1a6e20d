"""Routing decisions and the routing table on their own (no servers): hashing, decisions, rollback rules, state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import DataError
from serving import model_config as mc
from serving.gateway.config import ModelPolicy
from serving.gateway.routing import ModelRoute, RoutingError, RoutingTable, canary_bucket, choose_target, decide

PROJECT_ROOT = Path(__file__).resolve().parents[3]


def test_canary_buckets_are_the_same_in_every_process():
    keys = [f"rider-{i}" for i in range(50)]
    code = "import json, sys; from serving.gateway.routing import canary_bucket; print(json.dumps([canary_bucket('taxi', k) for k in json.loads(sys.argv[1])]))"
    # Another interpreter with another hash seed (replicas, restarts) must put every key in the same bucket.
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(PROJECT_ROOT)}
    other = subprocess.run([sys.executable, "-c", code, json.dumps(keys)], env=env, capture_output=True, text=True, check=True)
    assert json.loads(other.stdout) == [canary_bucket("taxi", k) for k in keys]


def test_raising_the_share_only_moves_keys_towards_canary():
    keys = [f"k{i}" for i in range(10_000)]
    previous: set[str] = set()
    for share in (0.01, 0.05, 0.2, 0.5, 1.0):
        route = ModelRoute("taxi", policy="canary", canary_share=share, stable_version=1, canary_version=2)
        now = {k for k in keys if choose_target(route, k).label == "canary"}
        assert previous <= now
        assert abs(len(now) / len(keys) - share) < 0.015
        previous = now


@pytest.mark.parametrize(
    "automation, probability, predicted_class, expected",
    [
        ("full", 0.9, 1, "big_tipper"), ("full", 0.1, 0, "not_big_tipper"), ("assist", 0.55, 1, "big_tipper"),
        ("partial", 0.5, 1, "refer_to_human"), ("partial", 0.4, 0, "refer_to_human"), ("partial", 0.6, 1, "refer_to_human"),
        ("partial", 0.61, 1, "big_tipper"), ("partial", 0.39, 0, "not_big_tipper"), ("shadow", 0.9, 1, "none"),
        ("full", None, None, "refer_to_human"), ("full", 0.7, None, "big_tipper"),
    ],
)
def test_decisions(automation, probability, predicted_class, expected):
    assert decide(automation, (0.4, 0.6), probability, predicted_class) == expected


@pytest.fixture
def table(tmp_path):
    model_root = tmp_path / "models" / "taxi"
    config_file = tmp_path / "models.config"

    def edit(config):
        mc.ensure_model(config, "taxi", model_root)
        mc.set_served_versions(config, "taxi", [1, 2, 3])
        mc.set_label(config, "taxi", "stable", 1)

    mc.update_model_config(config_file, edit)
    return RoutingTable(state_file=tmp_path / "state.json", model_config_file=config_file, initial={"taxi": ModelPolicy()}), config_file


def test_rollback_undoes_a_promote_but_not_an_older_one(table):
    routes, config_file = table
    routes.set_canary("taxi", 2, 0.1)
    routes.promote("taxi")  # stable 1 -> 2
    routes.set_canary("taxi", 3, 0.1)  # a new rollout: 2 is now the baseline
    route, rolled_back_from = routes.rollback("taxi")
    assert (route.stable_version, rolled_back_from, route.canary_share, route.policy) == (2, None, 0.0, "blue_green")
    routes.promote("taxi", 3)
    route, rolled_back_from = routes.rollback("taxi")
    assert (route.stable_version, rolled_back_from) == (2, 3)
    assert mc.labels(mc.read_model_config(config_file), "taxi")["stable"] == 2


def test_a_canary_label_removed_elsewhere_stops_canary_traffic(table):
    routes, config_file = table
    routes.set_canary("taxi", 2, 0.5)
    mc.update_model_config(config_file, lambda config: mc.remove_label(config, "taxi", "canary"))
    assert routes.refresh_from_model_config()
    route = routes.route("taxi")
    assert (route.policy, route.canary_share, route.canary_version) == ("blue_green", 0.0, None)
    assert {choose_target(route, f"k{i}").label for i in range(200)} == {"stable"}


def test_a_bad_models_config_keeps_the_last_good_routes(table):
    routes, config_file = table
    before = routes.route("taxi")
    config_file.write_text("model_config_list { config { name: ")
    assert not routes.refresh_from_model_config()
    assert routes.route("taxi") == before


def test_state_file_round_trip_and_corruption(table, tmp_path):
    routes, config_file = table
    routes.set_automation("taxi", "partial", (0.2, 0.8))
    again = RoutingTable(state_file=tmp_path / "state.json", model_config_file=config_file, initial={})
    assert again.route("taxi").automation == "partial" and again.route("taxi").band == (0.2, 0.8)
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(DataError, match=r"state.json: gateway state is not valid JSON"):
        RoutingTable(state_file=tmp_path / "state.json", model_config_file=config_file, initial={})
    (tmp_path / "state.json").write_text(json.dumps({"format": 1, "models": {"taxi": {"canary_share": 3}}}))
    with pytest.raises(DataError, match=r"models.taxi: canary share must be a fraction"):
        RoutingTable(state_file=tmp_path / "state.json", model_config_file=config_file, initial={})


def test_changes_that_cannot_apply_change_nothing(table):
    routes, config_file = table
    before = config_file.read_text()
    with pytest.raises(RoutingError, match="no canary version"):
        routes.set_share("taxi", 0.2)
    with pytest.raises(RoutingError, match="version 7 is not served"):
        routes.set_shadow("taxi", 7)
    with pytest.raises(RoutingError, match="no canary version and no version was given"):
        routes.promote("taxi")
    assert config_file.read_text() == before and routes.route("taxi").policy == "blue_green"


def test_two_tables_on_one_state_file_see_each_others_changes_on_refresh(table, tmp_path):
    routes, config_file = table
    other = RoutingTable(state_file=tmp_path / "state.json", model_config_file=config_file, initial={"taxi": ModelPolicy()})
    routes.set_canary("taxi", 2, 0.25)
    assert other.route("taxi").policy == "blue_green"  # not polled yet
    assert other.refresh_from_state()
    assert other.route("taxi") == routes.route("taxi")
    assert not other.refresh_from_state()  # nothing new: nothing changes
    # A change through the stale-looking one starts from the file, not from its own old view.
    other.set_share("taxi", 0.5)
    routes.refresh_from_state()
    assert (routes.route("taxi").canary_version, routes.route("taxi").canary_share) == (2, 0.5)
    assert routes.route("taxi").revision == other.route("taxi").revision == 2


def test_changes_racing_through_two_tables_are_all_kept(table, tmp_path):
    import threading

    routes, config_file = table
    other = RoutingTable(state_file=tmp_path / "state.json", model_config_file=config_file, initial={"taxi": ModelPolicy()})
    routes.set_canary("taxi", 2, 0.1)
    rounds = 25

    def shares() -> None:
        for index in range(rounds):
            routes.set_share("taxi", round(0.01 * (index + 1), 2))

    def bands() -> None:
        for index in range(rounds):
            other.set_automation("taxi", "partial", (round(0.01 * (index + 1), 2), 0.9))

    threads = [threading.Thread(target=shares), threading.Thread(target=bands)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    routes.refresh_from_state()
    final = routes.route("taxi")
    assert final.revision == 1 + 2 * rounds
    assert (final.canary_share, final.band, final.automation) == (0.25, (0.25, 0.9), "partial")


def test_a_stale_expected_revision_is_a_conflict_and_changes_nothing(table):
    from serving.gateway.routing import RoutingConflict

    routes, _ = table
    seen = routes.route("taxi").revision
    routes.set_automation("taxi", "assist")
    with pytest.raises(RoutingConflict, match=f"since revision {seen} \\(now {seen + 1}"):
        routes.change("taxi", seen, routes.set_automation, "full")
    assert routes.route("taxi").automation == "assist"
    assert routes.change("taxi", seen + 1, routes.set_automation, "full").automation == "full"


def test_a_bad_state_file_on_a_poll_keeps_the_last_good_policy(table, tmp_path):
    routes, _ = table
    routes.set_canary("taxi", 2, 0.3)
    before = routes.route("taxi")
    (tmp_path / "state.json").write_text("{half a rewrite")
    assert not routes.refresh_from_state()
    assert routes.route("taxi") == before
