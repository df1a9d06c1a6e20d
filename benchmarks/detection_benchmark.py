"""How fast the checks see a change, and how often they cry wolf on calm traffic.

    .venvs/ml/bin/python benchmarks/detection_benchmark.py --run <pipeline run dir> [--repeats 10]
    .venvs/ml/bin/python benchmarks/detection_benchmark.py --examples <eval Examples> --model <SavedModel>

`--run` is a training run's directory (`<pipeline_root>/runs/<run_id>`: its cleaned Examples and
trained model). The model scores its eval split through `serving_examples`, as TF Serving would.
The scored rows are split at random in two halves: one plays the evaluation (the calibration
and baseline metrics the checks hold traffic against), the other is the traffic, resampled with
replacement. Nothing is scored twice, so the checks never see the rows they were calibrated on.

Concept drift: a stream of `--history` calm labels, then the change; the real
`monitoring.checks.concept_drift` runs after every `--step` labels on the labels of the last
`--history` + the labels since the change (what a 7-day window holds), in request order. Printed:
labels after the change until it fails (median and worst over repeats), for the whole check and for
its pooled metrics alone (what the check did before the sequential detectors; to within 50 labels). Calm traffic: the
same check after every window of `--window` new labels over long streams; false alarms per 100 windows.

Performance estimate (label-free): windows of `--rows` served requests, calm, under covariate
shift (rows reweighted toward one slice) and under concept drift; estimated against realized
accuracy and AUC, and whether the check fails.

Data drift (the existing distribution checks): windows of growing size drawn from changed data;
the smallest window (requests since the change) at which data_drift fails.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from monitoring import checks  # noqa: E402
from monitoring.calibrate import calibration_of, scored_eval_rows  # noqa: E402
from monitoring.log_statistics import statistics_of_frame  # noqa: E402
from monitoring.performance_estimate import performance_estimate  # noqa: E402
from monitoring.results import Baseline, ConceptBaseline  # noqa: E402
from monitoring.settings import MonitoringThresholds, load_thresholds  # noqa: E402
from transforms.features import COMPANY_KEY, FARE_KEY, HOUR_KEY, PAYMENT_TYPE_KEY, SERVING_COLUMNS, hour_bucket  # noqa: E402

SLICE_AFTER = 300
POOLED_STEP = 50
Relabel = Callable[[pd.DataFrame, np.ndarray, np.random.Generator], np.ndarray]


# --- label changes (the concept) -------------------------------------------------------------


def cash_tips_like_cards(traffic: pd.DataFrame) -> Relabel:
    """Cash tips start being recorded: a cash trip takes the label of the card trip with the nearest fare."""
    cards = traffic[traffic[PAYMENT_TYPE_KEY] == "Credit Card"].sort_values(FARE_KEY)
    fares, card_labels = cards[FARE_KEY].to_numpy(), cards["label"].to_numpy()

    def relabel(rows: pd.DataFrame, affected: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        labels = rows["label"].to_numpy().copy()
        nearest = np.clip(np.searchsorted(fares, rows[FARE_KEY].to_numpy()), 0, len(fares) - 1)
        chosen = affected & (rows[PAYMENT_TYPE_KEY] == "Cash").to_numpy()
        labels[chosen] = card_labels[nearest][chosen]
        return labels
    return relabel


def flipped(rows: pd.DataFrame, affected: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    labels = rows["label"].to_numpy().copy()
    labels[affected] = 1 - labels[affected]
    return labels


def card_riders_tip_less(rows: pd.DataFrame, affected: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Card riders stop tipping big (a new in-car tip screen defaulting to 15 %, say)."""
    labels = rows["label"].to_numpy().copy()
    labels[affected & (rows[PAYMENT_TYPE_KEY] == "Credit Card").to_numpy()] = 0
    return labels


def concept_scenarios(traffic: pd.DataFrame) -> dict[str, tuple[Relabel, float, int]]:
    """name -> (relabel, share of requests affected at full strength, labels over which it ramps up; 0 = sudden)."""
    cash = cash_tips_like_cards(traffic)
    return {
        "sudden: cash riders tip like card riders": (cash, 1.0, 0),
        "sudden: card riders stop tipping big": (card_riders_tip_less, 1.0, 0),
        "sudden: 10% of labels flipped": (flipped, 0.10, 0),
        "sudden: 5% of labels flipped": (flipped, 0.05, 0),
        "gradual: cash like cards, 0 -> 100% over 5000 labels": (cash, 1.0, 5000),
        "gradual: 0 -> 10% flipped over 5000 labels": (flipped, 0.10, 5000),
    }


