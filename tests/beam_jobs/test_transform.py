"""The Transform Beam job: real Beam, real TF Transform, on cleaned taxi examples."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft

from beam_jobs.example_codec import row_to_example, split_pattern
from beam_jobs.training_order import HEADS_FILE, ORDER_DESCRIPTION, head_path, in_training_order
from beam_jobs.transform import run, transform_examples
from core.errors import DataError
from tests.transforms.cleaned_examples import (
    EVAL_ONLY_COMPANY,
    clean_rows,
    shared_transform,
    small_transform,
    write_split,
)
from transforms.feature_spec import raw_feature_spec
from transforms.features import OOV_SIZE, VOCAB_FEATURES, transformed_name
from transforms.preprocessing import LABEL, vocabulary_filename

BEAM_ARGS = ["--runner=DirectRunner", "--direct_num_workers=1", "--direct_running_mode=in_memory"]


@pytest.fixture(scope="module")
def small(taxi_rows):
    return small_transform(taxi_rows)


def read_records(pattern: str) -> list[bytes]:
    files = sorted(tf.io.gfile.glob(pattern))
    assert files, pattern
    return [record.numpy() for record in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def parse(records: list[bytes], spec: dict) -> dict[str, np.ndarray]:
    """Dense features as arrays; VarLen (raw) features as the array of their present values."""
    parsed = tf.io.parse_example(tf.constant(records), spec)
    return {
        name: (value.values if isinstance(value, tf.SparseTensor) else value).numpy() for name, value in parsed.items()
    }


def test_every_row_of_every_split_is_transformed_and_counted(small):
    cleaned, counts, result = small
    assert result.rows == counts and counts["train"] > 200 and counts["eval"] > 100
    for split, count in counts.items():
        assert len(read_records(split_pattern(result.transformed_dir, split))) == count
    assert not [p for p in os.listdir(result.transform_graph_dir.parent) if p.startswith(".")], "staging left behind"


def test_written_examples_equal_the_saved_graph_applied_to_the_raw_examples(small):
    """What the trainer reads (Beam output) is what serving computes (the transform graph) for the same rows."""
    cleaned, _, result = small
    output = tft.TFTransformOutput(str(result.transform_graph_dir))
    raw = read_records(split_pattern(cleaned, "eval"))
    from_graph = output.transform_features_layer()(tf.io.parse_example(tf.constant(raw), raw_feature_spec()))
    written = parse(read_records(split_pattern(result.transformed_dir, "eval")), output.transformed_feature_spec())
    assert set(written) == set(from_graph)

    def rows_of(columns: dict) -> list[tuple]:
        names = sorted(columns)
        return sorted(zip(*[np.round(np.asarray(columns[n], dtype=np.float64), 5) for n in names]))

    assert rows_of(written) == rows_of({k: v.numpy() for k, v in from_graph.items()})


def test_analysis_sees_the_train_split_only(small):
    cleaned, counts, result = small
    output = tft.TFTransformOutput(str(result.transform_graph_dir))
    train = parse(read_records(split_pattern(result.transformed_dir, "train")), output.transformed_feature_spec())
    # fare is required, so every train row is present: z-scores over train have mean 0, std 1.
    assert abs(train[transformed_name("fare")].mean()) < 1e-4
    assert abs(train[transformed_name("fare")].std() - 1) < 1e-3
    # A company only in eval is not in the vocabulary: it gets an OOV id.
    vocabulary = output.vocabulary_by_name(vocabulary_filename("company"))
    assert EVAL_ONLY_COMPANY.encode() not in vocabulary
    evaluation = parse(read_records(split_pattern(result.transformed_dir, "eval")), output.transformed_feature_spec())
    eval_raw = parse(read_records(split_pattern(cleaned, "eval")), raw_feature_spec())
    assert EVAL_ONLY_COMPANY.encode() in eval_raw["company"]
    vocabulary_size = len(vocabulary)
    oov_ids = evaluation[transformed_name("company")][evaluation[transformed_name("company")] > vocabulary_size]
    assert len(oov_ids) >= 1 and (oov_ids <= vocabulary_size + OOV_SIZE).all()


@pytest.mark.slow
def test_the_same_input_gives_bit_identical_analysis_and_rows(taxi_rows, tmp_path):
    """A re-run on the same cleaned examples must not move the z-score constants or any transformed value.

    With TFXIO's default, record batches were sized by measured time, and TFT's float32 mean/var
    sums and vectorised ops follow the batch boundaries: two runs on all shipped rows differed by
    up to 1e-5 relative, enough to train another model (READ_BATCH_SIZE in beam_jobs/transform.py).
    Below ~5,000 train rows the batching did not vary, hence all rows; the first run is the one the
    quality-bar test in tests/trainer reuses.
    """
    cleaned, counts, first = shared_transform("all-rows", clean_rows(taxi_rows))
    again = transform_examples(cleaned, tmp_path / "again", beam_args=BEAM_ARGS)
    assert again.rows == counts
    outputs = [tft.TFTransformOutput(str(result.transform_graph_dir)) for result in (first, again)]
    spec = outputs[0].transformed_feature_spec()
    assert outputs[1].transformed_feature_spec() == spec
    for key in VOCAB_FEATURES:
        filename = vocabulary_filename(key)
        assert outputs[0].vocabulary_by_name(filename) == outputs[1].vocabulary_by_name(filename), key
    raw = tf.io.parse_example(tf.constant(read_records(split_pattern(cleaned, "eval"))), raw_feature_spec())
    from_graphs = [output.transform_features_layer()(dict(raw)) for output in outputs]
    for name in spec:
        assert from_graphs[0][name].numpy().tobytes() == from_graphs[1][name].numpy().tobytes(), name
    for split in counts:
        written = [parse(read_records(split_pattern(result.transformed_dir, split)), spec) for result in (first, again)]
        for name in spec:
            assert written[0][name].tobytes() == written[1][name].tobytes(), f"{split}: {name}"


def test_labels_match_the_big_tipper_rule(small):
    cleaned, _, result = small
    raw = parse(read_records(split_pattern(cleaned, "train")), raw_feature_spec())
    output = tft.TFTransformOutput(str(result.transform_graph_dir))
    written = parse(read_records(split_pattern(result.transformed_dir, "train")), output.transformed_feature_spec())
    tips, fare = raw["tips"], raw["fare"]  # required: present in every cleaned row, so aligned
    assert len(tips) == len(fare) == len(written[LABEL])
    expected = int((tips > np.float32(0.2) * fare).sum())
    assert int(written[LABEL].sum()) == expected > 0


def test_command_line_program_writes_the_same_layout(tmp_path, taxi_rows):
    rows = clean_rows(taxi_rows[:90])
    write_split(tmp_path / "cleaned", "train", rows[:60])
    write_split(tmp_path / "cleaned", "eval", rows[60:])
    result = run(["--input", str(tmp_path / "cleaned"), "--output", str(tmp_path / "out"), "--head_rows", "7", *BEAM_ARGS])
    assert result.rows == {"train": 60, "eval": len(rows) - 60}
    transformed = tmp_path / "out" / "transformed"
    assert (tmp_path / "out" / "transform_graph" / "transform_fn" / "saved_model.pb").is_file()
    assert len(read_records(split_pattern(transformed, "eval"))) == len(rows) - 60
    # Each split's head: its first 7 rows in training order, and a manifest saying so.
    manifest = json.loads((transformed / HEADS_FILE).read_text())
    assert manifest == {"order": ORDER_DESCRIPTION, "limit": 7, "splits": {
        "eval": {"rows": len(rows) - 60, "head_rows": 7}, "train": {"rows": 60, "head_rows": 7}}}
    for split in ("train", "eval"):
        head = read_records(str(head_path(transformed, split)))
        assert head == in_training_order(read_records(split_pattern(transformed, split)))[:7], split
    assert sorted(p.name for p in transformed.iterdir()) == ["Head-eval", "Head-train", "Split-eval", "Split-train", HEADS_FILE]


def test_a_head_below_one_row_is_refused(tmp_path, taxi_rows):
    rows = clean_rows(taxi_rows[:30])
    write_split(tmp_path / "cleaned", "train", rows[:20])
    write_split(tmp_path / "cleaned", "eval", rows[20:])
    with pytest.raises(DataError, match=r"--head_rows must be at least 1, got 0"):
        transform_examples(tmp_path / "cleaned", tmp_path / "out", beam_args=BEAM_ARGS, head_rows=0)


def test_missing_split_is_a_data_error_naming_the_folder(tmp_path, taxi_rows):
    write_split(tmp_path / "cleaned", "train", clean_rows(taxi_rows[:10]))
    with pytest.raises(DataError, match=r"Split-eval: no cleaned examples"):
        transform_examples(tmp_path / "cleaned", tmp_path / "out", beam_args=BEAM_ARGS)
    assert not (tmp_path / "out").exists()


def test_empty_split_is_a_data_error(tmp_path, taxi_rows):
    write_split(tmp_path / "cleaned", "train", [])
    write_split(tmp_path / "cleaned", "eval", clean_rows(taxi_rows[:10]))
    with pytest.raises(DataError, match=r"Split-train: the split has no examples"):
        transform_examples(tmp_path / "cleaned", tmp_path / "out", beam_args=BEAM_ARGS)


def test_feature_of_the_wrong_kind_is_a_data_error_naming_file_and_feature(tmp_path, taxi_rows):
    rows = clean_rows(taxi_rows[:10])
    write_split(tmp_path / "cleaned", "eval", rows)
    bad = row_to_example(rows[0])
    bad.features.feature["fare"].Clear()
    bad.features.feature["fare"].bytes_list.value.append(b"ten dollars")
    path = tmp_path / "cleaned" / "Split-train" / "data-00000-of-00001.tfrecord.gz"
    path.parent.mkdir(parents=True)
    with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
        writer.write(bad.SerializeToString())
    with pytest.raises(DataError, match=r"data-00000-of-00001.tfrecord.gz.*fare"):
        transform_examples(tmp_path / "cleaned", tmp_path / "out", beam_args=BEAM_ARGS)


def test_bad_record_deep_in_a_file_fails_cleanly_without_partial_output(tmp_path, taxi_rows):
    """The up-front check reads one record; a later bad one fails inside Beam and must leave nothing behind."""
    rows = clean_rows(taxi_rows[:40])
    write_split(tmp_path / "cleaned", "eval", rows[:10])
    path = tmp_path / "cleaned" / "Split-train" / "data-00000-of-00001.tfrecord.gz"
    path.parent.mkdir(parents=True)
    with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
        for row in rows[10:]:
            writer.write(row_to_example(row).SerializeToString())
        bad = row_to_example(rows[0])
        bad.features.feature["trip_seconds"].Clear()
        bad.features.feature["trip_seconds"].float_list.value.append(1.5)
        writer.write(bad.SerializeToString())
    with pytest.raises(DataError, match=r"Split-train.*trip_seconds"):
        transform_examples(tmp_path / "cleaned", tmp_path / "out", beam_args=BEAM_ARGS)
    assert os.listdir(tmp_path / "out") == []


def test_splits_must_include_train(tmp_path):
    with pytest.raises(DataError, match="must include 'train'"):
        transform_examples(tmp_path, tmp_path / "out", splits=("eval",))
