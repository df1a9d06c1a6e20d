"""The review DAG's task-side helpers and `make run`'s scripted reviewer, on the case text the DAG really shows."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from core.config import config_from_dict
from core.errors import DataError
from mlops import loop
from mlops.airflow import review_tasks
from monitoring import review_queue as rq


def case(payment_type: str | None, probability: float | None) -> rq.ReviewCase:
    return rq.ReviewCase(request_id="r-1", instance_index=0, logged_at="2026-11-23T10:00:00+00:00", model_name="taxi",
                         model_version=3, automation="partial", decision="refer_to_human", probability=probability,
                         features={"fare": 12.5, "payment_type": payment_type, "company": None}, reason=rq.REFERRED,
                         run_id="run", opened_at="2026-11-23T11:00:00+00:00")


@pytest.mark.parametrize("payment_type, answer", [("Credit Card", "big_tipper"), ("Cash", "not_big_tipper"),
                                                  (None, "not_big_tipper")])
def test_the_scripted_reviewer_reads_the_payment_type_from_the_case_text(payment_type, answer):
    assert loop.scripted_answer(rq.case_body(case(payment_type, 0.3))) == answer


def test_the_models_answer_is_read_from_the_probability_shown():
    assert loop.model_answer(rq.case_body(case("Cash", 0.73)), 0.5) == "big_tipper"
    assert loop.model_answer(rq.case_body(case("Cash", 0.21)), 0.5) == "not_big_tipper"
    assert loop.model_answer(rq.case_body(case("Cash", None)), 0.5) is None  # no number: no model answer to agree with


def test_the_review_window_is_the_params_or_the_last_lookback_hours():
    now = dt.datetime(2026, 11, 23, 12, tzinfo=dt.timezone.utc)
    start, end = review_tasks.review_window({}, 24.0, now)
    assert start == now - dt.timedelta(hours=24) and end > now
    explicit = review_tasks.review_window({"window_start": "2026-11-23T09:00:00Z", "window_end": "2026-11-23T10:00:00Z"}, 24.0)
    assert explicit == (dt.datetime(2026, 11, 23, 9, tzinfo=dt.timezone.utc), dt.datetime(2026, 11, 23, 10, tzinfo=dt.timezone.utc))
    with pytest.raises(DataError, match="give both window_start and window_end"):
        review_tasks.review_window({"window_start": "2026-11-23T09:00:00Z"}, 24.0)


def test_run_params_override_the_review_config_and_zero_keeps_it():
    config = config_from_dict({"review": {"max_open_cases": 7, "response_timeout_minutes": 30}}, Path("."))
    assert review_tasks._review_settings(config, {"max_open_cases": 0, "response_timeout_minutes": 0}) == config.review
    chosen = review_tasks._review_settings(config, {"max_open_cases": 3, "response_timeout_minutes": 1.5})
    assert (chosen.max_open_cases, chosen.response_timeout_minutes, chosen.sample_rate_shadow) == (3, 1.5, config.review.sample_rate_shadow)


def test_mlops_review_cases_lists_the_ledger_with_each_outcome(tmp_path, capsys):
    import json

    from mlops.cli import main

    config = tmp_path / "mlops.toml"
    config.write_text(f'pipeline_root = "{tmp_path / "pipeline"}"\n')
    ledger = rq.CaseLedger(rq.ledger_dir(tmp_path / "pipeline"))
    with ledger.editing() as cases:
        for index, (state, answer, who) in enumerate([(rq.ANSWERED, "big_tipper", "alice"), (rq.CANNOT_TELL_STATE, rq.CANNOT_TELL, "bob"),
                                                      (rq.UNANSWERED, None, None)]):
            entry = rq.ReviewCase(**{**case("Cash", 0.4).to_json(), "request_id": f"r-{index}", "state": state,
                                     "answer": answer, "answered_by": who})
            cases[entry.key] = entry

    assert main(["--config", str(config), "review", "cases"]) == 0
    out = capsys.readouterr().out
    assert "3 review cases (0 open, 1 answered, 1 cannot_tell, 1 unanswered)" in out
    assert "r-0#0" in out and "big_tipper by alice" in out and "cannot tell by bob" in out
    assert main(["--config", str(config), "review", "cases", "--state", "unanswered", "--json"]) == 0
    assert [c["request_id"] for c in json.loads(capsys.readouterr().out)] == ["r-2"]