def flip_likelihood_ratio(probabilities: np.ndarray, labels: np.ndarray, calibration, share: float) -> np.ndarray:
    """Per label, log P(label | a share of labels flipped) / P(label | the evaluation's calibration).

    Page's CUSUM of this is the quickest detector of exactly that change at its false-alarm rate
    (Lorden; Moustakides): no statistic that does not know the change beats it. The benchmark runs it
    next to the check as the bound on what any detector can do for flipped labels.
    """
    rate = np.clip(calibration.rate(probabilities), 1e-4, 1 - 1e-4)
    flipped_rate = rate * (1 - share) + (1 - rate) * share
    return np.where(np.asarray(labels) == 1, np.log(flipped_rate / rate), np.log((1 - flipped_rate) / (1 - rate)))


def reflected_walk(steps: np.ndarray) -> np.ndarray:
    """Page's CUSUM path max(0, S + step) of the steps."""
    walk = np.cumsum(steps)
    return walk - np.minimum(np.minimum.accumulate(walk), 0.0)


def labelled_frame(rows: pd.DataFrame, labels: np.ndarray) -> pd.DataFrame:
    """What Monitor.labelled_requests returns: request-ordered probabilities, labels and slice features."""
    return pd.DataFrame({"probability": rows["probability"].to_numpy(), "ground_truth": pd.array(labels, dtype="Int64"),
                         PAYMENT_TYPE_KEY: rows[PAYMENT_TYPE_KEY].to_numpy(), HOUR_KEY: rows[HOUR_KEY].to_numpy(),
                         COMPANY_KEY: rows[COMPANY_KEY].to_numpy()})


def detection_delay(traffic: pd.DataFrame, baseline: ConceptBaseline, thresholds: MonitoringThresholds,
                    relabel: Relabel, share: float, ramp: int, history: int, horizon: int, step: int,
                    rng: np.random.Generator, oracle: float | None = None) -> tuple[float, float, list, float]:
    """Labels after the change until the check fails, and until its pooled metrics alone would (inf: not within horizon);
    with `oracle` (a threshold), also until the likelihood-ratio CUSUM that knows the flipped share would."""
    rows = traffic.iloc[rng.integers(0, len(traffic), history + horizon)].reset_index(drop=True)
    position = np.arange(history + horizon) - history
    strength = np.where(position < 0, 0.0, 1.0 if ramp == 0 else np.minimum(1.0, (position + 1) / ramp))
    affected = rng.random(len(rows)) < share * strength
    labels = relabel(rows, affected, rng)
    frame = labelled_frame(rows, labels)
    whole = pooled = np.inf
    after = step
    while after <= horizon and (whole == np.inf or pooled == np.inf):
        outcome = checks.concept_drift(frame.iloc[:history + after], baseline, thresholds.concept)
        if not outcome.passed and whole == np.inf:
            whole = after
        if outcome.evidence.get("metrics_failed") and pooled == np.inf:
            pooled = after
        # Once the check has fired, the pooled metrics alone are looked at every POOLED_STEP labels (they are slow).
        after += step if whole == np.inf else max(step, POOLED_STEP)
    # Where the check says the change sits, once SLICE_AFTER labels have come back since it began.
    at = history + min(horizon, (ramp or 0) + SLICE_AFTER)
    slices = checks.concept_drift(frame.iloc[:at], baseline, thresholds.concept).evidence.get("sequential", {}).get("slices", [])
    best = np.inf
    if oracle is not None:
        path = reflected_walk(flip_likelihood_ratio(rows["probability"].to_numpy(), labels, baseline.calibration, share))
        # Looked at when the check is: every `step` labels after the change.
        crossed = np.flatnonzero(path[history + step - 1::step] > oracle)
        best = float((crossed[0] + 1) * step) if crossed.size else np.inf
    return whole, pooled, slices, best


