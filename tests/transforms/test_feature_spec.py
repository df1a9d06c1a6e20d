"""The two serving input forms (dense with sentinels, tf.Examples with absent features) are one.

JSON clients send sentinels, tf.Example clients leave features out; dense_to_sparse must give
exactly what tf.io.parse_example gives, so both reach the TFT graph as the same tensors.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft

from beam_jobs.example_codec import serialize_row
from tests.transforms.cleaned_examples import (
    blank_some_values,
    cleaned_taxi_rows,
    rows_to_dense,
    small_transform,
)
from transforms.feature_spec import dense_to_sparse, raw_feature_spec, serving_input_signature
from transforms.features import (
    MISSING_FLOAT,
    MISSING_INT,
    MISSING_STRING,
    OBSERVED_LABEL_KEY,
    RAW_COLUMNS,
    SERVING_COLUMNS,
    SERVING_FEATURES,
    TIPS_KEY,
    Kind,
)


def parse_rows(rows: list[dict]) -> dict[str, tf.SparseTensor]:
    serialized = tf.constant([serialize_row({k: v for k, v in row.items() if k != TIPS_KEY}) for row in rows], tf.string)
    return tf.io.parse_example(serialized, raw_feature_spec(include_label_source=False))


def assert_same_sparse(actual: tf.SparseTensor, expected: tf.SparseTensor, name: str) -> None:
    np.testing.assert_array_equal(actual.indices.numpy(), expected.indices.numpy(), err_msg=f"{name} indices")
    np.testing.assert_array_equal(actual.values.numpy(), expected.values.numpy(), err_msg=f"{name} values")
    np.testing.assert_array_equal(actual.dense_shape.numpy(), expected.dense_shape.numpy(), err_msg=f"{name} shape")
    assert actual.dtype == expected.dtype, name


@pytest.fixture(scope="module")
def sample_rows(taxi_rows) -> list[dict]:
    rows = cleaned_taxi_rows(taxi_rows, years=(2015, 2016), limit=60)
    rows = blank_some_values(rows, share=0.25, seed=7)
    # One column missing in every row: parse_example then gives a dense shape of [batch, 0].
    for row in rows:
        row["company"] = None
    return rows


def test_raw_feature_spec_is_varlen_for_every_raw_column_and_optionally_tips():
    spec = raw_feature_spec()
    # The CSV columns, then the observed label a production row carries instead of tips.
    assert list(spec) == [*RAW_COLUMNS, OBSERVED_LABEL_KEY]
    assert all(isinstance(feature, tf.io.VarLenFeature) for feature in spec.values())
    assert spec["fare"].dtype == tf.float32 and spec["trip_seconds"].dtype == tf.int64 and spec["company"].dtype == tf.string
    assert list(raw_feature_spec(include_label_source=False)) == list(SERVING_COLUMNS)


def test_serving_signature_has_one_dense_vector_per_serving_column_of_its_kind():
    signature = serving_input_signature()
    assert list(signature) == list(SERVING_COLUMNS)
    dtypes = {Kind.FLOAT: tf.float32, Kind.INT: tf.int64, Kind.STRING: tf.string}
    for feature in SERVING_FEATURES:
        spec = signature[feature.name]
        assert spec.shape.as_list() == [None] and spec.dtype == dtypes[feature.kind] and spec.name == feature.name


def test_dense_to_sparse_equals_parse_example_of_the_same_rows(sample_rows):
    parsed = parse_rows(sample_rows)
    converted = dense_to_sparse({k: tf.constant(v) for k, v in rows_to_dense(sample_rows).items()})
    assert set(converted) == set(parsed)
    for name in parsed:
        assert_same_sparse(converted[name], parsed[name], name)
    assert converted["company"].dense_shape.numpy().tolist() == [len(sample_rows), 0]


def test_dense_to_sparse_treats_only_the_sentinels_as_missing():
    converted = dense_to_sparse({
        "fare": tf.constant([MISSING_FLOAT, 0.0, -1.0], tf.float32),
        "trip_seconds": tf.constant([MISSING_INT, 0, 5], tf.int64),
        "company": tf.constant([MISSING_STRING, " ", "Flash Cab"], tf.string),
    })
    assert converted["fare"].indices.numpy().tolist() == [[1, 0], [2, 0]]
    assert converted["fare"].values.numpy().tolist() == [0.0, -1.0]
    assert converted["trip_seconds"].values.numpy().tolist() == [0, 5]
    assert converted["company"].values.numpy().tolist() == [b" ", b"Flash Cab"]


def test_empty_batch_converts_like_parse_example():
    empty = {feature.name: tf.zeros([0], serving_input_signature()[feature.name].dtype) for feature in SERVING_FEATURES}
    parsed = tf.io.parse_example(tf.zeros([0], tf.string), raw_feature_spec(include_label_source=False))
    converted = dense_to_sparse(empty)
    for name in parsed:
        assert_same_sparse(converted[name], parsed[name], name)


def test_both_forms_give_identical_transformed_features(taxi_rows, sample_rows):
    """Through a real transform graph: every transformed output equal, missing values included."""
    _, _, result = small_transform(taxi_rows)
    layer = tft.TFTransformOutput(str(result.transform_graph_dir)).transform_features_layer()
    from_examples = layer(parse_rows(sample_rows))
    from_dense = layer(dense_to_sparse({k: tf.constant(v) for k, v in rows_to_dense(sample_rows).items()}))
    assert set(from_dense) == set(from_examples) and len(from_dense) > 20
    for name in from_examples:
        np.testing.assert_array_equal(from_dense[name].numpy(), from_examples[name].numpy(), err_msg=name)
    # The blanked values really were missing (else this test would prove nothing).
    assert from_examples["fare_missing_xf"].numpy().sum() > 0
    assert (from_examples["company_xf"].numpy() == 0).all()
