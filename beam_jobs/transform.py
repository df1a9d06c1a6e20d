"""The Transform step: analyze the train split with TF Transform, transform every split.

`AnalyzeDataset` computes the full-pass statistics (means, variances, quantiles, vocabularies) on
the train split only, so evaluation data never leaks into the encodings, and `TransformDataset`
applies the resulting graph to every split, the train split included (read a second time: see
`build`). The transform graph written by
`WriteTransformFn` is what the trainer embeds in the exported model. Each split's head, its first
rows in training order (beam_jobs/training_order.py), is combined from the examples as they are
written and written beside them: what a training run reads.

Usable as a library (`transform_examples`) and as a Beam program:

    python -m beam_jobs.transform --input DIR --output DIR --runner=DirectRunner
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import apache_beam as beam
import tensorflow as tf
import tensorflow_transform.beam as tft_beam
from apache_beam.options.pipeline_options import PipelineOptions
from tfx_bsl.public import tfxio

from beam_jobs.example_codec import SPLITS, TFRECORD_SUFFIX, split_dir, split_pattern, split_prefix
from beam_jobs.example_wire import ExamplesEncoder
from beam_jobs.options import add_job_argument
from beam_jobs.progress import JobProgress, watched
from beam_jobs.tfrecord_batches import DecodeExampleListsFn, ReadRecordBatches, TFRecordBatchSink, write_tfrecord_file
from beam_jobs.training_order import HEADS_FILE, FirstInOrder, FirstInOrderFn, head_path, heads_manifest
from core.atomic import replace_directory, write_json
from core.config import TrainingConfig
from core.errors import DataError
from transforms.feature_spec import raw_feature_spec, raw_schema
from transforms.preprocessing import preprocessing_fn

log = logging.getLogger(__name__)

TRANSFORM_GRAPH_DIR = "transform_graph"
TRANSFORMED_DIR = "transformed"
ANALYZED_SPLIT = "train"
_METRICS_NAMESPACE = "beam_jobs.transform"
_TELEMETRY = ["mlops-suite", "Transform"]
# Suffix of the train split's first read, the one the analysis consumes (see `build`).
_ANALYSIS_READ = "ForAnalysis"
# Rows per Arrow RecordBatch read from the cleaned examples. Fixed, not left to TFXIO: its default
# lets Beam's BatchElements size batches by measured time, so batch boundaries change from run to
# run, and with them the float32 partial sums of TFT's mean/var analyzers (z-score constants moved
# by up to 1e-5 relative) and the vectorised/scalar split of element-wise ops (sin, log1p: 1 ulp).
# With fixed batches the same input gives bit-identical analyzer constants and transformed rows.
# Why 4096 (docs/SCALE.md "Transform's growth"): TensorFlow 2.16 keeps ~1 KB of RSS per
# SparseTensor argument of every call of TFT's analysis and transform functions, one call per batch
# (benchmarks/tf_call_memory.py); with 19 raw features and 1000 rows a batch that was ~19 MB per
# million rows analyzed or transformed (0.73 -> 1.25 GiB over the 15M-row pipeline's 24k calls).
# 4096 keeps a quarter of it and cuts the step's time by ~7% at 1.5M rows, same peak there; 16384
# added 170 MB at 1.5M for no time.
READ_BATCH_SIZE = 4096
# Rows of each split's head when the caller does not say: what the default training reads.
DEFAULT_HEAD_ROWS = TrainingConfig().budget_rows


@dataclasses.dataclass(frozen=True)
class TransformResult:
    transform_graph_dir: Path
    transformed_dir: Path
    rows: dict[str, int]


class TransformOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        # Beam builds one parser from every imported PipelineOptions: flags other jobs share go
        # through add_job_argument (see beam_jobs/options.py).
        add_job_argument(parser, "--input", type=str, default="", help="Cleaned examples: <dir>/Split-<split>/data-*.tfrecord.gz")
        add_job_argument(parser, "--output", type=str, default="", help="Writes transform_graph/ and transformed/ below it")
        add_job_argument(
            parser, "--splits", type=str, default=",".join(SPLITS), help="Comma-separated splits; 'train' is analyzed"
        )
        add_job_argument(parser, "--head_rows", type=int, default=DEFAULT_HEAD_ROWS,
                         help="Rows of each split's head, its first in training order (what a training run reads)")


class CountRows(beam.PTransform):
    """Passes transformed (RecordBatch, passthrough) pairs through and adds their rows to the counter `name`.

    Counted per batch, before encoding: one Python call per 1,000 rows instead of one per row.
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        self._counter = beam.metrics.Metrics.counter(_METRICS_NAMESPACE, name)

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        counter = self._counter

        def count(batch_and_passthrough: tuple) -> tuple:
            counter.inc(batch_and_passthrough[0].num_rows)
            return batch_and_passthrough

        return pcoll | "Count" >> beam.Map(count)


