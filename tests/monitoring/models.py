"""A real, calibrated estimator without TensorFlow, and the evaluation baseline it would get.

Fast enough to score thousands of windows in a test; the detectors only ever see its probabilities,
as they only see the served model's.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from monitoring import checks
from monitoring.results import CalibrationMap, ConceptBaseline, PredictionBaseline
from trainer.evaluate import score_histogram
from transforms.features import FARE_KEY, PAYMENT_TYPE_KEY, TIPS_KEY, is_big_tipper


def labels_of(frame: pd.DataFrame) -> np.ndarray:
    return is_big_tipper(frame[TIPS_KEY], frame[FARE_KEY]).to_numpy(dtype=int)


class RateModel:
    """The big-tipper rate per payment type and fare quartile, learnt from the training rows."""

    def __init__(self, training: pd.DataFrame) -> None:
        self.edges = np.quantile(training[FARE_KEY], [0.25, 0.5, 0.75])
        labels = pd.Series(labels_of(training), index=training.index)
        grouped = labels.groupby(self._keys(training)).agg(["sum", "count"])
        self.rates = ((grouped["sum"] + 1) / (grouped["count"] + 2)).to_dict()
        self.prior = float(labels.mean())

    def _keys(self, frame: pd.DataFrame) -> pd.Series:
        return (frame[PAYMENT_TYPE_KEY].fillna("") + "|"
                + pd.Series(np.searchsorted(self.edges, frame[FARE_KEY]), index=frame.index).astype(str))

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return self._keys(frame).map(self.rates).fillna(self.prior).to_numpy(dtype=float)


def evaluation_baselines(model: RateModel, evaluation: pd.DataFrame) -> tuple[ConceptBaseline, PredictionBaseline]:
    """What trainer/evaluate.py would record for the model on these rows: metrics, score histogram, calibration."""
    probabilities = model.predict(evaluation)
    labels = labels_of(evaluation)
    metrics = checks.concept_metrics(labels, probabilities, 0.5, 10)
    histogram = score_histogram(labels, probabilities)
    calibration = CalibrationMap.from_histogram(histogram["edges"], histogram["positives"], histogram["negatives"],
                                                "held-out 2013-2014 trips")
    baseline = ConceptBaseline(metrics["auc"], metrics["accuracy"], metrics["ece"], "held-out 2013-2014 trips", calibration)
    edges = np.linspace(0, 1, 21)
    return baseline, PredictionBaseline(tuple(edges), tuple(checks.probability_histogram(probabilities, edges)), "held-out")
