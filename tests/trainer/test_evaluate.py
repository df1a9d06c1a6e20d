"""Evaluation: numpy metrics against hand-computed values, and evaluate_model on real tf.Examples
from the taxi data scored by real SavedModels, checked against an independent computation."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from beam_jobs.example_codec import row_to_example, split_dir
from core.config import EvaluationConfig
from core.errors import DataError
from tests.fixtures.tiny_model import export_tiny_model
from trainer import evaluate as ev
from trainer.report import rewrite_report
from transforms import features

ROWS = 2400


# --- Metrics on hand-computed examples ------------------------------------------------------------


def test_auc_counts_ties_as_one_half() -> None:
    labels = np.array([0, 0, 1, 1, 0, 1])
    scores = np.array([0.1, 0.4, 0.4, 0.8, 0.4, 0.2])
    # Positive/negative pairs: 0.4 beats 0.1 and ties twice (2), 0.8 beats all (3), 0.2 beats 0.1 (1): 6 of 9.
    assert ev.auc(labels, scores) == pytest.approx(6 / 9)
    assert ev.auc(labels, np.full(6, 0.3)) == pytest.approx(0.5)
    assert ev.auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert ev.auc(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.3, 0.4])) == 0.0


def test_auc_of_a_single_class_is_nan_not_an_error() -> None:
    assert math.isnan(ev.auc(np.array([0, 0, 0]), np.array([0.1, 0.5, 0.9])))
    assert math.isnan(ev.auc(np.array([1]), np.array([0.1])))
    assert ev.roc_curve(np.array([1, 1]), np.array([0.2, 0.3]))[0].size == 0


def test_auc_matches_brute_force_pair_counting_on_random_ties() -> None:
    generator = np.random.default_rng(7)
    labels = generator.random(400) < 0.3
    scores = generator.integers(0, 12, 400) / 11.0  # many ties
    wins = (scores[labels][:, None] > scores[~labels][None, :]).sum()
    ties = (scores[labels][:, None] == scores[~labels][None, :]).sum()
    assert ev.auc(labels, scores) == pytest.approx((wins + 0.5 * ties) / (labels.sum() * (~labels).sum()))


def test_log_loss_by_hand_and_clipped_at_certainty() -> None:
    assert ev.log_loss(np.array([1, 0]), np.array([0.8, 0.4])) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    assert ev.log_loss(np.array([1]), np.array([0.0])) == pytest.approx(-math.log(1e-15))
    # 1 - 1e-15 is not exact in float64, hence the looser comparison; the point is: finite.
    assert ev.log_loss(np.array([0]), np.array([1.0])) == pytest.approx(-math.log(1e-15), rel=1e-3)


def test_precision_recall_f1_at_the_threshold() -> None:
    labels = np.array([1, 1, 0, 0, 1])
    probabilities = np.array([0.9, 0.4, 0.6, 0.1, 0.5])  # 0.5 counts as positive at threshold 0.5
    metrics = ev.binary_metrics(labels, probabilities, threshold=0.5)
    # Predicted [1, 0, 1, 0, 1]: tp 2, fp 1, fn 1, tn 1.
    assert metrics["precision"] == pytest.approx(2 / 3)
    assert metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["f1"] == pytest.approx(2 / 3)
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert (metrics["count"], metrics["positive_rate"]) == (5.0, pytest.approx(3 / 5))
    nothing_predicted = ev.binary_metrics(labels, probabilities, threshold=0.95)
    assert (nothing_predicted["precision"], nothing_predicted["recall"], nothing_predicted["f1"]) == (0.0, 0.0, 0.0)


def test_roc_curve_points_by_hand() -> None:
    fpr, tpr = ev.roc_curve(np.array([1, 0, 1, 0]), np.array([0.9, 0.7, 0.7, 0.2]))
    assert fpr.tolist() == [0.0, 0.0, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 1.0, 1.0]


def test_single_class_slice_gets_nan_auc_and_other_metrics() -> None:
    slices = ev.slice_metrics(
        np.array([True, False, False, False]),
        np.array([0.8, 0.3, 0.6, 0.1]),
        {"payment_type": np.array(["Card", "Card", "Cash", "Cash"], dtype=object)},
        threshold=0.5,
    )
    assert slices["payment_type"]["Card"]["auc"] == 1.0
    assert math.isnan(slices["payment_type"]["Cash"]["auc"])
    assert slices["payment_type"]["Cash"]["accuracy"] == 0.5


def test_blessing_rules_and_reasons() -> None:
    config = EvaluationConfig(auc_floor=0.8, auc_tolerance=0.01)
    metrics = {"auc": 0.85, "positive_rate": 0.2, "count": 10.0}
    assert ev.blessing_decision(metrics, None, config) == (
        True, ["passed: candidate AUC 0.85000 >= auc_floor 0.80000", "no baseline model to compare with: only the AUC floor applies"])
    blessed, reasons = ev.blessing_decision(metrics, {"auc": 0.87}, config, baseline_label="v3")
    assert not blessed
    assert reasons[1] == "failed: candidate AUC 0.85000 < v3 AUC 0.87000 - auc_tolerance 0.01000 = 0.86000"
    assert ev.blessing_decision(metrics, {"auc": 0.855}, config)[0]
    blessed, reasons = ev.blessing_decision({**metrics, "auc": 0.79}, {"auc": 0.7}, config)
    assert not blessed and reasons[0] == "failed: candidate AUC 0.79000 < auc_floor 0.80000"
    blessed, reasons = ev.blessing_decision({**metrics, "auc": math.nan, "positive_rate": 0.0}, None, config)
    assert not blessed and "undefined" in reasons[0] and "single class" in reasons[0]


# --- evaluate_model on real examples and real SavedModels ---------------------------------------


@pytest.fixture(scope="module")
def eval_rows(taxi_rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    rows = []
    for raw in taxi_rows:
        row = {name: features.parse_value(features.FEATURES_BY_NAME[name], raw[name]) for name in features.RAW_COLUMNS}
        if all(row[name] is not None for name in (features.TIPS_KEY, features.FARE_KEY, "payment_type", "trip_start_hour")):
            rows.append(row)
        if len(rows) == ROWS:
            return rows
    raise AssertionError("not enough complete rows in the taxi data")


@pytest.fixture(scope="module")
def examples_dir(eval_rows: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("examples")
    target = split_dir(root, "eval")
    target.mkdir(parents=True)
    for shard in range(2):
        with tf.io.TFRecordWriter(str(target / f"data-{shard:05d}-of-00002.tfrecord.gz"), options="GZIP") as writer:
            for row in eval_rows[shard::2]:
                writer.write(row_to_example(row).SerializeToString())
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {name: export_tiny_model(root / name, weight=weight) for name, weight in (("good", 1.0), ("weaker", 0.1), ("inverted", -1.0))}


def _shard_order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return rows[0::2] + rows[1::2]  # how the two files list them


def _expected(model_dir: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """An independent oracle: the model's dense `serving_default` path and brute-force pair counting."""
    rows = _shard_order(rows)
    dtypes = {features.Kind.FLOAT: tf.float32, features.Kind.INT: tf.int64, features.Kind.STRING: tf.string}
    inputs = {
        f.name: tf.constant([features.missing_value(f.kind) if r[f.name] is None else r[f.name] for r in rows], dtype=dtypes[f.kind])
        for f in features.SERVING_FEATURES
    }
    probabilities = tf.saved_model.load(str(model_dir)).signatures["serving_default"](**inputs)["probability"].numpy().astype(np.float64)
    tips = np.array([r[features.TIPS_KEY] for r in rows], dtype=np.float32)
    fares = np.array([r[features.FARE_KEY] for r in rows], dtype=np.float32)
    labels = tips > np.float32(features.BIG_TIPPER_SHARE) * fares
    positive, negative = probabilities[labels], probabilities[~labels]
    pairs = (positive[:, None] > negative[None, :]).sum() + 0.5 * (positive[:, None] == negative[None, :]).sum()
    predicted = probabilities >= 0.5
    return {
        "auc": pairs / (positive.size * negative.size),
        "precision": (predicted & labels).sum() / predicted.sum(),
        "recall": (predicted & labels).sum() / labels.sum(),
        "positive_rate": labels.mean(),
        "labels": labels,
        "payment_types": np.array([r["payment_type"] for r in rows], dtype=object),
        "hour_buckets": np.array([features.hour_bucket(r["trip_start_hour"]) for r in rows], dtype=object),
    }


