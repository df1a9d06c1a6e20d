"""TFDV statistics of tf.Example splits, as a Beam job.

Validation (schema checks) and monitoring (drift and skew) both compare statistics, so both must
compute them the same way: one `ComputeStatistics` transform, one set of `StatsOptions`, whether
the Examples come from TFRecord files or from rows logged by the serving gateway.

Program:
    python -m beam_jobs.statistics --input DIR --output DIR [--splits train,eval] --runner=DirectRunner
reads `DIR/Split-<split>/data-*.tfrecord.gz` and writes `OUT/Split-<split>/FeatureStats.pb`
(a binary `DatasetFeatureStatisticsList`, docs/ARCHITECTURE.md "On-disk formats").
"""

from __future__ import annotations

import glob
import logging
import math
import numbers
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import apache_beam as beam
import pandas as pd
import tensorflow as tf
import tensorflow_data_validation as tfdv
from apache_beam.options.pipeline_options import PipelineOptions
from google.protobuf.message import DecodeError
from tensorflow_metadata.proto.v0 import statistics_pb2

from beam_jobs.example_codec import SPLITS, TFRECORD_SUFFIX, row_to_example, split_dir, split_pattern
from beam_jobs.options import add_job_argument, configure_cli_logging
from beam_jobs.progress import JobProgress, watched
from beam_jobs.tfrecord_batches import DecodeExampleListsFn, ReadRecordBatches
from core.errors import DataError
from transforms.features import EXAMPLE_COLUMNS, FEATURES_BY_NAME, Kind

STATS_FILE_NAME = "FeatureStats.pb"
# Equal-width buckets of numeric histograms (TFDV's default is 10); Jensen-Shannon drift is computed
# from them. On the taxi data no bucket count separates sampling noise from real drift for every
# feature (TFDV aligns two histograms by assuming values are uniform within a bucket, so one
# outlier that stretches the range moves the divergence); 20 was the best compromise of 10/20/50.
# Measurements: validation/schema.py, drift thresholds.
NUM_HISTOGRAM_BUCKETS = 20
NUM_QUANTILES_HISTOGRAM_BUCKETS = 20
# Enough top values to list every company in the taxi data (61) in reports.
NUM_TOP_VALUES = 100
# Rank histograms feed the L-infinity drift of categorical features: keep every value.
NUM_RANK_HISTOGRAM_BUCKETS = 1000

# How a feature written with two kinds shows in Beam's error (the statistics merge; the decoder).
_KIND_CONFLICT_SIGNS = ("incompatible type", "Feature had wrong type")

log = logging.getLogger(__name__)


def stats_options(sample_rate: float | None = None) -> tfdv.StatsOptions:
    """The one set of statistics options, so that statistics from any source are comparable.

    Semantic-domain statistics (image/text/URL detection) are off: the features are declared in
    transforms/features.py, nothing is left to guess, and they would only cost time.
    `sample_rate` keeps a random share of the decoded record batches (whole batches, not rows).
    """
    if sample_rate is not None and not 0.0 < sample_rate <= 1.0:
        raise DataError(f"statistics: sample_rate must be in (0, 1], got {sample_rate!r}")
    return tfdv.StatsOptions(
        sample_rate=sample_rate,
        num_top_values=NUM_TOP_VALUES,
        num_rank_histogram_buckets=NUM_RANK_HISTOGRAM_BUCKETS,
        num_histogram_buckets=NUM_HISTOGRAM_BUCKETS,
        num_quantiles_histogram_buckets=NUM_QUANTILES_HISTOGRAM_BUCKETS,
        enable_semantic_domain_stats=False,
        # The raw columns only: ingest's examples also carry the CSV line they came from, which is
        # bookkeeping (example_codec.SOURCE_LINE_KEY), not data to describe or validate.
        feature_allowlist=list(EXAMPLE_COLUMNS),
    )


