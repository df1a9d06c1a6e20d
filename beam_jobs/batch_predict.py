"""Batch prediction: score a CSV of taxi trips (or a folder of them) with a SavedModel, as a Beam job.

    python -m beam_jobs.batch_predict --input day.csv --model_dir var/serving/models/taxi/3 \
        --output /tmp/scored --runner=DirectRunner

Writes into the output directory:
- `predictions/predictions-*.jsonl` (or `.csv` with `--format=csv`): one record per scored row,
  `{"line": <1-based line number in the input>, "probability": p, "class": 0|1, "model_version": v}`.
  The line number is the row's id: the trips have no id column, and a line number lets a user
  open the input at that row (the header is line 1, as in an editor). When the input is a folder of
  several CSVs (read in name order, as ingest reads one), each record names its `file` too (the
  first CSV column).
- `rejected/rejected-*.jsonl`: rows that could not be scored, with the reason (the ingest format:
  `{"line", "reason", "feature", "detail", "text", "row"}`). Nothing is dropped silently:
  scored + rejected = data rows, checked after the run.
- `batch_predict_result.json`: the counts and the model version used.

Rows are parsed as ingest parses them (the same line-numbered, byte-range reading and the same
cell parser, `beam_jobs/csv_source.py`), except that the label column (`tips`) is not needed and a
missing value is not a reason to reject a row: the model treats missing values as it does at
serving time. Scoring goes through Beam's `RunInference` with a
model handler for the SavedModel's `serving_examples` signature, so the model's own TF Transform
graph turns raw rows into features: batch and online predictions cannot disagree.

Outputs are staged in a hidden folder and renamed into place, so a failed run leaves nothing a
reader could mistake for a result.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import apache_beam as beam
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from beam_jobs import csv_source, outputs
from beam_jobs.example_codec import serialize_row
from beam_jobs.options import add_job_argument, require_flags, run_program
from beam_jobs.progress import JobProgress, watched
from beam_jobs.source_lines import SourceFiles, file_and_line, line_in
from core.atomic import write_json
from core.errors import DataError
from transforms.features import SERVING_COLUMNS, SERVING_FEATURES

_LOG = logging.getLogger(__name__)

PREDICTIONS_DIR = "predictions"
REJECTED_DIR = "rejected"
RESULT_FILE = "batch_predict_result.json"
SUMMARY_FILE = "summary.json"
FORMATS = ("jsonl", "csv")
# The columns of a prediction record, in CSV order (after "file" when the input is several files).
PREDICTION_FIELDS = ("line", "probability", "class", "model_version")
FILE_FIELD = "file"
SIGNATURE = "serving_examples"
SIGNATURE_INPUT = "examples"
DEFAULT_BATCH_SIZE = 256
# How many rejected lines an error message quotes.
_EXAMPLES_IN_MESSAGE = 3


@dataclasses.dataclass(frozen=True)
class BatchPredictResult:
    input_path: str
    model_dir: str
    model_version: int
    rows_read: int  # data rows in the CSV (header and blank lines excluded)
    rows_scored: int
    rows_rejected: int
    rejected_by_reason: dict[str, int]
    positive_rate: float | None  # share of scored rows predicted class 1
    mean_probability: float | None
    output_dir: str
    output_format: str


def prediction_fields(sources: SourceFiles) -> tuple[str, ...]:
    """The CSV columns of the predictions of an input: with the file first when it is several."""
    return (FILE_FIELD, *PREDICTION_FIELDS) if sources.several else PREDICTION_FIELDS


# --- Checking the input before the pipeline ---


def plan_scoring(csv_path: Path, chunk_bytes: int = csv_source.DEFAULT_CHUNK_BYTES) -> csv_source.CsvInput:
    """Checks the header and cuts the file into line-aligned byte ranges for parallel reading.

    Unlike ingest, the label column is not required: a day of trips to score has no tips yet. A
    folder's CSV files are read as one input, as ingest reads them (core/input_files.py).
    """
    return csv_source.scan_csv_input(csv_path, SERVING_COLUMNS, chunk_bytes=chunk_bytes, needed_for="the model needs")


# --- Pipeline parts ---


class ParseScoringLineFn(beam.DoFn):
    """(source line, raw bytes) -> (source line, row of serving features); bad lines to 'rejected'.
    `headers`: each file's columns, by the file index its source lines carry."""

    REJECTED = "rejected"

    def __init__(self, headers: Sequence[Sequence[str]], source_files: Sequence[str] = ()) -> None:
        self._headers = tuple(tuple(columns) for columns in headers)
        self._source_files = tuple(source_files)

    def setup(self) -> None:
        self._sources = SourceFiles(self._source_files)
        # An empty file among several has no header (and no lines to read).
        self._indexes = [{name: columns.index(name) for name in SERVING_COLUMNS} if columns else {}
                         for columns in self._headers]

    def process(self, element: tuple[int, bytes]) -> Iterator[Any]:
        line_no, raw = element
        file = file_and_line(line_no)[0]
        line = csv_source.split_csv_line(raw, len(self._headers[file]))
        if isinstance(line, csv_source.BadLine):
            yield self._rejected(line_no, line.reason, None, line.detail, line.text, None)
            return
        text, fields = line
        cells = {name: fields[at] for name, at in self._indexes[file].items()}
        row, bad = csv_source.parse_cells(SERVING_FEATURES, cells)
        if bad:
            detail = "; ".join(f"{column}={cell!r}: {expected}" for column, cell, expected in bad)
            yield self._rejected(line_no, csv_source.REASON_UNPARSEABLE_VALUE, bad[0][0], detail, text, cells)
            return
        yield line_no, row

    def _rejected(self, line_no: int, reason: str, feature: str | None, detail: str, text: str,
                  cells: Mapping[str, str] | None) -> beam.pvalue.TaggedOutput:
        record = {**self._sources.place(line_no), "reason": reason, "feature": feature, "detail": detail,
                  "text": text, "row": csv_source.displayable_cells(cells)}
        return beam.pvalue.TaggedOutput(self.REJECTED, record)


