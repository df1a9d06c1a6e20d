"""The timeline across windows in the monitoring report: from ML Metadata, result files and the logs themselves.

The story (tests/monitoring/story.py) leaves two recorded windows of taxi:1: hour 1 (passed, every
request shadowed by a candidate answering 1 - p) and hour 2 (2016 trips: failed, and retrain-2 was
triggered by it). A later check of taxi:1 must draw both, mark the failure and the retraining, and
open in a real browser.
"""

from __future__ import annotations

import datetime as dt
import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from monitoring import served_values
from monitoring.timeline import build_timeline, log_summary, window_summary
from serving.prediction_log import REQUESTS_DIR, list_part_files, read_prediction_logs
from tests.monitoring import browser, logs
from tests.monitoring.models import RateModel
from tests.monitoring.story import HOUR_1, HOUR_2, story

START = dt.datetime(2026, 11, 20, 10, tzinfo=dt.timezone.utc)


def test_agreement_and_referrals_of_a_window_come_from_its_logs(split_2013_2014, thresholds, tmp_path):
    training, heldout = split_2013_2014
    stable = RateModel(training)
    rows = heldout.sample(400, random_state=9).reset_index(drop=True)
    p = stable.predict(rows)
    flipped = np.where(np.arange(len(rows)) < 100, 1 - p, p)  # the candidate disagrees on the first 100
    logs.write_requests(tmp_path, rows, p, START, START + dt.timedelta(hours=1), shadow_probabilities=flipped, shadow_version=2)
    requests = read_prediction_logs(tmp_path, START, START + dt.timedelta(hours=1))

    agreement, pairs, referrals = log_summary(requests, thresholds)

    assert pairs == 400
    assert agreement == pytest.approx(1 - np.mean((p[:100] >= 0.5) != (1 - p[:100] >= 0.5)) * 100 / 400)
    assert referrals == 0.0  # write_requests logs full automation: nothing referred
    referred = requests.assign(decision=np.where(requests["is_shadow"], requests["decision"], "refer_to_human"))
    assert log_summary(referred, thresholds)[2] == 1.0


def test_the_streamed_window_summary_equals_the_summary_of_the_window_read_into_pandas(split_2013_2014, taxi, thresholds,
                                                                                      tmp_path, monkeypatch):
    """Half the requests shadowed, some referred to a person, rows of another model and after the window."""
    training, heldout = split_2013_2014
    stable = RateModel(training)
    rows = heldout.sample(400, random_state=10).reset_index(drop=True)
    p = stable.predict(rows)
    end = START + dt.timedelta(hours=1)
    logs.write_requests(tmp_path, rows.iloc[:200], p[:200], START, end, shadow_probabilities=1 - p[:200], shadow_version=2)
    logs.write_requests(tmp_path, rows.iloc[200:], p[200:], START, end, seed=1)
    logs.write_requests_not_to_count(tmp_path, taxi, START, end)
    for path in list_part_files(tmp_path / REQUESTS_DIR):  # every third served instance referred to a person
        table = pq.read_table(path)
        refer = (np.arange(table.num_rows) % 3 == 0) & ~table["is_shadow"].to_numpy()
        decisions = np.where(refer, "refer_to_human", table["decision"].to_numpy())
        pq.write_table(table.set_column(table.schema.get_field_index("decision"), "decision", pa.array(decisions)), path)
    monkeypatch.setattr(served_values, "READ_BATCH_ROWS", 7)

    streamed = window_summary(tmp_path, START, end, "taxi", thresholds)

    agreement, pairs, referrals = log_summary(read_prediction_logs(tmp_path, START, end, model_name="taxi"), thresholds)
    assert streamed == {"agreement": agreement, "pairs": pairs, "referrals": referrals}
    assert pairs == 200 and agreement is not None and 0.2 < referrals < 0.5
    later = (START + dt.timedelta(hours=1), end + dt.timedelta(hours=1))  # the 80 later requests: none shadowed
    unshadowed = window_summary(tmp_path, *later, "taxi", thresholds)
    assert unshadowed["pairs"] == 0 and unshadowed["agreement"] is None
    assert unshadowed["referrals"] == log_summary(read_prediction_logs(tmp_path, *later, model_name="taxi"), thresholds)[2]


@pytest.fixture(scope="module")
def sqlite_story(tmp_path_factory, taxi):
    from core.config import MetadataConfig

    root = tmp_path_factory.mktemp("story-sqlite")
    return story("sqlite", root, MetadataConfig(backend="sqlite", sqlite_path=root / "mlmd.sqlite"), taxi)