def test_evaluation_matches_an_independent_computation_and_writes_json_and_html(
    models: dict[str, Path], examples_dir: Path, eval_rows: list[dict[str, Any]], tmp_path: Path
) -> None:
    expected = _expected(models["good"], eval_rows)
    result = ev.evaluate_model(
        models["good"], examples_dir, tmp_path / "out", config=EvaluationConfig(auc_floor=0.5),
        related_links={"Drift report for v3": "../monitoring/v3/drift.html"},
    )
    assert result.metrics["count"] == ROWS
    assert result.metrics["auc"] == pytest.approx(expected["auc"], abs=1e-6)
    assert result.metrics["precision"] == pytest.approx(expected["precision"])
    assert result.metrics["recall"] == pytest.approx(expected["recall"])
    assert result.metrics["positive_rate"] == pytest.approx(expected["positive_rate"])
    assert result.blessed and result.baseline_metrics is None
    assert result.reasons[0] == f"passed: candidate AUC {result.metrics['auc']:.5f} >= auc_floor 0.50000"

    # Slices: every row in exactly one value, single-class values have an undefined AUC.
    for name, values in (("payment_type", expected["payment_types"]), ("hour_bucket", expected["hour_buckets"])):
        assert set(result.slices[name]) == set(values.tolist())
        for value, metrics in result.slices[name].items():
            members = expected["labels"][values == value]
            assert metrics["count"] == members.size
            assert math.isnan(metrics["auc"]) == (members.all() or not members.any())
    assert list(result.slices["hour_bucket"]) == [b for b in ("night", "morning", "afternoon", "evening") if b in result.slices["hour_bucket"]]
    single_class = [v for v, m in result.slices["payment_type"].items() if math.isnan(m["auc"])]
    assert single_class, "the taxi data has payment types without big tippers (e.g. Cash)"

    document = json.loads(result.evaluation_json.read_text())  # strict JSON: no NaN tokens
    assert document["slices"]["payment_type"][single_class[0]]["auc"] is None
    assert document["metrics"]["auc"] == result.metrics["auc"]
    loaded = ev.load_evaluation(tmp_path / "out")
    assert loaded.metrics == result.metrics and loaded.blessed and loaded.reasons == result.reasons
    assert math.isnan(loaded.slices["payment_type"][single_class[0]]["auc"])

    page = result.report_html.read_text()
    assert "<strong>BLESSED</strong>" in page
    assert f"{result.metrics['auc']:.4f}" in page
    assert result.reasons[0].replace(">", "&gt;") in page
    assert len(re.findall(r'src="data:image/png;base64,', page)) >= 5  # ROC, calibration, histogram, 2 slices
    assert not re.search(r'(src|href)="https?://', page), "the report must be self-contained"
    links = re.search(r'<section id="links">(.*?)</section>', page, re.S).group(1)
    assert '<a href="../monitoring/v3/drift.html">Drift report for v3</a>' in links