class ExampleSignatureModelHandler(ModelHandler[bytes, PredictionResult, Any]):
    """RunInference handler for a SavedModel's `serving_examples` signature.

    Why not Beam's TFModelHandlerTensor: it calls the model object itself, while this project's
    SavedModels are called through named signatures that take serialized tf.Examples and return
    a dict (`probability`, `class`). Each batch is one signature call.
    """

    def __init__(self, model_dir: str, model_version: int, *, min_batch_size: int = 1,
                 max_batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        super().__init__()
        self._model_dir = model_dir
        self._model_version = model_version
        self._batch_kwargs = {"min_batch_size": min_batch_size, "max_batch_size": max_batch_size}

    def load_model(self) -> Any:
        return load_example_signature(self._model_dir)

    def run_inference(self, batch: Sequence[bytes], model: Any,
                      inference_args: Mapping[str, Any] | None = None) -> Iterable[PredictionResult]:
        import tensorflow as tf

        results = model.signatures[SIGNATURE](**{SIGNATURE_INPUT: tf.constant(list(batch), dtype=tf.string)})
        probabilities = results["probability"].numpy().reshape(-1)
        classes = results["class"].numpy().reshape(-1)
        if len(probabilities) != len(batch) or len(classes) != len(batch):
            raise RuntimeError(
                f"{self._model_dir}: signature {SIGNATURE} returned {len(probabilities)} probabilities and "
                f"{len(classes)} classes for {len(batch)} examples; it must return one of each per example"
            )
        model_id = str(self._model_version)
        return [
            PredictionResult(example, {"probability": float(p), "class": int(c)}, model_id)
            for example, p, c in zip(batch, probabilities, classes)
        ]

    def get_num_bytes(self, batch: Sequence[bytes]) -> int:
        return sum(len(example) for example in batch)

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        return self._batch_kwargs

    def get_metrics_namespace(self) -> str:
        return "BatchPredict"


def load_example_signature(model_dir: str) -> Any:
    """Loads the SavedModel and checks it has the example signature this job calls."""
    import tensorflow as tf

    if not Path(model_dir, "saved_model.pb").is_file():
        raise DataError(f"{model_dir}: not a SavedModel directory (no saved_model.pb)")
    model = tf.saved_model.load(model_dir)
    signatures = dict(model.signatures)
    if SIGNATURE not in signatures:
        raise DataError(f"{model_dir}: the SavedModel has no {SIGNATURE!r} signature (it has {sorted(signatures)})")
    inputs = signatures[SIGNATURE].structured_input_signature[1]
    if SIGNATURE_INPUT not in inputs:
        raise DataError(f"{model_dir}: signature {SIGNATURE!r} takes {sorted(inputs)}, expected an input {SIGNATURE_INPUT!r}")
    return model


def _to_keyed_example(line_no: int, row: Mapping[str, Any]) -> tuple[int, bytes]:
    return line_no, serialize_row(row)


def _to_prediction(keyed: tuple[int, PredictionResult], model_version: int, sources: SourceFiles) -> dict[str, Any]:
    line_no, result = keyed
    probability = result.inference["probability"]
    return {
        **sources.place(line_no),
        # NaN is not JSON; a model that gives none is recorded as null rather than a made-up number.
        "probability": probability if math.isfinite(probability) else None,
        "class": result.inference["class"],
        "model_version": model_version,
    }


def _to_csv_line(record: Mapping[str, Any], fields: Sequence[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(["" if record[k] is None else record[k] for k in fields])
    return buffer.getvalue()


class WritePredictions(beam.PTransform):
    """Prediction records -> JSON Lines or CSV (with a header of `fields`) files under `prefix`."""

    def __init__(self, prefix: str, output_format: str, fields: Sequence[str] = PREDICTION_FIELDS) -> None:
        super().__init__()
        self._prefix = prefix
        self._format = output_format
        self._fields = tuple(fields)

    def expand(self, records: beam.PCollection) -> beam.pvalue.PDone:
        if self._format == "csv":
            header = io.StringIO()
            csv.writer(header, lineterminator="").writerow(self._fields)
            return (
                records
                | "ToCsv" >> beam.Map(_to_csv_line, self._fields)
                | "WriteCsv" >> beam.io.WriteToText(self._prefix, file_name_suffix=".csv", header=header.getvalue())
            )
        return records | "WriteJsonl" >> outputs.WriteJsonLines(self._prefix)


class SummarizeScoringFn(beam.CombineFn):
    """Counts of scored and rejected rows, the positive rate and mean probability, rejection examples."""

    def create_accumulator(self) -> dict[str, Any]:
        return {"read": 0, "scored": 0, "positives": 0, "probability_sum": 0.0, "probabilities": 0, "reasons": {},
                "examples": []}

    def add_input(self, acc: dict[str, Any], fact: tuple) -> dict[str, Any]:
        if fact[0] == "read":
            acc["read"] += fact[1]
        elif fact[0] == "scored":
            _, predicted_class, probability = fact
            acc["scored"] += 1
            acc["positives"] += int(predicted_class == 1)
            if probability is not None:
                acc["probability_sum"] += probability
                acc["probabilities"] += 1
        else:
            _, reason, line_no, detail = fact
            acc["reasons"][reason] = acc["reasons"].get(reason, 0) + 1
            acc["examples"] = _first_examples(acc["examples"] + [[line_no, detail]])
        return acc

    def merge_accumulators(self, accumulators: Iterable[dict[str, Any]]) -> dict[str, Any]:
        merged = self.create_accumulator()
        for acc in accumulators:
            for key in ("read", "scored", "positives", "probability_sum", "probabilities"):
                merged[key] += acc[key]
            for reason, count in acc["reasons"].items():
                merged["reasons"][reason] = merged["reasons"].get(reason, 0) + count
            merged["examples"] = _first_examples(merged["examples"] + acc["examples"])
        return merged

    def extract_output(self, acc: dict[str, Any]) -> dict[str, Any]:
        return acc


def _first_examples(examples: list[list[Any]]) -> list[list[Any]]:
    """The rejections of the first lines read ([file, line], file "" for a lone file): deterministic
    whatever the bundle order."""
    return sorted(examples, key=lambda example: example[0])[:_EXAMPLES_IN_MESSAGE]


def _scored_fact(record: Mapping[str, Any]) -> tuple:
    return ("scored", record["class"], record["probability"])


def _rejected_fact(record: Mapping[str, Any]) -> tuple:
    return ("rejected", record["reason"], [record.get(FILE_FIELD, ""), record["line"]], record["detail"])


def build(pipeline: beam.Pipeline, plan: csv_source.CsvInput, *, model_dir: str, model_version: int, output_dir: str,
          output_format: str = "jsonl", batch_size: int = DEFAULT_BATCH_SIZE, progress: str | None = None) -> None:
    """Composes ReadCsv -> ParseRows -> ToExamples -> Score (RunInference) -> WritePredictions.
    `progress`: a progress.JobProgress folder, where the lines read are counted.

    Writes below output_dir: predictions/, rejected/ and summary.json (the run's counts).
    """
    output = Path(output_dir)
    read = pipeline | "ReadCsv" >> csv_source.ReadCsvLines([layout.csv_path for layout in plan.files], plan.chunks,
                                                           progress)
    parsed = read.lines | "ParseRows" >> beam.ParDo(ParseScoringLineFn(
        [layout.columns for layout in plan.files], plan.sources.names)).with_outputs(ParseScoringLineFn.REJECTED, main="rows")
    handler = KeyedModelHandler(ExampleSignatureModelHandler(model_dir, model_version, max_batch_size=batch_size))
    predictions = (
        parsed.rows
        | "ToExamples" >> beam.MapTuple(_to_keyed_example)
        | "Score" >> RunInference(handler)
        | "ToRecords" >> beam.Map(_to_prediction, model_version, plan.sources)
    )
    _ = predictions | "WritePredictions" >> WritePredictions(str(output / PREDICTIONS_DIR / "predictions"), output_format,
                                                             prediction_fields(plan.sources))
    rejected = parsed[ParseScoringLineFn.REJECTED]
    _ = rejected | "WriteRejected" >> outputs.WriteJsonLines(str(output / REJECTED_DIR / "rejected"))
    _ = (
        (
            read[csv_source.ReadChunkLinesFn.FACTS],  # ("read", lines) per byte range, counted before parsing
            predictions | "ScoredFacts" >> beam.Map(_scored_fact),
            rejected | "RejectedFacts" >> beam.Map(_rejected_fact),
        )
        | "Summarize" >> outputs.SummarizeBranches(SummarizeScoringFn())
        | "WriteSummary" >> beam.ParDo(outputs.WriteSummaryFn(str(output / SUMMARY_FILE)))
    )


# --- The job as a function ---


def model_version_of(model_dir: Path) -> int:
    """TF Serving's layout names a version directory by its integer version."""
    name = Path(model_dir).resolve().name
    if not name.isdigit():
        raise DataError(
            f"{model_dir}: cannot tell the model version from the directory name {name!r}; "
            "pass --model_version (TF Serving version directories are named by integer version)"
        )
    return int(name)


def batch_predict(
    csv_path: Path,
    model_dir: Path,
    output_dir: Path,
    *,
    model_version: int | None = None,
    output_format: str = "jsonl",
    max_rejected_fraction: float = 0.01,
    batch_size: int = DEFAULT_BATCH_SIZE,
    beam_args: Sequence[str] = (),
    chunk_bytes: int = csv_source.DEFAULT_CHUNK_BYTES,
    progress: JobProgress | None = None,
) -> BatchPredictResult:
    """Scores every data row of `csv_path` with the SavedModel in `model_dir`; see the module docstring.
    `progress` (beam_jobs/progress.py) prints how far it has read while it runs.

    Raises DataError before Beam starts for a missing/empty CSV, missing columns or a model without
    the example signature; and after the run when more than `max_rejected_fraction` of the rows
    could not be parsed (the rejected rows are still written to output_dir/rejected/ as evidence,
    the predictions are not published).
    """
    if output_format not in FORMATS:
        raise ValueError(f"output_format must be one of {FORMATS}, got {output_format!r}")
    if not 0.0 <= max_rejected_fraction <= 1.0:
        raise ValueError(f"max_rejected_fraction must be in [0, 1], got {max_rejected_fraction}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model_dir = Path(model_dir).resolve()
    version = model_version_of(model_dir) if model_version is None else int(model_version)
    output_dir = Path(output_dir)
    outputs.refuse_existing_outputs(output_dir, (PREDICTIONS_DIR, REJECTED_DIR, RESULT_FILE))
    plan = plan_scoring(Path(csv_path), chunk_bytes=chunk_bytes)
    load_example_signature(str(model_dir))  # a wrong model fails here, not inside a worker
    staging = outputs.make_staging_dir(output_dir, "batch_predict")
    try:
        with watched(progress) as counted_in, beam.Pipeline(options=PipelineOptions(list(beam_args))) as pipeline:
            build(pipeline, plan, model_dir=str(model_dir), model_version=version, output_dir=str(staging),
                  output_format=output_format, batch_size=batch_size, progress=counted_in)
        summary = outputs.read_summary(staging / SUMMARY_FILE)
        result = _result(plan, summary, model_dir, version, output_dir, output_format)
        if not result.rows_scored + result.rows_rejected == summary["read"] == plan.data_rows:
            raise RuntimeError(
                f"batch_predict lost track of rows in {plan.csv_path}: {plan.data_rows} data lines in the input, "
                f"{summary['read']} read, {result.rows_scored} scored + {result.rows_rejected} rejected"
            )
        if result.rows_rejected > max_rejected_fraction * result.rows_read:
            outputs.promote(staging, output_dir, (REJECTED_DIR,))  # keep the evidence
            examples = "; ".join(f"{line_in(file, line)}: {detail}" for (file, line), detail in summary["examples"])
            raise DataError(
                f"{plan.csv_path}: {result.rows_rejected} of {result.rows_read} rows "
                f"({result.rows_rejected / result.rows_read:.2%}) cannot be scored, more than the allowed "
                f"{max_rejected_fraction:.2%} ({result.rejected_by_reason}), e.g. {examples}. "
                f"Every rejected line, with its reason, is in {output_dir / REJECTED_DIR}/"
            )
        outputs.promote(staging, output_dir, (PREDICTIONS_DIR, REJECTED_DIR))
        write_json(output_dir / RESULT_FILE, dataclasses.asdict(result))
    finally:
        outputs.discard(staging)
    _LOG.info("batch_predict %s with %s (version %d): %s", plan.csv_path, model_dir, version, dataclasses.asdict(result))
    return result


def _result(plan: csv_source.CsvInput, summary: Mapping[str, Any], model_dir: Path, version: int, output_dir: Path,
            output_format: str) -> BatchPredictResult:
    scored = summary["scored"]
    return BatchPredictResult(
        input_path=plan.csv_path,
        model_dir=str(model_dir),
        model_version=version,
        rows_read=plan.data_rows,
        rows_scored=scored,
        rows_rejected=sum(summary["reasons"].values()),
        rejected_by_reason=dict(summary["reasons"]),
        positive_rate=summary["positives"] / scored if scored else None,
        mean_probability=summary["probability_sum"] / summary["probabilities"] if summary["probabilities"] else None,
        output_dir=str(output_dir),
        output_format=output_format,
    )


def read_predictions(output_dir: Path) -> list[dict[str, Any]]:
    """All prediction records of a finished run, sorted by file and line (for tests and small outputs)."""
    records: list[dict[str, Any]] = []
    for path in sorted((Path(output_dir) / PREDICTIONS_DIR).glob("predictions-*")):
        if path.suffix == ".jsonl":
            records += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        elif path.suffix == ".csv":
            with path.open(newline="") as handle:
                for row in csv.DictReader(handle):
                    records.append({
                        **({FILE_FIELD: row[FILE_FIELD]} if FILE_FIELD in row else {}),
                        "line": int(row["line"]),
                        "probability": float(row["probability"]) if row["probability"] else None,
                        "class": int(row["class"]),
                        "model_version": int(row["model_version"]),
                    })
    return sorted(records, key=lambda record: (record.get(FILE_FIELD, ""), record["line"]))


# --- The Beam program ---


class BatchPredictOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        add_job_argument(parser, "--input", type=str, default=None,
                         help="The CSV file to score, or a folder of CSV files (read in name order).")
        add_job_argument(parser, "--output", type=str, default=None,
                         help="The output directory (must not hold an earlier run's outputs).")
        add_job_argument(parser, "--model_dir", type=str, default=None,
                         help="The SavedModel version directory, e.g. var/serving/models/taxi/3.")
        add_job_argument(parser, "--model_version", type=int, default=None,
                         help="The model version to record (default: the model directory's name).")
        add_job_argument(parser, "--format", type=str, default="jsonl", help="jsonl or csv.")
        add_job_argument(parser, "--max_rejected_fraction", type=float, default=0.01,
                         help="Fail when more than this share of the rows cannot be parsed.")
        add_job_argument(parser, "--batch_size", type=int, default=DEFAULT_BATCH_SIZE,
                         help="Largest batch of examples per model call.")


def run(argv: Sequence[str] | None = None) -> BatchPredictResult:
    """Command-line entry: app flags and runner flags in one argv, as Beam programs take them."""
    args = list(sys.argv[1:] if argv is None else argv)
    options = PipelineOptions(args).view_as(BatchPredictOptions)
    require_flags("beam_jobs.batch_predict", {
        "--input": options.input, "--output": options.output, "--model_dir": options.model_dir})
    return batch_predict(
        Path(options.input),
        Path(options.model_dir),
        Path(options.output),
        model_version=options.model_version,
        output_format=options.format,
        max_rejected_fraction=options.max_rejected_fraction,
        batch_size=options.batch_size,
        beam_args=args,
    )


def main() -> None:
    run_program(run)


if __name__ == "__main__":
    # Import by package name so DoFns pickle as beam_jobs.batch_predict.*, importable in worker processes.
    from beam_jobs import batch_predict

    batch_predict.main()
