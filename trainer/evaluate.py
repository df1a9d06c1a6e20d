"""Model evaluation: metrics overall and per slice, comparison with the served model, blessing.

The candidate is scored through its `serving_examples` signature on the eval split's raw
tf.Examples: the same graph TF Serving runs, so what is measured here is what users will get
(a bug in the serving signature shows up as a bad AUC, not in production).

Metrics are computed with numpy (the ML runtime has no scikit-learn). The result is written as
`evaluation.json` (strict JSON: an undefined metric is `null`) and a self-contained
`report.html`; both paths in the JSON are relative, so the directory can be renamed into place.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import glob
import json
import math
import types
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from beam_jobs.example_codec import split_pattern
from core.atomic import write_text
from core.config import EvaluationConfig
from core.errors import DataError
from trainer.ranked_scores import LOG_LOSS_EPSILON, RankedScores, outside_zero_to_one
from transforms import features

EVALUATION_FILE = "evaluation.json"
REPORT_FILE = "report.html"
FORMAT_VERSION = 1
BATCH_SIZE = 1024
ROC_MAX_POINTS = 201
CALIBRATION_BINS = 10
HISTOGRAM_BINS = 20
MISSING_SLICE_VALUE = "(missing)"

PAYMENT_TYPE = features.FEATURES_BY_NAME[features.PAYMENT_TYPE_KEY]
START_HOUR = features.FEATURES_BY_NAME[features.HOUR_KEY]
HOUR_BUCKET_SLICE = "hour_bucket"
SLICE_NAMES = (PAYMENT_TYPE.name, HOUR_BUCKET_SLICE)
_SLICE_VALUE_ORDER: Mapping[str, tuple[str, ...]] = {HOUR_BUCKET_SLICE: tuple(name for _, _, name in features.HOUR_BUCKETS)}
METRIC_NAMES = ("auc", "accuracy", "precision", "recall", "f1", "log_loss", "count", "positive_rate", "mean_probability")
_NO_LINKS: Mapping[str, str] = types.MappingProxyType({})

Metrics = dict[str, float]
SliceMetrics = dict[str, dict[str, Metrics]]


@dataclasses.dataclass(frozen=True)
class EvaluationResult:
    metrics: Metrics  # auc, accuracy, precision, recall, f1, log_loss, count, positive_rate, mean_probability
    slices: SliceMetrics  # slice feature -> value -> metrics (payment_type, hour_bucket)
    baseline_metrics: Metrics | None  # the currently pushed model on the same rows
    blessed: bool
    reasons: list[str]  # why (not) blessed, one line per rule, with the numbers
    evaluation_json: Path
    report_html: Path
    baseline_slices: SliceMetrics | None = None
    model_label: str = "candidate"
    baseline_label: str = "current"
    # On the held-out recent labelled traffic: rows, metrics per model label, passed, reason (or None).
    recent_traffic: dict[str, Any] | None = None


# --- Metrics ---------------------------------------------------------------------------------


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve as the Mann-Whitney statistic; ties count one half.

    NaN when only one class is present: the AUC is undefined there, and a slice with no
    positives must not crash the evaluation or pretend to be perfect.
    """
    return RankedScores.from_arrays(labels, scores).auc()


def log_loss(labels: np.ndarray, probabilities: np.ndarray, epsilon: float = LOG_LOSS_EPSILON) -> float:
    """Mean binary cross-entropy, with probabilities clipped to [eps, 1 - eps]."""
    labels = np.asarray(labels, dtype=np.float64)
    if labels.size == 0:
        return math.nan
    p = np.clip(np.asarray(probabilities, dtype=np.float64), epsilon, 1.0 - epsilon)
    return float(-np.mean(labels * np.log(p) + (1.0 - labels) * np.log1p(-p)))


