"""Measures drift scores on real taxi data, to set and check the defaults in thresholds.toml.

    python -m monitoring.calibrate --examples <ingest output>/examples [--repeats 20]

`--examples` is a training run's ingested Examples (Split-train is the baseline, Split-eval the
held-out rows of the same period). Prints, per feature, the largest score seen over `--repeats`
random undrifted windows of each size (and how many of them fired, thresholds raised to the noise
floor as in a real check), next to the scores of real and constructed drift (`*` = fires): the
2015 and 2016 trips of the shipped CSV, fares x1.5, a payment type that disappears, a new one.
A threshold is well placed when it sits above every noise column and below the drift that
matters. Window statistics are computed in memory with the same TFDV generator and options as
the Beam job (`monitoring.log_statistics`), so the numbers are the ones monitoring sees.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from beam_jobs.statistics import generate_statistics, load_statistics, statistics_path
from monitoring import drift
from monitoring.frames import frame_from_csv_rows, read_examples_frame
from monitoring.log_statistics import statistics_of_frame
from monitoring.results import CalibrationMap
from monitoring.settings import load_thresholds
from transforms.features import FARE_KEY, PAYMENT_TYPE_KEY, SERVING_COLUMNS, TIMESTAMP_KEY, TIPS_KEY, is_big_tipper
from validation.schema import load_schema

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def scenarios(heldout: pd.DataFrame, csv: pd.DataFrame, rng: np.random.Generator) -> dict[str, Callable[[], pd.DataFrame]]:
    year = pd.to_datetime(csv[TIMESTAMP_KEY], unit="s").dt.year

    def new_payment_type() -> pd.DataFrame:
        frame = heldout.copy()
        chosen = rng.random(len(frame)) < 0.1
        frame.loc[chosen, PAYMENT_TYPE_KEY] = "Mobile"
        return frame

    return {
        "2015 trips": lambda: csv[year == 2015],
        "2016 trips": lambda: csv[year == 2016],
        "fare x1.5": lambda: heldout.assign(**{FARE_KEY: heldout[FARE_KEY] * 1.5}),
        "no Cash": lambda: heldout[heldout[PAYMENT_TYPE_KEY] != "Cash"],
        "10% Mobile": new_payment_type,
    }


def measure(examples: Path, csv_path: Path, sizes: Sequence[int], repeats: int, seed: int, work_dir: Path) -> pd.DataFrame:
    thresholds = load_thresholds()
    schema = load_schema(PROJECT_ROOT / "data" / "taxi" / "schema.pbtxt")
    baseline_path = statistics_path(work_dir, "train")
    if not baseline_path.exists():
        generate_statistics(examples, work_dir, splits=("train",))
    baseline = load_statistics(baseline_path)
    baseline_frame = read_examples_frame(examples, "train")
    heldout = read_examples_frame(examples, "eval")
    csv = frame_from_csv_rows(pd.read_csv(csv_path, dtype=str, keep_default_na=False).to_dict("records"))
    features = drift.compared_features(thresholds.drift, window_hours=24 * 366)
    rng = np.random.default_rng(seed)

    def scores(frame: pd.DataFrame) -> dict[str, drift.FeatureScore]:
        found, _ = drift.compare_statistics(baseline, statistics_of_frame(frame), frame, schema, features,
                                            reference_frame=baseline_frame)
        return found

    columns: dict[str, dict[str, str]] = {}
    for size in sizes:
        worst: dict[str, float] = {}
        flagged: dict[str, int] = {}
        for _ in range(repeats):
            sample = heldout.sample(min(size, len(heldout)), random_state=int(rng.integers(1 << 31)))
            for name, score in scores(sample).items():
                worst[name] = max(worst.get(name, 0.0), score.value)
                flagged[name] = flagged.get(name, 0) + int(score.drifted)
        columns[f"noise n={size}: max (fired)"] = {name: f"{worst[name]:.3f} ({flagged[name]}/{repeats})" for name in worst}
    for label, make in scenarios(heldout, csv, rng).items():
        frame = make()
        columns[f"{label} (n={len(frame)})"] = {name: f"{score.value:.3f}{' *' if score.drifted else ''}"
                                                for name, score in scores(frame).items()}
    table = pd.DataFrame(columns).fillna("")
    table.insert(0, "threshold", [f"{features[name]:.3f}" if name in features else "" for name in table.index])
    return table


def scored_eval_rows(examples: Path, model_dir: Path) -> pd.DataFrame:
    """The eval split's rows (every raw column) with the model's label and probability, scored through serving_examples.

    What the sequential concept detectors and the performance estimate are calibrated and
    benchmarked on (benchmarks/detection_benchmark.py).
    """
    from core.errors import DataError
    from trainer.evaluate import score_examples
    from transforms.features import RAW_COLUMNS

    scored = score_examples(examples, "eval", {"model": model_dir})
    frame = read_examples_frame(examples, "eval", RAW_COLUMNS)
    if len(frame) != scored.labels.size:
        raise DataError(f"{examples}: {len(frame)} eval rows read but {scored.labels.size} scored")
    return frame.assign(label=scored.labels.astype(int), probability=scored.probabilities["model"])


def calibration_of(rows: pd.DataFrame, source: str) -> CalibrationMap:
    """The calibration an evaluation of these rows would record (its 20-bin score histogram)."""
    from trainer.evaluate import score_histogram

    histogram = score_histogram(rows["label"].to_numpy(dtype=bool), rows["probability"].to_numpy(dtype=float))
    return CalibrationMap.from_histogram(histogram["edges"], histogram["positives"], histogram["negatives"], source)


def measure_model(examples: Path, csv_path: Path, model_dir: Path, sizes: Sequence[int], repeats: int, seed: int) -> pd.DataFrame:
    """Prediction drift and concept-drift metrics of the model on undrifted samples and on drifted data."""
    from monitoring.checks import concept_metrics, probability_histogram
    from monitoring.results import PredictionBaseline
    from trainer.evaluate import score_examples

    thresholds = load_thresholds()
    rng = np.random.default_rng(seed)
    scored = score_examples(examples, "eval", {"model": model_dir})
    labels, probabilities = scored.labels.astype(int), scored.probabilities["model"]
    edges = np.linspace(0.0, 1.0, 21)
    baseline = PredictionBaseline(tuple(edges), tuple(probability_histogram(probabilities, edges)), "eval split")
    base_metrics = concept_metrics(labels, probabilities, 0.5, thresholds.concept.calibration_bins)

    def row(p: np.ndarray, y: np.ndarray | None) -> dict[str, float]:
        values = {"prediction_js": drift.js_divergence(baseline.counts, probability_histogram(p, edges))}
        if y is not None:
            metrics = concept_metrics(y, p, 0.5, thresholds.concept.calibration_bins)
            values.update({f"{k} change": metrics[k] - base_metrics[k] for k in ("auc", "accuracy", "ece")})
        return values

    columns: dict[str, dict[str, str]] = {}
    for size in sizes:
        samples = []
        for _ in range(repeats):
            chosen = rng.choice(len(labels), size=min(size, len(labels)), replace=False)
            samples.append(row(probabilities[chosen], labels[chosen]))
        frame = pd.DataFrame(samples)
        columns[f"noise n={size}: worst"] = {
            "prediction_js": f"{frame['prediction_js'].max():.3f}",
            "auc change": f"{frame['auc change'].min():+.3f}", "accuracy change": f"{frame['accuracy change'].min():+.3f}",
            "ece change": f"{frame['ece change'].max():+.3f}"}
    csv = frame_from_csv_rows(pd.read_csv(csv_path, dtype=str, keep_default_na=False).to_dict("records"),
                              (*SERVING_COLUMNS, TIPS_KEY))
    year = pd.to_datetime(csv[TIMESTAMP_KEY], unit="s").dt.year
    import tensorflow as tf

    from beam_jobs.example_codec import serialize_row

    signature = tf.saved_model.load(str(model_dir)).signatures["serving_examples"]

    def predict(frame: pd.DataFrame) -> np.ndarray:
        rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
        serialized = [serialize_row({k: v for k, v in r.items() if k in SERVING_COLUMNS}) for r in rows]
        return signature(examples=tf.constant(serialized))["probability"].numpy().astype(float)

    drifted = {"2016 trips": csv[year == 2016], "fare x1.5": csv[year <= 2014].assign(**{FARE_KEY: csv[FARE_KEY] * 1.5}),
               "no Cash": csv[(year <= 2014) & (csv[PAYMENT_TYPE_KEY] != "Cash")]}
    for label, frame in drifted.items():
        truth = is_big_tipper(frame[TIPS_KEY], frame[FARE_KEY]).to_numpy(dtype=int)
        values = row(predict(frame), truth)
        columns[f"{label} (n={len(frame)})"] = {k: f"{v:+.3f}" if "change" in k else f"{v:.3f}" for k, v in values.items()}
    table = pd.DataFrame(columns)
    table.insert(0, "limit", [f"{thresholds.prediction_js:.3f}", f"-{thresholds.concept.max_auc_drop:.3f}",
                              f"-{thresholds.concept.max_accuracy_drop:.3f}", f"+{thresholds.concept.max_ece_increase:.3f}"])
    return table


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=Path, required=True, help="ingested Examples with Split-train and Split-eval")
    parser.add_argument("--csv", type=Path, default=PROJECT_ROOT / "data" / "taxi" / "data.csv")
    parser.add_argument("--sizes", default="200,1000", help="comma-separated window sizes for the noise columns")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--work-dir", type=Path, default=Path("var/monitoring/calibration"))
    parser.add_argument("--model", type=Path, help="a SavedModel trained on --examples: also measure prediction and concept drift")
    args = parser.parse_args(argv)
    started = dt.datetime.now()
    sizes = [int(s) for s in args.sizes.split(",")]
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        print(measure(args.examples, args.csv, sizes, args.repeats, args.seed, args.work_dir))
        if args.model:
            print()
            print(measure_model(args.examples, args.csv, args.model, sizes, args.repeats, args.seed))
    print(f"({(dt.datetime.now() - started).total_seconds():.0f}s)")


if __name__ == "__main__":
    main()