class EncodeTransformedBatches(beam.PTransform):
    """(RecordBatch, passthrough) pairs -> one list of serialized tf.Examples per batch.

    What `tft_beam.EncodeTransformedDataset` does with record batches (tfx_bsl's C++ encoder built
    from the transformed schema; here example_wire.ExamplesEncoder, the same Examples made per batch
    with Arrow and numpy), but a batch stays one element: that transform flattens it into one
    element per row, and the TFRecord writer then costs a Python call and a compressor call per row.
    """

    def _extract_input_pvalues(self, transformed_and_metadata: tuple) -> tuple[tuple, list]:
        # The input is (batches, TFT's metadata object), not a tuple of PCollections: only the batches
        # are an input, as in EncodeTransformedDataset.
        return transformed_and_metadata, [transformed_and_metadata[0]]

    def expand(self, transformed_and_metadata: tuple) -> beam.PCollection:
        batches, metadata = transformed_and_metadata
        encoder = (
            metadata.deferred_metadata
            | "TransformedSchema" >> beam.Map(_schema_of)
            | "ExamplesEncoder" >> beam.Map(ExamplesEncoder)
        )
        # Passthrough features are dropped, as EncodeTransformedDataset drops them.
        return batches | "EncodeBatch" >> beam.Map(_encode_batch, beam.pvalue.AsSingleton(encoder))


def _schema_of(dataset_metadata: Any) -> Any:
    return dataset_metadata.schema


def _encode_batch(batch_and_passthrough: tuple, encoder: Any) -> list[bytes]:
    return encoder.encode(batch_and_passthrough[0])


def _write_head(first: FirstInOrder, path: str) -> None:
    # Written by the one element's worker, into the job's staging folder: a retry writes it again whole.
    write_tfrecord_file(path, first.record_lists())


def _rows_counter_name(split: str) -> str:
    return f"rows-{split}"


def check_cleaned_split(cleaned_dir: Path, split: str) -> list[str]:
    """The split's files; a DataError naming the folder if there are none, or no usable first Example.

    TFT's own errors for an empty or mistyped input arrive deep inside a Beam stack trace; one
    parsed record up front turns them into a message that says which file and what was expected.
    """
    files = sorted(tf.io.gfile.glob(split_pattern(cleaned_dir, split)))
    if not files:
        raise DataError(
            f"{split_dir(cleaned_dir, split)}: no cleaned examples (expected files data-*{TFRECORD_SUFFIX})"
        )
    first = None
    for path in files:
        for record in tf.data.TFRecordDataset(path, compression_type="GZIP").take(1):
            first = (path, record)
        if first is not None:
            break
    if first is None:
        raise DataError(f"{split_dir(cleaned_dir, split)}: the split has no examples ({len(files)} empty files)")
    path, record = first
    try:
        tf.io.parse_example(tf.reshape(record, [1]), raw_feature_spec())
    except (tf.errors.InvalidArgumentError, ValueError) as err:
        message = str(err).splitlines()[0]
        raise DataError(f"{path}: the first record is not a tf.Example with the raw feature kinds of transforms/features.py: {message}") from err
    return files


