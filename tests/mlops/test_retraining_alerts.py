"""'Still failing after retraining', raised once, and the alerts' counters. Real ML Metadata (SQLite).

The served models are recorded the way the push step records them (a Push execution with its
PushedModel, under the training run's PipelineRun context and trigger); no model is trained.
"""

from __future__ import annotations

import re
from pathlib import Path

from metadata.recorder import Trigger
from mlops import steps
from mlops.retraining import (ALERT_METRIC, ALERT_METRICS_FILE, NO_NEW_DATA, STILL_FAILING, alert_counts,
                              check_still_failing, write_alert_metrics)
from tests.mlops.test_pipeline import small_config

TRIGGER = {"checks": ["feature_drift", "prediction_drift"], "monitoring_run_id": "taxi_monitoring__h1",
           "drift_check_artifact_id": 7}


def record_push(config, run_id: str, trigger: Trigger, version: int) -> None:
    ctx = steps.open_run(config, run_id, trigger)
    with ctx.run.step("Push", {}, {"model_name": "taxi"}, use_cache=False) as record:
        record.output("pushed_model", "PushedModel", str(config.serving.model_base_dir / "taxi" / str(version)),
                      {"model_name": "taxi", "version": version, "fingerprint": f"model-{version}"})
        record.record(version=version)


def metrics_file(config) -> dict[str, int]:
    text = (Path(config.pipeline_root) / ALERT_METRICS_FILE).read_text()
    assert f"# TYPE {ALERT_METRIC} counter" in text
    return {decision: int(count) for decision, count in re.findall(rf'{ALERT_METRIC}{{decision="(\w+)"}} (\d+)', text)}


def test_a_retrained_model_failing_the_same_check_is_raised_once_naming_both_runs(tmp_path):
    config = small_config(tmp_path)
    record_push(config, "taxi_training__manual", Trigger("manual"), 1)
    record_push(config, "taxi_training__after_drift", Trigger("drift_check", TRIGGER), 2)

    def check(run_id: str, failed: list[str], version: int = 2):
        return check_still_failing(config, run_id, model_name="taxi", served_version=version, failed_checks=failed,
                                   drift_check=None)

    first = check("taxi_monitoring__h2", ["prediction_drift", "missing_values"])
    assert first is not None and first.first_time and first.checks == ["prediction_drift"]
    assert (first.retraining_run, first.triggered_by) == ("taxi_training__after_drift", "taxi_monitoring__h1")
    assert first.message.startswith("still failing after retraining (prediction_drift): taxi:2 was trained by "
                                    "taxi_training__after_drift, triggered by taxi_monitoring__h1")
    assert metrics_file(config) == {NO_NEW_DATA: 0, STILL_FAILING: 1}

    again = check("taxi_monitoring__h3", ["prediction_drift"])  # the next window, the same cause: quiet
    assert again is not None and not again.first_time and again.execution_id == first.execution_id
    assert "not raising it again" in again.message
    store = steps.open_run(config, "reader").run.store
    assert alert_counts(store) == {NO_NEW_DATA: 0, STILL_FAILING: 1}
    [execution] = [e for e in store.get_executions_by_type("RetrainingDecision")]
    # Recorded with the monitoring run that found it.
    assert "taxi_monitoring__h2" in {context.name for context in store.get_contexts_by_execution(execution.id)}

    assert check("taxi_monitoring__h4", ["missing_values"]) is None  # another check: not what the retraining answered
    assert check("taxi_monitoring__h4", ["prediction_drift"], version=1) is None  # a manually trained model
    assert check("taxi_monitoring__h4", ["prediction_drift"], version=9) is None  # no lineage
    assert check("taxi_monitoring__h4", ["feature_drift"]).first_time  # a new cause is raised once too
    write_alert_metrics(config, store)
    assert metrics_file(config) == {NO_NEW_DATA: 0, STILL_FAILING: 2}