@pytest.mark.slow
def test_a_later_check_draws_every_window_with_its_failure_and_the_retraining_it_triggered(sqlite_story, thresholds):
    from metadata.store import connect
    from monitoring.monitor import run_monitoring

    later = run_monitoring(sqlite_story.config, window_start=HOUR_2[0], window_end=HOUR_2[1],
                           log_dir=sqlite_story.log_dir, run_id="monitor-timeline", progress=lambda _: None)
    timeline = build_timeline(connect(sqlite_story.config.metadata), "taxi", 1, thresholds)

    by_artifact = {point.artifact_id: point for point in timeline.points}
    hour_1, hour_2 = by_artifact[sqlite_story.undrifted.artifact.id], by_artifact[sqlite_story.drifted.artifact.id]
    assert hour_1.window_start == HOUR_1[0].isoformat() and not hour_1.failed_checks and hour_1.retraining is None
    assert hour_1.pairs == 400 and hour_1.agreement < 0.05  # its shadow candidate answered 1 - p
    # Read from the window's logs once, when it was checked, and kept with its result (not read again).
    kept = json.loads((sqlite_story.undrifted.report_html.parent / "result.json").read_text())["window_summary"]
    assert (kept["pairs"], kept["agreement"], kept["referrals"]) == (400, hour_1.agreement, 0.0)
    assert hour_2.failed_checks == tuple(sqlite_story.drifted.to_json()["failed_checks"])
    assert hour_2.retraining == "triggered: retrain-2"
    assert hour_2.data_drift == pytest.approx(sqlite_story.drifted.check("data_drift").value, abs=1e-9)
    assert hour_2.data_drift > hour_2.data_drift_threshold and hour_1.data_drift < hour_1.data_drift_threshold
    assert None not in (hour_1.estimated_accuracy, hour_1.realized_accuracy, hour_1.estimated_auc, hour_1.realized_auc)

    html = later.report_html.read_text()
    section = re.search(r'<section id="timeline">(.*?)</section>', html, re.S).group(1)
    assert "triggered: retrain-2" in section and section.count("<tr") == len(timeline.points) + 1  # its own window (drawn before it was recorded) + header
    if browser.available():
        page = browser.load(later.report_html)
        assert page.console_errors == [] and page.script_errors == "" and page.network_requests == []
        assert page.images == page.decoded and page.images > 0


@pytest.mark.slow
def test_mlops_monitor_timeline_prints_every_window_and_writes_the_page(sqlite_story, tmp_path, capsys):
    from mlops.cli import main

    page = tmp_path / "timeline.html"
    code = main(["--config", str(sqlite_story.config_file), "monitor", "timeline", "--version", "1", "--html", str(page)])

    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert lines[0].startswith(HOUR_1[1].isoformat()[:16]) and "agreement  0.000" in lines[0]
    [failed] = [line for line in lines if line.startswith(HOUR_2[1].isoformat()[:16]) and "triggered: retrain-2" in line]
    assert "data_drift" in failed
    assert "triggered: retrain-2" in page.read_text()


def _document(end: dt.datetime, drift: float, failed: tuple[str, ...], estimated: float, realized: float | None) -> dict:
    """A window's result in result.json's shape (`MonitoringResult.to_json()`)."""
    accuracy = {"estimated": estimated, "realized": realized, "baseline": 0.886, "limit": 0.836}
    auc = {"estimated": estimated + 0.05, "realized": None if realized is None else realized + 0.05, "baseline": 0.94}
    return {"window_start": (end - dt.timedelta(hours=1)).isoformat(), "window_end": end.isoformat(), "rows": 400,
            "failed_checks": list(failed),
            "checks": [{"name": "data_drift", "passed": "data_drift" not in failed, "value": drift, "threshold": 0.1, "evidence": {}},
                       {"name": "performance_estimate", "passed": True, "value": estimated, "threshold": 0.836,
                        "evidence": {"metrics": {"accuracy": accuracy, "auc": auc}}}]}


@pytest.mark.skipif(not browser.available(), reason="Debian's chromium is not installed (make test installs it)")
def test_the_timeline_page_draws_the_failed_window_and_the_retraining(split_2013_2014, thresholds, tmp_path):
    from monitoring.report import render_timeline_page
    from monitoring.timeline import Timeline, window_point

    training, heldout = split_2013_2014
    stable = RateModel(training)
    points = []
    for hour, (drift, failed, retraining) in enumerate([(0.02, (), None), (0.03, (), None),
                                                        (0.31, ("data_drift",), "triggered: retrain-2"), (0.04, (), None)]):
        start = START + dt.timedelta(hours=hour)
        rows = heldout.sample(200, random_state=hour).reset_index(drop=True)
        log_dir = tmp_path / f"logs-{hour}"
        logs.write_requests(log_dir, rows, stable.predict(rows), start, start + dt.timedelta(hours=1),
                            shadow_probabilities=stable.predict(rows), shadow_version=2)
        requests = read_prediction_logs(log_dir, start, start + dt.timedelta(hours=1))
        points.append(window_point(_document(start + dt.timedelta(hours=1), drift, failed, 0.88, 0.9), requests,
                                   thresholds, artifact_id=hour + 1, retraining=retraining))
    assert [p.agreement for p in points] == [1.0] * 4 and [p.pairs for p in points] == [200] * 4
    assert (points[0].estimated_auc, points[0].realized_auc) == (pytest.approx(0.93), pytest.approx(0.95))
    page = tmp_path / "timeline.html"
    page.write_text(render_timeline_page(Timeline(tuple(points), 0.1, 0.836, 0.85), "taxi:1: monitoring timeline"))

    loaded = browser.load(page)
    assert (loaded.images, loaded.decoded) == (1, 1) and loaded.script_errors == "" and not loaded.network_requests
    assert "triggered: retrain-2" in loaded.dom and loaded.dom.count('class="fail"') == 1
    rgb = browser.screenshot(page, tmp_path / "timeline.png", size=(1000, 1200))[..., :3]
    # The retraining line (#7b2cbf) is the only thing this saturated a purple: not the agreement line (#9467bd).
    purple = (rgb[..., 1] < 0.3) & (rgb[..., 2] > 0.6) & (rgb[..., 0] > 0.35) & (rgb[..., 0] < 0.65)
    assert purple.sum() > 300  # it crosses the four panels