def false_alarms(traffic: pd.DataFrame, baseline: ConceptBaseline, thresholds: MonitoringThresholds, windows: int,
                 window: int, history: int, rng: np.random.Generator) -> dict[str, float]:
    """Checks after every `window` new calm labels, each on the last `history`: failures, and the worst statistics seen."""
    rows = traffic.iloc[rng.integers(0, len(traffic), windows * window)].reset_index(drop=True)
    frame = labelled_frame(rows, rows["label"].to_numpy())
    counts = {"check": 0, "pooled metrics": 0, "recent_window": 0, "cusum": 0, "windows": 0, "worst z": 0.0, "worst cusum": 0.0,
              "worst flip ratio": float(reflected_walk(flip_likelihood_ratio(rows["probability"].to_numpy(), rows["label"].to_numpy(),
                                                                             baseline.calibration, 0.05))[::window].max())}
    for index in range(1, windows + 1):
        end = index * window
        outcome = checks.concept_drift(frame.iloc[max(0, end - history):end], baseline, thresholds.concept)
        if outcome.evidence.get("judged") is False:
            continue
        counts["windows"] += 1
        sequence = outcome.evidence.get("sequential", {})
        counts["worst z"] = max(counts["worst z"], sequence.get("window_z", 0.0))
        counts["worst cusum"] = max(counts["worst cusum"], sequence.get("cusum", 0.0))
        counts["check"] += int(not outcome.passed)
        counts["pooled metrics"] += int(bool(outcome.evidence.get("metrics_failed")))
        for name in ("recent_window", "cusum"):
            counts[name] += int(name in outcome.evidence.get("detectors_failed", []))
    return counts


def _labels(value: float) -> str:
    return "missed" if value == np.inf else f"{value:.0f}"


def concept_table(traffic: pd.DataFrame, baseline: ConceptBaseline, thresholds: MonitoringThresholds,
                  args: argparse.Namespace, rng: np.random.Generator) -> pd.DataFrame:
    table = {}
    for name, (relabel, share, ramp) in concept_scenarios(traffic).items():
        horizon = args.horizon + ramp
        oracle = args.oracle_threshold if relabel is flipped and ramp == 0 and share == 0.05 else None
        found = [detection_delay(traffic, baseline, thresholds, relabel, share, ramp, args.history, horizon, args.step, rng, oracle)
                 for _ in range(args.repeats)]
        whole = np.array([f[0] for f in found])
        pooled = np.array([f[1] for f in found])
        best = np.array([f[3] for f in found])
        top = found[0][2][0] if found[0][2] else None
        table[name] = {"labels to fail: median": _labels(float(np.median(whole))),
                       "90th pct": _labels(float(np.percentile(whole, 90))), "worst": _labels(float(whole.max())),
                       "pooled metrics only: median": _labels(float(np.median(pooled))),
                       f"top slice at {SLICE_AFTER} labels": f"{top['feature']}={top['value']} (n={top['labels']}, z={top['z']})" if top else ""}
        if oracle is not None:
            table[f"  (bound) likelihood-ratio CUSUM knowing '{name}', threshold {oracle:g}"] = {
                "labels to fail: median": _labels(float(np.median(best))), "90th pct": _labels(float(np.percentile(best, 90))),
                "worst": _labels(float(best.max())), "pooled metrics only: median": "", f"top slice at {SLICE_AFTER} labels": ""}
    calm = {"check": 0, "pooled metrics": 0, "recent_window": 0, "cusum": 0, "windows": 0, "worst z": 0.0, "worst cusum": 0.0,
            "worst flip ratio": 0.0}
    for _ in range(args.calm_streams):
        for key, value in false_alarms(traffic, baseline, thresholds, args.calm_windows, args.window, args.calm_history,
                                       rng).items():
            calm[key] = max(calm[key], value) if key.startswith("worst") else calm[key] + value
    per_100 = {key: 100 * calm[key] / max(calm["windows"], 1) for key in ("check", "pooled metrics", "recent_window", "cusum")}
    table[f"calm: false alarms per 100 windows of {args.window} labels ({calm['windows']} windows)"] = {
        "labels to fail: median": f"{per_100['check']:.2f}",
        "90th pct": f"(bound's calm peak {calm['worst flip ratio']:.1f}/{args.oracle_threshold:g})",
        "worst": f"window {per_100['recent_window']:.2f} (worst z {calm['worst z']:.2f}/{thresholds.concept.window_z:g}), "
                 f"cusum {per_100['cusum']:.2f} (worst {calm['worst cusum']:.1f}/{thresholds.concept.cusum_threshold:g})",
        "pooled metrics only: median": f"{per_100['pooled metrics']:.2f}", f"top slice at {SLICE_AFTER} labels": ""}
    return pd.DataFrame(table).T


# --- the label-free estimate -------------------------------------------------------------------


