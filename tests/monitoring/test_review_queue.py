"""The review queue on real request logs: who is picked (per degree), the bounds, no duplicates,
and answers written back through a real gateway's feedback endpoint.

Logs are written by the gateway's own writer (`serving.log_writer`) from real trips, or by a real
gateway serving a tiny real model in `partial` automation.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest

from core.config import ReviewConfig
from monitoring import review_queue as rq
from serving import log_writer
from serving.gateway.config import ModelPolicy
from serving.prediction_log import Feedback, LoggedRequest, read_feedback, read_prediction_logs
from tests.serving.conftest import gateway_config_file, http, model_root, model_server, reference, start_gw  # noqa: F401
from tests.serving.gateway.helpers import MODEL, STABLE_VERSION, instances, predict, real_trips
from transforms.features import SERVING_COLUMNS

T0 = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.timezone.utc)
WINDOW = (T0 - dt.timedelta(hours=1), T0 + dt.timedelta(hours=1))
RATES = ReviewConfig(sample_rate_shadow=0.3, sample_rate_assist=0.0, audit_rate_full=0.2, max_open_cases=1000)


def logged(request_id: str, seconds: int, automation: str, decisions: list[str], trips: list, *, probability: float = 0.4) -> LoggedRequest:
    columns = {name: [trip.to_instance(missing="null")[name] for trip in trips] for name in SERVING_COLUMNS}
    return LoggedRequest(
        request_id=request_id, timestamp_us=int((T0 + dt.timedelta(seconds=seconds)).timestamp() * 1_000_000),
        model_name=MODEL, model_version=STABLE_VERSION, label="stable", policy="blue_green", automation=automation,
        features=columns, probabilities=[probability] * len(trips), classes=[0] * len(trips), decisions=decisions,
        latency_ms=3.0, status_code=200, is_shadow=False)


def write_logs(log_dir: Path, requests: list[LoggedRequest], feedback: list[Feedback] = ()) -> None:
    """Through the gateway's writer (journal, then Parquet), closed so every row is in its part file."""
    writer = log_writer.open_request_log(log_dir, flush_seconds=0.2)
    for entry in requests:
        writer.put(entry)
    writer.close()
    if feedback:
        writer = log_writer.open_feedback_log(log_dir, flush_seconds=0.2)
        for entry in feedback:
            writer.put(entry)
        writer.close()


@pytest.fixture(scope="module")
def degrees_log(tmp_path_factory) -> Path:
    """400 requests of 1 trip in each degree (full: confident; partial: every 4th referred), one a second,
    plus a shadow copy that must never be picked."""
    log_dir = tmp_path_factory.mktemp("review_logs") / "logs"
    trip = real_trips(1)
    entries = []
    for degree_index, degree in enumerate(("shadow", "assist", "partial", "full")):
        for n in range(400):
            decision = {"shadow": "none", "assist": "not_big_tipper", "full": "big_tipper",
                        "partial": "refer_to_human" if n % 4 == 0 else "not_big_tipper"}[degree]
            entries.append(logged(f"{degree}-{n:04d}", degree_index * 400 + n - 1800, degree, [decision], trip))
    copy = logged("shadow-copy", 0, "partial", ["refer_to_human"], trip)._replace(is_shadow=True)
    write_logs(log_dir, [*entries, copy])
    return log_dir


def select(log_dir: Path, settings: ReviewConfig = RATES, known=None, **kwargs) -> list[rq.ReviewCase]:
    return rq.select_cases(log_dir, *WINDOW, known or {}, settings, run_id="run-1", now=T0, **kwargs)