class StatisticsOptions(PipelineOptions):
    """Flags of the statistics job; every other flag goes to the Beam runner."""

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        # Beam shares one parser between every imported job (see beam_jobs/options.py), so flags
        # go through add_job_argument and none is argparse-required.
        add_job_argument(parser, "--input", type=str, default=None,
                         help="Examples directory with Split-<split>/data-*.tfrecord.gz (required)")
        add_job_argument(parser, "--output", type=str, default=None,
                         help="Directory for Split-<split>/FeatureStats.pb (required)")
        add_job_argument(parser, "--splits", type=str, default=",".join(SPLITS),
                         help="Comma-separated split names")
        add_job_argument(parser, "--sample_rate", type=float, default=None,
                         help="Share of record batches to sample, in (0, 1]; default: all")


class ComputeStatistics(beam.PTransform):
    """Lists of serialized tf.Examples (tfrecord_batches.ReadRecordBatches) -> one
    DatasetFeatureStatisticsList.

    Decoding without a schema keeps each feature's kind as written (float_list / int64_list /
    bytes_list), so a feature written with the wrong kind shows up as a type anomaly in
    validation instead of failing the decode.
    """

    def __init__(self, options: tfdv.StatsOptions) -> None:
        super().__init__()
        self._options = options

    def expand(self, example_lists: beam.PCollection) -> beam.PCollection:
        return (
            example_lists
            | "DecodeExamples" >> beam.ParDo(DecodeExampleListsFn(features=_described_kinds(self._options)))
            | "GenerateStatistics" >> tfdv.GenerateStatistics(self._options)
        )


def _described_kinds(options: tfdv.StatsOptions) -> dict[str, Kind] | None:
    """The features statistics describe, with the kind each is declared as: what the decoder needs
    to keep (the allowlist drops every other column); None when some are not declared features."""
    names = options.feature_allowlist
    if not names or not all(name in FEATURES_BY_NAME for name in names):
        return None
    return {name: FEATURES_BY_NAME[name].kind for name in names}


def _split_names(options: StatisticsOptions) -> list[str]:
    names = [s.strip() for s in options.splits.split(",") if s.strip()]
    if not names:
        raise DataError(f"statistics: --splits names no split (got {options.splits!r})")
    return names


def statistics_path(output_dir: "str | Path", split: str) -> Path:
    return split_dir(output_dir, split) / STATS_FILE_NAME


def build(pipeline: beam.Pipeline, options: StatisticsOptions, label: str = "", progress: str | None = None) -> dict[str, Path]:
    """Adds, per split, ReadExamples -> ComputeStatistics -> WriteStatistics; returns the outputs.
    `progress`: a progress.JobProgress folder, where the records read are counted.

    Fails before anything runs when a split has no files: Beam's own message for an empty glob
    does not say which split or what layout was expected.
    """
    for flag in ("input", "output"):
        if not getattr(options, flag):
            raise DataError(f"statistics: --{flag} is required")
    stats = stats_options(options.sample_rate)
    outputs: dict[str, Path] = {}
    for split in _split_names(options):
        pattern = split_pattern(options.input, split)
        paths = tf.io.gfile.glob(pattern)
        if not paths:
            raise DataError(
                f"{split_dir(options.input, split)}: no data-*{TFRECORD_SUFFIX} files for split {split!r} "
                f"(expected {pattern})"
            )
        output = statistics_path(options.output, split)
        output.parent.mkdir(parents=True, exist_ok=True)
        _ = (
            pipeline
            | f"{label}ReadExamples[{split}]" >> ReadRecordBatches(paths, progress=progress)
            | f"{label}ComputeStatistics[{split}]" >> ComputeStatistics(stats)
            # WriteToText under the hood: a temp file renamed into place when the pipeline finishes.
            | f"{label}WriteStatistics[{split}]" >> tfdv.WriteStatisticsToBinaryFile(str(output))
        )
        outputs[split] = output
    return outputs


def _run_pipeline(
    options: PipelineOptions, add_transforms: Callable[[beam.Pipeline], None], source: str, patterns: Sequence[str] = ()
) -> None:
    """Runs a pipeline and turns TFDV's type-merge failure into a DataError naming the feature.

    TFDV only says "Unable to merge incompatible type: float vs large_binary"; the files behind
    `patterns` are then scanned to name the feature and the records that disagree.
    """
    try:
        with beam.Pipeline(options=options) as pipeline:
            add_transforms(pipeline)
    except Exception as error:  # Beam re-raises worker errors with varying types
        # TFDV's merge of two batches' types, or the decoder meeting both kinds in one batch.
        if not any(sign in str(error) for sign in _KIND_CONFLICT_SIGNS):
            raise
        conflict = _find_kind_conflict(patterns)
        raise DataError(
            f"{source}: a feature is written with different kinds in different Examples"
            f" ({conflict or 'TFDV: ' + str(error).splitlines()[0]}); every Example must use the kind"
            " declared in transforms/features.py"
        ) from error