def estimate_table(traffic: pd.DataFrame, baseline: ConceptBaseline, thresholds: MonitoringThresholds, rows: int,
                   repeats: int, rng: np.random.Generator) -> pd.DataFrame:
    hours = traffic[HOUR_KEY].map(lambda h: hour_bucket(int(h)))
    cash = cash_tips_like_cards(traffic)
    weights = {
        "calm (resampled traffic)": np.ones(len(traffic)),
        "covariate shift: 5x card trips": np.where(traffic[PAYMENT_TYPE_KEY] == "Credit Card", 5.0, 1.0),
        "covariate shift: 5x cash trips": np.where(traffic[PAYMENT_TYPE_KEY] == "Cash", 5.0, 1.0),
        "covariate shift: 5x night trips": np.where(hours == "night", 5.0, 1.0),
        "strong shift: 20x card trips": np.where(traffic[PAYMENT_TYPE_KEY] == "Credit Card", 20.0, 1.0),
        "strong shift: 20x night trips": np.where(hours == "night", 20.0, 1.0),
        "strong shift: 20x fares over $30": np.where(traffic[FARE_KEY] > 30, 20.0, 1.0),
        "strong shift: 20x fares under $8": np.where(traffic[FARE_KEY] < 8, 20.0, 1.0),
        "concept drift: cash riders tip like cards": np.ones(len(traffic)),
    }
    table = {}
    cases = [(f"calm, n={thresholds.performance.min_rows} (the smallest judged)", np.ones(len(traffic)),
              thresholds.performance.min_rows)] + [(name, weight, rows) for name, weight in weights.items()]
    for name, weight, size in cases:
        found = []
        for _ in range(repeats):
            picked = traffic.iloc[rng.choice(len(traffic), size, replace=True, p=weight / weight.sum())].reset_index(drop=True)
            labels = picked["label"].to_numpy()
            if name.startswith("concept"):
                labels = cash(picked, np.ones(size, dtype=bool), rng)
            labelled = pd.DataFrame({"probability": picked["probability"], "ground_truth": pd.array(labels, dtype="Int64")})
            outcome = performance_estimate(picked["probability"].to_numpy(), baseline, thresholds.performance, 0.5, labelled)
            metrics = outcome.evidence["metrics"]
            found.append({"est acc": metrics["accuracy"]["estimated"], "real acc": metrics["accuracy"]["realized"],
                          "est auc": metrics["auc"]["estimated"], "real auc": metrics["auc"]["realized"],
                          "acc in interval": metrics["accuracy"]["interval"][0] <= metrics["accuracy"]["realized"]
                          <= metrics["accuracy"]["interval"][1],
                          "auc in interval": metrics["auc"]["interval"][0] <= metrics["auc"]["realized"] <= metrics["auc"]["interval"][1],
                          "fails": not outcome.passed})
        frame = pd.DataFrame(found)
        table[name] = {"accuracy est / realized": f"{frame['est acc'].mean():.3f} / {frame['real acc'].mean():.3f}",
                       "AUC est / realized": f"{frame['est auc'].mean():.3f} / {frame['real auc'].mean():.3f}",
                       "mean |acc error|": f"{(frame['est acc'] - frame['real acc']).abs().mean():.3f}",
                       "realized inside 90% interval: acc": f"{frame['acc in interval'].mean():.0%}",
                       "auc": f"{frame['auc in interval'].mean():.0%}",
                       "check fails": f"{frame['fails'].mean():.0%}"}
    table["(evaluation baseline)"] = {"accuracy est / realized": f"{baseline.accuracy:.3f}", "AUC est / realized": f"{baseline.auc:.3f}",
                                      "mean |acc error|": "", "realized inside 90% interval: acc": "", "auc": "",
                                      "check fails": ""}
    return pd.DataFrame(table).T


def estimate_false_alarms(traffic: pd.DataFrame, baseline: ConceptBaseline, thresholds: MonitoringThresholds,
                          windows: int, rng: np.random.Generator) -> str:
    """Calm windows of the smallest judged size (noisiest) and of 5x that: how often the estimate check fails."""
    found = []
    for size in (thresholds.performance.min_rows, 5 * thresholds.performance.min_rows):
        fails = sum(not performance_estimate(traffic["probability"].to_numpy()[rng.integers(0, len(traffic), size)], baseline,
                                             thresholds.performance).passed for _ in range(windows))
        found.append(f"{100 * fails / windows:.2f} per 100 calm windows of {size} requests ({windows} windows)")
    return "performance_estimate false alarms: " + "; ".join(found)


# --- paired limits on honest retrains ----------------------------------------------------------


