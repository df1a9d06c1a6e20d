"""Served source: the gateway's request log joined with its feedback -> labelled tf.Examples, as ingest writes them.

    python -m beam_jobs.served_source --requests '/var/log/gw/requests/date=*/part-*.parquet' \
        --feedback '/var/log/gw/feedback/date=*/part-*.parquet' --output /tmp/served \
        --start 2026-11-01 --end 2026-12-01 --label_policy ground_truth --runner=DirectRunner

Reads the gateway's request-log files (`<log>/requests/date=*/part-*.parquet`, the layout of
serving/prediction_log.py) and keeps rows of the window of request time; joins every feedback
file given (feedback arrives after the request, possibly days later: the caller lists the
feedback partitions from the window's first day on, mlops/production_source.py does). Keeps
what a client was served: no shadow copies, no error responses, each (request_id, instance_index)
once. Joins the latest feedback per key and keeps the rows with a label under the policy:
`ground_truth`, or `ground_truth_or_human` (a reviewer's decision counts where there is no ground
truth). The label goes into the example as `observed_big_tipper` (transforms/features.py), never as
a made-up tip; rows without a label are counted, not guessed. A feature marked `retained=False`
in features.py is never copied. Rows split into train/eval by a hash of the request id, so all
instances of one request land in the same split.

Writes `examples/Split-<split>/data-*.tfrecord.gz` (the format ingest writes) and
`served_result.json` (counts, the files read, the policy).
"""

from __future__ import annotations

import dataclasses
import datetime
import glob
import hashlib
import logging
import math
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from beam_jobs import outputs
from beam_jobs.example_codec import SPLITS, split_prefix
from beam_jobs.options import add_job_argument, iso_date, require_flags, run_program, utc_midnight
from core.atomic import write_json
from core.errors import DataError
from transforms.features import (
    LABEL_POLICIES,
    OBSERVED_LABEL_KEY,
    POLICY_GROUND_TRUTH,
    SERVING_FEATURES,
    Feature,
    Kind,
    feedback_label,
    is_missing,
)

_LOG = logging.getLogger(__name__)

EXAMPLES_DIR = "examples"
RESULT_FILE = "served_result.json"
SUMMARY_FILE = "summary.json"

# Parquet rows read per batch: what one DoFn holds at a time.
READ_BATCH_ROWS = 4096
_STATUS_OK = 200
_REQUEST_COLUMNS = ("request_id", "instance_index", "timestamp", "status_code", "is_shadow",
                    *(f.name for f in SERVING_FEATURES))
_FEEDBACK_COLUMNS = ("request_id", "instance_index", "timestamp", "ground_truth", "human_decision", "source")


@dataclasses.dataclass(frozen=True)
class ServedSourceResult:
    label_policy: str
    window_start: str  # ISO, UTC, inclusive
    window_end: str  # exclusive
    request_files: list[str]  # each as <partition>/<file>: date=YYYY-MM-DD/part-*.parquet
    feedback_files: list[str]
    rows_read: int  # request-log rows in the files read
    rows_outside_window: int
    rows_shadow: int  # shadow copies: never returned to a client
    rows_error: int  # error responses (status_code != 200)
    rows_duplicate: int  # a (request_id, instance_index) seen again
    rows_served: int  # what clients were served in the window, each key once
    rows_labelled: int  # served rows with a label under the policy: the examples written
    rows_unlabelled: int  # served rows without one: counted, never guessed
    rows_capped: int  # labelled rows left out by keep_fraction (the cap on production data)
    feedback_rows_read: int
    by_label_source: dict[str, int]  # ground_truth / human_decision -> rows
    by_feedback_source: dict[str, int]  # who labelled: the feedback's `source` -> rows
    rows_by_partition: dict[str, int]  # request partition date -> served rows labelled from it
    split_counts: dict[str, int]
    features_not_retained: list[str]  # features.py marks them; never copied into the examples


@dataclasses.dataclass(frozen=True)
class ServedSourcePlan:
    request_files: tuple[str, ...]  # absolute paths
    feedback_files: tuple[str, ...]
    start_us: int
    end_us: int
    label_policy: str
    hash_buckets: int
    eval_buckets: int
    keep_fraction: float  # < 1 when a cap on production rows thins them (by request-id hash)
    output_dir: str


