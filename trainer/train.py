"""The Train step: fit the wide-and-deep model on transformed examples, export a self-contained SavedModel.

The exported model carries the TF Transform graph (`model.tft_layer`) and takes raw features, so
serving applies exactly the transformation training saw. Two signatures (docs/ARCHITECTURE.md):

- `serving_default`: one dense `[None]` tensor per serving column, missing = sentinel;
- `serving_examples`: `examples`, serialized tf.Examples, missing = absent feature;

both return `probability` (float32 `[None]`) and `class` (int64 `[None]`).

A run reads `train_steps * batch_size` rows of each split, the first in training order, from the
heads Transform wrote (beam_jobs/training_order.py): its time follows its budget, not the data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras

from beam_jobs.example_codec import split_dir, split_pattern
from beam_jobs.training_order import FirstInOrder, head_for
from core.atomic import replace_directory, write_json
from core.config import TrainingConfig
from core.errors import DataError
from trainer.model import build_keras_model, model_input_specs
from trainer.ranked_scores import RankedScores
from transforms.feature_spec import dense_to_sparse, raw_feature_spec, serving_input_signature
from transforms.preprocessing import LABEL

MODEL_DIR = "model"
RESULT_FILE = "train_result.json"
CLASS_THRESHOLD = 0.5
# Probabilities are clipped this far from 0 and 1 for the train step's metrics (the loss's log).
METRIC_CLIP = 1e-7
PROGRESS_EVERY = 100
# Rows parsed per tf.io.parse_example call, and per prediction call, when streaming a split.
_PARSE_BATCH = 4096


@dataclasses.dataclass(frozen=True)
class TrainResult:
    model_dir: Path
    train_metrics: dict[str, float]
    eval_metrics: dict[str, float]
    fingerprint: str  # sha256 over saved_model.pb + variables


def split_files(transformed_dir: Path, split: str) -> list[str]:
    files = sorted(tf.io.gfile.glob(split_pattern(transformed_dir, split)))
    if not files:
        raise DataError(f"{split_dir(transformed_dir, split)}: no transformed examples (expected data-*.tfrecord.gz)")
    return files


def _parsed(records: tf.data.Dataset, feature_spec: Mapping[str, Any], where: Path) -> Iterator[dict[str, np.ndarray]]:
    """Serialized examples, `_PARSE_BATCH` at a time, as parsed numpy columns.

    Parsing runs inside the tf.data graph: called eagerly from Python, each `parse_example` went
    through TF's eager fallback, and turning the batch of serialized records into a numpy object
    array cost as much again (measured: 7 of the trainer's 20 CPU seconds at 150k rows).
    """
    dataset = records.batch(_PARSE_BATCH).map(lambda batch: tf.io.parse_example(batch, feature_spec)).prefetch(1)
    try:
        for parsed in dataset:
            yield {name: parsed[name].numpy() for name in feature_spec}
    except tf.errors.InvalidArgumentError as err:
        raise DataError(
            f"{where}: examples do not match the transform output's feature spec: {str(err).splitlines()[0]}"
        ) from err


def first_rows(
    transformed_dir: Path, split: str, feature_spec: Mapping[str, Any], limit: int
) -> tuple[dict[str, np.ndarray], int, str]:
    """The split's first `limit` rows in training order (beam_jobs/training_order.py) as parsed numpy
    columns in that order, how many rows the split has, and where they were read.

    From the split's head when Transform wrote one that holds them: `limit` rows read, whatever the
    split's size. Otherwise (a head shorter than `limit`, or none) the split's records are streamed
    once through `FirstInOrder` (at most `limit * 5 / 4` held) and only the ones kept are parsed: the
    same rows, in the same order.
    """
    where = split_dir(transformed_dir, split)
    files = split_files(transformed_dir, split)
    head, split_rows, why = head_for(transformed_dir, split, limit)
    if head is not None:
        records = tf.data.TFRecordDataset([str(head)], compression_type="GZIP").take(limit)
        source = f"{split} rows from {why}"
    else:
        first = FirstInOrder(limit)
        for batch in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(_PARSE_BATCH):
            first.add(batch.numpy().tolist())
        split_rows, kept = first.seen, first.records()
        if not kept:
            raise DataError(f"{where}: the split has no examples")
        records = tf.data.Dataset.from_tensor_slices(tf.constant(kept, dtype=tf.string))
        source = f"{split} rows from all {split_rows:,} of {where}, read once: {why}"
    parts = list(_parsed(records, feature_spec, where))
    if not parts:
        raise DataError(f"{where}: the split has no examples")
    return {name: np.concatenate([part[name] for part in parts]) for name in feature_spec}, int(split_rows), source


def _features_and_labels(columns: Mapping[str, np.ndarray], input_names: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    features = {name: columns[name] for name in input_names}
    labels = columns[LABEL].astype(np.float32).reshape(-1, 1)
    return features, labels


def predict_rows(model: tf_keras.Model, columns: Mapping[str, np.ndarray], input_names: list[str], where: Path) -> RankedScores:
    """The rows' scores, with their labels, as RankedScores (8 bytes a row).

    Every graph call gets exactly `_PARSE_BATCH` rows (the last batch padded with copies of its
    first row), so a row's score does not depend on which rows share its batch. Probabilities are
    clipped to [METRIC_CLIP, 1 - METRIC_CLIP], as the loss needs them (rows beyond count as ties
    for the AUC).
    """
    call = tf.function(lambda inputs: model(inputs, training=False), autograph=False)
    labels = columns[LABEL].reshape(-1) > 0.5

    def scored_batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(labels), _PARSE_BATCH):
            rows = min(_PARSE_BATCH, len(labels) - start)
            padded = {name: _pad_rows(columns[name][start:start + rows], _PARSE_BATCH) for name in input_names}
            scores = call({name: tf.constant(values) for name, values in padded.items()}).numpy().reshape(-1)[:rows]
            if np.isnan(scores).any():
                raise DataError(f"{where}: the model answers NaN: training diverged")
            yield labels[start:start + rows], np.clip(scores.astype(np.float64), METRIC_CLIP, 1 - METRIC_CLIP)

    ranked = RankedScores.from_batches(scored_batches())
    if not ranked.count:
        raise DataError(f"{where}: the split has no examples")
    return ranked


def _pad_rows(values: np.ndarray, rows: int) -> np.ndarray:
    missing = rows - len(values)
    return values if missing <= 0 else np.concatenate([values, np.repeat(values[:1], missing, axis=0)])


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact area under the ROC curve (Mann-Whitney U, ties counted half), NaN with a single class.

    Exact rather than Keras' thresholded approximation, because the quality bar (eval AUC) is
    compared to the third decimal.
    """
    return RankedScores.from_arrays(labels, scores).auc()


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """loss (binary cross-entropy), auc, accuracy at CLASS_THRESHOLD, and the base rate, over all rows."""
    clipped = np.clip(np.asarray(probabilities, dtype=np.float64), METRIC_CLIP, 1 - METRIC_CLIP)
    return split_metrics(RankedScores.from_arrays(labels, clipped))


def split_metrics(ranked: RankedScores) -> dict[str, float]:
    """classification_metrics of rows already ranked (and clipped, as predict_split does)."""
    metrics = ranked.metrics(CLASS_THRESHOLD)
    return {"loss": metrics["log_loss"], "auc": metrics["auc"], "accuracy": metrics["accuracy"],
            "positive_rate": metrics["positive_rate"], "examples": metrics["count"]}


def fit(model: tf_keras.Model, dataset: tf.data.Dataset, steps: int, every: int = PROGRESS_EVERY) -> float:
    """Runs `steps` optimizer steps over `dataset`, `every` of them per graph call; returns the last mean loss.

    A hand-written loop instead of `Model.fit`: fit's train function goes through AutoGraph,
    which converts Keras' own metric, loss and layer code, and is traced twice for its loop
    (measured on the 2-core machine: 46-110 s before the first step, against 11-20 s here, for
    5-6 s of actual training). Here AutoGraph is off, the loop is an explicit `tf.while_loop`
    (no Python per step), and the model's compiled optimizer and loss are the ones used.
    """
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    iterator = iter(dataset)

    @tf.function(autograph=False)
    def run_steps(count: tf.Tensor) -> tf.Tensor:
        def body(index: tf.Tensor, loss_sum: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            features, labels = iterator.get_next()
            with tf.GradientTape() as tape:
                loss = model.loss(labels, model(features, training=True))
            optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
            return index + 1, loss_sum + loss

        _, loss_sum = tf.while_loop(
            lambda index, _: index < count, body, [tf.constant(0), tf.constant(0.0)], parallel_iterations=1
        )
        return loss_sum / tf.cast(count, tf.float32)

    started = time.perf_counter()
    done = 0
    mean_loss = math.nan
    while done < steps:
        chunk = min(every, steps - done)
        mean_loss = float(run_steps(tf.constant(chunk)))
        done += chunk
        print(f"train step {done}/{steps} loss={mean_loss:.4f} ({time.perf_counter() - started:.1f}s)", flush=True)
    return mean_loss


class ServingModule(tf.Module):
    """What gets saved: the model's weights, the TFT layer, and the two serving functions.

    `tft_layer` is an attribute so that the transform graph and its vocabulary assets are saved
    inside the model: the transform output directory is not needed at serving time. The Keras
    model itself is only captured by the serving functions (its variables are tracked here):
    tracking it as a Keras object would make tf.saved_model.save re-trace every layer for Keras'
    own loading format, which nobody uses here (~30 s of a 35 s export on this machine). For the
    same reason the functions are traced without AutoGraph: they have no data-dependent Python
    control flow to convert.
    """

    def __init__(self, model: tf_keras.Model, tf_transform_output: tft.TFTransformOutput) -> None:
        super().__init__()
        self.model_variables = list(model.variables)
        self.tft_layer = tf_transform_output.transform_features_layer()
        tft_layer = self.tft_layer
        input_names = list(model.input.keys())

        # Closures, not methods reading self.model: an attribute would make the module track the model.
        def predict_raw(raw: Mapping[str, tf.SparseTensor]) -> dict[str, tf.Tensor]:
            # .call, not __call__: the same transform, without a Keras call to re-trace at save time.
            transformed = tft_layer.call(dict(raw))
            scores = model({name: transformed[name] for name in input_names}, training=False)
            probability = tf.reshape(scores, [-1])
            return {"probability": probability, "class": tf.cast(probability >= CLASS_THRESHOLD, tf.int64)}

        def predict_dense(inputs: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
            return predict_raw(dense_to_sparse(inputs))

        def predict_examples(examples: tf.Tensor) -> dict[str, tf.Tensor]:
            return predict_raw(tf.io.parse_example(examples, raw_feature_spec(include_label_source=False)))

        self.serving_default = tf.function(predict_dense, input_signature=[serving_input_signature()], autograph=False)
        self.serving_examples = tf.function(
            predict_examples, input_signature=[tf.TensorSpec([None], tf.string, name="examples")], autograph=False
        )


def saved_model_fingerprint(model_dir: Path) -> str:
    """sha256 over saved_model.pb and the variables files (names and bytes), in a fixed order.

    Reproducible for the same training in a fresh process only with the same PYTHONHASHSEED
    (measured: random seeds gave two saved_model.pb files for bit-identical weights), and only for
    the same transform_graph directory: its graph embeds the Transform run's temporary vocabulary
    path. saved_model.pb names traced functions with a per-process counter, so a second export in
    the same process gets another fingerprint even with identical weights.
    """
    digest = hashlib.sha256()
    paths = [model_dir / "saved_model.pb"] + sorted((model_dir / "variables").rglob("*"))
    for path in paths:
        if path.is_file():
            digest.update(path.relative_to(model_dir).as_posix().encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()


def export_model(model: tf_keras.Model, tf_transform_output: tft.TFTransformOutput, model_dir: Path) -> Path:
    """Saves the serving SavedModel to a temporary sibling of `model_dir`, then renames it into place."""
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{model_dir.name}-", dir=model_dir.parent))
    try:
        module = ServingModule(model, tf_transform_output)
        tf.saved_model.save(
            module,
            str(staging / MODEL_DIR),
            signatures={"serving_default": module.serving_default, "serving_examples": module.serving_examples},
        )
        replace_directory(staging / MODEL_DIR, model_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return model_dir


def load_transform_output(transform_graph_dir: Path) -> tft.TFTransformOutput:
    """The TFT output directory, checked: a DataError if it is not one or was analyzed without the label."""
    transform_graph_dir = Path(transform_graph_dir)
    if not (transform_graph_dir / "transform_fn").is_dir():
        raise DataError(f"{transform_graph_dir}: not a TF Transform output (no transform_fn/ inside)")
    tf_transform_output = tft.TFTransformOutput(str(transform_graph_dir))
    if LABEL not in tf_transform_output.transformed_feature_spec():
        raise DataError(f"{transform_graph_dir}: the transform output has no label {LABEL!r}; was it analyzed with tips?")
    return tf_transform_output


def fit_and_evaluate(
    transformed_dir: Path, tf_transform_output: tft.TFTransformOutput, config: TrainingConfig
) -> tuple[tf_keras.Model, dict[str, float], dict[str, float]]:
    """Builds and trains the Keras model; returns it with its train and eval metrics (no export).

    Reads `config.budget_rows` rows of each split, the first in training order (`first_rows`):
    the rows trained on and those the train and eval metrics are over, whatever the splits' sizes
    (the Evaluate step scores every eval row). Deterministic for a given `config.seed` on CPU: the
    rows and their order come from their content, and seeded initialisation and shuffling give
    bit-identical weights run after run (checked in one process and across processes). TF's op
    determinism switch is not used: it is process-wide, the public API cannot turn it off again,
    and other steps may run in the same process.
    """
    feature_spec = tf_transform_output.transformed_feature_spec()
    budget = config.budget_rows
    transformed_dir = Path(transformed_dir)
    split_files(transformed_dir, "eval")  # a missing eval split fails before reading the train split
    train_columns, train_rows, train_source = first_rows(transformed_dir, "train", feature_spec, budget)
    eval_columns, eval_rows, eval_source = first_rows(transformed_dir, "eval", feature_spec, budget)
    input_names = list(model_input_specs(tf_transform_output))
    train_features, train_labels = _features_and_labels(train_columns, input_names)
    kept = len(train_labels)
    print(f"{train_source}\n{eval_source}", flush=True)
    print(
        f"training {config.train_steps} steps of {config.batch_size} rows on {kept:,} of {train_rows:,} examples "
        f"({budget / kept:.1f} epochs of them)",
        flush=True,
    )
    tf_keras.utils.set_random_seed(config.seed)
    model = build_keras_model(config, tf_transform_output)
    train_dataset = (
        tf.data.Dataset.from_tensor_slices((train_features, train_labels))
        .shuffle(kept, seed=config.seed, reshuffle_each_iteration=True)
        .repeat()
        .batch(config.batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )
    started = time.perf_counter()
    final_loss = fit(model, train_dataset, config.train_steps)
    train_seconds = time.perf_counter() - started
    del train_dataset, train_features
    train_metrics = split_metrics(predict_rows(model, train_columns, input_names, split_dir(transformed_dir, "train")))
    train_metrics.update(final_batch_loss=final_loss, train_seconds=train_seconds, trained_on_examples=float(kept),
                         split_examples=float(train_rows))
    eval_metrics = split_metrics(predict_rows(model, eval_columns, input_names, split_dir(transformed_dir, "eval")))
    eval_metrics.update(split_examples=float(eval_rows))
    print(f"eval {', '.join(f'{k}={v:.4f}' for k, v in eval_metrics.items())}", flush=True)
    for name, value in {**train_metrics, **eval_metrics}.items():
        if not math.isfinite(value):
            raise DataError(
                f"{transformed_dir}: metric {name} is {value}: training diverged or a split has a single class"
            )
    return model, train_metrics, eval_metrics


def train_model(
    transformed_dir: Path, transform_graph_dir: Path, output_dir: Path, config: TrainingConfig
) -> TrainResult:
    """Trains `config.train_steps` steps of `config.batch_size` rows, evaluates, exports to output_dir/model.

    Writes output_dir/model (the SavedModel, renamed into place when complete) and
    output_dir/train_result.json.
    """
    output_dir = Path(output_dir)
    tf_transform_output = load_transform_output(transform_graph_dir)
    model, train_metrics, eval_metrics = fit_and_evaluate(Path(transformed_dir), tf_transform_output, config)
    started = time.perf_counter()
    model_dir = export_model(model, tf_transform_output, output_dir / MODEL_DIR)
    print(f"exported {model_dir} ({time.perf_counter() - started:.1f}s)", flush=True)
    result = TrainResult(model_dir, train_metrics, eval_metrics, saved_model_fingerprint(model_dir))
    write_json(
        output_dir / RESULT_FILE,
        {
            "model_dir": str(model_dir),
            "train_metrics": train_metrics,
            "eval_metrics": eval_metrics,
            "fingerprint": result.fingerprint,
            "config": dataclasses.asdict(config),
        },
    )
    return result


def main(argv: list[str] | None = None) -> int:
    """`python -m trainer.train TRANSFORMED_DIR TRANSFORM_GRAPH_DIR OUTPUT_DIR` with the config's [training]."""
    import argparse

    from core.config import load_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("transformed_dir", type=Path)
    parser.add_argument("transform_graph_dir", type=Path)
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--config", default=None, help="mlops.toml (default: $MLOPS_CONFIG or ./mlops.toml)")
    args = parser.parse_args(argv)
    try:
        result = train_model(args.transformed_dir, args.transform_graph_dir, args.output_dir, load_config(args.config).training)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({"model_dir": str(result.model_dir), "eval_metrics": result.eval_metrics, "fingerprint": result.fingerprint}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