def test_not_blessed_below_the_auc_floor(models: dict[str, Path], examples_dir: Path, tmp_path: Path) -> None:
    result = ev.evaluate_model(models["inverted"], examples_dir, tmp_path / "out", config=EvaluationConfig(auc_floor=0.85))
    assert result.metrics["auc"] < 0.5
    assert not result.blessed
    assert result.reasons[0] == f"failed: candidate AUC {result.metrics['auc']:.5f} < auc_floor 0.85000"
    assert "<strong>NOT BLESSED</strong>" in result.report_html.read_text()
    assert json.loads(result.evaluation_json.read_text())["blessed"] is False


@pytest.mark.parametrize("tolerance", [0.0005, 0.05])
def test_baseline_scored_on_the_same_rows_and_tolerance_decides(
    models: dict[str, Path], examples_dir: Path, eval_rows: list[dict[str, Any]], tmp_path: Path, tolerance: float
) -> None:
    result = ev.evaluate_model(
        models["weaker"], examples_dir, tmp_path / "out", config=EvaluationConfig(auc_floor=0.5, auc_tolerance=tolerance),
        baseline_model_dir=models["good"], baseline_label="v1 (serving)",
    )
    assert result.baseline_metrics is not None
    assert result.baseline_metrics["auc"] == pytest.approx(_expected(models["good"], eval_rows)["auc"], abs=1e-6)
    assert result.baseline_metrics["count"] == result.metrics["count"] == ROWS
    gap = result.baseline_metrics["auc"] - result.metrics["auc"]
    assert 0.0005 < gap < 0.05, "the fixture models must differ by an AUC gap between the two tolerances"
    assert result.blessed == (tolerance == 0.05)
    limit = result.baseline_metrics["auc"] - tolerance
    verdict = "passed" if result.blessed else "failed"
    assert result.reasons[1] == (
        f"{verdict}: candidate AUC {result.metrics['auc']:.5f} {'>=' if result.blessed else '<'} "
        f"v1 (serving) AUC {result.baseline_metrics['auc']:.5f} - auc_tolerance {tolerance:.5f} = {limit:.5f}"
    )
    assert result.baseline_slices is not None and set(result.baseline_slices) == set(result.slices)
    page = result.report_html.read_text()
    assert "<th>v1 (serving)</th>" in page and f"{result.baseline_metrics['auc']:.4f}" in page


