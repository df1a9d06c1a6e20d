"""Training and export: layout, the serving contract, determinism, errors, and the quality bar."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from beam_jobs.example_codec import TFRECORD_SUFFIX, split_dir, split_pattern
from core.config import TrainingConfig
from core.errors import DataError
from tests.transforms.cleaned_examples import clean_rows, shared_transform, small_transform
from trainer.train import (
    CLASS_THRESHOLD,
    RESULT_FILE,
    classification_metrics,
    content_keys,
    fit_and_evaluate,
    load_transform_output,
    roc_auc,
    saved_model_fingerprint,
    select_training_rows,
    train_model,
)
from transforms.features import SERVING_FEATURES, Kind

SMALL = TrainingConfig(train_steps=60, batch_size=40, seed=5)
DTYPES = {Kind.FLOAT: tf.float32, Kind.INT: tf.int64, Kind.STRING: tf.string}


def write_records(root: Path, split: str, records: list[bytes], shards: int) -> None:
    """Serialized examples into root/Split-<split>/data-*.tfrecord.gz, dealt round-robin over `shards` files."""
    directory = split_dir(root, split)
    directory.mkdir(parents=True)
    for shard in range(shards):
        path = directory / f"data-{shard:05d}-of-{shards:05d}{TFRECORD_SUFFIX}"
        with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
            for record in records[shard::shards]:
                writer.write(record)


@pytest.fixture(scope="module")
def small(taxi_rows):
    return small_transform(taxi_rows)


@pytest.fixture(scope="module")
def trained(small, tmp_path_factory):
    _, _, transform = small
    output = tmp_path_factory.mktemp("train")
    return output, train_model(transform.transformed_dir, transform.transform_graph_dir, output, SMALL)


@pytest.mark.slow  # trains a model
def test_exports_the_model_and_a_result_file_that_agree(trained, small):
    output, result = trained
    _, counts, _ = small
    assert result.model_dir == output / "model" and (result.model_dir / "saved_model.pb").is_file()
    assert sorted(p.name for p in output.iterdir()) == ["model", RESULT_FILE], "staging left behind"
    recorded = json.loads((output / RESULT_FILE).read_text())
    assert recorded["fingerprint"] == result.fingerprint == saved_model_fingerprint(result.model_dir)
    assert recorded["eval_metrics"] == result.eval_metrics and recorded["train_metrics"] == result.train_metrics
    assert recorded["config"]["train_steps"] == SMALL.train_steps
    assert result.eval_metrics["examples"] == counts["eval"] and result.train_metrics["examples"] == counts["train"]
    for metrics in (result.train_metrics, result.eval_metrics):
        assert 0.5 < metrics["auc"] <= 1 and 0 < metrics["loss"] < 1 and 0 <= metrics["accuracy"] <= 1


@pytest.mark.slow  # trains a model
def test_signatures_follow_the_serving_contract(trained):
    _, result = trained
    loaded = tf.saved_model.load(str(result.model_dir))
    assert {"serving_default", "serving_examples"} <= set(loaded.signatures)
    _, dense_inputs = loaded.signatures["serving_default"].structured_input_signature
    assert list(sorted(dense_inputs)) == sorted(f.name for f in SERVING_FEATURES)
    for feature in SERVING_FEATURES:
        spec = dense_inputs[feature.name]
        assert spec.shape.as_list() == [None] and spec.dtype == DTYPES[feature.kind], feature.name
    _, example_inputs = loaded.signatures["serving_examples"].structured_input_signature
    assert list(example_inputs) == ["examples"] and example_inputs["examples"].dtype == tf.string
    for name in ("serving_default", "serving_examples"):
        outputs = loaded.signatures[name].structured_outputs
        assert outputs["probability"].dtype == tf.float32 and outputs["probability"].shape.as_list() == [None]
        assert outputs["class"].dtype == tf.int64 and outputs["class"].shape.as_list() == [None]


@pytest.mark.slow  # trains a model
def test_class_is_probability_at_least_one_half(trained, taxi_rows):
    _, result = trained
    from beam_jobs.example_codec import serialize_row

    rows = clean_rows(taxi_rows[:300])
    loaded = tf.saved_model.load(str(result.model_dir))
    outputs = loaded.signatures["serving_examples"](examples=tf.constant([serialize_row(r) for r in rows]))
    probability, klass = outputs["probability"].numpy(), outputs["class"].numpy()
    assert probability.shape == klass.shape == (len(rows),)
    np.testing.assert_array_equal(klass, (probability >= CLASS_THRESHOLD).astype(np.int64))
    assert 0 < klass.sum() < len(rows), "a trained model should predict both classes on 300 trips"


@pytest.mark.slow  # trains a model
def test_an_example_with_two_values_for_a_feature_is_refused_naming_it(trained, taxi_rows):
    _, result = trained
    from beam_jobs.example_codec import row_to_example

    example = row_to_example(clean_rows(taxi_rows[:5])[0])
    example.features.feature["fare"].float_list.value.append(3.0)
    loaded = tf.saved_model.load(str(result.model_dir))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"fare.{0,4}: expected at most one value per example"):
        loaded.signatures["serving_examples"](examples=tf.constant([example.SerializeToString()]))


@pytest.mark.slow  # trains a model
def test_same_seed_gives_the_same_model_and_another_seed_does_not(trained, small, tmp_path):
    _, first = trained
    _, _, transform = small
    again = train_model(transform.transformed_dir, transform.transform_graph_dir, tmp_path / "again", SMALL)
    assert again.eval_metrics["loss"] == first.eval_metrics["loss"]
    first_weights = tf.train.load_checkpoint(str(first.model_dir / "variables" / "variables"))
    again_weights = tf.train.load_checkpoint(str(again.model_dir / "variables" / "variables"))
    names = [name for name in first_weights.get_variable_to_shape_map() if "model_variables" in name]
    assert len(names) > 10
    for name in names:
        np.testing.assert_array_equal(first_weights.get_tensor(name), again_weights.get_tensor(name), err_msg=name)
    other = train_model(
        transform.transformed_dir, transform.transform_graph_dir, tmp_path / "other", TrainingConfig(train_steps=60, seed=6)
    )
    assert other.eval_metrics["loss"] != first.eval_metrics["loss"]


@pytest.mark.slow  # trains a model
def test_the_same_rows_in_another_order_and_sharding_train_the_same_model(small, tmp_path):
    """A Beam job fixes which rows it writes, not their order or file count: neither may change the model."""
    _, _, transform = small
    reshuffled = tmp_path / "transformed"
    for split in ("train", "eval"):
        files = sorted(tf.io.gfile.glob(split_pattern(transform.transformed_dir, split)))
        records = [record.numpy() for record in tf.data.TFRecordDataset(files, compression_type="GZIP")]
        permuted = list(records)
        random.Random(7).shuffle(permuted)
        assert permuted != records
        write_records(reshuffled, split, permuted, shards=3)
    tf_transform_output = load_transform_output(transform.transform_graph_dir)
    config = TrainingConfig(train_steps=30, batch_size=40, seed=5)
    model, train_metrics, eval_metrics = fit_and_evaluate(transform.transformed_dir, tf_transform_output, config)
    other_model, other_train_metrics, other_eval_metrics = fit_and_evaluate(reshuffled, tf_transform_output, config)
    assert eval_metrics == other_eval_metrics
    del train_metrics["train_seconds"], other_train_metrics["train_seconds"]
    assert train_metrics == other_train_metrics
    weights, other_weights = model.get_weights(), other_model.get_weights()
    assert len(weights) == len(other_weights) > 10
    for index, (first, second) in enumerate(zip(weights, other_weights)):
        assert first.tobytes() == second.tobytes(), model.weights[index].name


def test_content_keys_depend_on_the_rows_and_the_seed_only():
    rng = np.random.default_rng(0)
    columns = {
        "id": rng.integers(0, 3, 500),
        "score": rng.normal(size=500).astype(np.float32),
        "signed_zero": np.where(rng.random(500) < 0.5, np.float32(0.0), np.float32(-0.0)),
        "pair": rng.integers(0, 2, (500, 2)),
        "name": np.array([[b"b"], [b"a"]] * 250, dtype=object),
    }
    permutation = rng.permutation(500)
    shuffled = {name: values[permutation] for name, values in columns.items()}
    keys, shuffled_keys = content_keys(columns, seed=1), content_keys(shuffled, seed=1)
    assert keys.tobytes() != shuffled_keys.tobytes()
    assert keys[permutation].tobytes() == shuffled_keys.tobytes()
    # The hash order is not the content order (the key's bytes after the 8-byte digest), and
    # another seed gives another order.
    contents = np.array([key[8:] for key in keys.tolist()], dtype=object)
    assert list(np.argsort(keys, kind="stable")) != sorted(range(500), key=contents.__getitem__)
    other = content_keys(columns, seed=2)
    assert list(np.argsort(keys, kind="stable")) != list(np.argsort(other, kind="stable"))
    # Rows differing only by 0.0 / -0.0 are different rows.
    zeros = content_keys({"x": np.array([0.0, -0.0], np.float32)}, seed=1)
    assert zeros[0] != zeros[1]


def test_a_content_key_is_the_seeded_digest_of_the_row_bytes_followed_by_them():
    """The documented key, spelled out with hashlib for each row: numeric columns (the fast path,
    one buffer per batch) and strings (length-prefixed, keys zero-padded to one width by numpy)."""
    salt = (3).to_bytes(8, "little", signed=True)

    def expected(content: bytes) -> bytes:
        return hashlib.blake2b(content, digest_size=8, key=salt).digest() + content

    numbers = {"b": np.array([1.5, -0.0, 2.0], np.float32), "a": np.array([[1, 2], [3, 4], [0, 0]], np.int64)}
    keys = content_keys(numbers, seed=3)
    for row in range(3):
        content = numbers["a"][row].tobytes() + numbers["b"][row].tobytes()
        assert keys.view(np.uint8).reshape(3, -1)[row].tobytes() == expected(content)
    names = [b"a", b"a\0", b"", b"b", b"ab"]
    texts = {"n": np.array([7] * len(names), np.int64), "s": np.array([[name] for name in names], dtype=object)}
    keys = content_keys(texts, seed=3)
    unpadded = [expected((7).to_bytes(8, "little") + len(name).to_bytes(4, "little") + name) for name in names]
    assert [key.ljust(keys.itemsize, b"\0") for key in keys.tolist()] == [key.ljust(keys.itemsize, b"\0") for key in unpadded]
    # Zero padding keeps the order of the unpadded keys.
    assert list(np.argsort(keys, kind="stable")) == sorted(range(len(names)), key=unpadded.__getitem__)


def test_training_rows_are_the_budget_first_by_content_key_whatever_the_files(small, tmp_path):
    """Only `steps * batch_size` rows are held, the same ones in the same order for reordered, resharded files."""
    _, _, transform = small
    files = sorted(tf.io.gfile.glob(split_pattern(transform.transformed_dir, "train")))
    records = [record.numpy() for record in tf.data.TFRecordDataset(files, compression_type="GZIP")]
    random.Random(3).shuffle(records)
    write_records(tmp_path / "transformed", "train", records, shards=4)
    spec = load_transform_output(transform.transform_graph_dir).transformed_feature_spec()
    kept, total = select_training_rows(transform.transformed_dir, spec, limit=100, seed=5)
    again, again_total = select_training_rows(tmp_path / "transformed", spec, limit=100, seed=5)
    assert total == again_total == len(records) > 100
    assert all(len(values) == 100 for values in kept.values())
    for name in kept:
        assert kept[name].tobytes() == again[name].tobytes(), name
    everything, _ = select_training_rows(transform.transformed_dir, spec, limit=10 * len(records), seed=5)
    assert all(len(values) == len(records) for values in everything.values())
    # The kept rows are the first 100 of the whole order, not some other 100.
    for name in kept:
        assert kept[name].tobytes() == everything[name][:100].tobytes(), name


@pytest.mark.slow  # trains a model
def test_retraining_into_the_same_folder_replaces_the_model(small, tmp_path):
    _, _, transform = small
    config = TrainingConfig(train_steps=10, seed=1)
    first = train_model(transform.transformed_dir, transform.transform_graph_dir, tmp_path, config)
    (first.model_dir / "stale-file").write_text("from the first run")
    second = train_model(transform.transformed_dir, transform.transform_graph_dir, tmp_path, config)
    assert not (second.model_dir / "stale-file").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", RESULT_FILE]


def test_missing_transform_graph_is_a_data_error(small, tmp_path):
    _, _, transform = small
    with pytest.raises(DataError, match=r"not a TF Transform output"):
        train_model(transform.transformed_dir, tmp_path / "nowhere", tmp_path / "out", SMALL)
    assert not (tmp_path / "out").exists()


def test_missing_eval_split_is_a_data_error_naming_it(small, tmp_path):
    _, _, transform = small
    partial = tmp_path / "transformed"
    shutil.copytree(transform.transformed_dir / "Split-train", partial / "Split-train")
    with pytest.raises(DataError, match=r"Split-eval: no transformed examples"):
        train_model(partial, transform.transform_graph_dir, tmp_path / "out", SMALL)


def test_roc_auc_is_exact_including_ties():
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == pytest.approx(0.5)  # a tie counts half
    assert roc_auc(np.array([1, 0, 1, 0]), np.array([0.9, 0.1, 0.8, 0.2])) == 1.0
    assert np.isnan(roc_auc(np.array([1, 1]), np.array([0.2, 0.3])))
    metrics = classification_metrics(np.array([0, 1, 1, 0]), np.array([0.2, 0.7, 0.4, 0.6]))
    assert metrics["accuracy"] == 0.5 and metrics["examples"] == 4 and metrics["positive_rate"] == 0.5


@pytest.mark.slow  # trains a model
def test_quality_bar_on_the_tfx_protocol(taxi_rows, tmp_path):
    """All 15,002 shipped rows, cleaned, hash split 2:1, 1,000 steps of 40: eval AUC >= 0.935 (TFX: 0.932-0.934)."""
    rows = clean_rows(taxi_rows)
    assert len(taxi_rows) == 15_002
    _, counts, transform = shared_transform("all-rows", rows)
    assert counts["train"] + counts["eval"] == len(rows)
    result = train_model(transform.transformed_dir, transform.transform_graph_dir, tmp_path, TrainingConfig())
    assert result.eval_metrics["auc"] >= 0.935, result.eval_metrics


def test_a_model_answering_nan_is_named_as_diverged_not_ranked(small):
    """A diverged model's NaN scores have no place in the metrics' order: a DataError says so."""
    from trainer.model import build_keras_model, model_input_specs
    from trainer.train import predict_split

    _, _, transform = small
    tf_transform_output = load_transform_output(transform.transform_graph_dir)
    model = build_keras_model(SMALL, tf_transform_output)
    for weight in model.trainable_weights:
        weight.assign(tf.fill(weight.shape, float("nan")))
    with pytest.raises(DataError, match=r"Split-eval: the model answers NaN: training diverged"):
        predict_split(model, transform.transformed_dir, "eval", tf_transform_output.transformed_feature_spec(),
                      list(model_input_specs(tf_transform_output)))