def binary_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> Metrics:
    """All metrics of one set of rows; a row is predicted positive when probability >= threshold.

    Precision with no predicted positive (and recall with no actual positive) is 0, as in
    scikit-learn's default, so that F1 stays defined; AUC alone is NaN on a single class.
    """
    return RankedScores.from_arrays(labels, probabilities).metrics(threshold)


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates) at every distinct score, from (0, 0) to (1, 1).

    Empty arrays when the rows hold a single class.
    """
    return RankedScores.from_arrays(labels, scores).roc_curve()


def calibration(labels: np.ndarray, probabilities: np.ndarray, bins: int = CALIBRATION_BINS) -> dict[str, list[float]]:
    """Per equal-width probability bin: mean predicted probability, observed positive rate, rows."""
    return RankedScores.from_arrays(labels, probabilities).calibration(bins)


def score_histogram(labels: np.ndarray, probabilities: np.ndarray, bins: int = HISTOGRAM_BINS) -> dict[str, list[float]]:
    """Counts of scores per bin on [0, 1], separately for actual positives and negatives."""
    return RankedScores.from_arrays(labels, probabilities).histogram(bins)


@dataclasses.dataclass(frozen=True)
class SliceColumn:
    """A slice feature's value per row as a code (4 bytes a row, not a reference to a string)."""

    codes: np.ndarray  # int32, an index into names
    names: tuple[str, ...]

    @classmethod
    def of(cls, values: np.ndarray) -> SliceColumn:
        names, codes = np.unique(np.asarray(values, dtype=object).astype(str), return_inverse=True)
        return cls(codes.reshape(-1).astype(np.int32), tuple(names.tolist()))


class _SliceCoder:
    """Codes a slice's values batch by batch, a code per distinct value met, in the order met."""

    def __init__(self) -> None:
        self.vocabulary: dict[str, int] = {}
        self.parts: list[np.ndarray] = []

    def add(self, values: np.ndarray) -> None:
        distinct, index = np.unique(values, return_inverse=True)
        codes = np.array([self.vocabulary.setdefault(value, len(self.vocabulary)) for value in distinct.tolist()], np.int32)
        self.parts.append(codes[index.reshape(-1)])

    def column(self) -> SliceColumn:
        return SliceColumn(np.concatenate(self.parts), tuple(self.vocabulary))


def slice_metrics(
    labels: np.ndarray, probabilities: np.ndarray, slice_values: Mapping[str, np.ndarray | SliceColumn], threshold: float
) -> SliceMetrics:
    """Metrics per value of each slice feature; hour buckets in time-of-day order, others sorted."""
    result: SliceMetrics = {}
    for name, values in slice_values.items():
        column = values if isinstance(values, SliceColumn) else SliceColumn.of(values)
        order = _SLICE_VALUE_ORDER.get(name, ())
        held = [column.names[code] for code in np.flatnonzero(np.bincount(column.codes, minlength=len(column.names)))]
        ordered = sorted(held, key=lambda v: (order.index(v) if v in order else len(order), v))
        result[name] = {}
        for value in ordered:
            members = column.codes == column.names.index(value)
            result[name][value] = binary_metrics(labels[members], probabilities[members], threshold)
    return result


def blessing_decision(
    metrics: Mapping[str, float],
    baseline_metrics: Mapping[str, float] | None,
    config: EvaluationConfig,
    *,
    model_label: str = "candidate",
    baseline_label: str = "current",
) -> tuple[bool, list[str]]:
    """Blessed when AUC >= auc_floor and (no baseline or AUC >= baseline AUC - auc_tolerance).

    Each rule adds one reason saying whether it passed, with the numbers compared.
    """
    candidate_auc = metrics["auc"]
    reasons: list[str] = []
    if math.isnan(candidate_auc):
        reasons.append(
            f"failed: {model_label} AUC is undefined because the evaluation rows hold a single class "
            f"(positive rate {metrics['positive_rate']:.5f} over {int(metrics['count'])} rows)"
        )
        return False, reasons
    above_floor = candidate_auc >= config.auc_floor
    reasons.append(
        f"{'passed' if above_floor else 'failed'}: {model_label} AUC {candidate_auc:.5f} "
        f"{'>=' if above_floor else '<'} auc_floor {config.auc_floor:.5f}"
    )
    close_enough = True
    if baseline_metrics is None:
        reasons.append("no baseline model to compare with: only the AUC floor applies")
    elif math.isnan(baseline_metrics["auc"]):
        reasons.append(f"{baseline_label} AUC is undefined on these rows: comparison skipped")
    else:
        limit = baseline_metrics["auc"] - config.auc_tolerance
        close_enough = candidate_auc >= limit
        reasons.append(
            f"{'passed' if close_enough else 'failed'}: {model_label} AUC {candidate_auc:.5f} "
            f"{'>=' if close_enough else '<'} {baseline_label} AUC {baseline_metrics['auc']:.5f} "
            f"- auc_tolerance {config.auc_tolerance:.5f} = {limit:.5f}"
        )
    return above_floor and close_enough, reasons


