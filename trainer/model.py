"""The wide-and-deep classifier of big tippers, built from the transformed features.

Pure: it only reads the transform output (for vocabulary sizes) and the config, and returns a
compiled `tf_keras` model. The input names and id ranges come from transforms/preprocessing.py,
so the model and the transform cannot disagree about what a feature is.

- Wide: a linear model over one-hot categoricals and crosses of them. A one-hot vector times a
  weight vector is a lookup, so each term is an `Embedding(ids, 1)`: the same model as
  `CategoryEncoding` + `Dense`, without materialising (batch x 1,000) one-hot matrices.
- Deep: the scaled numerics and an embedding per categorical, through `config.hidden_units` ReLU
  layers. Tips depend on fare, distance and duration jointly (a short cheap card trip with a $2
  tip is a big tipper, a long one is not): the deep part learns those interactions.
"""

from __future__ import annotations

from typing import Mapping

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras

from core.config import TrainingConfig
from transforms.features import (
    COMPANY_KEY,
    DAY_KEY,
    DROPOFF_COORDINATES,
    HOUR_KEY,
    PAYMENT_TYPE_KEY,
    PICKUP_COORDINATES,
    transformed_name,
)
from transforms.preprocessing import HOUR_BUCKET, categorical_outputs, dense_outputs

PAYMENT_TYPE = transformed_name(PAYMENT_TYPE_KEY)
COMPANY = transformed_name(COMPANY_KEY)
HOUR = transformed_name(HOUR_KEY)
DAY = transformed_name(DAY_KEY)
PICKUP = (transformed_name(PICKUP_COORDINATES[0]), transformed_name(PICKUP_COORDINATES[1]))
DROPOFF = (transformed_name(DROPOFF_COORDINATES[0]), transformed_name(DROPOFF_COORDINATES[1]))
PROBABILITY = "probability"

# Pairs of categoricals whose combination carries more than the two alone, for the wide part:
# a location is a (latitude, longitude) cell, and card payments at some companies (or hours)
# record tips differently.
CROSSES: tuple[tuple[str, str], ...] = (
    PICKUP,
    DROPOFF,
    (PAYMENT_TYPE, COMPANY),
    (PAYMENT_TYPE, HOUR_BUCKET),
    (HOUR, DAY),
)


def model_input_specs(tf_transform_output: tft.TFTransformOutput) -> dict[str, tuple[tf.dtypes.DType, int | None]]:
    """Transformed feature name -> (dtype, number of ids or None for a float feature)."""
    specs: dict[str, tuple[tf.dtypes.DType, int | None]] = {name: (tf.float32, None) for name in dense_outputs()}
    for name, count in categorical_outputs(tf_transform_output.vocabulary_size_by_name).items():
        specs[name] = (tf.int64, count)
    return specs


def _cross(first: tf_keras.KerasTensor, second: tf_keras.KerasTensor, second_count: int) -> tf_keras.KerasTensor:
    """One id per pair of ids: first * second_count + second."""
    return first * second_count + second


def build_keras_model(config: TrainingConfig, tf_transform_output: tft.TFTransformOutput) -> tf_keras.Model:
    """A compiled wide-and-deep binary classifier: transformed features -> P(big tipper), shape [batch, 1]."""
    specs = model_input_specs(tf_transform_output)
    inputs: Mapping[str, tf_keras.KerasTensor] = {
        name: tf_keras.Input(shape=(), name=name, dtype=dtype) for name, (dtype, _) in specs.items()
    }
    counts = {name: count for name, (_, count) in specs.items() if count is not None}
    floats = [name for name, (_, count) in specs.items() if count is None]

    deep_parts = [tf.stack([inputs[name] for name in floats], axis=-1)]
    for name, count in counts.items():
        deep_parts.append(
            tf_keras.layers.Embedding(count, config.embedding_dim, name=f"deep_embedding_{name}")(inputs[name])
        )
    deep = tf_keras.layers.Concatenate(name="deep_inputs")(deep_parts)
    for index, units in enumerate(config.hidden_units):
        deep = tf_keras.layers.Dense(units, activation="relu", name=f"deep_{index}")(deep)
    deep_logit = tf_keras.layers.Dense(1, name="deep_logit")(deep)

    wide_terms = [
        tf_keras.layers.Embedding(count, 1, embeddings_initializer="zeros", name=f"wide_{name}")(inputs[name])
        for name, count in counts.items()
    ]
    for first, second in CROSSES:
        crossed = _cross(inputs[first], inputs[second], counts[second])
        wide_terms.append(
            tf_keras.layers.Embedding(
                counts[first] * counts[second], 1, embeddings_initializer="zeros", name=f"wide_{first}_x_{second}"
            )(crossed)
        )
    logit = tf_keras.layers.Add(name="logit")([deep_logit, *wide_terms])
    probability = tf_keras.layers.Activation("sigmoid", name=PROBABILITY)(logit)

    model = tf_keras.Model(inputs=dict(inputs), outputs=probability, name="wide_and_deep")
    model.compile(
        optimizer=tf_keras.optimizers.Adam(learning_rate=config.learning_rate),
        loss=tf_keras.losses.BinaryCrossentropy(),
        metrics=[tf_keras.metrics.AUC(name="auc", num_thresholds=1000), tf_keras.metrics.BinaryAccuracy(name="accuracy")],
    )
    return model

