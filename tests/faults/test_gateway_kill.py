"""The gateway `kill -9`ed under load at a random moment, then restarted on the same log directory:
every request answered 200 is in the request log exactly once (one row per instance), round after
round. Real processes and real signals: the gateway is `python -m serving.gateway`, killed with
SIGKILL while 8 clients send requests of 1 to 3 instances; the model server is the embedded one."""

from __future__ import annotations

import pytest

from tests.faults.scenarios import gateway_kill
from tests.serving.conftest import model_root, model_server  # noqa: F401 - fixtures, found by name


@pytest.mark.parametrize("rounds", [pytest.param(2, id="2-rounds"), pytest.param(10, id="10-rounds", marks=pytest.mark.slow)])
def test_every_request_answered_before_a_kill_9_is_logged_exactly_once(rounds, model_server, model_root, tmp_path):  # noqa: F811
    outcome = gateway_kill(model_server, model_root, tmp_path, rounds=rounds)

    seed = outcome.seed
    twice = {rid: indexes for rid, indexes in outcome.logged.items() if len(indexes) != len(set(indexes))}
    assert not twice, f"rows logged twice (seed {seed}): {list(twice.items())[:5]}"
    assert not outcome.lost, (f"{len(outcome.lost)} of {len(outcome.answered)} answered requests are not in the log, "
                              f"or not with their instances (seed {seed}): {outcome.lost[:5]}")
    print(f"\nkill -9 rounds: {rounds}; answered 200 per round: {outcome.rounds}; answered {len(outcome.answered)}, "
          f"all logged once; logged but unanswered (in flight at the kill): {outcome.logged_unanswered}; seed {seed}")