# --- Scoring ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ScoredRows:
    labels: np.ndarray  # bool
    probabilities: dict[str, np.ndarray]  # model label -> float64 probabilities, same row order
    slice_values: dict[str, SliceColumn]  # slice name -> its value per row


def score_examples(examples_dir: Path, split: str, models: Mapping[str, Path], batch_size: int = BATCH_SIZE,
                   pattern: str | None = None) -> ScoredRows:
    """Scores every model on the same rows of `<examples_dir>/Split-<split>/data-*.tfrecord.gz`
    (or of the files `pattern` matches).

    Files are read one at a time so that a bad record is reported with its file and position.
    """
    import tensorflow as tf  # here, not at import: load_evaluation and the metrics need no TF

    pattern = pattern or split_pattern(examples_dir, split)
    files = sorted(glob.glob(pattern))
    if not files:
        raise DataError(f"no {split} examples to evaluate: nothing matches {pattern}")
    # The loaded objects stay referenced: a signature does not keep its model's variables alive.
    loaded_models = {label: _load_saved_model(tf, Path(path)) for label, path in models.items()}
    signatures = {label: loaded.signatures["serving_examples"] for label, loaded in loaded_models.items()}
    parse_spec = {
        features.TIPS_KEY: tf.io.FixedLenFeature([], tf.float32, default_value=math.nan),
        features.FARE_KEY: tf.io.FixedLenFeature([], tf.float32, default_value=math.nan),
        features.OBSERVED_LABEL_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=features.MISSING_INT),
        PAYMENT_TYPE.name: tf.io.FixedLenFeature([], tf.string, default_value=""),
        START_HOUR.name: tf.io.FixedLenFeature([], tf.int64, default_value=features.MISSING_INT),
    }
    # Arrays per batch, not lists per row: a bool, each model's float32 probability and
    # a code per slice are 13-17 bytes a row (Python lists of new strings were about 150).
    labels: list[np.ndarray] = []
    slices = {PAYMENT_TYPE.name: _SliceCoder(), HOUR_BUCKET_SLICE: _SliceCoder()}
    probabilities: dict[str, list[np.ndarray]] = {label: [] for label in models}
    for file in files:
        position = 0
        try:
            for batch in tf.data.TFRecordDataset(file, compression_type="GZIP").batch(batch_size).prefetch(2):
                try:
                    parsed = tf.io.parse_example(batch, parse_spec)
                except tf.errors.InvalidArgumentError as err:
                    raise DataError(f"{file}: records {position}..{position + len(batch) - 1} are not "
                                    f"parseable tf.Examples with the raw feature kinds: {err.message}") from None
                batch_labels, batch_payments, batch_hours = _label_and_slices(file, position, parsed)
                labels.append(batch_labels)
                slices[PAYMENT_TYPE.name].add(batch_payments)
                slices[HOUR_BUCKET_SLICE].add(batch_hours)
                for label, signature in signatures.items():
                    try:
                        scores = _probabilities(signature, batch, label, models[label], file, position)
                    except tf.errors.InvalidArgumentError as err:
                        raise DataError(f"{models[label]}: serving_examples rejected {file} records "
                                        f"{position}..{position + len(batch) - 1}: {err.message}") from None
                    probabilities[label].append(scores)
                position += int(batch.shape[0])
        except (tf.errors.DataLossError, tf.errors.OutOfRangeError) as err:
            raise DataError(
                f"{file}: corrupt or truncated gzip TFRecord after record {position}: {err.message}"
            ) from None
    if not labels:
        raise DataError(f"no {split} examples to evaluate: the files matching {pattern} hold 0 records")
    return ScoredRows(
        labels=np.concatenate(labels),
        probabilities={label: np.concatenate(parts, dtype=np.float64) for label, parts in probabilities.items()},
        slice_values={name: coder.column() for name, coder in slices.items()},
    )


