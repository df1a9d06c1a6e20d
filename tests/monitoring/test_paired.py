"""Candidate vs stable on the same requests, from prediction logs written as the gateway writes them.

Real taxi rows; stable and candidate are real estimators (tests/monitoring/models.py) learnt from
different training rows, as a retrained model would be. A candidate that changed its mind about
one slice must be named by that slice; an honest retrain must not diverge.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from monitoring.paired import compare_logged, compare_paired, pairs_from_logs, write_paired_report
from serving.prediction_log import read_feedback, read_prediction_logs
from tests.monitoring import browser, logs
from tests.monitoring.models import RateModel, labels_of
from trainer.evaluate import HOUR_BUCKET_SLICE
from transforms.features import COMPANY_KEY, PAYMENT_TYPE_KEY

START = dt.datetime(2026, 11, 20, 10, tzinfo=dt.timezone.utc)
END = START + dt.timedelta(hours=1)


@pytest.fixture(scope="module")
def models(split_2013_2014):
    """(stable, retrained candidate, traffic): the candidate learnt from other training rows than stable."""
    training, heldout = split_2013_2014
    stable = RateModel(training.sample(frac=0.5, random_state=1))
    candidate = RateModel(training.sample(frac=0.5, random_state=2))
    return stable, candidate, heldout


def _shadowed(tmp_path, stable, candidate_probabilities, rows, seed=0):
    log_dir = tmp_path / "logs"
    ids = logs.write_requests(log_dir, rows, stable.predict(rows), START, END, model_version=1,
                              shadow_probabilities=candidate_probabilities, shadow_version=2, seed=seed)
    return log_dir, ids


def test_an_honest_retrain_agrees_with_stable_on_every_slice(models, thresholds, tmp_path):
    stable, candidate, traffic = models
    rows = traffic.sample(2000, random_state=3).reset_index(drop=True)
    log_dir, _ = _shadowed(tmp_path, stable, candidate.predict(rows), rows)

    comparison = compare_logged(log_dir, START, END, thresholds.paired)

    assert comparison.pairs == 2000 and comparison.judged
    assert (comparison.stable_versions, comparison.candidate_versions) == ((1,), (2,))
    assert not comparison.diverged, comparison.reasons
    assert comparison.agreement > 1 - thresholds.paired.max_disagreement
    # The differences are the two models' own, request by request.
    expected = candidate.predict(rows) - stable.predict(rows)
    assert comparison.mean_difference == pytest.approx(expected.mean(), abs=1e-9)
    assert sum(comparison.difference_histogram) == 2000
    assert {s.feature for s in comparison.slices} >= {PAYMENT_TYPE_KEY, COMPANY_KEY, HOUR_BUCKET_SLICE}


def test_a_candidate_that_changed_its_mind_about_one_slice_diverges_there(models, thresholds, tmp_path):
    stable, _, traffic = models
    rows = traffic.sample(2000, random_state=4).reset_index(drop=True)
    cash = (rows[PAYMENT_TYPE_KEY] == "Cash").to_numpy()
    # Same model, except that it now believes cash riders tip big.
    candidate = np.where(cash, 0.9, stable.predict(rows))
    log_dir, ids = _shadowed(tmp_path, stable, candidate, rows)
    labels = labels_of(rows)
    logs.write_feedback(log_dir, rows, ids, labels, END + dt.timedelta(hours=2))

    comparison = compare_logged(log_dir, START, END, thresholds.paired)

    assert comparison.diverged
    [cash_slice] = [s for s in comparison.diverged_slices if s.feature == PAYMENT_TYPE_KEY]
    assert cash_slice.value == "Cash" and cash_slice.pairs == int(cash.sum())
    assert cash_slice.agreement == pytest.approx(np.mean(stable.predict(rows)[cash] >= 0.5))
    assert any("payment_type=Cash" in reason for reason in comparison.reasons)
    assert all(s.agreement == 1.0 for s in comparison.slices if s.feature == PAYMENT_TYPE_KEY and s.value != "Cash")
    # Who was right when they disagreed: counted from the labels themselves.
    disagree = (stable.predict(rows) >= 0.5) != (candidate >= 0.5)
    assert comparison.labelled_disagreements == int(disagree.sum())
    stable_right = int((disagree & (labels == (stable.predict(rows) >= 0.5))).sum())
    assert (comparison.stable_right, comparison.candidate_right) == (stable_right, int(disagree.sum()) - stable_right)
    assert comparison.stable_right > comparison.candidate_right  # cash tips are not recorded: stable was right
    assert cash_slice.accuracy_delta < 0
    # Small enough for MLMD, and plain JSON.
    assert len(comparison.to_json(max_slices=3)["slices"]) == 3


def test_requests_without_a_shadow_copy_are_not_paired_and_too_few_pairs_are_not_judged(models, thresholds, tmp_path):
    stable, candidate, traffic = models
    rows = traffic.sample(400, random_state=5).reset_index(drop=True)
    log_dir = tmp_path / "logs"
    logs.write_requests(log_dir, rows, stable.predict(rows), START, END)  # canary-style: one answer per request
    assert compare_logged(log_dir, START, END, thresholds.paired).pairs == 0

    few = rows.iloc[:48].reset_index(drop=True)
    log_dir, _ = _shadowed(tmp_path / "few", stable, 1 - stable.predict(few), few)
    comparison = compare_logged(log_dir, START, END, thresholds.paired)
    assert comparison.pairs == 48 and comparison.agreement < 0.5
    assert not comparison.judged and not comparison.diverged
    assert "fewer than the 100 needed" in comparison.reasons[0]


def test_a_failed_shadow_copy_is_not_a_disagreement(models, thresholds, tmp_path):
    stable, candidate, traffic = models
    rows = traffic.sample(200, random_state=6).reset_index(drop=True)
    shadow = candidate.predict(rows).astype(object)
    shadow[:40] = np.nan  # the candidate gave no number for these
    log_dir, _ = _shadowed(tmp_path, stable, [float(p) for p in shadow], rows)
    requests = read_prediction_logs(log_dir, START, END)
    pairs = pairs_from_logs(requests, read_feedback(log_dir))
    assert len(pairs) == 160
    strict = dataclasses.replace(thresholds.paired, min_pairs=1)
    assert compare_paired(pairs, strict).pairs == 160


@pytest.mark.skipif(not browser.available(), reason="Debian's chromium is not installed (make test installs it)")
def test_the_paired_report_opens_in_a_browser_and_names_the_slice(models, thresholds, tmp_path):
    stable, _, traffic = models
    rows = traffic.sample(1000, random_state=7).reset_index(drop=True)
    candidate = np.where((rows[PAYMENT_TYPE_KEY] == "Cash").to_numpy(), 0.9, stable.predict(rows))
    log_dir, _ = _shadowed(tmp_path, stable, candidate, rows)
    page = write_paired_report(tmp_path / "paired.html", compare_logged(log_dir, START, END, thresholds.paired),
                               "taxi:2 vs taxi:1")

    loaded = browser.load(page)
    assert (loaded.images, loaded.decoded) == (1, 1)
    assert loaded.script_errors == "" and not loaded.console_errors and not loaded.network_requests
    assert "Diverged" in loaded.dom and "payment_type=Cash" in loaded.dom


def test_the_limits_hold_for_honest_retrains_and_catch_a_flipped_slice(split_2013_2014, thresholds):
    """The measurement behind [paired] in thresholds.toml, on 10 windows: retrains on other training rows
    never diverge; a candidate that flipped the evening's decisions always does, and the evening is named."""
    training, heldout = split_2013_2014
    calm, flipped = 0, []
    for seed in range(10):
        stable = RateModel(training.sample(frac=0.5, random_state=100 + seed))
        candidate = RateModel(training.sample(frac=0.5, random_state=200 + seed))
        window = heldout.sample(500, replace=True, random_state=seed).reset_index(drop=True)
        evening = (window["trip_start_hour"] >= 18).to_numpy()
        for probabilities, outcomes in ((candidate.predict(window), None),
                                        (np.where(evening, 1 - candidate.predict(window), candidate.predict(window)), flipped)):
            comparison = compare_paired(_pairs(window, stable.predict(window), probabilities), thresholds.paired)
            if outcomes is None:
                calm += comparison.diverged
            else:
                outcomes.append([(s.feature, s.value) for s in comparison.diverged_slices])
    assert calm == 0
    assert all((HOUR_BUCKET_SLICE, "evening") in slices for slices in flipped), flipped