def build(pipeline: beam.Pipeline, options: TransformOptions, progress: str | None = None) -> None:
    """Analyze the train split, transform every split, write the transform graph and the examples.

    Must be applied inside a `tft_beam.Context`. `progress`: a progress.JobProgress folder, where
    the records read are counted (the train split's twice).
    """
    if not options.input or not options.output:
        raise DataError(f"the Transform job needs --input and --output, got --input={options.input!r} --output={options.output!r}")
    splits = [s.strip() for s in options.splits.split(",") if s.strip()]
    if ANALYZED_SPLIT not in splits:
        raise DataError(f"--splits must include {ANALYZED_SPLIT!r} (the split TF Transform analyzes), got {splits}")
    if options.head_rows < 1:
        raise DataError(f"--head_rows must be at least 1, got {options.head_rows}")
    output = Path(options.output)
    transform_fn = _read(pipeline, options.input, ANALYZED_SPLIT, _ANALYSIS_READ, progress) | "AnalyzeTrain" >> tft_beam.AnalyzeDataset(
        preprocessing_fn
    )
    for split in [ANALYZED_SPLIT] + [s for s in splits if s != ANALYZED_SPLIT]:
        # The train split is read again here rather than shared with the analysis: its rows would
        # otherwise feed two stages that cannot run fused (the transform waits for the analysis'
        # result), and the in-memory runner would hold every raw row of the split between them.
        batches, metadata = (_read(pipeline, options.input, split, progress=progress), transform_fn) | f"Transform{split.title()}" >> tft_beam.TransformDataset(
            output_record_batches=True
        )
        counted = batches | f"Count{split.title()}" >> CountRows(_rows_counter_name(split))
        encoded = (counted, metadata) | f"Encode{split.title()}" >> EncodeTransformedBatches()
        _ = encoded | f"Write{split.title()}" >> beam.io.Write(TFRecordBatchSink(split_prefix(output / TRANSFORMED_DIR, split)))
        # Without a default: a split without rows has no head (the trainer then reads the split).
        _ = (
            encoded
            | f"Head{split.title()}" >> beam.CombineGlobally(FirstInOrderFn(options.head_rows)).without_defaults()
            | f"WriteHead{split.title()}" >> beam.Map(_write_head, str(head_path(output / TRANSFORMED_DIR, split)))
        )
    _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(str(output / TRANSFORM_GRAPH_DIR))


def _read(pipeline: beam.Pipeline, cleaned_dir: str, split: str, purpose: str = "",
          progress: str | None = None) -> tuple[beam.PCollection, Any]:
    """(RecordBatches of READ_BATCH_SIZE rows, their TensorAdapterConfig): the dataset form TFT takes."""
    schema = raw_schema()
    source = tfxio.TFExampleRecord(
        file_pattern=split_pattern(cleaned_dir, split), schema=schema, telemetry_descriptors=_TELEMETRY
    )
    batches = (
        pipeline
        | f"Read{split.title()}{purpose}" >> ReadRecordBatches(
            tf.io.gfile.glob(split_pattern(cleaned_dir, split)), READ_BATCH_SIZE, progress)
        | f"Decode{split.title()}{purpose}" >> beam.ParDo(DecodeExampleListsFn(schema))
    )
    return batches, source.TensorAdapterConfig()


def _counted_rows(result: beam.runners.runner.PipelineResult, splits: Sequence[str]) -> dict[str, int]:
    counters = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(_METRICS_NAMESPACE))["counters"]
    totals = {split: 0 for split in splits}
    for counter in counters:
        for split in splits:
            if counter.key.metric.name == _rows_counter_name(split):
                totals[split] += int(counter.committed if counter.committed is not None else counter.attempted)
    return totals


