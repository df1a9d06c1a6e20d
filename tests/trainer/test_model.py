"""The model builder: shapes, ranges, and that the config and the transform output really shape the model."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras

from core.config import TrainingConfig
from tests.transforms.cleaned_examples import small_transform
from trainer.model import CROSSES, build_keras_model, model_input_specs
from trainer.train import first_rows
from transforms.features import OOV_SIZE, transformed_name
from transforms.preprocessing import LABEL, categorical_outputs, dense_outputs, vocabulary_filename

CONFIG = TrainingConfig(learning_rate=0.01, hidden_units=(24, 12), embedding_dim=5, seed=3)


@pytest.fixture(scope="module")
def transform_output(taxi_rows) -> tft.TFTransformOutput:
    _, _, result = small_transform(taxi_rows)
    return tft.TFTransformOutput(str(result.transform_graph_dir))


@pytest.fixture(scope="module")
def batch(taxi_rows, transform_output) -> dict[str, np.ndarray]:
    _, _, result = small_transform(taxi_rows)
    columns, _, _ = first_rows(result.transformed_dir, "train", transform_output.transformed_feature_spec(), limit=64)
    return columns


@pytest.fixture(scope="module")
def model(transform_output) -> tf_keras.Model:
    tf_keras.utils.set_random_seed(CONFIG.seed)
    return build_keras_model(CONFIG, transform_output)


def test_one_probability_per_row_strictly_between_0_and_1(model, batch):
    inputs = {name: batch[name] for name in model.input}
    probabilities = model(inputs, training=False).numpy()
    assert probabilities.shape == (64, 1)
    assert ((probabilities > 0) & (probabilities < 1)).all()
    assert probabilities.std() > 0, "every row got the same score: inputs are not reaching the output"


def test_inputs_are_the_transformed_features_without_the_label(model, transform_output):
    names = set(model.input)
    assert names == set(dense_outputs()) | set(categorical_outputs(transform_output.vocabulary_size_by_name))
    assert LABEL not in names
    assert names <= set(transform_output.transformed_feature_spec())


def hidden_units_of(model: tf_keras.Model) -> list[int]:
    return [
        layer.units
        for layer in model.layers
        if isinstance(layer, tf_keras.layers.Dense) and layer.name.startswith("deep_") and layer.name != "deep_logit"
    ]


def test_hidden_layers_follow_config_hidden_units(model, transform_output):
    assert hidden_units_of(model) == list(CONFIG.hidden_units)
    assert all(model.get_layer(f"deep_{i}").activation is tf_keras.activations.relu for i in range(len(CONFIG.hidden_units)))
    other = build_keras_model(TrainingConfig(hidden_units=(7, 6, 5)), transform_output)
    assert hidden_units_of(other) == [7, 6, 5]


def test_embedding_tables_are_sized_from_the_analyzed_vocabularies(model, transform_output):
    embeddings = {layer.name: layer for layer in model.layers if isinstance(layer, tf_keras.layers.Embedding)}
    for key in ("payment_type", "company", "dropoff_census_tract"):
        name = transformed_name(key)
        expected_rows = 1 + transform_output.vocabulary_size_by_name(vocabulary_filename(key)) + OOV_SIZE
        deep = embeddings[f"deep_embedding_{name}"]
        assert (deep.input_dim, deep.output_dim) == (expected_rows, CONFIG.embedding_dim)
        assert embeddings[f"wide_{name}"].input_dim == expected_rows
    counts = {name: count for name, (_, count) in model_input_specs(transform_output).items() if count}
    for first, second in CROSSES:
        assert embeddings[f"wide_{first}_x_{second}"].input_dim == counts[first] * counts[second]


def test_every_emitted_id_fits_its_table(model, batch):
    """An id past the end of an embedding table would fail (or be clamped) at serving time."""
    embeddings = {layer.name: layer for layer in model.layers if isinstance(layer, tf_keras.layers.Embedding)}
    for name in model.input:
        table = embeddings.get(f"deep_embedding_{name}")
        if table is not None:
            assert batch[name].min() >= 0 and batch[name].max() < table.input_dim, name


def test_compiled_with_adam_at_config_learning_rate_binary_cross_entropy_and_auc(model):
    assert isinstance(model.optimizer, tf_keras.optimizers.Adam)
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(CONFIG.learning_rate)
    assert isinstance(model.loss, tf_keras.losses.BinaryCrossentropy)
    metric_names = [m.name for m in model.compiled_metrics._user_metrics]
    assert "auc" in metric_names


@pytest.mark.slow  # trains a model
def test_training_steps_move_the_prediction_and_stay_finite(transform_output, batch):
    from trainer.train import fit

    tf_keras.utils.set_random_seed(1)
    fresh = build_keras_model(CONFIG, transform_output)
    inputs = {name: batch[name] for name in fresh.input}
    labels = batch[LABEL].astype(np.float32).reshape(-1, 1)
    before = fresh(inputs).numpy()
    fit(fresh, tf.data.Dataset.from_tensors((inputs, labels)).repeat(), steps=3)
    after = fresh(inputs).numpy()
    assert not np.allclose(before, after)
    assert np.isfinite(after).all()
