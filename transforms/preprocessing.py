"""The TF Transform `preprocessing_fn`: raw taxi features -> model inputs, and nothing else.

It is pure (only tf/tft ops and constants from transforms/features.py) because the graph it
builds ships inside the exported model: whatever it does at training time happens identically at
serving time. Every input is a SparseTensor (a VarLenFeature, see feature_spec.py), so "missing"
is an absent entry, and each encoding says what missing becomes.

The output names and id ranges are also defined here (`dense_outputs`, `categorical_outputs`),
so the model builder takes them from the same place instead of retyping them.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

import tensorflow as tf
import tensorflow_transform as tft

from transforms.features import (
    BUCKET_FEATURES,
    CATEGORICAL_FEATURES,
    DAY_KEY,
    DENSE_FLOAT_FEATURES,
    FARE_KEY,
    FEATURE_BUCKET_COUNT,
    FEATURES_BY_NAME,
    HOUR_BUCKETS,
    HOUR_KEY,
    LABEL_KEY,
    LOG_SCALED_FEATURES,
    OBSERVED_LABEL_KEY,
    OOV_SIZE,
    TIPS_KEY,
    VOCAB_FEATURES,
    VOCAB_SIZE,
    is_big_tipper,
    transformed_name,
)

# trip_start_day counts from 1 = Sunday, so Saturday is 7.
WEEKEND_DAYS = (1, 7)
HOURS_PER_DAY = 24

# Bucketized coordinates: ids 0..FEATURE_BUCKET_COUNT-1 from the quantiles, this one for missing.
MISSING_BUCKET_ID = FEATURE_BUCKET_COUNT
# Vocabulary and integer categoricals: id 0 is "missing", real values start at 1.
MISSING_ID = 0

HOUR_SIN = transformed_name(f"{HOUR_KEY}_sin")
HOUR_COS = transformed_name(f"{HOUR_KEY}_cos")
HOUR_BUCKET = transformed_name(f"{HOUR_KEY}_bucket")
WEEKEND = transformed_name("weekend")
LABEL = transformed_name(LABEL_KEY)


def missing_indicator_name(key: str) -> str:
    return transformed_name(f"{key}_missing")


def scaled_name(key: str) -> str:
    """The z-scored value of a feature whose main output is something else (a bucket id)."""
    return transformed_name(f"{key}_scaled")


def vocabulary_filename(key: str) -> str:
    """The name TFT gives the vocabulary file, so the model can ask for its size."""
    return f"{key}_vocab"


def categorical_id_count(key: str) -> int:
    """Ids of an integer categorical: value - valid_min + 1, with 0 for missing or out of range.

    Taken from the feature's valid range in features.py: hours run 0..23, so they need 25 ids
    once 0 is reserved for missing.
    """
    feature = FEATURES_BY_NAME[key]
    assert feature.valid_min is not None and feature.valid_max is not None, key
    return int(feature.valid_max) - int(feature.valid_min) + 2


def dense_outputs() -> tuple[str, ...]:
    """Float outputs the model feeds to its deep part as they are (already scaled to ~unit range)."""
    names = [transformed_name(key) for key in DENSE_FLOAT_FEATURES]
    names += [scaled_name(key) for key in BUCKET_FEATURES]
    names += [missing_indicator_name(key) for key in (*DENSE_FLOAT_FEATURES, *BUCKET_FEATURES)]
    names += [HOUR_SIN, HOUR_COS, WEEKEND]
    return tuple(names)


def categorical_outputs(vocabulary_size: Callable[[str], int]) -> dict[str, int]:
    """Integer outputs -> their number of ids. `vocabulary_size(filename)` reads the analyzed vocabularies.

    Pass `tft.TFTransformOutput.vocabulary_size_by_name`: vocabularies are only known after
    analysis, every other range is fixed by features.py.
    """
    counts = {transformed_name(key): FEATURE_BUCKET_COUNT + 1 for key in BUCKET_FEATURES}
    for key in VOCAB_FEATURES:
        counts[transformed_name(key)] = 1 + vocabulary_size(vocabulary_filename(key)) + OOV_SIZE
    for key in CATEGORICAL_FEATURES:
        counts[transformed_name(key)] = categorical_id_count(key)
    counts[HOUR_BUCKET] = 1 + len(HOUR_BUCKETS)
    return counts


def _to_dense(values: tf.SparseTensor | tf.Tensor, default: float | int | str) -> tf.Tensor:
    """A `[batch]` tensor from a VarLen feature (at most one value per row), `default` where absent."""
    if not isinstance(values, tf.SparseTensor):
        return tf.reshape(values, [-1])
    one_column = tf.SparseTensor(values.indices, values.values, tf.stack([values.dense_shape[0], 1]))
    return tf.squeeze(tf.sparse.to_dense(one_column, default_value=default), axis=1)


def _present(values: tf.SparseTensor) -> tf.Tensor:
    """A `[batch]` bool tensor: does the row have the feature?"""
    flags = tf.SparseTensor(values.indices, tf.ones_like(values.values, dtype=tf.bool), values.dense_shape)
    return _to_dense(flags, False)


def _scaled_numeric(values: tf.SparseTensor, log_scale: bool) -> tf.Tensor:
    """z-score over the present values; a missing value becomes 0, i.e. the mean of present values.

    Scaling the sparse values first and then filling 0 is mean imputation followed by z-scoring,
    without letting the imputed values shrink the variance. Negative values (impossible after the
    clean step, possible in a raw serving request) are floored at 0 so log1p stays finite.
    """
    numbers = tf.cast(values.values, tf.float32)
    if log_scale:
        numbers = tf.math.log1p(tf.maximum(numbers, 0.0))
    scaled = tft.scale_to_z_score(tf.SparseTensor(values.indices, numbers, values.dense_shape))
    return _to_dense(scaled, 0.0)


def _vocabulary_ids(key: str, values: tf.SparseTensor) -> tf.Tensor:
    """Vocabulary ids shifted by one so that 0 means missing; unseen values hash into OOV ids."""
    ids = tft.compute_and_apply_vocabulary(
        values, top_k=VOCAB_SIZE, num_oov_buckets=OOV_SIZE, vocab_filename=vocabulary_filename(key)
    )
    return _to_dense(tf.SparseTensor(ids.indices, ids.values + 1, ids.dense_shape), MISSING_ID)


def _categorical_ids(key: str, values: tf.SparseTensor) -> tf.Tensor:
    """value - valid_min + 1 for values in the valid range; 0 for missing or out of range."""
    feature = FEATURES_BY_NAME[key]
    number = _to_dense(tf.cast(values, tf.int64) if values.dtype != tf.int64 else values, -1)
    low, high = int(feature.valid_min), int(feature.valid_max)  # type: ignore[arg-type]
    in_range = tf.logical_and(number >= low, number <= high)
    return tf.where(in_range, number - low + 1, tf.constant(MISSING_ID, tf.int64))


def _time_features(hour: tf.SparseTensor, day: tf.SparseTensor) -> dict[str, tf.Tensor]:
    """Hour of day as a point on a circle (23h is next to 0h), its part of day, and weekend."""
    hour_number = _to_dense(hour, -1)
    hour_known = tf.logical_and(hour_number >= 0, hour_number < HOURS_PER_DAY)
    angle = tf.cast(hour_number, tf.float32) * (2.0 * math.pi / HOURS_PER_DAY)
    zero = tf.zeros_like(angle)
    bucket = tf.zeros_like(hour_number)
    for index, (low, high, _) in enumerate(HOUR_BUCKETS):
        in_bucket = tf.logical_and(hour_number >= low, hour_number < high)
        bucket = tf.where(in_bucket, tf.constant(index + 1, tf.int64), bucket)
    day_number = _to_dense(day, -1)
    weekend = tf.reduce_any(tf.stack([tf.equal(day_number, d) for d in WEEKEND_DAYS]), axis=0)
    return {
        HOUR_SIN: tf.where(hour_known, tf.sin(angle), zero),
        HOUR_COS: tf.where(hour_known, tf.cos(angle), zero),
        HOUR_BUCKET: bucket,
        WEEKEND: tf.cast(weekend, tf.float32),
    }


def _big_tipper(tips: tf.SparseTensor, fare: tf.SparseTensor) -> tf.Tensor:
    """1 for a big tipper (features.is_big_tipper); 0 when either is missing (NaN compares false)."""
    tips_value = _to_dense(tips, math.nan)
    fare_value = _to_dense(fare, math.nan)
    return tf.cast(is_big_tipper(tips_value, fare_value), tf.int64)


def _label(tips: tf.SparseTensor, fare: tf.SparseTensor, observed: tf.SparseTensor | None) -> tf.Tensor:
    """The observed label where a row carries one (a production row), else derived from tips and fare."""
    derived = _big_tipper(tips, fare)
    if observed is None:
        return derived
    observed_value = tf.cast(_to_dense(observed, -1), tf.int64)
    return tf.where(_present(observed), observed_value, derived)


def _single_valued(name: str, values: tf.SparseTensor) -> tf.SparseTensor:
    """`values`, after checking no example has two values: the encodings read one value per row.

    Cleaned data never has two; a tf.Example client could send them, and without the check the
    error would be an index out of bounds that names no feature.
    """
    check = tf.debugging.assert_less_equal(
        values.dense_shape[1], tf.constant(1, tf.int64), message=f"feature {name!r}: expected at most one value per example"
    )
    with tf.control_dependencies([check]):
        return tf.SparseTensor(tf.identity(values.indices), values.values, values.dense_shape)


def preprocessing_fn(inputs: Mapping[str, tf.SparseTensor]) -> dict[str, tf.Tensor]:
    """Raw features (SparseTensors by raw_feature_spec) -> transformed features, all `[batch]`.

    `tips` is optional: with it (training, evaluation) the label is emitted; without it (the
    serving graph) everything else is the same. A row that carries the observed label (a labelled
    production request, which has no tips) takes that as its label.
    """
    inputs = {
        name: _single_valued(name, values) if isinstance(values, tf.SparseTensor) else values
        for name, values in inputs.items()
    }
    outputs: dict[str, tf.Tensor] = {}
    for key in DENSE_FLOAT_FEATURES:
        outputs[transformed_name(key)] = _scaled_numeric(inputs[key], log_scale=key in LOG_SCALED_FEATURES)
    for key in BUCKET_FEATURES:
        buckets = tft.bucketize(inputs[key], FEATURE_BUCKET_COUNT)
        outputs[transformed_name(key)] = _to_dense(buckets, tf.constant(MISSING_BUCKET_ID, buckets.dtype))
        outputs[scaled_name(key)] = _scaled_numeric(inputs[key], log_scale=False)
    for key in (*DENSE_FLOAT_FEATURES, *BUCKET_FEATURES):
        outputs[missing_indicator_name(key)] = 1.0 - tf.cast(_present(inputs[key]), tf.float32)
    for key in VOCAB_FEATURES:
        outputs[transformed_name(key)] = _vocabulary_ids(key, inputs[key])
    for key in CATEGORICAL_FEATURES:
        outputs[transformed_name(key)] = _categorical_ids(key, inputs[key])
    outputs.update(_time_features(inputs[HOUR_KEY], inputs[DAY_KEY]))
    if TIPS_KEY in inputs:
        outputs[LABEL] = _label(inputs[TIPS_KEY], inputs[FARE_KEY], inputs.get(OBSERVED_LABEL_KEY))
    return outputs
