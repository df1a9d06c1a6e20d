"""Review runs in ML Metadata: a closed review run is a ReviewRun execution (its cases file, counts by
outcome, reviewers, the reviewed PushedModel as input); the lineage of a request shows every review of
it, "cannot tell", unanswered and still-open cases included; agreement counts the undecided cases from
the ledger, and says when there is none.

Real ML Metadata (SQLite), the real case ledger (monitoring.review_queue) over logs written as the
gateway writes them (tests/monitoring/reviews.py), and the close task of the taxi_review DAG; the
answers go to a real gateway's feedback endpoint.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

from core.config import ReviewConfig, config_from_dict
from metadata.lineage import find_pushed_model
from metadata.recorder import PipelineRun
from metadata.review import ledger_path, review_runs_of, reviews_of_request
from metadata.store import connect
from mlops.airflow.review_tasks import record_review_run
from mlops.cli import main
from monitoring import review_queue as rq
from monitoring.agreement import read_agreement
from tests.monitoring.reviews import scripted_traffic
from tests.serving.conftest import gateway_config_file, model_root, model_server, start_gw  # noqa: F401 - fixtures

START = dt.datetime(2026, 3, 2, 8, tzinfo=dt.timezone.utc)
END = START + dt.timedelta(hours=1)


def test_a_closed_review_run_is_in_lineage_with_every_outcome(start_gw, tmp_path, capsys):
    config_file = tmp_path / "mlops.toml"
    config_file.write_text('[metadata]\nsqlite_path = "mlmd.sqlite"\n')
    config = config_from_dict({"metadata": {"sqlite_path": str(tmp_path / "mlmd.sqlite")}}, root=tmp_path)
    store = connect(config.metadata)
    PipelineRun(store, "taxi", "push-1").register_artifact("PushedModel", str(tmp_path / "taxi" / "1"),
                                                           {"model_name": "taxi", "version": 1})
    log_dir = tmp_path / "served"
    traffic = scripted_traffic(log_dir, start=START, automation="shadow", model_version=1, agreeing=0, disagreeing=0,
                               disagree_every=1, unreviewed=5)
    ledger = rq.CaseLedger(rq.ledger_dir(config.pipeline_root))
    assert read_agreement(log_dir, "taxi", START, END, ledger.path).ledger is None  # no review ran yet: said so
    cases = rq.open_cases(ledger, log_dir, START, END, ReviewConfig(sample_rate_shadow=1.0), run_id="review-1",
                          now=END, max_cases=4)
    assert [c.request_id for c in cases] == [c.request_id for c in traffic[:4]]
    agree, disagree, undecided, silent = cases
    model = {case.key: rq.model_answer(case) for case in cases}
    answers = [rq.ReviewAnswer(agree.request_id, 0, model[agree.key], "rita", "2026-03-03T09:00:00+00:00"),
               rq.ReviewAnswer(disagree.request_id, 0, "big_tipper" if model[disagree.key] == "not_big_tipper"
                               else "not_big_tipper", "sam", "2026-03-03T09:05:00+00:00"),
               rq.ReviewAnswer(undecided.request_id, 0, rq.CANNOT_TELL, "rita", "2026-03-03T09:10:00+00:00")]
    gateway = start_gw()
    rq.close_cases(ledger, "review-1", answers, gateway.url)

    execution_id = record_review_run(config, ledger, "review-1", dag_id="taxi_review", airflow_run_id="manual__1")
    assert record_review_run(config, ledger, "review-1") == execution_id  # the same close again: one record
    [run] = review_runs_of(store, find_pushed_model(store, "taxi", 1))
    assert run["execution_id"] == execution_id and run["review_run"] == "review-1"
    assert {k: run[k] for k in ("cases", "answered", "agree", "disagree", "cannot_tell", "unanswered", "open")} == {
        "cases": 4, "answered": 2, "agree": 1, "disagree": 1, "cannot_tell": 1, "unanswered": 1, "open": 0}
    assert run["reviewers"]["rita"] | {"first": None} == {"answered": 1, "cannot_tell": 1, "first": None,
                                                          "last": "2026-03-03T09:10:00+00:00"}
    assert run["reviewers"]["sam"]["answered"] == 1 and run["model_versions"] == ["taxi:1"]
    snapshot = json.loads(open(run["cases_file"]).read())["cases"]
    assert snapshot[silent.key]["state"] == "unanswered" and snapshot[agree.key]["model_answer"] == model[agree.key]

    # A case opened by a later run and not closed yet: the ledger says it waits.
    [waiting] = rq.open_cases(ledger, log_dir, START, END, ReviewConfig(sample_rate_shadow=1.0), run_id="review-2",
                              now=END, max_cases=1)
    assert waiting.request_id == traffic[4].request_id
    [review] = reviews_of_request(store, waiting.request_id, ledger_path(config.pipeline_root))
    assert (review["state"], review["review_execution"]) == ("open", None)

    for request_id, shown in ((undecided.request_id, "cannot tell, said rita at 2026-03-03T09:10:00+00:00"),
                              (silent.request_id, "unanswered: nobody answered before the timeout"),
                              (disagree.request_id, "by sam at 2026-03-03T09:05:00+00:00")):
        assert main(["--config", str(config_file), "lineage", "request", request_id, "--log-dir", str(log_dir)]) == 0
        out = capsys.readouterr().out
        assert shown in out and f"[review-1, ReviewRun {execution_id}]" in out, out[:1500]
    assert main(["--config", str(config_file), "lineage", "request", waiting.request_id, "--log-dir", str(log_dir)]) == 0
    assert "open: waiting for a reviewer  [review-2, not recorded in ML Metadata yet" in capsys.readouterr().out
    assert main(["--config", str(config_file), "lineage", "model", "taxi:1"]) == 0
    out = capsys.readouterr().out
    assert f"review-1: 4 cases, 2 answered (1 agree, 1 disagree), 1 cannot tell, 1 unanswered  [ReviewRun {execution_id}]" in out
    assert "reviewers: rita (1 decided, 1 cannot tell, last 2026-03-03T09:10:00+00:00), sam (1 decided" in out

    # Agreement: the undecided cases come from the ledger (the feedback never carries them).
    agreement = read_agreement(log_dir, "taxi", START, END, ledger.path)
    group = agreement.group(1, "shadow")
    assert (group.cannot_tell, group.unanswered, agreement.ledger) == (1, 1, str(ledger.path))
    assert dataclasses.replace(group, cannot_tell=0, unanswered=0) == read_agreement(log_dir, "taxi", START, END).group(1, "shadow")
    assert read_agreement(log_dir, "taxi", START, END).ledger is None
