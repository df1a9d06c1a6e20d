"""The model server `kill -9`ed under load, behind a gateway that is never restarted: while it is
gone every request gets a quick 503 naming the model server (the circuit breaker, not the upstream
timeout: no 504), the gateway serves again by itself once the server is back on its ports, and no
request is ever answered by a version other than the one the routing policy names for its label,
even while the restarted server has loaded only some of its versions."""

from __future__ import annotations

import pytest

from tests.faults.scenarios import model_server_kill
from tests.serving.conftest import model_root  # noqa: F401 - fixture, found by name


@pytest.mark.slow
def test_model_server_killed_under_load_gives_503_then_recovers_alone(model_root, tmp_path):  # noqa: F811
    outcome = model_server_kill(model_root, tmp_path)

    outage = outcome.during_outage
    assert outage, "no request was sent while the model server was down"
    failed = [a for a in outage if a.status != 200]
    assert failed, "the outage was not seen by any request"
    # 503 UNAVAILABLE, never 504 (waited out the upstream timeout) nor 500 or a dropped connection.
    assert {a.status for a in failed} == {503}, [(a.status, a.error) for a in failed if a.status != 503][:5]
    assert all("model server" in a.error for a in failed), {a.error for a in failed}
    assert not outcome.wrong_version, outcome.wrong_version[:5]
    # Also while the restarted server has loaded only some versions: 503 for the others, nothing else.
    assert {a.status for a in outcome.answers} <= {200, 503}, {(a.status, a.error) for a in outcome.answers if a.status not in (200, 503)}
    assert {a.label for a in outcome.answers if a.status == 200 and a.sent_at > outcome.first_ok_after} == {"stable", "canary"}
    assert not outcome.lost, f"{len(outcome.lost)} answered requests are not in the log: {outcome.lost[:5]}"
    print(f"\n{outcome.row()}")