def plan_served_source(request_files: Sequence[Path | str], feedback_files: Sequence[Path | str], output_dir: Path, *,
                       start: datetime.datetime, end: datetime.datetime, label_policy: str = POLICY_GROUND_TRUTH,
                       hash_buckets: int = 3, eval_buckets: int = 1, keep_fraction: float = 1.0) -> ServedSourcePlan:
    """Checks the arguments and that the files exist; raises ValueError/DataError before Beam starts."""
    for name, value in (("start", start), ("end", end)):
        if value.tzinfo is None:
            raise ValueError(f"{name} must be timezone-aware (UTC), got naive {value.isoformat()}")
    if not start < end:
        raise ValueError(f"the window is empty: start {start.isoformat()} is not before end {end.isoformat()}")
    if label_policy not in LABEL_POLICIES:
        raise ValueError(f"label_policy must be one of {', '.join(LABEL_POLICIES)}, got {label_policy!r}")
    if not 0 < eval_buckets < hash_buckets:
        raise ValueError(f"eval_buckets must be in 1..hash_buckets-1, got {eval_buckets} of {hash_buckets}")
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    missing = [str(path) for path in (*request_files, *feedback_files) if not Path(path).is_file()]
    if missing:
        raise DataError(f"log files not found: {', '.join(missing[:5])} (expected Parquet part files of the gateway's log)")
    return ServedSourcePlan(tuple(map(str, request_files)), tuple(map(str, feedback_files)),
                            _micros(start), _micros(end), label_policy, hash_buckets, eval_buckets, keep_fraction,
                            str(output_dir))


