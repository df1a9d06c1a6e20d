"""Every Beam job on Beam's portable runner, as Flink, Spark and Dataflow run Python pipelines: the
job goes to Beam's own job service (`local_job_service_main`) and its code runs in SDK workers
started by a separate worker pool (`worker_pool_main`, `--environment_type=EXTERNAL`), so every
function, closure and side input crosses a process boundary pickled. The outputs must equal the
in-memory DirectRunner's: the same examples and rejections, statistics, transform graph outputs
and predictions."""

from __future__ import annotations

import datetime
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import tensorflow as tf

from beam_jobs.batch_predict import batch_predict, read_predictions
from beam_jobs.clean import clean_examples
from beam_jobs.example_codec import split_pattern
from beam_jobs.ingest import ingest_csv
from beam_jobs.progress import JobProgress
from beam_jobs.statistics import generate_statistics, load_statistics
from beam_jobs.transform import transform_examples
from tests.beam_jobs._helpers import BEAM_ARGS, canonical_rows, read_jsonl, read_split_rows
from tests.conftest import write_csv
from tests.fixtures.polling import poll_until
from tests.fixtures.servers import PROJECT_ROOT, free_port

pytestmark = pytest.mark.slow

UTC = datetime.timezone.utc
START, END = datetime.datetime(2000, 1, 1, tzinfo=UTC), datetime.datetime(2030, 1, 1, tzinfo=UTC)
SPLITS = ("train", "eval")


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def portable_args(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Beam's job service and an SDK worker pool on free loopback ports; the flags that use them.
    After the module, the pool's log must show it started workers: the code ran there."""
    logs = tmp_path_factory.mktemp("beam-services")
    # The pool starts each worker as `python -c ...`: this interpreter's folder first on PATH.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(PROJECT_ROOT), "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    job_port, pool_port = free_port(), free_port()
    commands = {
        "job-service": ["apache_beam.runners.portability.local_job_service_main", f"--port={job_port}"],
        "worker-pool": ["apache_beam.runners.worker.worker_pool_main", f"--service_port={pool_port}"],
    }
    processes = []
    try:
        for name, (module, *args) in commands.items():
            processes.append(subprocess.Popen([sys.executable, "-m", module, *args], cwd=PROJECT_ROOT, env=env,
                                              stdout=subprocess.DEVNULL, stderr=(logs / f"{name}.log").open("wb")))
        for process, port in zip(processes, (job_port, pool_port)):
            def up(process: subprocess.Popen = process, port: int = port) -> bool:
                assert process.poll() is None, f"a Beam service exited; see {logs}"
                return _listening(port)

            poll_until(up, f"Beam service on port {port}", timeout=60, interval=0.2)
        yield ["--runner=PortableRunner", f"--job_endpoint=localhost:{job_port}", "--environment_type=EXTERNAL",
               f"--environment_config=localhost:{pool_port}"]
        assert "Starting worker" in (logs / "worker-pool.log").read_text(), "the worker pool ran no SDK worker"
    finally:
        for process in processes:
            process.kill()
            process.wait(timeout=30)


def _run_every_job(out: Path, csv_path: Path, model_dir: Path, beam_args: list[str]) -> dict[str, Any]:
    """Ingest -> clean -> statistics -> transform, and batch scoring: what each wrote, comparable;
    and what each job's readers counted for its progress lines, beside what it read."""
    files = sorted(csv_path.glob("*.csv")) if csv_path.is_dir() else [csv_path]
    rows = sum(sum(1 for _ in path.open()) - 1 for path in files)
    progress = {job: JobProgress(job, rows) for job in ("ingest", "clean", "statistics", "transform", "score")}
    ingested = ingest_csv(csv_path, out / "ingest", start=START, end=END, beam_args=beam_args, progress=progress["ingest"])
    progress["clean"].rows = ingested.rows_in_window
    cleaned = clean_examples(out / "ingest" / "examples", out / "clean", beam_args=beam_args, progress=progress["clean"])
    kept = sum(cleaned.rows_kept.values())
    progress["statistics"].rows = progress["transform"].rows = kept
    progress["transform"].split_rows = dict(cleaned.rows_kept)
    statistics = generate_statistics(out / "clean" / "cleaned", out / "statistics", beam_args=beam_args,
                                     progress=progress["statistics"])
    transformed = transform_examples(out / "clean" / "cleaned", out / "transform", beam_args=beam_args,
                                     progress=progress["transform"])
    scored = batch_predict(csv_path, model_dir, out / "predict", beam_args=beam_args, max_rejected_fraction=0.2,
                           progress=progress["score"])
    transform_assets = transformed.transform_graph_dir / "transform_fn" / "assets"
    # Every row counted where the job read it (in another process, on the portable runner).
    expected = {"ingest": rows, "clean": 2 * ingested.rows_in_window, "statistics": kept,
                "transform": kept + cleaned.rows_kept["train"], "score": rows}
    assert {job: watched.read_at_end for job, watched in progress.items()} == expected
    assert {job: watched.expected for job, watched in progress.items()} == expected
    return {
        "ingest": ingested,
        "ingested rows": {split: canonical_rows(read_split_rows(out / "ingest" / "examples", split)) for split in SPLITS},
        "ingest rejected": sorted(map(repr, read_jsonl(out / "ingest" / "rejected", "rejected-*.jsonl"))),
        "clean": cleaned,
        "cleaned rows": {split: canonical_rows(read_split_rows(out / "clean" / "cleaned", split)) for split in SPLITS},
        "clean rejected": sorted(map(repr, read_jsonl(out / "clean" / "rejected", "Split-*/rejected-*.jsonl"))),
        "statistics": {split: load_statistics(path) for split, path in statistics.items()},
        "transformed rows": transformed.rows,
        "transformed examples": {split: sorted(_records(split_pattern(transformed.transformed_dir, split)))
                                 for split in SPLITS},
        "vocabularies": {path.name: path.read_bytes() for path in sorted(transform_assets.iterdir())},
        "predictions": read_predictions(out / "predict"),  # by file and line
        "scored rows": (scored.rows_scored, scored.rows_rejected),
    }


def _records(pattern: str) -> list[str]:
    """Each tf.Example as sorted (feature, values) text: a proto map's byte order is not fixed."""
    files = sorted(tf.io.gfile.glob(pattern))
    assert files, pattern
    examples = [tf.train.Example.FromString(record.numpy())
                for record in tf.data.TFRecordDataset(files, compression_type="GZIP")]
    return [repr(sorted((name, str(feature).strip()) for name, feature in example.features.feature.items()))
            for example in examples]


def test_every_job_on_the_portable_runner_writes_what_the_direct_runner_writes(portable_args, tmp_path, taxi_rows):
    from tests.fixtures.tiny_model import export_tiny_model

    # A folder of two shards, the second with its columns in another order: each worker reads its
    # byte ranges of either file and names each row by its file and line.
    shards = tmp_path / "trips"
    shards.mkdir()
    write_csv(shards / "part-0.csv", taxi_rows[:750])
    write_csv(shards / "part-1.csv", taxi_rows[750:1500], columns=sorted(taxi_rows[0], reverse=True))
    model_dir = export_tiny_model(tmp_path / "models" / "taxi" / "3", weight=1.0)
    direct = _run_every_job(tmp_path / "direct", shards, model_dir, list(BEAM_ARGS))
    portable = _run_every_job(tmp_path / "portable", shards, model_dir, portable_args)
    # Not vacuous: the sample has rows of both splits, rejections and several vocabularies.
    assert all(direct["cleaned rows"][split] for split in SPLITS) and direct["clean rejected"]
    assert len(direct["vocabularies"]) >= 2 and len(direct["predictions"]) > 1000
    assert {record["file"] for record in direct["predictions"]} == {"part-0.csv", "part-1.csv"}
    # The model sees other batches on the other runner (RunInference sizes them adaptively), and
    # float32 matrix products round differently per batch shape: equal to float32 precision.
    direct_predictions, portable_predictions = direct.pop("predictions"), portable.pop("predictions")
    assert [{**p, "probability": pytest.approx(p["probability"], rel=1e-6, abs=1e-7)} for p in direct_predictions] \
        == portable_predictions
    for output in direct:
        assert portable[output] == direct[output], f"{output} differs on the portable runner"


def test_log_statistics_on_the_portable_runner_equal_the_direct_runners(portable_args, tmp_path, taxi_rows):
    import numpy as np

    from monitoring.log_statistics import generate_log_statistics, log_statistics_progress
    from tests.monitoring import logs

    start = datetime.datetime(2026, 3, 1, 23, 0, tzinfo=UTC)  # across midnight: two date partitions
    end = start + datetime.timedelta(hours=2)
    trips = logs.taxi_frame(taxi_rows[:300])
    logs.write_requests(tmp_path / "logs", trips, np.full(len(trips), 0.3), start, end)
    progress = {runner: log_statistics_progress(tmp_path / "logs", start, end) for runner in ("direct", "portable")}
    direct = generate_log_statistics(tmp_path / "logs", start, end, tmp_path / "direct.pb", model_name="taxi",
                                     beam_args=list(BEAM_ARGS), progress=progress["direct"])
    portable = generate_log_statistics(tmp_path / "logs", start, end, tmp_path / "portable.pb", model_name="taxi",
                                       beam_args=portable_args, progress=progress["portable"])
    assert load_statistics(direct).datasets[0].num_examples == len(trips)
    assert load_statistics(portable) == load_statistics(direct)
    # Every logged row counted where it was read (the files hold the window's requests only).
    assert {runner: (watched.rows, watched.read_at_end) for runner, watched in progress.items()} == {
        "direct": (len(trips), len(trips)), "portable": (len(trips), len(trips))}