def retrain_table(examples: Path, scored: pd.DataFrame, models: list[Path], thresholds: MonitoringThresholds,
                  sizes: list[int], repeats: int, rng: np.random.Generator) -> pd.DataFrame:
    """Every two distinct retrained models on windows of the same eval rows, as the canary judge compares them."""
    from monitoring.paired import compare_paired
    from trainer.evaluate import score_examples

    distinct: list[tuple[str, np.ndarray]] = [("model", scored["probability"].to_numpy())]
    for path in models:
        probabilities = score_examples(examples, "eval", {"model": path}).probabilities["model"]
        # Retrains of the same data and seed are the same model: compared, they say nothing.
        if not any(np.allclose(probabilities, seen, atol=1e-6) for _, seen in distinct):
            distinct.append((str(path), probabilities))
    decide = lambda p: np.where(p >= 0.5, "big_tipper", "not_big_tipper")  # noqa: E731 - as the gateway decides
    table = {}
    for size in sizes:
        found = []
        for first in range(len(distinct)):
            for second in range(first + 1, len(distinct)):
                stable, candidate = distinct[first][1], distinct[second][1]
                for _ in range(repeats):
                    picked = rng.choice(len(scored), size, replace=False)
                    window = scored.iloc[picked].reset_index(drop=True).assign(
                        stable_version=1, candidate_version=2, stable_probability=stable[picked],
                        candidate_probability=candidate[picked], stable_decision=decide(stable[picked]),
                        candidate_decision=decide(candidate[picked]), ground_truth=pd.array(scored["label"].to_numpy()[picked], dtype="Int64"))
                    comparison = compare_paired(window, thresholds.paired)
                    slices = [(1 - s.agreement, f"{s.feature}={s.value}") for s in comparison.slices
                              if s.pairs >= thresholds.paired.min_slice_pairs]
                    found.append((1 - comparison.agreement, max(slices, default=(0.0, "")), comparison.diverged))
        overall = np.array([f[0] for f in found])
        worst_slice = max(found, key=lambda f: f[1][0])[1]
        table[f"windows of {size}"] = {
            "model pairs": len(distinct) * (len(distinct) - 1) // 2, "windows": len(found),
            "overall disagreement: median": f"{np.median(overall):.3f}", "95th pct": f"{np.percentile(overall, 95):.3f}",
            "worst": f"{overall.max():.3f} (limit {thresholds.paired.max_disagreement:g})",
            "worst slice": f"{worst_slice[0]:.3f} {worst_slice[1]} (limit {thresholds.paired.max_slice_disagreement:g})",
            "diverged": f"{sum(f[2] for f in found)}/{len(found)}"}
    return pd.DataFrame(table).T


# --- data drift ------------------------------------------------------------------------------