def test_every_referral_is_picked_and_each_degree_is_sampled_at_its_own_rate(degrees_log):
    cases = select(degrees_log)
    by_degree = {degree: [c for c in cases if c.automation == degree] for degree in ("shadow", "assist", "partial", "full")}

    assert {c.request_id for c in by_degree["partial"]} == {f"partial-{n:04d}" for n in range(0, 400, 4)}
    assert {c.reason for c in by_degree["partial"]} == {rq.REFERRED}
    assert by_degree["assist"] == []  # its rate is 0
    assert 0.22 * 400 < len(by_degree["shadow"]) < 0.38 * 400 and {c.reason for c in by_degree["shadow"]} == {rq.SAMPLE}
    assert 0.13 * 400 < len(by_degree["full"]) < 0.27 * 400 and {c.reason for c in by_degree["full"]} == {rq.AUDIT}
    assert "shadow-copy" not in {c.request_id for c in cases}  # the candidate's copy was never shown to anyone


def test_sampling_is_fixed_by_the_request_id_so_a_rerun_picks_the_same_cases(degrees_log):
    first, again = select(degrees_log), select(degrees_log)
    assert [c.key for c in first] == [c.key for c in again]
    assert all(rq.sample_position(c.request_id, 0) < RATES.sample_rate_shadow for c in first if c.automation == "shadow")
    # A higher rate keeps every case of the lower one (a superset, not a new draw).
    more = select(degrees_log, dataclasses.replace(RATES, sample_rate_shadow=0.6))
    assert {c.key for c in first if c.automation == "shadow"} < {c.key for c in more if c.automation == "shadow"}


def test_a_case_shows_the_trip_the_probability_the_version_and_the_degree(degrees_log):
    case = next(c for c in select(degrees_log) if c.automation == "partial")
    trip = real_trips(1)[0].to_instance(missing="null")

    assert case.features == {name: trip[name] for name in SERVING_COLUMNS}
    assert (case.model_version, case.probability, case.decision) == (STABLE_VERSION, 0.4, "refer_to_human")
    body = rq.case_body(case)
    for words in (f"version {STABLE_VERSION}", "**0.400**", "`partial`", "`refer_to_human`", case.request_id,
                  "| fare |", "cannot tell"):
        assert words in body, words
    assert case.request_id in rq.case_subject(case) and "partial" in rq.case_subject(case)


def test_at_most_n_cases_oldest_first(degrees_log):
    everything = select(degrees_log)
    bounded = select(degrees_log, dataclasses.replace(RATES, max_open_cases=7))
    assert [c.key for c in bounded] == [c.key for c in everything[:7]]
    assert [c.logged_at for c in bounded] == sorted(c.logged_at for c in bounded)
    assert len(select(degrees_log, max_cases=3)) == 3  # a run's own bound (the DAG param) wins


def test_requests_with_a_human_decision_are_not_picked(tmp_path):
    trips = real_trips(3)
    log_dir = tmp_path / "logs"
    stamp = int(T0.timestamp() * 1_000_000)
    write_logs(log_dir, [logged("r1", 0, "partial", ["refer_to_human"] * 3, trips)],
               [Feedback("r1", 1, stamp + 5_000_000, None, "big_tipper", "desk"),
                Feedback("r1", 2, stamp + 5_000_000, 1, None, "labels")])  # ground truth alone does not count

    assert [c.instance_index for c in select(log_dir)] == [0, 2]


def test_a_run_opens_its_cases_once_and_the_next_run_skips_them(degrees_log, tmp_path):
    ledger = rq.CaseLedger(tmp_path / "review")
    settings = dataclasses.replace(RATES, max_open_cases=10)
    first = rq.open_cases(ledger, degrees_log, *WINDOW, settings, run_id="run-1", now=T0)
    again = rq.open_cases(ledger, degrees_log, *WINDOW, settings, run_id="run-1", now=T0 + dt.timedelta(minutes=5))
    assert [c.key for c in again] == [c.key for c in first] and len(first) == 10
    assert len(ledger.read()) == 10  # re-running the run created no second case

    second = rq.open_cases(ledger, degrees_log, *WINDOW, settings, run_id="run-2", now=T0)
    assert len(second) == 10 and not {c.key for c in second} & {c.key for c in first}
    assert [c.key for c in second] == [c.key for c in select(degrees_log)[10:20]]  # the next oldest
    assert {c.state for c in ledger.read().values()} == {rq.OPEN}


