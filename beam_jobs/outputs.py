"""How the Beam programs write: examples and JSON-lines files, staged (atomic) outputs, run summaries.

Outputs: a job writes everything into a hidden staging folder inside its output directory and only
renames finished folders into place, so a crashed or rejected run never leaves half a split behind
where the next step would read it.

Files: `WriteExamples` writes rows as gzip TFRecords of tf.Example, `WriteJsonLines` writes
records (rejected rows, predictions) one JSON object per line.

Summaries: a job's counts come out of the pipeline as data (one small JSON file), not as runner
metrics, because metrics support differs between runners while a file reads the same everywhere.
Facts from several branches are combined per branch first (`SummarizeBranches`), so no runner holds
a fact per row at the end of a job.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_jobs.example_codec import TFRECORD_SUFFIX, serialize_row
from core.atomic import replace_directory


class WriteExamples(beam.PTransform):
    """Rows -> gzip TFRecords of tf.Example under `prefix`."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self._prefix = prefix

    def expand(self, rows: beam.PCollection) -> beam.pvalue.PDone:
        return (
            rows
            | "ToExample" >> beam.Map(serialize_row)
            | "WriteTFRecord" >> beam.io.WriteToTFRecord(
                self._prefix, file_name_suffix=TFRECORD_SUFFIX, compression_type=CompressionTypes.GZIP)
        )


class WriteJsonLines(beam.PTransform):
    """Dicts -> JSON Lines files under `prefix`."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self._prefix = prefix

    def expand(self, records: beam.PCollection) -> beam.pvalue.PDone:
        return (
            records
            | "ToJson" >> beam.Map(_to_json_line)
            | "WriteText" >> beam.io.WriteToText(self._prefix, file_name_suffix=".jsonl")
        )


class SummarizeBranches(beam.PTransform):
    """Facts from several branches of a job -> one summary by `combine_fn`, each branch combined
    where its facts are made.

    Not a Flatten of the facts into one combine: a runner that cannot fuse the Flatten into every
    branch (Beam's in-memory runner does not, when the branches come from different stages)
    materializes the flattened facts, so a job with a fact per row held all of them at its end
    (batch predict at 1.5M rows: +230 MB). Each branch's combine is lifted into its own stage, and
    only one accumulator per branch meets the others. Apply it to a tuple of PCollections: Beam
    flattens a list before a transform sees it.
    """

    def __init__(self, combine_fn: beam.CombineFn) -> None:
        super().__init__()
        self._combine_fn = combine_fn

    def expand(self, branches: Sequence[beam.PCollection] | beam.PCollection) -> beam.PCollection:
        if isinstance(branches, beam.PCollection):
            branches = (branches,)
        partial = [branch | f"Combine[{index}]" >> beam.CombineGlobally(_Accumulated(self._combine_fn))
                   for index, branch in enumerate(branches)]
        return partial | "Gather" >> beam.Flatten() | "Merge" >> beam.CombineGlobally(_MergedAccumulators(self._combine_fn))


class _Accumulated(beam.CombineFn):
    """`combine_fn` whose output is its accumulator, for `_MergedAccumulators` to merge."""

    def __init__(self, combine_fn: beam.CombineFn) -> None:
        self._fn = combine_fn

    def create_accumulator(self) -> Any:
        return self._fn.create_accumulator()

    def add_input(self, accumulator: Any, element: Any) -> Any:
        return self._fn.add_input(accumulator, element)

    def merge_accumulators(self, accumulators: Iterable[Any]) -> Any:
        return self._fn.merge_accumulators(accumulators)

    def extract_output(self, accumulator: Any) -> Any:
        return accumulator


class _MergedAccumulators(_Accumulated):
    """Accumulators of `combine_fn` -> its output."""

    def add_input(self, accumulator: Any, other: Any) -> Any:
        return self._fn.merge_accumulators([accumulator, other])

    def extract_output(self, accumulator: Any) -> Any:
        return self._fn.extract_output(accumulator)


def _to_json_line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False)


def refuse_existing_outputs(output_dir: Path, names: Iterable[str]) -> None:
    """Beam overwrites shards by name, so stale shards of an older run would mix into a new one: refuse."""
    present = [name for name in names if (output_dir / name).exists()]
    if present:
        raise FileExistsError(
            f"{output_dir} already holds {', '.join(present)} from an earlier run; "
            "use a new output directory (each run writes its own partition)"
        )


def make_staging_dir(output_dir: Path, job: str) -> Path:
    """A hidden folder inside output_dir, so the final renames stay on one filesystem (atomic)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = output_dir / f".staging-{job}-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    return staging


def promote(staging: Path, output_dir: Path, names: Sequence[str]) -> None:
    """Renames finished folders from staging into output_dir (each rename is atomic)."""
    for name in names:
        source = staging / name
        if source.exists():
            replace_directory(source, output_dir / name)


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)


class WriteSummaryFn(beam.DoFn):
    """Writes the single element it gets (a run summary) as JSON: temp file, then rename.

    One DoFn instead of WriteToText: a one-line file does not need a sink's four stages, and a
    retried bundle simply rewrites the same content.

    Not core.atomic: this runs on the workers and writes through Beam's FileSystems, so the path may
    be remote (gs://, s3://, hdfs://) where there is no local fsync or os.replace; FileSystems.rename
    is the atomic step each of those filesystems offers.
    """

    def __init__(self, path: str) -> None:
        self._path = path

    def process(self, summary: Any) -> Iterator[str]:
        temp_path = f"{self._path}.{uuid.uuid4().hex}.tmp"
        with FileSystems.create(temp_path) as out:
            out.write(json.dumps(summary, sort_keys=True).encode("utf-8"))
        FileSystems.rename([temp_path], [self._path])
        yield self._path


def read_summary(path: Path) -> Any:
    if not path.is_file():
        raise RuntimeError(f"{path}: the pipeline finished without writing its summary")
    return json.loads(path.read_text())