def data_drift_table(training: pd.DataFrame, traffic: pd.DataFrame, thresholds: MonitoringThresholds, sizes: list[int],
                     repeats: int, rng: np.random.Generator) -> pd.DataFrame:
    from validation.schema import load_schema

    schema = load_schema(PROJECT_ROOT / "data" / "taxi" / "schema.pbtxt")
    baseline = Baseline("training data", statistics_of_frame(training), training)

    def mobile(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.copy()
        frame.loc[rng.random(len(frame)) < 0.1, PAYMENT_TYPE_KEY] = "Mobile"
        return frame

    cards = np.where(traffic[PAYMENT_TYPE_KEY] == "Credit Card", 3.0, 1.0)
    kinds: dict[str, tuple[np.ndarray | None, Callable[[pd.DataFrame], pd.DataFrame]]] = {
        "calm (resampled traffic)": (None, lambda f: f),
        "fares x1.5": (None, lambda f: f.assign(**{FARE_KEY: f[FARE_KEY] * 1.5})),
        "no Cash": (None, lambda f: f[f[PAYMENT_TYPE_KEY] != "Cash"]),
        "10% new payment type": (None, mobile),
        "card trips x3 (payment mix)": (cards / cards.sum(), lambda f: f),
    }
    table = {}
    for name, (weights, change) in kinds.items():
        fired = {}
        for size in sizes:
            hits = 0
            for _ in range(repeats):
                picked = traffic.iloc[rng.choice(len(traffic), size, replace=True, p=weights)]
                window = change(picked)[list(SERVING_COLUMNS)]
                outcome = checks.data_drift(statistics_of_frame(window), window, [baseline], schema, thresholds, 24 * 366 * 2)
                hits += int(not outcome.passed)
            fired[f"fails at n={size}"] = f"{hits}/{repeats}"
        table[name] = fired
    return pd.DataFrame(table).T


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a training run directory: <run>/clean/cleaned and <run>/train/model")
    parser.add_argument("--examples", type=Path, help="Examples with Split-eval (and Split-train for data drift)")
    parser.add_argument("--model", type=Path, help="the SavedModel trained on them")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--history", type=int, default=3000, help="calm labels before a change (the pooled window's share)")
    parser.add_argument("--horizon", type=int, default=3000, help="labels after a sudden change before it counts as missed")
    parser.add_argument("--step", type=int, default=5, help="labels between check runs while waiting for a change")
    parser.add_argument("--calm-history", type=int, default=15000,
                        help="labels a calm check judges (the issue's 7 days held 15,207)")
    parser.add_argument("--window", type=int, default=100, help="labels per calm window")
    parser.add_argument("--calm-windows", type=int, default=300, help="windows per calm stream")
    parser.add_argument("--calm-streams", type=int, default=5)
    parser.add_argument("--rows", type=int, default=500, help="served requests per window of the estimate")
    parser.add_argument("--drift-sizes", default="100,200,500,1000")
    parser.add_argument("--oracle-threshold", type=float, default=8.0,
                        help="threshold of the likelihood-ratio CUSUM that knows the 5%% flip (the bound on any detector)")
    parser.add_argument("--estimate-repeats", type=int, default=40, help="windows per case of the label-free estimate")
    parser.add_argument("--retrained-models", type=Path, nargs="*", default=[],
                        help="SavedModels of honest retrains (other seeds or windows): their paired disagreement on the eval rows")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--skip-data-drift", action="store_true")
    args = parser.parse_args(argv)
    if args.run:
        args.examples, args.model = args.examples or args.run / "clean" / "cleaned", args.model or args.run / "train" / "model"
    if not args.examples or not args.model:
        parser.error("give --run, or --examples and --model (a pipeline run: `mlops run` or `make run`)")
    started = time.monotonic()
    rng = np.random.default_rng(args.seed)
    thresholds = load_thresholds()
    scored = scored_eval_rows(args.examples, args.model)
    order = rng.permutation(len(scored))
    evaluation, traffic = scored.iloc[order[: len(scored) // 2]], scored.iloc[order[len(scored) // 2:]].reset_index(drop=True)
    realized = checks.concept_metrics(evaluation["label"].to_numpy(), evaluation["probability"].to_numpy(), 0.5,
                                      thresholds.concept.calibration_bins)
    baseline = ConceptBaseline(realized["auc"], realized["accuracy"], realized["ece"], "evaluation half",
                               calibration_of(evaluation, "evaluation half"))
    print(f"model {args.model}: {len(scored)} eval rows scored; {len(evaluation)} play the evaluation (AUC "
          f"{baseline.auc:.3f}, accuracy {baseline.accuracy:.3f}), {len(traffic)} the traffic; thresholds {thresholds.source}")
    with pd.option_context("display.width", 250, "display.max_columns", 20, "display.max_colwidth", 60):
        print(f"\nConcept drift: labels after the change until concept_drift fails ({args.repeats} repeats, "
              f"{args.history} calm labels before, checked every {args.step} labels)")
        print(concept_table(traffic, baseline, thresholds, args, rng).to_string())
        print(f"\nPerformance estimate without labels, windows of {args.rows} served requests ({args.estimate_repeats} repeats)")
        print(estimate_table(traffic, baseline, thresholds, args.rows, args.estimate_repeats, rng).to_string())
        print(estimate_false_alarms(traffic, baseline, thresholds, args.calm_windows * args.calm_streams, rng))
        if args.retrained_models:
            print(f"\nPaired comparison of honest retrains (distinct models among {len(args.retrained_models) + 1}, "
                  f"windows of the eval rows, {args.repeats} per model pair)")
            print(retrain_table(args.examples, scored, args.retrained_models, thresholds, [200, 500, 2000], args.repeats, rng).to_string())
        if not args.skip_data_drift:
            from monitoring.frames import read_examples_frame

            training = read_examples_frame(args.examples, "train")
            print(f"\nData drift: windows of n requests after the change that fail data_drift ({args.repeats} repeats)")
            print(data_drift_table(training, traffic, thresholds, [int(s) for s in args.drift_sizes.split(",")],
                                   args.repeats, rng).to_string())
    print(f"\n({time.monotonic() - started:.0f}s)")


if __name__ == "__main__":
    main()