def test_config_rejects_rates_outside_zero_one_and_an_empty_queue():
    from core.config import ConfigError, config_from_dict

    assert config_from_dict({"review": {"max_open_cases": 5}}, Path(".")).review.max_open_cases == 5
    for bad, words in (({"sample_rate_shadow": 1.5}, "review.sample_rate_shadow must be a share"),
                       ({"max_open_cases": 0}, "review.max_open_cases must be >= 1"),
                       ({"response_timeout_minutes": 0}, "review.response_timeout_minutes must be > 0"),
                       ({"audit_rate": 0.1}, "[review] has unknown keys ['audit_rate']")):
        with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
            config_from_dict({"review": bad}, Path("."))


def test_answers_reach_the_gateways_feedback_log_and_the_ledger_keeps_every_outcome(start_gw, http, reference, tmp_path):
    trips = real_trips(40)
    probabilities = reference(STABLE_VERSION, trips)
    band = (sorted(probabilities)[10], sorted(probabilities)[30])
    gateway = start_gw(models={MODEL: ModelPolicy(automation="partial", band=band)})
    for trip in trips:
        assert predict(http, gateway, {"instances": instances([trip])}).status_code == 200
    gateway.flush_logs()
    log_dir = tmp_path / "logs"
    now = dt.datetime.now(dt.timezone.utc)
    window = (now - dt.timedelta(hours=1), now + dt.timedelta(hours=1))
    ledger = rq.CaseLedger(tmp_path / "review")
    settings = ReviewConfig(sample_rate_shadow=0, sample_rate_assist=0, audit_rate_full=0, max_open_cases=1000)

    cases = rq.open_cases(ledger, log_dir, *window, settings, run_id="run-1")
    referred = read_prediction_logs(log_dir).query("decision == 'refer_to_human'")
    assert sorted(c.request_id for c in cases) == sorted(referred["request_id"]) and len(cases) >= 15
    agree, disagree, unsure = cases[0], cases[1], cases[2]
    answers = [rq.ReviewAnswer(agree.request_id, 0, rq.model_answer(agree), "alice", now.isoformat()),
               rq.ReviewAnswer(disagree.request_id, 0, "big_tipper" if rq.model_answer(disagree) == "not_big_tipper" else "not_big_tipper",
                               "bob", now.isoformat()),
               rq.ReviewAnswer(unsure.request_id, 0, rq.CANNOT_TELL, "carol", now.isoformat())]
    summary = rq.close_cases(ledger, "run-1", answers, gateway.url)

    assert (summary.answered, summary.agree, summary.disagree, summary.cannot_tell, summary.unanswered,
            summary.written_back) == (2, 1, 1, 1, len(cases) - 3, 2)
    states = {c.request_id: c for c in ledger.read().values()}
    assert states[agree.request_id].state == rq.ANSWERED and states[agree.request_id].answered_by == "alice"
    assert states[unsure.request_id].state == rq.CANNOT_TELL_STATE and not states[unsure.request_id].written_back
    assert {c.state for c in states.values()} == {rq.ANSWERED, rq.CANNOT_TELL_STATE, rq.UNANSWERED}
    gateway.flush_logs()
    feedback = read_feedback(log_dir)
    assert sorted(zip(feedback["request_id"], feedback["human_decision"], feedback["source"])) == sorted([
        (agree.request_id, answers[0].chosen, "review:alice"), (disagree.request_id, answers[1].chosen, "review:bob")])
    assert feedback["ground_truth"].isna().all()  # a person's decision is not ground truth

    # Closing again (a retried task) sends nothing twice and changes nothing.
    assert rq.close_cases(ledger, "run-1", answers, gateway.url) == summary
    gateway.flush_logs()
    assert len(read_feedback(log_dir)) == 2
    # The next run does not pick the reviewed requests again.
    assert rq.open_cases(ledger, log_dir, *window, settings, run_id="run-2") == []


