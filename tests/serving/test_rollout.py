"""The canary judgement (serving.rollout.judge_canary): what makes a canary window healthy or not, and why."""

from __future__ import annotations

import pytest

from serving.rollout import CanaryJudgement, CanaryThresholds, judge_canary

STABLE = {"requests": 400, "errors": 0, "error_rate": 0.0, "latency_p99_ms": 10.0, "mean_probability": 0.30}


def test_a_healthy_canary_passes_every_check():
    canary = {"requests": 40, "errors": 0, "error_rate": 0.0, "latency_p99_ms": 12.0, "mean_probability": 0.33}
    judgement = judge_canary({"stable": STABLE, "canary": canary}, CanaryThresholds())
    assert judgement.healthy and judgement.reasons == []


@pytest.mark.parametrize("canary, expected", [
    ({"requests": 40, "error_rate": 0.10, "latency_p99_ms": 10.0, "mean_probability": 0.3}, "error rate 0.100 > 0.020"),
    ({"requests": 40, "error_rate": 0.0, "latency_p99_ms": 30.0, "mean_probability": 0.3}, "p99 latency 30.0 ms is 3.00x"),
    ({"requests": 40, "error_rate": 0.0, "latency_p99_ms": 10.0, "mean_probability": 0.75}, "mean predicted probability moved by 0.450"),
    ({"requests": 3, "error_rate": 0.0, "latency_p99_ms": 10.0, "mean_probability": 0.3}, "only 3 requests reached the canary"),
    ({}, "only 0 requests reached the canary"),
])
def test_an_unhealthy_canary_is_named_with_the_reason(canary, expected):
    judgement = judge_canary({"stable": STABLE, "canary": canary}, CanaryThresholds())
    assert not judgement.healthy
    assert any(expected in reason for reason in judgement.reasons), judgement.reasons


def test_a_mean_shift_within_sampling_noise_does_not_roll_back_a_canary():
    # Bimodal scores (sd 0.4): 25 canary requests against 75 stable ones differ by 0.12 by chance.
    stable = {**STABLE, "requests": 75, "scored": 75, "mean_probability": 0.50, "probability_std": 0.4}
    canary = {"requests": 25, "error_rate": 0.0, "latency_p99_ms": 10.0, "scored": 25, "mean_probability": 0.62,
              "probability_std": 0.4}
    assert judge_canary({"stable": stable, "canary": canary}, CanaryThresholds()).healthy
    # The same shift over many requests is real.
    many = {**canary, "requests": 2_000, "scored": 2_000}
    judgement = judge_canary({"stable": {**stable, "scored": 6_000}, "canary": many}, CanaryThresholds())
    assert not judgement.healthy
    assert "mean predicted probability moved by 0.120" in judgement.reasons[0] and "standard errors" in judgement.reasons[0]


def test_tail_latency_is_p90_on_few_requests_and_small_differences_are_tolerated():
    stable = {**STABLE, "requests": 60, "latency_p90_ms": 4.0, "latency_p99_ms": 5.0}
    cold_start = {"requests": 30, "error_rate": 0.0, "mean_probability": 0.3, "latency_p90_ms": 5.0, "latency_p99_ms": 900.0}
    assert judge_canary({"stable": stable, "canary": cold_start}, CanaryThresholds()).healthy
    few_ms_slower = {**cold_start, "latency_p90_ms": 12.0}  # 3x, but 8 ms: below the tolerance
    assert judge_canary({"stable": stable, "canary": few_ms_slower}, CanaryThresholds()).healthy
    slow = {**cold_start, "latency_p90_ms": 40.0}
    judgement = judge_canary({"stable": stable, "canary": slow}, CanaryThresholds())
    assert judgement.reasons == ["p90 latency 40.0 ms is 10.00x the stable version's 4.0 ms (max 1.50x + 10 ms)"]


def test_thresholds_from_the_rollout_params_keep_the_defaults_for_what_is_not_given():
    thresholds = CanaryThresholds.from_mapping({"max_error_rate": 0.5, "min_canary_requests": 5.0, "shares": [50, 100]})
    assert thresholds == CanaryThresholds(max_error_rate=0.5, min_canary_requests=5)
    assert isinstance(thresholds.min_canary_requests, int) and isinstance(thresholds.latency_tolerance_ms, float)
    assert CanaryThresholds.from_mapping({}) == CanaryThresholds()


def test_a_judgements_summary_names_what_each_side_saw():
    canary = {"requests": 40, "error_rate": 0.025, "latency_p99_ms": 12.0, "mean_probability": 0.33}
    judgement = CanaryJudgement(True, [], canary, {"requests": 7})
    assert judgement.summary() == "canary 40 requests, error rate 0.025, p99 12.0 ms, mean score 0.330; stable 7 requests"
