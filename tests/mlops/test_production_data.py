"""A pipeline run that learns from labelled production traffic: counts in MLMD, labels from ground truth, lineage.

Real Beam, TFT, TF and MLMD; the request log is written with serving/prediction_log.py's writer
functions (tests/monitoring/logs.py), with shadow copies and requests that never got feedback.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import glob
import json

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft

from beam_jobs.example_codec import parse_serialized, split_pattern
from metadata.cli import format_model_audit
from metadata.queries import inputs_of, model_audit
from metadata.served_lineage import request_audit
from metadata.store import connect
from mlops.pipeline import run_pipeline
from mlops.production_source import production_cap
from tests.conftest import TAXI_CSV
from tests.mlops.test_pipeline import SMALL_WINDOW, small_config
from tests.monitoring.logs import big_tipper, taxi_frame, write_feedback, write_requests
from transforms import features
from transforms.feature_spec import raw_feature_spec
from transforms.preprocessing import LABEL

pytestmark = pytest.mark.slow

SERVED = 200  # requests' examples served in the production window (2016 trips: after the CSV window)
LABELLED = 150  # the first 150 got ground truth; the other 50 none


def _records(pattern: str) -> list[bytes]:
    return [record.numpy() for path in sorted(glob.glob(pattern))
            for record in tf.data.TFRecordDataset(path, compression_type="GZIP")]


@pytest.fixture(scope="module")
def production_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("production")
    with TAXI_CSV.open(newline="") as handle:
        later = [row for row in csv.DictReader(handle) if row[features.TIMESTAMP_KEY] >= "1451606400"][:SERVED]
    frame = taxi_frame(later)
    truth = big_tipper(frame).astype(int)
    now = dt.datetime.now(dt.timezone.utc)
    log_dir = root / "gateway-log"
    ids = write_requests(log_dir, frame, [0.4] * SERVED, now - dt.timedelta(days=2), now - dt.timedelta(hours=1),
                         shadow_probabilities=[0.6] * SERVED, shadow_version=2)
    write_feedback(log_dir, frame, ids, truth, now - dt.timedelta(minutes=30), count=LABELLED)
    config = small_config(root)
    # The gateway's log directory from the config, as the Airflow tasks and the retraining decision read it.
    config = config.replace(data=dataclasses.replace(config.data, production_logs_dir=str(log_dir)))
    lines: list[str] = []
    result = run_pipeline(config, start=SMALL_WINDOW[0], end=SMALL_WINDOW[1], progress=lines.append)
    return config, result, lines, truth, frame, ids


def test_the_ingest_execution_records_the_production_counts_policy_and_log_partitions(production_run):
    config, result, lines, truth, _, _ = production_run
    production = result.outcomes["ingest"].results["production"]
    assert (production["rows_read"], production["rows_shadow"], production["rows_error"], production["rows_duplicate"],
            production["rows_served"], production["rows_labelled"], production["rows_unlabelled"]) == (
        2 * SERVED, SERVED, 0, 0, SERVED, LABELLED, SERVED - LABELLED)
    assert production["label_policy"] == "ground_truth" and production["by_label_source"] == {"ground_truth": LABELLED}
    assert production["by_feedback_source"] == {"test": LABELLED}
    ingest_line = next(line for line in lines if " ingest " in line and "done" in line)
    assert f"{LABELLED} labelled production rows learned from (policy ground_truth" in ingest_line
    store = connect(config.metadata)
    inputs = inputs_of(store, result.outcomes["ingest"].execution_id)
    types = {store.get_artifact_types_by_id([a.type_id])[0].name for a in inputs.values()}
    assert {"RawData", "PredictionLog", "FeedbackLog"} <= types
    examples = result.outcomes["ingest"].outputs["examples"].properties
    assert examples["production_rows"] == LABELLED and examples["rows"] == examples["csv_rows"] + LABELLED


def test_the_transformed_label_of_a_production_row_is_its_ground_truth(production_run):
    config, result, _, truth, _, _ = production_run
    cleaned = result.outcomes["clean"].outputs["cleaned"].uri
    raw = [parse_serialized(record, features.EXAMPLE_COLUMNS)
           for split in ("train", "eval") for record in _records(split_pattern(cleaned, split))]
    production = [row for row in raw if row[features.OBSERVED_LABEL_KEY] is not None]
    # Clean judged production rows by the same rules as CSV rows (a few 2016 trips are out of range).
    rejected = [json.loads(line)["row"] for path in glob.glob(f"{result.outcomes['clean'].outputs['rejected'].uri}/*/*.jsonl")
                for line in open(path)]
    rejected = [row for row in rejected if row.get(features.OBSERVED_LABEL_KEY) is not None]
    assert len(production) + len(rejected) == LABELLED and len(production) > 0.9 * LABELLED
    assert all(row[features.TIPS_KEY] is None for row in production)
    labels = [row[features.OBSERVED_LABEL_KEY] for row in production + rejected]
    assert sorted(labels) == sorted(truth[:LABELLED].tolist())
    # What the trainer read: every written label = the CSV rows' tips rule + the production rows' ground truth.
    output = tft.TFTransformOutput(result.outcomes["transform"].outputs["transform_graph"].uri)
    transformed = result.outcomes["transform"].outputs["transformed"].uri
    written = [tf.io.parse_example(tf.constant(_records(split_pattern(transformed, split))),
                                   output.transformed_feature_spec())[LABEL].numpy()
               for split in ("train", "eval")]
    csv_rows = [row for row in raw if row[features.OBSERVED_LABEL_KEY] is None]
    # On float32 arrays, as preprocessing_fn computes the rule (trainer/evaluate.py does the same).
    csv_positives = int(features.is_big_tipper(np.asarray([r["tips"] for r in csv_rows], np.float32),
                                               np.asarray([r["fare"] for r in csv_rows], np.float32)).sum())
    production_positives = sum(row[features.OBSERVED_LABEL_KEY] for row in production)
    assert int(sum(labels.sum() for labels in written)) == csv_positives + production_positives
    # And row by row through the graph that ships with the model.
    serialized = [record for split in ("train", "eval") for record in _records(split_pattern(cleaned, split))
                  if parse_serialized(record, features.EXAMPLE_COLUMNS)[features.OBSERVED_LABEL_KEY] is not None]
    labels = output.transform_features_layer()(tf.io.parse_example(tf.constant(serialized), raw_feature_spec()))[LABEL]
    observed = [parse_serialized(record, features.EXAMPLE_COLUMNS)[features.OBSERVED_LABEL_KEY] for record in serialized]
    assert labels.numpy().tolist() == observed


def test_lineage_of_the_model_names_the_served_requests_and_whose_labels(production_run):
    config, result, _, _, _, _ = production_run
    version = result.outcomes["push"].results["version"]
    audit = model_audit(connect(config.metadata), "taxi", version)
    production = audit["data"]["production"]
    assert production["rows_labelled"] == LABELLED and production["feedback_files"]
    text = format_model_audit(audit)
    assert f"Production data  {LABELLED} labelled requests of {SERVED} served" in text
    assert "by test=150" in text


def test_lineage_of_a_request_says_whether_it_became_training_data_and_for_which_model(production_run):
    config, result, _, truth, _, ids = production_run
    version = result.outcomes["push"].results["version"]
    store = connect(config.metadata)
    log_dir = Path(config.data.production_logs_dir)
    labelled = request_audit(store, log_dir, ids[0])  # instances 0..7: all got ground truth
    [use] = labelled["trained"]
    assert use["model"] == f"taxi:{version}" and use["label_policy"] == "ground_truth"
    assert {index: value["label"] for index, value in use["instances"].items()} == dict(enumerate(truth[:8].tolist()))
    assert request_audit(store, log_dir, ids[-1])["trained"] == []  # instances 192..199: no feedback


def test_the_cap_keeps_production_at_most_the_configured_share():
    assert production_cap(0.5, 1000) == 1000  # half of the examples: as many as the reference rows
    assert production_cap(0.2, 1000) == 250  # 250 / 1250 = 20 %
    assert production_cap(0.0, 1000) == 0


def test_new_labels_make_a_retraining_worth_starting_and_none_is_refused(production_run):
    """The retraining decision sees the production data: same logs -> nothing new; a new label -> retrain."""
    from mlops.retraining import NO_NEW_DATA, RETRAIN, decide_retraining

    config, result, _, truth, frame, ids = production_run
    version = result.outcomes["push"].results["version"]

    def decide():
        return decide_retraining(config, "monitoring-run", model_name="taxi", served_version=version,
                                 failed_checks=["prediction_drift"], csv_path=config.data.csv_path,
                                 start=SMALL_WINDOW[0], end=SMALL_WINDOW[1], drift_check=None)

    unchanged = decide()
    assert unchanged.action == NO_NEW_DATA, unchanged.message
    log_dir = config.data.production_logs_dir
    write_feedback(Path(log_dir), frame, ids, truth, dt.datetime.now(dt.timezone.utc), count=SERVED)  # labels for the rest
    changed = decide()
    assert changed.action == RETRAIN and set(changed.differences) == {"production"}, changed.message


def test_the_evaluation_scores_the_held_out_recent_traffic_and_records_it(production_run):
    """The production rows of the eval split (by request id) are held out of training and judged on their own."""
    config, result, _, _, _, _ = production_run
    production = result.outcomes["ingest"].results["production"]
    evaluation = result.outcomes["evaluate"].outputs["evaluation"].properties["recent_traffic"]
    evaluation = json.loads(evaluation) if isinstance(evaluation, str) else evaluation
    assert evaluation["rows"] == production["split_counts"]["eval"] > 0
    assert evaluation["pattern"].endswith("Split-eval/data-served-*")
    assert set(evaluation["metrics"]) == {"candidate"}  # nothing was served before: no served model to compare
    assert evaluation["reason"] in result.outcomes["evaluate"].summary
    recorded = result.outcomes["evaluate"].results["recent_traffic"]
    recorded = json.loads(recorded) if isinstance(recorded, str) else recorded
    assert recorded["rows"] == evaluation["rows"] and recorded["passed"] is True
    held_out = {parse_serialized(record, features.EXAMPLE_COLUMNS)[features.OBSERVED_LABEL_KEY] is not None
                for record in _records(evaluation["pattern"])}
    assert held_out == {True}  # only production rows


def test_the_served_models_training_data_ends_with_its_production_window(production_run):
    """What taxi_monitoring's `production_since: served_model` resolves to: later requests are new."""
    from mlops.retraining import served_data_end

    config, result, _, _, _, _ = production_run
    window_end = result.outcomes["ingest"].results["production"]["window_end"]
    assert served_data_end(connect(config.metadata), "taxi", result.outcomes["push"].results["version"]) == window_end[:10]
    assert served_data_end(connect(config.metadata), "taxi", 99) is None