def test_an_unreachable_gateway_keeps_the_answers_for_the_next_try(degrees_log, tmp_path):
    ledger = rq.CaseLedger(tmp_path / "review")
    case = rq.open_cases(ledger, degrees_log, *WINDOW, dataclasses.replace(RATES, max_open_cases=1), run_id="run-1", now=T0)[0]
    answer = rq.ReviewAnswer(case.request_id, 0, "big_tipper", "alice", T0.isoformat())
    with pytest.raises(rq.ReviewError, match="cannot reach the gateway"):
        rq.close_cases(ledger, "run-1", [answer], "http://127.0.0.1:9")
    kept = ledger.read()[case.key]
    assert (kept.state, kept.answer, kept.written_back) == (rq.ANSWERED, "big_tipper", False)
    with pytest.raises(rq.ReviewError, match="did not open"):
        rq.close_cases(ledger, "run-1", [rq.ReviewAnswer("someone-else", 0, "big_tipper", "x", "")], "http://127.0.0.1:9")


def test_one_answer_closes_its_case_at_once_and_the_others_stay_open_until_the_run_closes(degrees_log, tmp_path):
    ledger = rq.CaseLedger(tmp_path / "review")
    first, second = rq.open_cases(ledger, degrees_log, *WINDOW, dataclasses.replace(RATES, max_open_cases=2), run_id="run-1",
                                  now=T0)
    answer = rq.ReviewAnswer(first.request_id, first.instance_index, rq.CANNOT_TELL, "alice", T0.isoformat())
    early = rq.close_cases(ledger, "run-1", [answer], "http://127.0.0.1:9", close_unanswered=False)
    assert (early.cannot_tell, early.unanswered) == (1, 0)  # "cannot tell" is never sent: no gateway needed
    assert (ledger.read()[first.key].state, ledger.read()[second.key].state) == (rq.CANNOT_TELL_STATE, rq.OPEN)
    # The run's close: the answered case is kept as it is, the one nobody answered becomes unanswered.
    closed = rq.close_cases(ledger, "run-1", [answer], "http://127.0.0.1:9")
    assert (closed.cannot_tell, closed.unanswered) == (1, 1)
    assert ledger.read()[first.key].answered_by == "alice" and ledger.read()[second.key].state == rq.UNANSWERED


def test_write_backs_running_at_once_send_each_decision_once(start_gw, http, reference, tmp_path):
    """One run's cases are answered and written back by tasks running at the same time (Airflow maps
    one per case): each decision reaches the gateway's feedback log exactly once."""
    import threading

    trips = real_trips(40)
    probabilities = reference(STABLE_VERSION, trips)
    gateway = start_gw(models={MODEL: ModelPolicy(automation="partial", band=(min(probabilities), max(probabilities) + 0.01))})
    for trip in trips:
        assert predict(http, gateway, {"instances": instances([trip])}).status_code == 200
    gateway.flush_logs()
    log_dir = tmp_path / "logs"
    now = dt.datetime.now(dt.timezone.utc)
    ledger = rq.CaseLedger(tmp_path / "review")
    settings = ReviewConfig(sample_rate_shadow=0, sample_rate_assist=0, audit_rate_full=0, max_open_cases=1000)
    cases = rq.open_cases(ledger, log_dir, now - dt.timedelta(hours=1), now + dt.timedelta(hours=1), settings, run_id="run-1")
    assert len(cases) >= 12
    answers = [rq.ReviewAnswer(c.request_id, c.instance_index, "big_tipper", f"user{n}", now.isoformat())
               for n, c in enumerate(cases[:12])]
    start, errors = threading.Barrier(len(answers)), []

    def write_back(answer: rq.ReviewAnswer) -> None:
        start.wait()
        try:
            rq.close_cases(ledger, "run-1", [answer], gateway.url, close_unanswered=False)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=write_back, args=(answer,)) for answer in answers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    gateway.flush_logs()
    sent = sorted(zip(read_feedback(log_dir)["request_id"], read_feedback(log_dir)["source"]))
    assert sent == sorted((a.request_id, f"review:{a.user}") for a in answers)
    assert all(ledger.read()[rq.case_key(a.request_id, a.instance_index)].written_back for a in answers)