def _pairs(window, stable, candidate):
    decide = lambda p: np.where(p >= 0.5, "big_tipper", "not_big_tipper")  # noqa: E731 - as the gateway decides
    return window.assign(stable_version=1, candidate_version=2, stable_probability=stable, candidate_probability=candidate,
                         stable_decision=decide(stable), candidate_decision=decide(candidate),
                         ground_truth=pd.array([pd.NA] * len(window), dtype="Int64"))


def test_the_command_prints_the_comparison_writes_its_page_and_fails_on_divergence(models, tmp_path, capsys):
    from mlops.cli import main

    stable, _, traffic = models
    rows = traffic.sample(800, random_state=8).reset_index(drop=True)
    candidate = np.where((rows[PAYMENT_TYPE_KEY] == "Cash").to_numpy(), 0.9, stable.predict(rows))
    log_dir, _ = _shadowed(tmp_path, stable, candidate, rows)
    (tmp_path / "mlops.toml").write_text(f'pipeline_root = "{tmp_path / "pipeline"}"\n')
    page = tmp_path / "paired.html"

    code = main(["--config", str(tmp_path / "mlops.toml"), "monitor", "paired", "--start", START.isoformat(),
                 "--end", END.isoformat(), "--log-dir", str(log_dir), "--html", str(page)])

    out = capsys.readouterr().out
    assert code == 1
    assert "800 paired requests (stable [1], candidate [2])" in out and "payment_type=Cash" in out and "DIVERGED" in out
    assert page.is_file() and "payment_type = Cash" in page.read_text()


