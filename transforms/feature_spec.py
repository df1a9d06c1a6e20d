"""TensorFlow views of the raw features in transforms/features.py.

Two kinds of client reach the model: tf.Example clients (batch jobs, TFX-style tools) and JSON
clients (the gateway, TF Serving's REST API). tf.io.parse_example with VarLenFeatures turns an
absent feature into a missing entry of a SparseTensor; JSON clients cannot send "absent", so they
send the sentinels MISSING_FLOAT / MISSING_INT / MISSING_STRING in dense `[None]` tensors.
`dense_to_sparse` turns the second form into exactly the first, so both reach the identical TFT
graph and a value missing in either form is treated the same way.
"""

from __future__ import annotations

from typing import Mapping

import tensorflow as tf
from tensorflow_metadata.proto.v0 import schema_pb2
from tensorflow_transform.tf_metadata import schema_utils

from transforms.features import (
    EXAMPLE_FEATURES,
    LABEL_SOURCES,
    MISSING_INT,
    MISSING_STRING,
    SERVING_FEATURES,
    Kind,
)

DTYPES: Mapping[Kind, tf.dtypes.DType] = {Kind.FLOAT: tf.float32, Kind.INT: tf.int64, Kind.STRING: tf.string}


def raw_feature_spec(include_label_source: bool = True) -> dict[str, tf.io.VarLenFeature]:
    """The parsing spec of raw (and cleaned) Examples.

    Every feature is a VarLenFeature because any of them may be absent in a given Example (even a
    `required` one at serving time); preprocessing_fn decides what missing means per feature.
    With the label sources (`tips`, and the observed label production rows carry instead) it is the
    spec of training examples; without them, the spec of serving requests.
    """
    return {
        feature.name: tf.io.VarLenFeature(DTYPES[feature.kind])
        for feature in EXAMPLE_FEATURES
        if include_label_source or feature.name not in LABEL_SOURCES
    }


def raw_schema(include_label_source: bool = True) -> schema_pb2.Schema:
    """The raw feature spec as a Schema proto, what TFXIO and TFT's dataset metadata take."""
    return schema_utils.schema_from_feature_spec(raw_feature_spec(include_label_source))


def serving_input_signature() -> dict[str, tf.TensorSpec]:
    """The inputs of the `serving_default` signature: one dense `[None]` tensor per serving column."""
    return {
        feature.name: tf.TensorSpec([None], DTYPES[feature.kind], name=feature.name)
        for feature in SERVING_FEATURES
    }


def _present_mask(values: tf.Tensor) -> tf.Tensor:
    """True where a dense serving value is a real value, False where it is the missing sentinel."""
    if values.dtype.is_floating:
        return tf.logical_not(tf.math.is_nan(values))
    if values.dtype == tf.string:
        return tf.not_equal(values, MISSING_STRING)
    return tf.not_equal(values, tf.cast(MISSING_INT, values.dtype))


def dense_to_sparse(inputs: Mapping[str, tf.Tensor]) -> dict[str, tf.SparseTensor]:
    """Dense serving tensors with sentinels -> the SparseTensors parse_example gives for the same rows.

    For a VarLenFeature, parse_example returns indices `[row, 0]` for each present value, and a
    dense shape `[batch, max values per row]`: `[batch, 1]` if any row has the value, `[batch, 0]`
    if none does. Reproducing that exactly (not only the values) keeps the two serving paths one.
    """
    sparse: dict[str, tf.SparseTensor] = {}
    for name, values in inputs.items():
        values = tf.reshape(values, [-1])
        present = _present_mask(values)
        rows = tf.where(present)  # int64 [n_present, 1], in row order like parse_example
        indices = tf.concat([rows, tf.zeros_like(rows)], axis=1)
        batch_size = tf.shape(values, out_type=tf.int64)[0]
        width = tf.reduce_max(tf.concat([tf.cast(present, tf.int64), tf.zeros([1], tf.int64)], axis=0))
        sparse[name] = tf.SparseTensor(
            indices=indices,
            values=tf.boolean_mask(values, present),
            dense_shape=tf.stack([batch_size, width]),
        )
    return sparse
