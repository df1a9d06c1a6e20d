"""beam_jobs/statistics.py: real Beam pipelines computing real TFDV statistics."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import tensorflow as tf
from tensorflow_metadata.proto.v0 import statistics_pb2

from beam_jobs import statistics
from beam_jobs.example_codec import row_to_example
from core.errors import DataError
from tests.validation.helpers import PROJECT_ROOT, write_examples, write_rows
from transforms.features import FARE_KEY


def _by_name(stats: statistics_pb2.DatasetFeatureStatisticsList) -> dict[str, statistics_pb2.FeatureNameStatistics]:
    return {".".join(f.path.step): f for f in stats.datasets[0].features}


def _common(feature: statistics_pb2.FeatureNameStatistics) -> statistics_pb2.CommonStatistics:
    return feature.num_stats.common_stats if feature.HasField("num_stats") else feature.string_stats.common_stats


def _small_rows(count: int, offset: int = 0) -> list[dict[str, Any]]:
    """Rows whose statistics are known by construction: company missing in every third row."""
    return [
        {
            FARE_KEY: float(offset + i),
            "trip_start_hour": i % 24,
            "payment_type": "Cash" if i % 4 else "Credit Card",
            "company": None if i % 3 == 0 else "Flash Cab",
        }
        for i in range(count)
    ]


def test_statistics_per_split_count_every_example_and_its_missing_values(tmp_path: Path) -> None:
    write_rows(tmp_path / "examples", "train", _small_rows(30), shards=2)  # both shards must be read
    write_rows(tmp_path / "examples", "eval", _small_rows(12, offset=100))

    outputs = statistics.generate_statistics(tmp_path / "examples", tmp_path / "stats")

    assert outputs == {
        "train": tmp_path / "stats" / "Split-train" / "FeatureStats.pb",
        "eval": tmp_path / "stats" / "Split-eval" / "FeatureStats.pb",
    }
    train = statistics.load_statistics(outputs["train"])
    evaluation = statistics.load_statistics(outputs["eval"])
    assert train.datasets[0].num_examples == 30
    assert evaluation.datasets[0].num_examples == 12
    features = _by_name(train)
    assert set(features) == {FARE_KEY, "trip_start_hour", "payment_type", "company"}
    assert _common(features["company"]).num_non_missing == 20  # missing in rows 0, 3, ..., 27
    assert _common(features[FARE_KEY]).num_non_missing == 30
    fare = features[FARE_KEY].num_stats
    assert (fare.min, fare.max) == (0.0, 29.0)
    assert fare.mean == pytest.approx(14.5)
    standard = [h for h in fare.histograms if h.type == statistics_pb2.Histogram.STANDARD][0]
    assert len(standard.buckets) == statistics.NUM_HISTOGRAM_BUCKETS
    assert sum(b.sample_count for b in standard.buckets) == pytest.approx(30)
    top = {v.value: v.frequency for v in features["payment_type"].string_stats.top_values}
    assert top == {"Cash": 22, "Credit Card": 8}
    assert _by_name(evaluation)[FARE_KEY].num_stats.min == 100.0
    # Only the statistics file is left: Beam's temp files are renamed into place and cleaned.
    assert sorted(p.name for p in (tmp_path / "stats").rglob("*") if p.is_file()) == ["FeatureStats.pb"] * 2


def test_the_job_runs_next_to_the_other_beam_jobs(tmp_path: Path) -> None:
    """The pipeline process imports every job, and Beam merges all their flags into one parser."""
    import beam_jobs.clean  # noqa: F401
    import beam_jobs.ingest  # noqa: F401

    write_rows(tmp_path / "examples", "train", _small_rows(5))
    outputs = statistics.generate_statistics(tmp_path / "examples", tmp_path / "stats", splits=("train",))
    assert statistics.load_statistics(outputs["train"]).datasets[0].num_examples == 5


def test_rows_and_files_give_the_same_statistics(tmp_path: Path, training_rows: list[dict[str, Any]]) -> None:
    """Monitoring compares logged requests (rows) with training files: both paths must agree."""
    rows = training_rows[:500]
    write_rows(tmp_path / "examples", "train", rows)
    from_files = statistics.generate_statistics(tmp_path / "examples", tmp_path / "stats", splits=("train",))["train"]
    # A DataFrame, as a request log would be loaded: missing values become NaN there.
    frame = pd.DataFrame(rows)
    assert frame["company"].isna().any() and frame["dropoff_latitude"].isna().any()
    from_rows = statistics.generate_statistics_from_rows(frame, tmp_path / "rows" / "FeatureStats.pb")

    files_by_name = _by_name(statistics.load_statistics(from_files))
    rows_by_name = _by_name(statistics.load_statistics(from_rows))
    assert statistics.load_statistics(from_rows).datasets[0].num_examples == 500
    assert set(rows_by_name) == set(files_by_name)
    for name, expected in files_by_name.items():
        actual = rows_by_name[name]
        assert actual.type == expected.type, name  # the declared kinds, not pandas' float64
        assert _common(actual).num_non_missing == _common(expected).num_non_missing, name
        if expected.HasField("num_stats"):
            assert actual.num_stats.mean == pytest.approx(expected.num_stats.mean), name
            assert actual.num_stats.max == expected.num_stats.max, name
        else:
            assert actual.string_stats.top_values == expected.string_stats.top_values, name
    company_missing = sum(1 for r in rows if r["company"] is None)
    assert _common(rows_by_name["company"]).num_non_missing == 500 - company_missing


def test_rows_with_unknown_features_or_wrong_values_are_refused_before_any_work(tmp_path: Path) -> None:
    output = tmp_path / "FeatureStats.pb"
    with pytest.raises(DataError, match=r"row 1: unknown feature\(s\) \['fare_usd'\]"):
        statistics.generate_statistics_from_rows([{FARE_KEY: 1.0}, {"fare_usd": 2.0}], output)
    with pytest.raises(DataError, match=r"row 0: feature 'fare' is FLOAT, got str 'twelve'"):
        statistics.generate_statistics_from_rows([{FARE_KEY: "twelve"}], output)
    with pytest.raises(DataError, match=r"row 0: feature 'trip_start_hour' is INT, got 7.5"):
        statistics.generate_statistics_from_rows([{"trip_start_hour": 7.5}], output)
    with pytest.raises(DataError, match="no rows"):
        statistics.generate_statistics_from_rows([], output)
    assert not output.exists()


def test_a_missing_split_is_named_in_the_error(tmp_path: Path) -> None:
    write_rows(tmp_path / "examples", "train", _small_rows(3))
    with pytest.raises(DataError, match=r"Split-eval: no data-\*\.tfrecord\.gz files for split 'eval'"):
        statistics.generate_statistics(tmp_path / "examples", tmp_path / "stats")


def test_a_split_without_examples_is_an_error(tmp_path: Path) -> None:
    write_examples(tmp_path / "examples", "train", [])
    with pytest.raises(DataError, match=r"Split-train \(split 'train'\): no examples"):
        statistics.generate_statistics(tmp_path / "examples", tmp_path / "stats", splits=("train",))


def test_a_feature_written_with_two_kinds_is_named(tmp_path: Path) -> None:
    as_text = row_to_example({"trip_start_hour": 3})
    as_text.features.feature[FARE_KEY].bytes_list.value.append(b"12.5")
    write_examples(tmp_path / "examples", "train", [row_to_example({FARE_KEY: 3.0}), as_text])
    with pytest.raises(DataError, match=r"feature 'fare' is float_list in Split-train/data-00000-of-00001.tfrecord.gz "
                                        r"record 0 and bytes_list in Split-train/data-00000-of-00001.tfrecord.gz record 1"):
        statistics.generate_statistics(tmp_path / "examples", tmp_path / "stats", splits=("train",))


def test_sample_rate_must_be_a_share() -> None:
    for rate in (0.0, 1.5, -0.1):
        with pytest.raises(DataError, match="sample_rate must be in"):
            statistics.stats_options(rate)
    assert statistics.stats_options(0.5).sample_rate == 0.5


def test_load_statistics_names_the_bad_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="statistics file not found"):
        statistics.load_statistics(tmp_path / "absent.pb")
    garbage = tmp_path / "garbage.pb"
    garbage.write_bytes(b"\xff\xff\xff\xff not a proto")
    with pytest.raises(DataError, match=f"{garbage}: not a binary DatasetFeatureStatisticsList"):
        statistics.load_statistics(garbage)


def test_the_program_runs_from_the_command_line(tmp_path: Path) -> None:
    write_rows(tmp_path / "examples", "train", _small_rows(8))
    write_rows(tmp_path / "examples", "eval", _small_rows(4))
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(
        [sys.executable, "-m", "beam_jobs.statistics", "--input", str(tmp_path / "examples"),
         "--output", str(tmp_path / "stats"), "--runner=DirectRunner"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"train\t{tmp_path / 'stats' / 'Split-train' / 'FeatureStats.pb'}" in done.stdout
    counts = {split: statistics.load_statistics(tmp_path / "stats" / f"Split-{split}" / "FeatureStats.pb")
              .datasets[0].num_examples for split in ("train", "eval")}
    assert counts == {"train": 8, "eval": 4}


def test_run_requires_input_and_output() -> None:
    with pytest.raises(DataError, match="--input is required"):
        statistics.run(["--output", "/tmp/x", "--runner=DirectRunner"])


def test_nan_is_missing_and_numpy_numbers_are_accepted() -> None:
    import numpy as np

    serialized = statistics._serialize_rows([{FARE_KEY: math.nan, "trip_start_hour": np.int64(4), "company": None}])
    example = tf.train.Example.FromString(serialized[0])
    assert set(example.features.feature) == {"trip_start_hour"}
    assert list(example.features.feature["trip_start_hour"].int64_list.value) == [4]