def _load_saved_model(tf: Any, model_dir: Path) -> Any:
    if not (model_dir / "saved_model.pb").is_file():
        raise DataError(f"{model_dir}: not a SavedModel directory (no saved_model.pb)")
    loaded = tf.saved_model.load(str(model_dir))
    if "serving_examples" not in loaded.signatures:
        raise DataError(f"{model_dir}: the SavedModel has no 'serving_examples' signature "
                        f"(it has {sorted(loaded.signatures)}); see docs/ARCHITECTURE.md")
    return loaded


def _label_and_slices(file: str, position: int, parsed: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A batch's labels (bool) and slice values (object arrays whose equal values share one string)."""
    tips = parsed[features.TIPS_KEY].numpy()
    fares = parsed[features.FARE_KEY].numpy()
    observed = parsed[features.OBSERVED_LABEL_KEY].numpy()
    has_observed = observed != features.MISSING_INT  # a production row: its label is given, not derived
    for name, values in ((features.TIPS_KEY, tips), (features.FARE_KEY, fares)):
        missing = np.flatnonzero(np.isnan(values) & ~has_observed)
        if missing.size:
            raise DataError(f"{file}: record {position + int(missing[0])} has no '{name}', needed for the label "
                            f"{features.LABEL_KEY!r}; evaluate the cleaned examples")
    # On float32 arrays, as preprocessing_fn computes it in TF: a borderline trip (tips exactly
    # 20% of the fare) gets the same label here as in training.
    derived = np.asarray(features.is_big_tipper(tips, fares), dtype=bool)
    labels = np.where(has_observed, observed == 1, derived)
    payments, payment_index = np.unique(parsed[PAYMENT_TYPE.name].numpy(), return_inverse=True)
    payment_names = np.array([value.decode("utf-8", errors="replace") or MISSING_SLICE_VALUE for value in payments],
                             dtype=object)
    hours = parsed[START_HOUR.name].numpy()
    distinct_hours, hour_index = np.unique(hours, return_inverse=True)
    bucket_names, errors = [], {}
    for hour in distinct_hours.tolist():
        try:
            bucket_names.append(MISSING_SLICE_VALUE if hour == features.MISSING_INT else features.hour_bucket(hour))
        except ValueError as err:
            bucket_names.append(None)
            errors[hour] = err
    if errors:
        first = int(np.flatnonzero(np.isin(hours, list(errors)))[0])
        raise DataError(f"{file}: record {position + first}: {errors[int(hours[first])]}")
    buckets = np.array(bucket_names, dtype=object)
    return labels, payment_names[payment_index.reshape(-1)], buckets[hour_index.reshape(-1)]


def _probabilities(signature: Any, batch: Any, label: str, model_dir: Path, file: str, position: int) -> np.ndarray:
    outputs = signature(examples=batch)
    if "probability" not in outputs:
        raise DataError(f"{model_dir}: serving_examples returned {sorted(outputs)}, expected 'probability'")
    values = outputs["probability"].numpy().reshape(-1)  # float32 from our models: kept, it is exact
    if not np.issubdtype(values.dtype, np.floating):
        values = values.astype(np.float64)
    if values.size != int(batch.shape[0]):
        raise DataError(f"{model_dir}: serving_examples returned {values.size} probabilities for "
                        f"{int(batch.shape[0])} examples ({file}, from record {position})")
    bad = outside_zero_to_one(values)
    if bad.size:
        raise DataError(f"{model_dir} ({label}): probability {values[bad[0]]!r} is not in [0, 1] for "
                        f"{file} record {position + int(bad[0])}")
    return values


# --- Held-out recent traffic -------------------------------------------------------------------

# Fewer held-out recent rows than this are reported but do not judge: their AUC is mostly noise.
RECENT_MIN_ROWS = 20


def recent_traffic_metrics(pattern: str, models: Mapping[str, Path], threshold: float) -> dict[str, Any]:
    """Every model's metrics on the held-out recent traffic (the files `pattern` matches; none = 0 rows)."""
    if not glob.glob(pattern):
        return {"pattern": pattern, "rows": 0, "metrics": {}}
    try:
        rows = score_examples(Path(pattern).parent, "eval", models, pattern=pattern)
    except DataError as err:
        if "hold 0 records" not in str(err):
            raise
        return {"pattern": pattern, "rows": 0, "metrics": {}}
    return {"pattern": pattern, "rows": int(len(rows.labels)),
            "metrics": {label: binary_metrics(rows.labels, rows.probabilities[label], threshold) for label in models}}


def recent_traffic_rule(recent: Mapping[str, Any], config: EvaluationConfig, min_rows: int,
                        model_label: str, baseline_label: str) -> tuple[bool, str]:
    """The blessing's second comparison, on the held-out recent labelled traffic.

    With at least `min_rows` rows of both classes and a served model, the candidate's AUC there must
    not be below the served model's by more than `auc_tolerance` (the same tolerance as on the eval
    split): a retraining after drift must not do worse than the served model on the traffic that
    drifted. Fewer rows, one class or no served model: reported, not judged.
    """
    rows, metrics = recent["rows"], recent["metrics"]
    if rows < min_rows:
        return True, f"recent traffic: {rows} held-out labelled rows (< {min_rows}): reported, not judged"
    candidate, baseline = metrics[model_label], metrics.get(baseline_label)
    if baseline is None:
        return True, (f"recent traffic: {model_label} AUC {candidate['auc']:.5f} on {rows} held-out labelled rows; "
                      "no served model to compare with")
    if math.isnan(candidate["auc"]) or math.isnan(baseline["auc"]):
        return True, f"recent traffic: AUC undefined on {rows} held-out rows (a single class): comparison skipped"
    limit = baseline["auc"] - config.auc_tolerance
    passed = candidate["auc"] >= limit
    return passed, (f"{'passed' if passed else 'failed'}: recent traffic ({rows} held-out labelled rows): {model_label} "
                    f"AUC {candidate['auc']:.5f} {'>=' if passed else '<'} {baseline_label} AUC {baseline['auc']:.5f} "
                    f"- auc_tolerance {config.auc_tolerance:.5f} = {limit:.5f}")


# --- The step ---------------------------------------------------------------------------------


def evaluate_model(
    model_dir: Path,
    examples_dir: Path,
    output_dir: Path,
    *,
    config: EvaluationConfig,
    baseline_model_dir: Path | None = None,
    split: str = "eval",
    model_label: str = "candidate",
    baseline_label: str = "current",
    related_links: Mapping[str, str] = _NO_LINKS,
    recent_traffic: str | None = None,
    recent_min_rows: int = RECENT_MIN_ROWS,
) -> EvaluationResult:
    """Scores the candidate (and the baseline, on the same rows), decides blessing, writes the report.

    `related_links` (title -> URL) are listed in the report's `links` section: monitoring reports
    for this model version link here and back. `recent_traffic` is a glob of held-out recent
    labelled production examples: both models are scored on them too (`recent_traffic_rule`).
    """
    from trainer.report import write_report

    if baseline_model_dir is not None and model_label == baseline_label:
        raise ValueError(f"model_label and baseline_label must differ, both are {model_label!r}")
    models = {model_label: Path(model_dir)}
    if baseline_model_dir is not None:
        models[baseline_label] = Path(baseline_model_dir)
    rows = score_examples(Path(examples_dir), split, models)
    threshold = config.decision_threshold

    def summarise(label: str) -> tuple[Metrics, SliceMetrics, dict[str, Any]]:
        probabilities = rows.probabilities[label]
        ranked = RankedScores.from_arrays(rows.labels, probabilities)
        fpr, tpr = ranked.roc_curve(ROC_MAX_POINTS)
        curves = {
            "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()},
            "calibration": ranked.calibration(CALIBRATION_BINS),
            "histogram": ranked.histogram(HISTOGRAM_BINS),
        }
        metrics = ranked.metrics(threshold)
        del ranked  # eight bytes a row: freed before the slices take their own
        return metrics, slice_metrics(rows.labels, probabilities, rows.slice_values, threshold), curves

    metrics, slices, curves = summarise(model_label)
    baseline_metrics = baseline_slices = None
    all_curves = {model_label: curves}
    if baseline_model_dir is not None:
        baseline_metrics, baseline_slices, all_curves[baseline_label] = summarise(baseline_label)
    blessed, reasons = blessing_decision(
        metrics, baseline_metrics, config, model_label=model_label, baseline_label=baseline_label
    )
    recent = None
    if recent_traffic is not None:
        recent = recent_traffic_metrics(recent_traffic, models, threshold)
        recent_ok, recent_reason = recent_traffic_rule(recent, config, recent_min_rows, model_label, baseline_label)
        recent["passed"], recent["reason"] = recent_ok, recent_reason
        blessed, reasons = blessed and recent_ok, [*reasons, recent_reason]

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    document = {
        "format_version": FORMAT_VERSION,
        "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {"label": model_label, "path": str(model_dir)},
        "baseline": {"label": baseline_label, "path": str(baseline_model_dir)} if baseline_model_dir is not None else None,
        "examples": {"path": str(examples_dir), "split": split},
        "config": dataclasses.asdict(config),
        "metrics": metrics,
        "baseline_metrics": baseline_metrics,
        "slices": slices,
        "baseline_slices": baseline_slices,
        "blessed": blessed,
        "reasons": reasons,
        "curves": all_curves,
        "recent_traffic": recent,
        "report_html": REPORT_FILE,
    }
    evaluation_json = output_dir / EVALUATION_FILE
    write_text(evaluation_json, json.dumps(_null_for_nan(document), indent=2, allow_nan=False) + "\n")
    write_report(document, output_dir / REPORT_FILE, related_links)
    return _result_from_document(document, evaluation_json)


def load_evaluation(path: Path) -> EvaluationResult:
    """Reads an `evaluation.json` (or the directory holding it); null metrics come back as NaN."""
    path = Path(path)
    if path.is_dir():
        path = path / EVALUATION_FILE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: evaluation file not found") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
    missing = sorted({"metrics", "slices", "blessed", "reasons", "report_html"} - set(document))
    if missing:
        raise DataError(f"{path}: not an evaluation result, missing keys {missing}")
    return _result_from_document(document, path)


def _result_from_document(document: Mapping[str, Any], evaluation_json: Path) -> EvaluationResult:
    baseline = document.get("baseline") or {}
    baseline_metrics = document.get("baseline_metrics")
    baseline_slices = document.get("baseline_slices")
    return EvaluationResult(
        metrics=_nan_for_null(document["metrics"]),
        slices=_slices_nan_for_null(document["slices"]),
        baseline_metrics=_nan_for_null(baseline_metrics) if baseline_metrics is not None else None,
        blessed=bool(document["blessed"]),
        reasons=list(document["reasons"]),
        evaluation_json=Path(evaluation_json),
        report_html=Path(evaluation_json).parent / document["report_html"],
        baseline_slices=_slices_nan_for_null(baseline_slices) if baseline_slices is not None else None,
        model_label=str((document.get("model") or {}).get("label", "candidate")),
        baseline_label=str(baseline.get("label", "current")),
        recent_traffic=document.get("recent_traffic"),
    )


def _slices_nan_for_null(slices: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> SliceMetrics:
    return {name: {value: _nan_for_null(m) for value, m in values.items()} for name, values in slices.items()}


def _nan_for_null(metrics: Mapping[str, Any]) -> Metrics:
    return {name: math.nan if value is None else float(value) for name, value in metrics.items()}


def _null_for_nan(value: Any) -> Any:
    """JSON has no NaN: undefined metrics are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: _null_for_nan(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_null_for_nan(item) for item in value]
    return value