def test_report_can_be_rerendered_with_new_links(models: dict[str, Path], examples_dir: Path, tmp_path: Path) -> None:
    result = ev.evaluate_model(models["good"], examples_dir, tmp_path / "out", config=EvaluationConfig(auc_floor=0.5))
    assert "No related reports yet" in result.report_html.read_text()
    rewrite_report(result.evaluation_json, {"Skew <v2>": "https://grafana.example/d/skew?v=2&x=1"})
    page = result.report_html.read_text()
    assert '<a href="https://grafana.example/d/skew?v=2&amp;x=1">Skew &lt;v2&gt;</a>' in page
    with pytest.raises(ValueError, match="nothing that runs script"):
        rewrite_report(result.evaluation_json, {"bad": "javascript:alert(1)"})


# --- Bad input ---------------------------------------------------------------------------------


def test_no_examples_is_a_clear_error(models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no eval examples to evaluate: nothing matches .*Split-eval/data-\*\.tfrecord\.gz"):
        ev.evaluate_model(models["good"], tmp_path, tmp_path / "out", config=EvaluationConfig())
    assert not (tmp_path / "out").exists()


def test_corrupt_file_is_named(models: dict[str, Path], examples_dir: Path, tmp_path: Path) -> None:
    target = split_dir(tmp_path, "eval")
    target.mkdir(parents=True)
    good = next(split_dir(examples_dir, "eval").glob("*.gz")).read_bytes()
    (target / "data-00000-of-00001.tfrecord.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"data-00000-of-00001\.tfrecord\.gz: corrupt or truncated"):
        ev.evaluate_model(models["good"], tmp_path, tmp_path / "out", config=EvaluationConfig())


def test_example_without_the_label_source_is_named(models: dict[str, Path], eval_rows: list[dict[str, Any]], tmp_path: Path) -> None:
    target = split_dir(tmp_path, "eval")
    target.mkdir(parents=True)
    rows = [dict(r) for r in eval_rows[:5]]
    rows[3][features.TIPS_KEY] = None
    with tf.io.TFRecordWriter(str(target / "data-00000-of-00001.tfrecord.gz"), options="GZIP") as writer:
        for row in rows:
            writer.write(row_to_example(row).SerializeToString())
    with pytest.raises(DataError, match=r"data-00000-of-00001\.tfrecord\.gz: record 3 has no 'tips'"):
        ev.evaluate_model(models["good"], tmp_path, tmp_path / "out", config=EvaluationConfig())


def test_model_without_the_examples_signature_is_refused(examples_dir: Path, tmp_path: Path) -> None:
    module = tf.Module()
    module.predict = tf.function(lambda x: {"probability": x}, input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "dense_only"), signatures={"serving_default": module.predict})
    with pytest.raises(DataError, match=r"dense_only: the SavedModel has no 'serving_examples' signature \(it has \['serving_default'\]\)"):
        ev.evaluate_model(tmp_path / "dense_only", examples_dir, tmp_path / "out", config=EvaluationConfig())


def test_load_evaluation_reports_a_missing_or_broken_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="evaluation file not found"):
        ev.load_evaluation(tmp_path / "evaluation.json")
    (tmp_path / "evaluation.json").write_text('{"metrics": {}')
    with pytest.raises(DataError, match=r"not valid JSON at line 1"):
        ev.load_evaluation(tmp_path)


# --- Held-out recent traffic ------------------------------------------------------------------------


def _write_recent(root: Path, rows: list[dict[str, Any]], flip: bool) -> str:
    """Production rows as served_source writes them (the label observed, no tips), under data-served-*."""
    target = split_dir(root, "eval")
    target.mkdir(parents=True)
    with tf.io.TFRecordWriter(str(target / "data-served-00000.tfrecord.gz"), options="GZIP") as writer:
        for row in rows:
            truth = bool(features.is_big_tipper(np.float32(row[features.TIPS_KEY]), np.float32(row[features.FARE_KEY])))
            served = {**row, features.TIPS_KEY: None, features.OBSERVED_LABEL_KEY: int(truth != flip)}
            writer.write(row_to_example(served).SerializeToString())
    return str(target / "data-served-*")