def _micros(moment: datetime.datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


# --- Reading the logs, a batch at a time ---


def _read_batches(path: str, columns: Sequence[str]) -> Iterator[list[dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        missing = [name for name in columns if name not in parquet.schema_arrow.names]
        if missing:
            raise DataError(f"{path}: missing columns {missing} (expected the prediction log schema in docs/ARCHITECTURE.md)")
        for batch in parquet.iter_batches(batch_size=READ_BATCH_ROWS, columns=list(columns)):
            # Timestamps as integer microseconds: no timezone database needed on the worker.
            table = pa.Table.from_batches([batch])
            table = table.set_column(table.schema.get_field_index("timestamp"), "timestamp",
                                     table.column("timestamp").cast(pa.int64()))
            yield table.to_pylist()
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None


def _partition_of(path: str) -> str:
    """`2026-11-10` for `.../date=2026-11-10/part-*.parquet` (the log's partitions are by UTC date)."""
    return Path(path).parent.name.rpartition("=")[2]


def _partition_and_name(path: str) -> str:
    return f"{Path(path).parent.name}/{Path(path).name}"


class ReadServedRowsFn(beam.DoFn):
    """A request-log file -> ((request_id, instance_index), row) for what a client was served in the window.

    Facts (tag 'facts') count every row read by what became of it.
    """

    FACTS = "facts"

    def __init__(self, start_us: int, end_us: int) -> None:
        self._start_us, self._end_us = start_us, end_us

    def process(self, path: str) -> Iterator[Any]:
        partition = _partition_of(path)
        for rows in _read_batches(path, _REQUEST_COLUMNS):
            yield beam.pvalue.TaggedOutput(self.FACTS, ("count", "read", len(rows)))
            for row in rows:
                if not self._start_us <= row["timestamp"] < self._end_us:
                    outcome = "outside_window"
                elif row["is_shadow"]:
                    outcome = "shadow"
                elif row["status_code"] != _STATUS_OK:
                    outcome = "error"
                else:
                    row["partition"] = partition
                    yield (row["request_id"], row["instance_index"]), row
                    continue
                yield beam.pvalue.TaggedOutput(self.FACTS, ("count", outcome, 1))


class ReadFeedbackFn(beam.DoFn):
    """A feedback file -> ((request_id, instance_index), feedback row)."""

    FACTS = "facts"

    def process(self, path: str) -> Iterator[Any]:
        for rows in _read_batches(path, _FEEDBACK_COLUMNS):
            yield beam.pvalue.TaggedOutput(self.FACTS, ("count", "feedback_read", len(rows)))
            for row in rows:
                yield (row["request_id"], row["instance_index"]), row


def _feedback_order(row: dict[str, Any]) -> tuple:
    """Latest wins; equal timestamps are ordered by content, so the choice is the same on every run."""
    return (row["timestamp"], str(row["ground_truth"]), str(row["human_decision"]), str(row["source"]))


class LatestFeedbackFn(beam.CombineFn):
    """Per key, the feedback row received last (a correction replaces an earlier answer)."""

    def create_accumulator(self) -> dict[str, Any] | None:
        return None

    def add_input(self, latest: dict[str, Any] | None, row: dict[str, Any]) -> dict[str, Any]:
        return row if latest is None or _feedback_order(row) > _feedback_order(latest) else latest

    def merge_accumulators(self, accumulators: Iterable[dict[str, Any] | None]) -> dict[str, Any] | None:
        latest = None
        for row in accumulators:
            if row is not None:
                latest = self.add_input(latest, row)
        return latest

    def extract_output(self, latest: dict[str, Any] | None) -> dict[str, Any] | None:
        return latest


def _request_hash(request_id: str) -> int:
    return int.from_bytes(hashlib.md5(request_id.encode("utf-8")).digest()[:8], "big")


class JoinLabelFn(beam.DoFn):
    """((key), {requests, feedback}) -> a labelled training row; facts for every outcome.

    Served copies of one key (a replayed journal, a retried write) are one row: the earliest is kept.
    """

    FACTS = "facts"

    def __init__(self, policy: str, features: Sequence[Feature], keep_fraction: float) -> None:
        self._policy = policy
        self._copied = tuple(f for f in features if f.retained)
        self._keep_below = keep_fraction * 2**64

    def process(self, element: tuple[Any, dict[str, list]]) -> Iterator[Any]:
        _, grouped = element
        served = sorted(grouped["requests"], key=lambda row: (row["timestamp"], row["partition"]))
        if not served:
            return  # feedback for a request outside the window (or never served)
        row = served[0]
        facts = [("count", "duplicate", len(served) - 1), ("count", "served", 1)]
        feedback = next((f for f in grouped["feedback"] if f is not None), None)
        label = None if feedback is None else feedback_label(
            feedback.get("ground_truth"), feedback.get("human_decision"), self._policy)
        if label is None:
            facts.append(("count", "unlabelled", 1))
        elif _request_hash(row["request_id"]) >= self._keep_below:
            facts.append(("count", "capped", 1))
        else:
            value, source = label
            facts += [("count", "labelled", 1), ("label_source", source, 1),
                      ("feedback_source", str(feedback["source"]), 1), ("partition", row["partition"], 1)]
            example = {f.name: _stored(f, row.get(f.name)) for f in self._copied}
            example[OBSERVED_LABEL_KEY] = value
            yield row["request_id"], example
        for fact in facts:
            yield beam.pvalue.TaggedOutput(self.FACTS, fact)


def _stored(feature: Feature, value: Any) -> Any:
    """A logged value as ingest would have parsed it: None for missing or the serving sentinel."""
    if value is None or is_missing(value):
        return None
    if feature.kind is Kind.FLOAT:
        return float(value) if math.isfinite(value) else None
    return int(value) if feature.kind is Kind.INT else str(value)


def split_by_request(keyed: tuple[str, dict[str, Any]], num_splits: int, hash_buckets: int, eval_buckets: int) -> int:
    """All instances of one request go to one split: a request's rows are not independent of each other."""
    bucket = _request_hash(keyed[0]) % hash_buckets
    return SPLITS.index("eval") if bucket >= hash_buckets - eval_buckets else SPLITS.index("train")


class SumFactsFn(beam.CombineFn):
    """(group, name, count) facts -> {group: {name: total}}: the run summary."""

    def create_accumulator(self) -> dict[str, dict[str, int]]:
        return {}

    def add_input(self, acc: dict[str, dict[str, int]], fact: tuple[str, str, int]) -> dict[str, dict[str, int]]:
        group, name, count = fact
        acc.setdefault(group, {})
        acc[group][name] = acc[group].get(name, 0) + count
        return acc

    def merge_accumulators(self, accumulators: Iterable[dict[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
        merged: dict[str, dict[str, int]] = {}
        for acc in accumulators:
            for group, counts in acc.items():
                for name, count in counts.items():
                    self.add_input(merged, (group, name, count))
        return merged

    def extract_output(self, acc: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        return acc


def _split_fact(keyed: tuple[str, dict[str, Any]], split: str) -> tuple[str, str, int]:
    return ("split", split, 1)


def _example(keyed: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    return keyed[1]


def build(pipeline: beam.Pipeline, plan: ServedSourcePlan, features: Sequence[Feature] = SERVING_FEATURES) -> None:
    """ReadRequests + ReadFeedback -> LatestFeedback -> JoinLabels -> SplitByRequest -> WriteSplit[*]; plus SUMMARY_FILE."""
    output = Path(plan.output_dir)
    requests = (
        pipeline
        | "ListRequestFiles" >> beam.Create(list(plan.request_files))
        | "ReadRequests" >> beam.ParDo(ReadServedRowsFn(plan.start_us, plan.end_us)).with_outputs(
            ReadServedRowsFn.FACTS, main="served")
    )
    feedback = (
        pipeline
        | "ListFeedbackFiles" >> beam.Create(list(plan.feedback_files))
        | "ReadFeedback" >> beam.ParDo(ReadFeedbackFn()).with_outputs(ReadFeedbackFn.FACTS, main="rows")
    )
    latest = feedback.rows | "LatestFeedback" >> beam.CombinePerKey(LatestFeedbackFn())
    joined = (
        {"requests": requests.served, "feedback": latest}
        | "JoinByRequest" >> beam.CoGroupByKey()
        | "JoinLabels" >> beam.ParDo(JoinLabelFn(plan.label_policy, features, plan.keep_fraction)).with_outputs(
            JoinLabelFn.FACTS, main="labelled")
    )
    splits = joined.labelled | "SplitByRequest" >> beam.Partition(
        split_by_request, len(SPLITS), plan.hash_buckets, plan.eval_buckets)
    facts = [requests[ReadServedRowsFn.FACTS], feedback[ReadFeedbackFn.FACTS], joined[JoinLabelFn.FACTS]]
    for index, split in enumerate(SPLITS):
        _ = (splits[index]
             | f"ToExample[{split}]" >> beam.Map(_example)
             | f"WriteSplit[{split}]" >> outputs.WriteExamples(split_prefix(output / EXAMPLES_DIR, split)))
        facts.append(splits[index] | f"SplitFact[{split}]" >> beam.Map(_split_fact, split))
    _ = (
        tuple(facts)
        | "Summarize" >> outputs.SummarizeBranches(SumFactsFn())
        | "WriteSummary" >> beam.ParDo(outputs.WriteSummaryFn(str(output / SUMMARY_FILE)))
    )


def extract_served_examples(
    request_files: Sequence[Path | str],
    feedback_files: Sequence[Path | str],
    output_dir: Path,
    *,
    start: datetime.datetime,
    end: datetime.datetime,
    label_policy: str = POLICY_GROUND_TRUTH,
    hash_buckets: int = 3,
    eval_buckets: int = 1,
    keep_fraction: float = 1.0,
    features: Sequence[Feature] = SERVING_FEATURES,
    beam_args: Sequence[str] = (),
) -> ServedSourceResult:
    """Runs the job (see the module docstring) and checks that every served row is accounted for.

    An empty window or no labelled rows is not an error: the result says so (0 examples written).
    """
    output_dir = Path(output_dir)
    outputs.refuse_existing_outputs(output_dir, (EXAMPLES_DIR, RESULT_FILE))
    plan = plan_served_source(request_files, feedback_files, output_dir, start=start, end=end, label_policy=label_policy,
                              hash_buckets=hash_buckets, eval_buckets=eval_buckets, keep_fraction=keep_fraction)
    staging = outputs.make_staging_dir(output_dir, "served")
    try:
        with beam.Pipeline(options=PipelineOptions(list(beam_args))) as pipeline:
            build(pipeline, dataclasses.replace(plan, output_dir=str(staging)), features)
        result = _result(plan, outputs.read_summary(staging / SUMMARY_FILE), features, start, end)
        outputs.promote(staging, output_dir, (EXAMPLES_DIR,))
        write_json(output_dir / RESULT_FILE, dataclasses.asdict(result))
    finally:
        outputs.discard(staging)
    _LOG.info("served source: %s", dataclasses.asdict(result))
    return result


def _result(plan: ServedSourcePlan, summary: dict[str, dict[str, int]], features: Sequence[Feature],
            start: datetime.datetime, end: datetime.datetime) -> ServedSourceResult:
    counts = summary.get("count", {})
    result = ServedSourceResult(
        label_policy=plan.label_policy,
        window_start=start.isoformat(),
        window_end=end.isoformat(),
        request_files=[_partition_and_name(p) for p in plan.request_files],
        feedback_files=[_partition_and_name(p) for p in plan.feedback_files],
        rows_read=counts.get("read", 0),
        rows_outside_window=counts.get("outside_window", 0),
        rows_shadow=counts.get("shadow", 0),
        rows_error=counts.get("error", 0),
        rows_duplicate=counts.get("duplicate", 0),
        rows_served=counts.get("served", 0),
        rows_labelled=counts.get("labelled", 0),
        rows_unlabelled=counts.get("unlabelled", 0),
        rows_capped=counts.get("capped", 0),
        feedback_rows_read=counts.get("feedback_read", 0),
        by_label_source=dict(sorted(summary.get("label_source", {}).items())),
        by_feedback_source=dict(sorted(summary.get("feedback_source", {}).items())),
        rows_by_partition=dict(sorted(summary.get("partition", {}).items())),
        split_counts={split: summary.get("split", {}).get(split, 0) for split in SPLITS},
        features_not_retained=[f.name for f in features if not f.retained],
    )
    accounted = (result.rows_outside_window + result.rows_shadow + result.rows_error + result.rows_duplicate
                 + result.rows_served)
    kept = result.rows_labelled + result.rows_unlabelled + result.rows_capped
    if accounted != result.rows_read or kept != result.rows_served or sum(result.split_counts.values()) != result.rows_labelled:
        raise RuntimeError(f"served source lost track of rows in {len(plan.request_files)} request files: {summary}")
    return result


# --- The Beam program ---


class ServedSourceOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        add_job_argument(parser, "--requests", type=str, default=None,
                         help="Glob of request-log files, e.g. '<log>/requests/date=*/part-*.parquet'.")
        add_job_argument(parser, "--feedback", type=str, default="",
                         help="Glob of feedback files, e.g. '<log>/feedback/date=*/part-*.parquet'.")
        add_job_argument(parser, "--output", type=str, default=None, help="The output directory.")
        add_job_argument(parser, "--start", type=iso_date, default=None,
                         help="First day of the window (YYYY-MM-DD, UTC, inclusive).")
        add_job_argument(parser, "--end", type=iso_date, default=None,
                         help="Day after the window (YYYY-MM-DD, UTC, exclusive).")
        add_job_argument(parser, "--label_policy", type=str, default=POLICY_GROUND_TRUTH,
                         help=f"Which feedback is a label: {' or '.join(LABEL_POLICIES)}.")
        add_job_argument(parser, "--hash_buckets", type=int, default=3,
                         help="Hash buckets for the split; train:eval = (buckets - eval):eval.")
        add_job_argument(parser, "--eval_buckets", type=int, default=1, help="Buckets that go to eval.")


def run(argv: Sequence[str] | None = None) -> ServedSourceResult:
    args = list(sys.argv[1:] if argv is None else argv)
    options = PipelineOptions(args).view_as(ServedSourceOptions)
    require_flags("beam_jobs.served_source", {"--requests": options.requests, "--output": options.output,
                                              "--start": options.start, "--end": options.end})
    requests = sorted(glob.glob(options.requests))
    feedback = sorted(glob.glob(options.feedback)) if options.feedback else []
    return extract_served_examples(requests, feedback, Path(options.output), start=utc_midnight(options.start),
                                   end=utc_midnight(options.end), label_policy=options.label_policy,
                                   hash_buckets=options.hash_buckets, eval_buckets=options.eval_buckets,
                                   beam_args=args)


def main() -> None:
    run_program(run)


if __name__ == "__main__":
    # Import by package name so DoFns pickle as beam_jobs.served_source.*, importable in worker processes.
    from beam_jobs import served_source

    served_source.main()
