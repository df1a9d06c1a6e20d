"""Real taxi rows split like the pipeline splits them: a training set and held-out rows of the same period."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.conftest import PROJECT_ROOT
from tests.monitoring import logs


@pytest.fixture(scope="session")
def taxi(taxi_rows) -> pd.DataFrame:
    """Every row of the shipped CSV, typed, with `tips` (the label source) and the trip's year."""
    frame = logs.taxi_frame(taxi_rows)
    frame["year"] = logs.year_of(frame)
    return frame


@pytest.fixture(scope="session")
def split_2013_2014(taxi):
    """(training, held-out): 2013-2014 trips split 2:1 at random with a fixed seed, as a training run would."""
    period = taxi[taxi["year"] <= 2014].reset_index(drop=True)
    training = period.sample(frac=2 / 3, random_state=20130101)
    heldout = period.drop(training.index)
    return training.reset_index(drop=True), heldout.reset_index(drop=True)


@pytest.fixture(scope="session")
def schema():
    from validation.schema import load_schema

    return load_schema(PROJECT_ROOT / "data" / "taxi" / "schema.pbtxt")


@pytest.fixture(scope="session")
def thresholds():
    from monitoring.settings import load_thresholds

    return load_thresholds()


@pytest.fixture(scope="session")
def training_baseline(split_2013_2014):
    from monitoring.log_statistics import statistics_of_frame
    from monitoring.results import Baseline

    training, _ = split_2013_2014
    return Baseline("training data", statistics_of_frame(training), training)


@pytest.fixture(scope="session")
def rate_model(split_2013_2014):
    """(model, concept baseline with calibration, prediction baseline, traffic): the held-out rows split in two,
    one half playing the evaluation, the other the traffic the checks are tried on."""
    from tests.monitoring.models import RateModel, evaluation_baselines

    training, heldout = split_2013_2014
    model = RateModel(training)
    evaluation = heldout.sample(frac=0.5, random_state=20140101)
    traffic = heldout.drop(evaluation.index).reset_index(drop=True)
    baseline, predictions = evaluation_baselines(model, evaluation)
    return model, baseline, predictions, traffic
