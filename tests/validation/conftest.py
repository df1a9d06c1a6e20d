"""Real taxi rows as typed dicts, and one shared run of schema-breaking batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import tensorflow as tf

from beam_jobs.example_codec import row_to_example
from tests.validation.helpers import trip_year, typed_row, write_examples
from transforms.features import FARE_KEY, FEATURES_BY_NAME


@pytest.fixture(scope="session")
def typed_rows(taxi_rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Every shipped row, parsed with the kinds of transforms/features.py (None = missing)."""
    return [typed_row(raw) for raw in taxi_rows]


@pytest.fixture(scope="session")
def training_rows(typed_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first 3,000 trips of 2013-2014, the training years of the checked-in schema."""
    return [row for row in typed_rows if trip_year(row) <= 2014][:3000]


def _fare_as_text(row: dict[str, Any]) -> tf.train.Example:
    """The fare written as bytes_list although features.py declares it FLOAT."""
    example = row_to_example({k: v for k, v in row.items() if k != FARE_KEY})
    example.features.feature[FARE_KEY].bytes_list.value.append(str(row[FARE_KEY]).encode())
    return example


def _replace(rows: list[dict[str, Any]], name: str, value: Any, every: int) -> list[tf.train.Example]:
    assert name in FEATURES_BY_NAME
    return [row_to_example({**row, name: value} if i % every == 0 else row) for i, row in enumerate(rows)]


# split name -> how to break 200 real training rows
BROKEN_BATCHES: dict[str, Callable[[list[dict[str, Any]]], list[tf.train.Example]]] = {
    "clean": lambda rows: [row_to_example(r) for r in rows],
    "unknown_payment": lambda rows: _replace(rows, "payment_type", "Bitcoin", every=5),  # 20%
    "rare_payment": lambda rows: _replace(rows, "payment_type", "Bitcoin", every=len(rows)),  # 1 row: 0.5%
    "fare_as_text": lambda rows: [_fare_as_text(r) for r in rows],
    "fare_missing": lambda rows: [row_to_example({k: v for k, v in r.items() if k != FARE_KEY}) for r in rows],
    "latitude_zero": lambda rows: _replace(rows, "pickup_latitude", 0.0, every=50),
    "hour_99": lambda rows: _replace(rows, "trip_start_hour", 99, every=100),
}


@pytest.fixture(scope="session")
def broken_statistics(tmp_path_factory: pytest.TempPathFactory, training_rows: list[dict[str, Any]]) -> Path:
    """Statistics of each BROKEN_BATCHES split, computed in one real Beam + TFDV run."""
    from beam_jobs.statistics import generate_statistics

    root = tmp_path_factory.mktemp("broken")
    base = training_rows[:200]
    for split, make in BROKEN_BATCHES.items():
        write_examples(root / "examples", split, make(base))
    generate_statistics(root / "examples", root / "statistics", splits=tuple(BROKEN_BATCHES))
    return root / "statistics"