# --- the canary judge: a real model server and gateway with live traffic, the rollout task itself ---

ROLLOUT = {"shares": [50, 100], "observe_seconds": 6, "min_canary_requests": 5, "max_p99_latency_ratio": 50.0,
           # Let the per-window judge pass whatever the mean does, so the paired comparison decides.
           "max_mean_probability_shift": 1.0}


@pytest.fixture(scope="module")
def serving_stack(tmp_path_factory):
    """Versions 1 (stable) and 2 (the opposite decisions) behind a gateway that logs to `root/prediction_logs`."""
    import os
    import subprocess
    import sys

    from core.config import load_config
    from metadata.recorder import PipelineRun, Trigger
    from metadata.store import connect
    from serving.push import push_model
    from tests.conftest import PROJECT_ROOT
    from tests.fixtures.tiny_model import export_tiny_model

    root = tmp_path_factory.mktemp("paired_rollout")
    config_path = root / "mlops.toml"
    config_path.write_text("\n".join([
        f'pipeline_root = "{root / "pipeline"}"', "[serving]", f'model_base_dir = "{root / "models"}"',
        f'model_config_file = "{root / "models.config"}"', "[metadata]", f'sqlite_path = "{root / "mlmd.sqlite"}"']) + "\n")
    config = load_config(config_path)
    run = PipelineRun(connect(config.metadata), config.pipeline_name, "push-tiny-models", Trigger("test"))
    for weight in (1.0, -1.0):
        pushed = push_model(export_tiny_model(root / f"export-{weight}", weight=weight), config.serving.model_base_dir,
                            config.serving.model_name, config_file=config.serving.model_config_file)
        run.register_artifact("PushedModel", str(pushed.path), {"model_name": "taxi", "version": pushed.version},
                              identity=("version",))
    # Fewer pairs judge here than in production: a few seconds of test traffic are ~100 requests.
    limits = root / "thresholds.toml"
    limits.write_text((PROJECT_ROOT / "monitoring" / "thresholds.toml").read_text().replace("min_pairs = 100", "min_pairs = 20"))
    token = "paired-test-admin-token-0123456789"
    env = {**os.environ, "MLOPS_GATEWAY_ADMIN_TOKEN": token}
    process = subprocess.Popen([sys.executable, "-m", "tests.dags.serving_stack", str(config_path)], cwd=PROJECT_ROOT,
                               env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        ready = process.stdout.readline()
        assert ready, "the serving stack did not start (see its stderr above)"
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("MLOPS_GATEWAY_ADMIN_TOKEN", token)
            patch.setenv("MLOPS_GATEWAY_URL", json.loads(ready)["gateway_url"])
            patch.setenv("MLOPS_MONITORING_THRESHOLDS", str(limits))
            yield root, config_path
    finally:
        process.stdin.close()
        process.wait(timeout=120)


def _deploys(config_path):
    from core.config import load_config
    from metadata.recorder import properties_of
    from metadata.store import connect

    store = connect(load_config(config_path).metadata)
    return [properties_of(e) for e in store.get_executions_by_type("Deploy")]


@pytest.mark.slow
def test_a_canary_whose_decisions_diverge_is_held_until_approved(serving_stack):
    from mlops.airflow.rollout_tasks import HELD_FOR_APPROVAL, run_rollout_task
    from mlops.airflow.tasks import EXIT_ROLLED_BACK, serving_labels
    from core.config import load_config

    root, config_path = serving_stack
    params = {**ROLLOUT, "version": 2, "log_dir": str(root / "prediction_logs")}
    call = dict(config_path=str(config_path), dag_id="taxi_rollout", run_type="manual")

    with pytest.raises(SystemExit) as held:
        run_rollout_task("canary", airflow_run_id="held", params_json=params, **call)
    assert held.value.code == EXIT_ROLLED_BACK
    assert serving_labels(load_config(config_path))["stable"] == 1
    record = _deploys(config_path)[-1]
    assert record["result_decision"] == HELD_FOR_APPROVAL
    assert any("approve_divergence" in reason for reason in record["result_reasons"])
    paired = record["result_details"]["paired"]
    assert paired["judged"] and paired["diverged"] and paired["pairs"] >= 20
    assert paired["paired_from"] == "canaried requests"  # the gateway asked stable too: no extra shadow window
    assert paired["agreement"] == 0.0  # version 2 decides the opposite of version 1 on every request
    assert (paired["stable_versions"], paired["candidate_versions"]) == ([1], [2])
    assert Path(paired["report"]).is_file()
    every_slice = json.loads((Path(paired["report"]).parent / "paired.json").read_text())["slices"]
    assert len(every_slice) >= len(paired["slices"]) and every_slice[0]["agreement"] == 0.0

    promoted = run_rollout_task("canary", airflow_run_id="approved", params_json={**params, "approve_divergence": True}, **call)
    assert promoted["decision"] == "promoted" and promoted["paired"]["diverged"]
    assert "promoted with approve_divergence" in promoted["reasons"][-1]
    assert serving_labels(load_config(config_path))["stable"] == 2
