"""The monitoring report in a real headless browser (Debian's Chromium): it loads without errors, every plot
decodes, nothing is fetched from the network, and the page shows what failed."""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
import pandas as pd
import pytest

from monitoring import checks
from monitoring.log_statistics import statistics_of_frame
from monitoring.report import render_report, write_report
from monitoring.performance_estimate import performance_estimate
from monitoring.results import DATA_DRIFT, Baseline, CalibrationMap, ConceptBaseline, MonitoringResult, PredictionBaseline
from core.config import AutomationConfig
from monitoring import review_queue as rq
from monitoring.agreement import read_agreement
from monitoring.readiness import assess_readiness
from tests.monitoring import browser
from tests.monitoring.reviews import AGREEING_SLICE, DISAGREEING_SLICE, scripted_traffic

pytestmark = pytest.mark.skipif(not browser.available(), reason="Debian's chromium is not installed (make test installs it)")

START = dt.datetime(2026, 11, 20, 10, tzinfo=dt.timezone.utc)


@pytest.fixture(scope="module")
def fare_drift_report(split_2013_2014, training_baseline, schema, thresholds, tmp_path_factory):
    """A report of a window whose fares were scaled by 1.5, from the real checks on real rows."""
    _, heldout = split_2013_2014
    window = heldout.sample(600, random_state=21)
    window = window.assign(fare=window["fare"] * 1.5)
    stats = statistics_of_frame(window)
    earlier = heldout.drop(window.index).sample(400, random_state=22)
    previous = Baseline("previous window", statistics_of_frame(earlier), earlier)  # its own buckets: its own plots
    labels = (window["tips"] > 0.2 * window["fare"]).to_numpy(dtype=int)
    probabilities = np.clip(0.15 + 0.6 * (window["payment_type"] == "Credit Card").to_numpy(dtype=float), 0, 1)
    edges = np.linspace(0, 1, 21)
    served = pd.DataFrame({"probability": probabilities, "model_version": 3})
    labelled = pd.DataFrame({"probability": probabilities, "ground_truth": pd.array(labels, dtype="Int64"),
                             "payment_type": window["payment_type"].to_numpy()})
    # The evaluation saw card trips tip big 70 % of the time; in this window they tip less (fares went up, tips did not).
    calibration = CalibrationMap.from_histogram(edges, np.r_[np.zeros(3), 15, np.zeros(11), 490, np.zeros(4)],
                                                np.r_[np.zeros(3), 85, np.zeros(11), 210, np.zeros(4)], "evaluation.json")
    concept_baseline = ConceptBaseline(0.9, 0.88, 0.02, "evaluation.json", calibration)
    outcomes = [
        checks.data_drift(stats, window, [training_baseline, previous], schema, thresholds, 1.0),
        checks.training_serving_skew(training_baseline, stats, window, schema, thresholds, 1.0),
        checks.schema_anomalies(stats, schema),
        checks.missing_values(stats, training_baseline.statistics, thresholds),
        checks.null_outputs(served, thresholds),
        checks.prediction_drift(probabilities, PredictionBaseline(tuple(edges), tuple(np.histogram(
            np.linspace(0.05, 0.6, 500), edges)[0].astype(float)), "evaluation.json"), thresholds),
        checks.concept_drift(labelled, concept_baseline, thresholds.concept),
        performance_estimate(probabilities, concept_baseline, thresholds.performance, 0.5, labelled),
    ]
    # A scripted reviewer of the partial traffic: agrees on Cash, changes every 4th Credit Card case.
    reviews = tmp_path_factory.mktemp("reviews")
    traffic = scripted_traffic(reviews, start=START, automation="partial", model_version=3, agreeing=200, disagreeing=200,
                               disagree_every=4, unreviewed=2)
    # The two unreviewed cases in the review ledger: one the reviewer could not tell, one nobody answered.
    ledger = rq.CaseLedger(reviews / "review")
    with ledger.editing() as cases:
        for case, state in zip(traffic[-2:], (rq.CANNOT_TELL_STATE, rq.UNANSWERED)):
            opened = rq.ReviewCase(case.request_id, 0, (START + dt.timedelta(seconds=1)).isoformat(), "taxi", 3, "partial",
                                   case.decision, case.probability, {}, rq.REFERRED, "review-1", START.isoformat(), state)
            cases[opened.key] = opened
    agreement = read_agreement(reviews, "taxi", START, START + dt.timedelta(hours=1), ledger.path)
    readiness = assess_readiness(agreement, 3, "partial", AutomationConfig())
    result = MonitoringResult(outcomes, START, START + dt.timedelta(hours=1), "taxi", 3, len(window), None, None,
                              agreement, readiness)
    folder = tmp_path_factory.mktemp("report")
    (folder / "evaluation.html").write_text("<!DOCTYPE html><html><body><p>evaluation</p></body></html>")
    history = [{"window_end": f"2026-11-{day}T11:00:00+00:00", "labels": 600, "auc": 0.9 - day / 200, "accuracy": 0.88,
                "ece": 0.02 + day / 500} for day in (17, 18, 19)]
    inputs = {"baselines": {"training_statistics": "/runs/train-1/validate/statistics"}, "versions": {"3": 600},
              "labels_in_concept_window": 600, "concept_window_days": 7}
    path = write_report(folder / "report.html", result, inputs, history, {"Evaluation report of taxi:3": "evaluation.html"},
                        run_id="monitor-7")
    return path, result


