"""The monitoring benchmark runs end to end: logs generated in one process, monitored by both readers in others."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow


def test_both_readers_give_identical_outcomes_and_each_phase_reports_cpu_and_memory(tmp_path):
    done = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "benchmarks" / "monitoring_benchmark.py"), "--requests", "3000",
         "--read", "both", "--work", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=900,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert re.search(r"3,000 requests generated in +[\d.]+s \( *[\d.]+ CPU s, peak RSS +\d+ MiB\)", out), out
    for read in ("stream", "frame"):
        assert re.search(rf"3,000 requests, read {read} *: statistics .* CPU +[\d.]+s \(statistics [\d.]+, read [\d.]+\) +"
                         rf"peak RSS +\d+ MiB \(after warm-up +\d+ MiB\)  load average [\d.]+ \(1 min", out), out
    assert "3,000 requests: check outcomes of both readers IDENTICAL" in out
    assert not list(tmp_path.iterdir())  # the logs went with the temporary folder


def test_run_monitoring_itself_is_timed_on_a_copy_of_a_pipeline_run_with_identical_outcomes_of_both_readers(taxi, tmp_path_factory):
    """`--pipeline-run`: run_monitoring end to end on the story's pipeline (pushed taxi:1), streamed and from pandas."""
    from core.config import MetadataConfig
    from tests.monitoring.story import story

    root = tmp_path_factory.mktemp("story-sqlite")
    run = story("sqlite", root, MetadataConfig(backend="sqlite", sqlite_path=root / "mlmd.sqlite"), taxi)
    before = {path: path.stat().st_mtime_ns for path in run.root.rglob("*") if path.is_file()}
    work = tmp_path_factory.mktemp("benchmark")
    done = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "benchmarks" / "monitoring_benchmark.py"), "--requests", "3000",
         "--read", "both", "--work", str(work), "--pipeline-run", str(run.root)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=1200,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for read in ("stream", "frame"):
        assert re.search(rf"3,000 requests, read {read} *: statistics .* peak RSS +\d+ MiB \(after warm-up +\d+ MiB\)"
                         rf"  run_monitoring failed checks: ", out), out
    assert "3,000 requests: check outcomes of both readers IDENTICAL" in out
    # The run was copied: its files (ML Metadata included) are as they were.
    assert {path: path.stat().st_mtime_ns for path in run.root.rglob("*") if path.is_file()} == before
