"""Evaluation labels: a production row's observed label, a CSV row's tips rule; a row with neither is refused."""

from __future__ import annotations

import math

import pytest
import tensorflow as tf

from core.errors import DataError
from trainer import evaluate
from transforms import features


def _parsed(tips, fares, observed):
    return {
        features.TIPS_KEY: tf.constant(tips, tf.float32),
        features.FARE_KEY: tf.constant(fares, tf.float32),
        features.OBSERVED_LABEL_KEY: tf.constant(observed, tf.int64),
        evaluate.PAYMENT_TYPE.name: tf.constant([b"Cash"] * len(tips)),
        evaluate.START_HOUR.name: tf.constant([12] * len(tips), tf.int64),
    }


def test_observed_labels_win_and_tips_decide_the_rest():
    none = features.MISSING_INT
    labels, _, _ = evaluate._label_and_slices("f", 0, _parsed(
        [5.0, 0.0, math.nan, math.nan, 5.0], [10.0, 10.0, 10.0, 10.0, 10.0], [none, none, 1, 0, 0]))
    assert labels.tolist() == [True, False, True, False, False]


def test_a_row_without_tips_or_an_observed_label_is_refused():
    with pytest.raises(DataError, match="record 2 has no 'tips'"):
        evaluate._label_and_slices("f", 2, _parsed([math.nan], [10.0], [features.MISSING_INT]))
