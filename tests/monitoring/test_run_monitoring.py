"""run_monitoring end to end: real pipeline, real model, real Parquet logs, real Beam/TFDV, real MLMD (SQLite).

The story (tests/monitoring/story.py): taxi:1 trained on 2013-01..06 trips; hour 1 serves trips of that
period (passes), hour 2 serves the 2016 trips (drift), a retraining triggered by that check pushes taxi:2.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pytest
from ml_metadata.proto import metadata_store_pb2

from core.config import MetadataConfig
from core.errors import DataError
from metadata.queries import inputs_of, outputs_of, producer
from metadata.recorder import properties_of
from metadata.store import connect
from monitoring import results
from monitoring.monitor import run_monitoring
from tests.monitoring import logs
from tests.monitoring.story import DAY, HOUR_1, HOUR_2, SHADOW_VERSION, story

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def sqlite_story(tmp_path_factory, taxi):
    root = tmp_path_factory.mktemp("story-sqlite")
    return story("sqlite", root, MetadataConfig(backend="sqlite", sqlite_path=root / "mlmd.sqlite"), taxi)


def test_trips_of_the_training_period_pass_every_check(sqlite_story):
    result = sqlite_story.undrifted
    assert result.passed, [(c.name, c.evidence) for c in result.failed]
    assert [c.name for c in result.checks] == list(results.CHECK_NAMES)
    assert result.model_version == 1 and result.rows == 400  # the 400 shadow copies are not served requests
    concept = result.check(results.CONCEPT_DRIFT)
    assert concept.evidence["labels"] == 400 and concept.value is not None  # judged, not skipped
    for name in (results.DATA_DRIFT, results.SKEW, results.PREDICTION_DRIFT, results.MISSING_VALUES):
        outcome = result.check(name)
        assert outcome.evidence.get("judged") is not False and outcome.value < outcome.threshold, name
    # The labels as a sequence against the evaluation's own calibration (its score histogram), slices by request.
    sequence = concept.evidence["sequential"]
    assert sequence["window_labels"] == 300 and sequence["window_z"] < sequence["window_z_limit"]
    assert sequence["slices"] and all(s["labels"] >= 20 for s in sequence["slices"])
    # The label-free estimate, judged on the 400 served requests, next to the 400 labels of the same hour.
    estimate = result.check(results.PERFORMANCE_ESTIMATE)
    assert estimate.evidence.get("judged") is not False and estimate.evidence["realized_labels"] == 400
    accuracy = estimate.evidence["metrics"]["accuracy"]
    assert abs(accuracy["estimated"] - accuracy["realized"]) < 0.05 and "evaluation.json" in estimate.evidence["calibration_source"]


def test_the_2016_trips_fail_naming_the_payment_mix_and_concept_drift_uses_the_rolling_label_window(sqlite_story):
    result = sqlite_story.drifted
    assert not result.passed
    failed = {c.name for c in result.failed}
    assert {results.DATA_DRIFT, results.SKEW} <= failed
    assert "payment_type" in result.check(results.DATA_DRIFT).evidence["drifted_features"]
    assert "payment_type" in result.check(results.SKEW).evidence["drifted_features"]
    # Labels arrive late and few: the concept check judges the last 7 days, hour 1's 400 labels plus these 100.
    concept = result.check(results.CONCEPT_DRIFT)
    assert concept.evidence["labels"] == 500 and concept.value is not None
    # Hour 1 was checked just before: its statistics are reused as the previous window.
    drift = result.check(results.DATA_DRIFT)
    assert "reused" in drift.evidence["previous_window"]
    previous = [label for label in drift.details_json()["baselines"] if label.startswith("previous window")]
    assert len(previous) == 1 and "payment_type" in drift.details_json()["baselines"][previous[0]]["drifted"]


def test_the_check_is_recorded_in_mlmd_with_the_log_window_model_and_training_statistics(sqlite_story):
    store = connect(sqlite_story.config.metadata)
    artifact = sqlite_story.drifted.artifact
    [recorded] = store.get_artifacts_by_id([artifact.id])
    props = properties_of(recorded)
    assert props["passed"] == 0 and props["model_name"] == "taxi" and props["model_version"] == 1
    assert set(props["failed_checks"]) == {c.name for c in sqlite_story.drifted.failed}
    assert props["window_start"] == HOUR_2[0].isoformat() and props["rows"] == 833
    estimate = sqlite_story.drifted.check(results.PERFORMANCE_ESTIMATE).evidence["metrics"]
    assert props["performance_estimate"]["estimated_accuracy"] == estimate["accuracy"]["estimated"]
    assert props["performance_estimate"]["realized_labels"] == 100  # hour 2's labels
    # Agreement with reviewers is recorded with the checks: the story's traffic is in full automation, never reviewed.
    assert props["agreement"]["1/full"]["reviewed"] == 0 and props["agreement"]["1/full"]["agreement"] is None
    assert props["automation_readiness"] == {"current": "full", "next": None, "action": "stay"}
    assert sqlite_story.drifted.agreement.group(1, "full").served >= 833  # the evidence window reaches back a week
    execution = producer(store, artifact.id)
    assert execution.last_known_state == metadata_store_pb2.Execution.COMPLETE
    [execution_type] = store.get_execution_types_by_id([execution.type_id])
    assert execution_type.name == "DriftCheck"
    inputs = inputs_of(store, execution.id)
    assert inputs["prediction_log"].uri == str(sqlite_story.log_dir)
    assert properties_of(inputs["prediction_log"])["window_end"] == HOUR_2[1].isoformat()
    pushed = sqlite_story.first.outcomes["push"].outputs["pushed_model"]
    assert inputs["model"].id == pushed.id
    validated = sqlite_story.first.outcomes["validate"].outputs["statistics"]
    assert inputs["baseline_statistics"].id == validated.id  # the served model's own training statistics
    assert outputs_of(store, execution.id)["result"].id == artifact.id
    run = [c for c in store.get_contexts_by_execution(execution.id) if c.name == "monitor-2"]
    assert run and properties_of(run[0])["trigger_kind"] == "schedule"


def test_result_json_and_report_are_written_next_to_each_other(sqlite_story):
    folder = Path(sqlite_story.drifted.artifact.uri)
    document = json.loads((folder / results.RESULT_FILE).read_text())  # strict JSON: NaN would fail here
    assert document["passed"] is False
    assert document["failed_checks"] == [c.name for c in sqlite_story.drifted.failed]
    assert document["checks"] == json.loads(json.dumps(sqlite_story.drifted.to_json()["checks"]))
    assert (folder / results.REPORT_FILE).is_file() and (folder / results.STATISTICS_FILE).is_file()
    assert sqlite_story.drifted.report_html == folder / results.REPORT_FILE
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")], "temp folders left behind"


def test_the_evaluation_report_and_the_monitoring_report_link_to_each_other(sqlite_story):
    evaluation = sqlite_story.first.outcomes["evaluate"].outputs["evaluation"]
    evaluation_report = Path(evaluation.uri) / "report.html"
    text = evaluation_report.read_text()
    for result in (sqlite_story.undrifted, sqlite_story.drifted):
        relative = os.path.relpath(result.report_html, evaluation_report.parent)
        assert f'href="{relative}"' in text
        assert (evaluation_report.parent / relative).resolve() == result.report_html.resolve()
    monitoring_report = sqlite_story.drifted.report_html.read_text()
    back = os.path.relpath(evaluation_report, sqlite_story.drifted.report_html.parent)
    assert f'href="{back}"' in monitoring_report and "Evaluation report of taxi:1" in monitoring_report


def test_the_retraining_run_records_the_drift_check_that_triggered_it(sqlite_story):
    store = connect(sqlite_story.config.metadata)
    run = store.get_context_by_type_and_name("PipelineRun", "retrain-2")
    props = properties_of(run)
    assert props["trigger_kind"] == "drift_check"
    assert props["trigger"]["drift_check_artifact_id"] == sqlite_story.drifted.artifact.id
    assert "data_drift" in props["trigger"]["checks"]
    assert "payment_type" in props["trigger"]["evidence"]["data_drift"]["drifted_features"]
    assert sqlite_story.retrain.outcomes["push"].results["version"] == 2


def test_a_window_without_logs_records_nothing(sqlite_story):
    store = connect(sqlite_story.config.metadata)
    before = len(store.get_artifacts_by_type("DriftCheckResult"))
    start = DAY - dt.timedelta(days=30)
    result = run_monitoring(sqlite_story.config, window_start=start, window_end=start + dt.timedelta(hours=1),
                            log_dir=sqlite_story.log_dir)
    assert result.rows == 0 and result.checks == [] and result.artifact is None and result.passed
    assert len(store.get_artifacts_by_type("DriftCheckResult")) == before


def test_requests_answered_by_a_model_without_lineage_are_a_clear_error(sqlite_story, taxi, tmp_path):
    log_dir = tmp_path / "logs"
    rows = taxi[taxi["year"] == 2013].iloc[:16]
    logs.write_requests(log_dir, rows, [0.5] * 16, *HOUR_1, model_version=7)
    with pytest.raises(DataError, match=r"taxi:7 served the window, but no pushed model taxi:7"):
        run_monitoring(sqlite_story.config, window_start=HOUR_1[0], window_end=HOUR_1[1], log_dir=log_dir)
    with pytest.raises(DataError, match="is not after"):
        run_monitoring(sqlite_story.config, window_start=HOUR_1[1], window_end=HOUR_1[0], log_dir=log_dir)


def test_shadow_copies_never_reach_the_checks(sqlite_story):
    predictions = sqlite_story.undrifted.check(results.PREDICTION_DRIFT)
    # The shadow candidate answered 1 - p: had it counted, the mean would sit near 0.5 and drift would fire.
    assert predictions.passed and predictions.evidence["rows"] == 400
    assert str(SHADOW_VERSION) not in json.dumps(sqlite_story.undrifted.check(results.NULL_OUTPUTS).evidence)


def test_mlops_monitor_check_prints_the_verdict_and_exits_1_on_drift(sqlite_story, capsys):
    from mlops.cli import main

    code = main(["--config", str(sqlite_story.config_file), "monitor", "check", "--start", HOUR_2[0].isoformat(),
                 "--end", HOUR_2[1].isoformat(), "--log-dir", str(sqlite_story.log_dir), "--run-id", "monitor-cli"])
    out = capsys.readouterr().out
    assert code == 1
    assert "data_drift" in out and "FAILED" in out and "payment_type" in out
    assert "report: " in out and "recorded: DriftCheckResult" in out


def test_a_sudden_change_of_labels_in_one_hour_fails_though_days_of_calm_labels_pool_with_it(sqlite_story, taxi, tmp_path):
    """The issue's scenario through real logs and feedback: 2,400 calm labelled requests, then one hour of 400
    whose ground truth changed for the card trips (card riders stop tipping big: a new in-car tip screen, say)
    while the inputs look like training data. The pooled metrics barely move; the sequence does."""
    from tests.monitoring.story import training_period_trips

    log_dir = tmp_path / "logs"
    model_v1 = sqlite_story.config.serving.model_base_dir / sqlite_story.config.serving.model_name / "1"
    period = training_period_trips(taxi)
    start = DAY + dt.timedelta(days=2)
    calm = period.sample(2400, replace=True, random_state=31).reset_index(drop=True)
    calm_ids = logs.write_requests(log_dir, calm, logs.score(model_v1, calm), start, start + dt.timedelta(hours=6), seed=31)
    logs.write_feedback(log_dir, calm, calm_ids, logs.big_tipper(calm).astype(int), start + dt.timedelta(hours=6))
    hour = (start + dt.timedelta(hours=6), start + dt.timedelta(hours=7))
    changed = period.sample(400, random_state=32).reset_index(drop=True)
    truth = (logs.big_tipper(changed) & (changed["payment_type"] != "Credit Card").to_numpy()).astype(int)
    changed_ids = logs.write_requests(log_dir, changed, logs.score(model_v1, changed), *hour, seed=32)
    logs.write_feedback(log_dir, changed, changed_ids, truth, hour[1] - dt.timedelta(minutes=1))

    result = run_monitoring(sqlite_story.config, window_start=hour[0], window_end=hour[1], log_dir=log_dir,
                            run_id="monitor-sudden")
    concept = result.check(results.CONCEPT_DRIFT)
    assert not concept.passed and concept.evidence["labels"] == 2800
    assert concept.evidence["metrics_failed"] == []  # pooled with 2,400 calm labels, the change hides
    assert concept.evidence["detectors_failed"]
    sequence = concept.evidence["sequential"]
    assert sequence["change_began"] >= hour[0].isoformat()[:13]  # dated to the changed hour
    assert (sequence["slices"][0]["feature"], sequence["slices"][0]["value"]) == ("payment_type", "Credit Card")
    # The inputs look like training data: no data drift, and the label-free estimate cannot see it either.
    assert result.check(results.DATA_DRIFT).passed
    estimate = result.check(results.PERFORMANCE_ESTIMATE)
    accuracy = estimate.evidence["metrics"]["accuracy"]
    assert estimate.passed and accuracy["realized"] < accuracy["estimated"] - 0.05


@pytest.mark.parametrize("hour", [HOUR_1, HOUR_2], ids=["labelled_with_shadows", "drifted_with_previous_window"])
def test_streaming_the_window_gives_the_outcomes_of_reading_it_into_pandas(sqlite_story, hour, monkeypatch):
    """run_monitoring on the same logs twice: as it runs (streamed counts and probabilities), and with the window
    read into a pandas frame of every logged column, as it did before monitoring/served_values.py's ServedWindow."""
    from monitoring.monitor import Monitor
    from monitoring.results import as_strict_json
    from monitoring.served_values import ServedWindow
    from serving.prediction_log import read_prediction_logs

    def run(run_id: str) -> dict:
        result = run_monitoring(sqlite_story.config, window_start=hour[0], window_end=hour[1],
                                log_dir=sqlite_story.log_dir, run_id=run_id)
        document = json.loads((Path(result.artifact.uri) / results.RESULT_FILE).read_text(encoding="utf-8"))
        checks = {c.name: json.dumps(as_strict_json({**c.to_json(), "details": c.details_json()}), sort_keys=True)
                  for c in result.checks}
        kept = {key: document[key] for key in ("rows", "model_version", "passed", "failed_checks", "agreement",
                                               "automation_readiness", "window_summary") if key in document}
        return {"checks": checks, "document": json.dumps(kept, sort_keys=True)}

    streamed = run(f"compare-streamed-{hour[0]:%H}")

    def frame_window(self, start, end):
        return ServedWindow.of_frame(read_prediction_logs(self.log_dir, start, end, model_name=self.model_name,
                                                          include_shadow=False))

    monkeypatch.setattr(Monitor, "read_window", frame_window)
    from_frame = run(f"compare-frame-{hour[0]:%H}")
    assert streamed == from_frame
    assert set(streamed["checks"]) == set(results.CHECK_NAMES)
    drift = json.loads(streamed["checks"][results.DATA_DRIFT])
    if hour == HOUR_2:  # the previous window (hour 1) is a baseline, and the window drifted
        assert not drift["passed"] and len(drift["evidence"]["compared_with"]) == 2
    else:
        assert json.loads(streamed["checks"][results.CONCEPT_DRIFT])["evidence"]["labels"] == 400