def test_the_report_loads_in_chromium_without_errors_and_every_plot_decodes(fare_drift_report):
    path, _ = fare_drift_report
    page = browser.load(path)
    assert page.console_errors == [] and page.script_errors == ""
    assert page.images >= 20 and page.decoded == page.images  # two plots per feature, missing, predictions, concept
    assert page.network_requests == []
    assert "Checks failed:" in page.dom and "data_drift" in page.dom


def test_the_report_shows_the_drifted_feature_first_with_its_score_and_threshold(fare_drift_report):
    path, result = fare_drift_report
    html = path.read_text()
    first_feature = re.search(r'<div class="feature[^"]*" id="feature-([a-z_]+)"', html)
    assert first_feature.group(1) == "fare"
    fare = re.search(r'<div class="feature drifted" id="feature-fare">(.*?)</div>', html, re.S).group(1)
    score = result.check(DATA_DRIFT).details_json()["baselines"]["training data"]["features"]["fare"]
    assert f"{score['value']:.4f}" in fare and f"{score['threshold']:.4f}" in fare and "over" in fare
    assert 'href="evaluation.html"' in html
    assert "<script" not in html and "http://" not in html and "https://" not in html  # self-contained, static


def test_a_screenshot_of_the_report_is_not_blank(fare_drift_report, tmp_path):
    path, _ = fare_drift_report
    pixels = browser.screenshot(path, tmp_path / "report.png")
    rgb = pixels[..., :3]
    assert rgb.shape[0] > 1000 and rgb.std() > 0.05
    orange = (np.abs(rgb[..., 0] - 0xE0 / 255) < 0.05) & (np.abs(rgb[..., 1] - 0x7B / 255) < 0.05) & (np.abs(rgb[..., 2] - 0x39 / 255) < 0.05)
    assert orange.sum() > 500  # the bars of "this window" were drawn


def test_links_that_could_run_script_are_refused(fare_drift_report):
    _, result = fare_drift_report
    with pytest.raises(ValueError, match="must be relative or http"):
        render_report(result, {}, [], {"x": "javascript:alert(1)"})


def test_the_report_shows_the_estimate_next_to_the_realized_metrics_and_the_slices_that_moved(fare_drift_report):
    path, result = fare_drift_report
    html = path.read_text()
    performance = re.search(r'<section id="performance">(.*?)</section>', html, re.S).group(1)
    metrics = result.check("performance_estimate").evidence["metrics"]
    for name in ("accuracy", "auc"):
        row = re.search(rf"<tr><td>{name}</td>(.*?)</tr>", performance).group(1)
        assert f"{metrics[name]['estimated']:.4f}" in row and f"{metrics[name]['realized']:.4f}" in row
        assert f"{metrics[name]['baseline']:.4f}" in row
    assert "cannot see concept drift" in performance
    concept = re.search(r'<section id="concept">(.*?)</section>', html, re.S).group(1)
    sequence = result.check("concept_drift").evidence["sequential"]
    assert "CUSUM" in concept and f"{sequence['window_z']:.2f}" in concept
    top = sequence["slices"][0]
    assert f"{top['feature']} = {top['value']}" in concept and f">{top['labels']}<" in concept


def test_the_agreement_section_shows_each_slice_and_the_verdict_a_reviewer_produced(fare_drift_report):
    path, result = fare_drift_report
    page = browser.load(path)  # what the browser shows, not the file
    section = re.search(r'<section id="agreement">(.*?)</section>', page.dom, re.S).group(1)
    rows = dict(re.findall(r"<tr><td>payment_type = ([^<]+)</td>(.*?)</tr>", section))
    assert set(rows) == {AGREEING_SLICE, DISAGREEING_SLICE}
    assert re.findall(r">([^<]*)</td>", rows[AGREEING_SLICE]) == ["200", "200", "1.000"]
    assert re.findall(r">([^<]*)</td>", rows[DISAGREEING_SLICE]) == ["200", "150", "0.750"]
    group = result.agreement.group(3, "partial")
    assert f"<td>3</td><td class=\"num\">partial</td><td class=\"num\">{group.served}</td><td class=\"num\">400</td>" \
           f"<td class=\"num\">0.875</td><td class=\"num\">{group.kappa:.3f}</td>" in section
    # "Cannot tell" and unanswered cases, from the review ledger (they never reach the feedback log).
    assert (group.served, group.cannot_tell, group.unanswered) == (402, 1, 1)
    assert re.search(r'<td class="num">1</td><td class="num">1</td></tr>', section)
    assert "counted from the review ledger" in section
    # 87.5 % is under the partial floor of 90 %: the page says the model moves down to assist.
    assert "move down to assist" in section and 'alt="agreement per slice"' in section
