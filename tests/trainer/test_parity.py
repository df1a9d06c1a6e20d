"""Train/serve parity: the exported model, alone, computes what training computed.

Trained on 2013-2014 trips, it scores 2015-2016 trips (with values blanked out) through both
serving signatures after the transform output directory has been deleted, and must match the
training-time path (TFT graph applied in-process + the Keras model) within 1e-5.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tensorflow as tf

from beam_jobs.example_codec import serialize_row
from beam_jobs.transform import transform_examples
from core.config import TrainingConfig
from tests.transforms.cleaned_examples import (
    BEAM_ARGS,
    blank_some_values,
    cleaned_taxi_rows,
    rows_to_dense,
    write_cleaned,
    year_of,
)
from trainer.train import export_model, fit_and_evaluate, load_transform_output
from transforms.feature_spec import raw_feature_spec
from transforms.features import TIPS_KEY

pytestmark = pytest.mark.slow  # the fixture transforms and trains a model

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def parity(taxi_rows, tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    training_rows = cleaned_taxi_rows(taxi_rows, years=(2013, 2014), limit=1500)
    assert {year_of(r) for r in training_rows} <= {2013, 2014}
    write_cleaned(root / "cleaned", training_rows)
    transform = transform_examples(root / "cleaned", root / "transform", beam_args=BEAM_ARGS)
    tf_transform_output = load_transform_output(transform.transform_graph_dir)
    model, _, _ = fit_and_evaluate(transform.transformed_dir, tf_transform_output, TrainingConfig(train_steps=80, seed=11))
    model_dir = export_model(model, tf_transform_output, root / "model")

    serving_rows = cleaned_taxi_rows(taxi_rows, years=(2015, 2016), limit=300)
    serving_years = {year_of(row) for row in serving_rows}
    serving_rows = blank_some_values(serving_rows, share=0.15, seed=3)
    # Training-time path, while the transform output still exists: the full raw spec (with tips,
    # as the Beam job parsed it), TFT in-process, then the Keras model.
    examples = tf.constant([serialize_row(row) for row in serving_rows])
    raw = tf.io.parse_example(examples, raw_feature_spec(include_label_source=True))
    transformed = tf_transform_output.transform_raw_features(raw)
    reference = model({name: transformed[name] for name in model.input}, training=False).numpy().reshape(-1)

    shutil.rmtree(root / "transform")
    del tf_transform_output, model
    return serving_rows, reference, model_dir, serving_years


def test_enough_out_of_window_rows_with_missing_values(parity):
    rows, reference, _, years = parity
    assert len(rows) >= 200 and len(reference) == len(rows)
    assert years <= {2015, 2016}
    assert sum(value is None for row in rows for value in row.values()) > 200
    assert 0.01 < reference.std(), "a constant model would make parity trivial"


def test_serving_default_with_dense_sentinels_matches_training_path(parity):
    rows, reference, model_dir, _ = parity
    loaded = tf.saved_model.load(str(model_dir))
    outputs = loaded.signatures["serving_default"](**{k: tf.constant(v) for k, v in rows_to_dense(rows).items()})
    np.testing.assert_allclose(outputs["probability"].numpy(), reference, rtol=0, atol=TOLERANCE)
    np.testing.assert_array_equal(outputs["class"].numpy(), (reference >= 0.5).astype(np.int64))


def test_serving_examples_without_label_matches_training_path(parity):
    rows, reference, model_dir, _ = parity
    loaded = tf.saved_model.load(str(model_dir))
    serialized = [serialize_row({k: v for k, v in row.items() if k != TIPS_KEY}) for row in rows]
    outputs = loaded.signatures["serving_examples"](examples=tf.constant(serialized))
    np.testing.assert_allclose(outputs["probability"].numpy(), reference, rtol=0, atol=TOLERANCE)


def test_model_carries_its_vocabularies(parity):
    _, _, model_dir, _ = parity
    assets = sorted(p.name for p in (model_dir / "assets").iterdir())
    assert assets == ["company_vocab", "dropoff_census_tract_vocab", "payment_type_vocab"]
