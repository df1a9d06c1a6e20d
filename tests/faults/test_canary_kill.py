"""The model server `kill -9`ed in the middle of a canary: the rollout task's ramp
(`mlops.airflow.rollout_tasks._canary`, what the taxi_rollout DAG runs) never promotes on missing evidence.
With traffic, the canary's window is full of 503s and it rolls back naming the error rate; without
traffic, too few requests reached the canary and it rolls back saying so. Either way the rollout
says which, all traffic goes back to the stable version, and a promote is refused while the
server is down."""

from __future__ import annotations

import pytest

from tests.faults.scenarios import canary_kill
from tests.serving.conftest import model_root  # noqa: F401 - fixture, found by name
from tests.serving.gateway.helpers import STABLE_VERSION


@pytest.mark.slow
@pytest.mark.parametrize("traffic", [True, False], ids=["under-load", "no-traffic"])
def test_a_canary_whose_model_server_dies_is_rolled_back_not_promoted(traffic, model_root, tmp_path):  # noqa: F811
    outcome = canary_kill(model_root, tmp_path, traffic=traffic)

    assert outcome.decision["decision"] == "rolled_back", outcome.decision
    assert outcome.decision["share"] == 25, "it went on ramping after a window without evidence"
    reasons = "; ".join(outcome.decision["reasons"])
    assert ("error rate" in reasons) if traffic else ("requests reached the canary" in reasons), reasons
    assert "ABORTED at 25%" in outcome.printed and "promoted" not in outcome.printed, outcome.printed
    assert outcome.policy_after["canary_share"] == 0, outcome.policy_after
    assert outcome.policy_after["stable_version"] == STABLE_VERSION, outcome.policy_after
    assert outcome.promote_refused.startswith("HTTP 503"), outcome.promote_refused