def _find_kind_conflict(patterns: Sequence[str]) -> str | None:
    """Scans TFRecord files for the first feature with two kinds; only called after a failure."""
    first_seen: dict[str, tuple[str, str]] = {}
    for path in sorted(p for pattern in patterns for p in glob.glob(pattern)):
        for index, serialized in enumerate(tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator()):
            example = tf.train.Example.FromString(serialized)
            for name, feature in example.features.feature.items():
                kind = feature.WhichOneof("kind")
                if kind is None:
                    continue
                where = f"{Path(path).parent.name}/{Path(path).name} record {index}"
                if name not in first_seen:
                    first_seen[name] = (kind, where)
                elif first_seen[name][0] != kind:
                    return f"feature {name!r} is {first_seen[name][0]} in {first_seen[name][1]} and {kind} in {where}"
    return None


def _check_not_empty(path: Path, description: str) -> None:
    statistics = load_statistics(path)
    if not statistics.datasets or statistics.datasets[0].num_examples == 0:
        raise DataError(f"{description}: no examples to compute statistics on")


def generate_statistics(
    examples_dir: Path,
    output_dir: Path,
    *,
    splits: Sequence[str] = SPLITS,
    beam_args: Sequence[str] = (),
    sample_rate: float | None = None,
    progress: JobProgress | None = None,
) -> dict[str, Path]:
    """Statistics of each split of `examples_dir`, written to `output_dir/Split-<split>/FeatureStats.pb`.

    Returns split -> statistics path. Raises DataError when a split has no files or no examples,
    or when Examples disagree on a feature's kind.
    """
    return generate_statistics_of({"": (examples_dir, output_dir)}, splits=splits, beam_args=beam_args,
                                  sample_rate=sample_rate, progress=progress)[""]


def generate_statistics_of(
    datasets: Mapping[str, tuple[Path, Path]],
    *,
    splits: Sequence[str] = SPLITS,
    beam_args: Sequence[str] = (),
    sample_rate: float | None = None,
    progress: JobProgress | None = None,
) -> dict[str, dict[str, Path]]:
    """`generate_statistics` for several example folders (name -> (examples_dir, output_dir)) in one
    pipeline: one start-up instead of one per folder. Returns name -> split -> statistics path.
    `progress` (beam_jobs/progress.py), of the folders' rows together, prints how far it has read."""
    if not splits:
        raise DataError("statistics: no splits given")
    jobs = {
        name: StatisticsOptions(flags=list(beam_args), input=str(examples_dir), output=str(output_dir),
                                splits=",".join(splits), sample_rate=sample_rate)
        for name, (examples_dir, output_dir) in datasets.items()
    }
    outputs: dict[str, dict[str, Path]] = {}
    patterns = [split_pattern(options.input, split) for options in jobs.values() for split in _split_names(options)]
    sources = ", ".join(str(options.input) for options in jobs.values())
    with watched(progress) as counted_in:

        def add_transforms(pipeline: beam.Pipeline) -> None:
            for name, options in jobs.items():
                outputs[name] = build(pipeline, options, label=f"{name}/" if name else "", progress=counted_in)

        _run_pipeline(PipelineOptions(list(beam_args)), add_transforms, sources, patterns)
    for name, found in outputs.items():
        for split, path in found.items():
            _check_not_empty(path, f"{split_dir(jobs[name].input, split)} (split {split!r})")
            log.info("statistics of %s split %s: %s", jobs[name].input, split, path)
    return outputs