def test_recent_traffic_is_scored_for_both_models_and_can_refuse_a_blessing_on_its_own(
    models: dict[str, Path], examples_dir: Path, eval_rows: list[dict[str, Any]], tmp_path: Path
) -> None:
    """The candidate beats the served (inverted) model on the eval split, but the recent traffic's labels
    flipped (concept drift), and there it does worse than the served model by more than the tolerance."""
    recent = _write_recent(tmp_path / "recent", eval_rows[:400], flip=True)
    result = ev.evaluate_model(
        models["good"], examples_dir, tmp_path / "out", config=EvaluationConfig(auc_floor=0.5, auc_tolerance=0.01),
        baseline_model_dir=models["inverted"], baseline_label="v1 (serving)", recent_traffic=recent)
    assert result.metrics["auc"] > result.baseline_metrics["auc"] and result.reasons[1].startswith("passed")
    document = json.loads(result.evaluation_json.read_text())["recent_traffic"]
    assert document["rows"] == 400 and set(document["metrics"]) == {"candidate", "v1 (serving)"}
    good, served = document["metrics"]["candidate"]["auc"], document["metrics"]["v1 (serving)"]["auc"]
    # Flipped labels: the AUC is the complement of the one on the true labels of the same rows.
    unflipped = ev.evaluate_model(models["good"], tmp_path / "unflipped", tmp_path / "out2",
                                  config=EvaluationConfig(auc_floor=0.5),
                                  recent_traffic=_write_recent(tmp_path / "unflipped", eval_rows[:400], flip=False))
    assert good == pytest.approx(1 - unflipped.recent_traffic["metrics"]["candidate"]["auc"], abs=1e-6)
    assert good < served - 0.01  # the served (inverted) model ranks the flipped labels well
    assert not result.blessed and document["passed"] is False
    assert result.reasons[-1] == document["reason"] == (
        f"failed: recent traffic (400 held-out labelled rows): candidate AUC {good:.5f} < v1 (serving) AUC "
        f"{served:.5f} - auc_tolerance 0.01000 = {served - 0.01:.5f}")
    page = result.report_html.read_text()
    assert '<section id="recent-traffic">' in page and f"{good:.4f}" in page
    assert unflipped.blessed and unflipped.recent_traffic["reason"].endswith("no served model to compare with")


def test_too_little_recent_traffic_is_reported_but_does_not_judge(
    models: dict[str, Path], examples_dir: Path, eval_rows: list[dict[str, Any]], tmp_path: Path
) -> None:
    recent = _write_recent(tmp_path / "recent", eval_rows[:10], flip=True)
    result = ev.evaluate_model(models["good"], examples_dir, tmp_path / "out", config=EvaluationConfig(auc_floor=0.5),
                               baseline_model_dir=models["weaker"], recent_traffic=recent)
    assert result.blessed and result.recent_traffic["rows"] == 10
    assert result.reasons[-1] == f"recent traffic: 10 held-out labelled rows (< {ev.RECENT_MIN_ROWS}): reported, not judged"
    nothing = ev.evaluate_model(models["good"], examples_dir, tmp_path / "out2", config=EvaluationConfig(auc_floor=0.5),
                                recent_traffic=str(tmp_path / "none" / "data-served-*"))
    assert nothing.blessed and nothing.recent_traffic["rows"] == 0


def test_a_slice_value_keeps_its_code_across_batches_and_the_values_come_back_in_row_order() -> None:
    coder = ev._SliceCoder()
    coder.add(np.array(["Cash", "Credit Card"], dtype=object))
    coder.add(np.array(["Credit Card", "Dispute", "Credit Card", "Cash"], dtype=object))
    column = coder.column()
    assert [column.names[code] for code in column.codes] == ["Cash", "Credit Card", "Credit Card", "Dispute", "Credit Card", "Cash"]
    assert column.codes.dtype == np.int32 and len(column.names) == 3
    slices = ev.slice_metrics(np.array([True, False, True, False, False, True]), np.linspace(0.1, 0.9, 6),
                              {"payment_type": column}, threshold=0.5)
    assert list(slices["payment_type"]) == ["Cash", "Credit Card", "Dispute"]
    assert [m["count"] for m in slices["payment_type"].values()] == [2.0, 3.0, 1.0]