def _as_data_error(err: RuntimeError, cleaned_dir: Path, splits: Sequence[str]) -> DataError | None:
    """A DataError naming the split for a record TFXIO cannot decode (a feature of the wrong kind)."""
    message = str(err)
    if "INVALID_ARGUMENT" not in message:
        return None
    where = str(cleaned_dir)
    for split in splits:
        if any(f"'{stage}{split.title()}{purpose}" in message for stage in ("Read", "Decode") for purpose in ("", _ANALYSIS_READ)):
            where = split_pattern(cleaned_dir, split)
    first_line = message.strip().splitlines()[0]
    return DataError(f"{where}: a record is not a tf.Example with the raw feature kinds of transforms/features.py: {first_line}")


def transform_examples(
    cleaned_dir: Path, output_dir: Path, *, beam_args: Sequence[str] = (), splits: Sequence[str] = SPLITS,
    head_rows: int = DEFAULT_HEAD_ROWS, progress: JobProgress | None = None,
) -> TransformResult:
    """Runs the Transform Beam program; returns where the graph and the examples are, and row counts.
    `progress` (beam_jobs/progress.py) prints how far it has read while it runs.

    Each split's first `head_rows` rows in training order are written again as its head (what a
    training run of that many rows reads) and `transformed/heads.json` says how many each holds.
    Everything is written below a temporary folder inside `output_dir` and renamed into place at
    the end, so a failed run leaves no half-written transform graph behind.
    """
    cleaned_dir, output_dir = Path(cleaned_dir), Path(output_dir)
    splits = list(splits)
    if ANALYZED_SPLIT not in splits:
        raise DataError(f"splits must include {ANALYZED_SPLIT!r} (the split TF Transform analyzes), got {splits}")
    for split in splits:
        check_cleaned_split(cleaned_dir, split)
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".transform-", dir=output_dir))
    try:
        options = PipelineOptions(
            [*beam_args, f"--input={cleaned_dir}", f"--output={staging}", f"--splits={','.join(splits)}",
             f"--head_rows={head_rows}"]
        ).view_as(TransformOptions)
        pipeline = beam.Pipeline(options=options)
        with tft_beam.Context(temp_dir=str(staging / "tft_tmp")), \
                watched(progress, again=[ANALYZED_SPLIT]) as counted_in:
            build(pipeline, options, counted_in)
            try:
                result = pipeline.run()
                result.wait_until_finish()
            except RuntimeError as err:
                raise _as_data_error(err, cleaned_dir, splits) or err
        rows = _counted_rows(result, splits)
        write_json(staging / TRANSFORMED_DIR / HEADS_FILE, heads_manifest(head_rows, rows))
        shutil.rmtree(staging / "tft_tmp", ignore_errors=True)
        for name in (TRANSFORM_GRAPH_DIR, TRANSFORMED_DIR):
            replace_directory(staging / name, output_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("transformed rows %s into %s", rows, output_dir)
    return TransformResult(output_dir / TRANSFORM_GRAPH_DIR, output_dir / TRANSFORMED_DIR, rows)


def run(argv: Sequence[str] | None = None) -> TransformResult:
    """Command-line entry: app flags (--input, --output, --splits) plus any Beam runner flags."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--splits", default=",".join(SPLITS), type=str)
    parser.add_argument("--head_rows", default=DEFAULT_HEAD_ROWS, type=int)
    known, beam_args = parser.parse_known_args(argv)
    splits = [s.strip() for s in known.splits.split(",") if s.strip()]
    return transform_examples(known.input, known.output, beam_args=beam_args, splits=splits, head_rows=known.head_rows)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    try:
        outcome = run()
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"transform graph: {outcome.transform_graph_dir}\ntransformed: {outcome.transformed_dir}\nrows: {outcome.rows}")