def _normalize_value(name: str, value: Any, where: str) -> Any:
    """A row value checked against the feature's kind; None for missing (None or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    kind = FEATURES_BY_NAME[name].kind
    if kind is Kind.STRING:
        if not isinstance(value, (str, bytes)):
            raise DataError(f"{where}: feature {name!r} is STRING, got {type(value).__name__} {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise DataError(f"{where}: feature {name!r} is {kind.name}, got {type(value).__name__} {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise DataError(f"{where}: feature {name!r} must be a finite number, got {value!r}")
    if kind is Kind.INT:
        if not number.is_integer():
            raise DataError(f"{where}: feature {name!r} is INT, got {value!r}")
        return int(number)
    return number


def _serialize_rows(rows: "Iterable[Mapping[str, Any]] | pd.DataFrame") -> list[bytes]:
    """Rows -> serialized Examples, with the kinds of transforms/features.py; bad rows raise DataError."""
    if isinstance(rows, pd.DataFrame):
        rows = rows.astype(object).where(rows.notna(), None).to_dict("records")
    serialized: list[bytes] = []
    for index, row in enumerate(rows):
        where = f"row {index}"
        unknown = sorted(str(name) for name in row if name not in FEATURES_BY_NAME)
        if unknown:
            raise DataError(f"{where}: unknown feature(s) {unknown}; expected names from transforms/features.py")
        clean = {name: _normalize_value(name, value, where) for name, value in row.items()}
        serialized.append(row_to_example(clean).SerializeToString())
    return serialized


def generate_statistics_from_rows(
    rows: "Iterable[Mapping[str, Any]] | pd.DataFrame",
    output_path: Path,
    *,
    beam_args: Sequence[str] = (),
) -> Path:
    """Statistics of in-memory rows (e.g. logged serving requests), through the same Beam path.

    Rows map raw feature names (transforms/features.py) to values; None or NaN means missing.
    The rows become tf.Examples with the declared kinds, so these statistics compare directly with
    those of the training Examples. Writes a binary DatasetFeatureStatisticsList to `output_path`.
    """
    serialized = _serialize_rows(rows)
    if not serialized:
        raise DataError(f"{output_path}: no rows to compute statistics on")
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    options = PipelineOptions(flags=list(beam_args))
    stats = stats_options()
    # Staged as a TFRecord file next to the output rather than beam.Create: Create pickles (and
    # bz2-compresses) its whole payload into the pipeline graph, several times, which costs more
    # than computing the statistics; a file is also what a remote runner's workers can read.
    staging = output_path.parent / f".rows-{uuid.uuid4().hex}{TFRECORD_SUFFIX}"
    try:
        with tf.io.TFRecordWriter(str(staging), options="GZIP") as writer:
            for record in serialized:
                writer.write(record)

        def add_transforms(pipeline: beam.Pipeline) -> None:
            _ = (
                pipeline
                | "ReadExamples" >> ReadRecordBatches([str(staging)])
                | "ComputeStatistics" >> ComputeStatistics(stats)
                | "WriteStatistics" >> tfdv.WriteStatisticsToBinaryFile(str(output_path))
            )

        _run_pipeline(options, add_transforms, f"{len(serialized)} rows", [str(staging)])
    finally:
        staging.unlink(missing_ok=True)
    return output_path


def load_statistics(path: "str | Path") -> statistics_pb2.DatasetFeatureStatisticsList:
    """Reads a binary DatasetFeatureStatisticsList (FeatureStats.pb)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: statistics file not found (expected a binary DatasetFeatureStatisticsList)")
    try:
        return statistics_pb2.DatasetFeatureStatisticsList.FromString(path.read_bytes())
    except DecodeError as error:
        raise DataError(f"{path}: not a binary DatasetFeatureStatisticsList ({error})") from error


def run(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """Entry point of `python -m beam_jobs.statistics`: job flags plus any Beam runner flags."""
    options = StatisticsOptions(flags=argv)
    for flag in ("input", "output"):
        if not getattr(options, flag):
            raise DataError(f"statistics: --{flag} is required")
    return generate_statistics_of({"": (Path(options.input), Path(options.output))}, splits=_split_names(options),
                                  beam_args=list(argv or ()), sample_rate=options.sample_rate)[""]


if __name__ == "__main__":
    import sys

    configure_cli_logging()
    try:
        for split_name, stats_file in run(sys.argv[1:]).items():
            print(f"{split_name}\t{stats_file}")
    except DataError as err:
        sys.exit(f"error: {err}")
