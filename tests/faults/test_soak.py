"""The soak (issue 16, section 3): the gateway process under steady load (4 clients) with a canary
ramp, a rollback in the middle and a second ramp. Its resident memory grows by less than
RSS_BOUND_MIB after the warm-up, it holds no more file descriptors at the end than after the
warm-up (plus the journal segment and Parquet file that may be open at that moment), every
request answered 200 is in the request log once, and no answer came from a version other than
its label's. 60 s here; MLOPS_SOAK_SECONDS=600 runs the issue's 10 minutes."""

from __future__ import annotations

import os

import pytest

from tests.faults.soak import soak, wrong_versions
from tests.serving.conftest import model_root, model_server  # noqa: F401 - fixtures, found by name

# Above this it is a leak, not the allocator settling: 60 s of this load serve ~20,000 requests.
RSS_BOUND_MIB = 64
FD_SLACK = 4


@pytest.mark.slow
def test_soak_with_a_canary_ramp_and_a_rollback(model_server, model_root, tmp_path):  # noqa: F811
    outcome = soak(model_server, model_root, tmp_path, seconds=float(os.environ.get("MLOPS_SOAK_SECONDS", "60")))

    assert len(outcome.actions) == 6, outcome.actions
    assert {a.status for a in outcome.answers} == {200}, {(a.status, a.error) for a in outcome.answers if a.status != 200}
    assert not wrong_versions(outcome), wrong_versions(outcome)[:5]
    assert {a.label for a in outcome.answers} == {"stable", "canary"}
    assert not outcome.lost, f"{len(outcome.lost)} answered requests are not in the log: {outcome.lost[:5]}"
    twice = {rid: rows for rid, rows in outcome.logged.items() if len(rows) != len(set(rows))}
    assert not twice, list(twice.items())[:5]
    assert outcome.rss_growth_mib < RSS_BOUND_MIB, f"RSS grew {outcome.rss_growth_mib:.1f} MiB: {outcome.rss_trend()}"
    assert outcome.fd_growth <= FD_SLACK, outcome.samples
    print(f"\n{outcome.row()}")
