"""Schema-breaking batches each produce a readable anomaly that names the feature."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorflow_metadata.proto.v0 import anomalies_pb2

from core.errors import DataError, SchemaAnomaliesError
from tests.validation.conftest import BROKEN_BATCHES
from tests.validation.helpers import CHECKED_IN_SCHEMA
from validation.validate import (
    ValidationResult,
    format_anomalies,
    load_anomalies,
    raise_for_anomalies,
    validate_statistics,
)

# split -> (the one anomalous feature, words its description must contain); None = must pass
EXPECTED = {
    "clean": None,
    "rare_payment": None,  # 0.5% unknown values is within min_domain_mass 0.99
    "unknown_payment": ("payment_type", ["Unexpected string values", "Bitcoin"]),
    "fare_as_text": ("fare", ["Unexpected data type", "FLOAT", "STRING"]),
    "fare_missing": ("fare", ["Column dropped", "missing"]),
    "latitude_zero": ("pickup_latitude", ["Out-of-range values", "low", "0<41"]),
    "hour_99": ("trip_start_hour", ["Out-of-range values", "99"]),
}


@pytest.fixture(scope="module")
def result(broken_statistics: Path, tmp_path_factory: pytest.TempPathFactory) -> ValidationResult:
    assert set(EXPECTED) == set(BROKEN_BATCHES)
    return validate_statistics(broken_statistics, CHECKED_IN_SCHEMA, tmp_path_factory.mktemp("anomalies"),
                               splits=tuple(BROKEN_BATCHES))


@pytest.mark.parametrize("split", list(EXPECTED))
def test_each_broken_batch_names_its_feature_and_problem(result: ValidationResult, split: str) -> None:
    found = result.anomalies_by_split[split]
    if EXPECTED[split] is None:
        assert found == {}
        return
    feature, words = EXPECTED[split]
    assert list(found) == [feature]
    for word in words:
        assert word in found[feature], (word, found[feature])
    # The binary Anomalies proto, TFX-named, says the same.
    stored = load_anomalies(result.anomalies_path / f"Split-{split}" / "SchemaDiff.pb")
    assert list(stored.anomaly_info) == [feature]


def test_the_result_and_the_text_report_cover_every_split(result: ValidationResult) -> None:
    assert not result.ok
    assert result.num_anomalies == 5
    report = (result.anomalies_path / "anomalies.txt").read_text()
    for split, expected in EXPECTED.items():
        assert f"== split {split!r}: {0 if expected is None else 1} anomal" in report
        if expected is not None:
            assert expected[0] in report


def test_raise_for_anomalies_names_each_feature_and_problem(result: ValidationResult) -> None:
    with pytest.raises(SchemaAnomaliesError) as raised:
        raise_for_anomalies(result)
    message = str(raised.value)
    assert "validate: 1 anomaly in split 'unknown_payment': payment_type: Unexpected string values:" in message
    assert "Bitcoin" in message
    assert "validate: 1 anomaly in split 'fare_missing': fare: Column dropped" in message
    assert "split 'hour_99': trip_start_hour: Out-of-range values" in message
    assert "'clean'" not in message and "'rare_payment'" not in message
    assert isinstance(raised.value, DataError)
    assert "feature" in raised.value.report and "short description" in raised.value.report
    assert "pickup_latitude" in raised.value.report


def test_raise_for_anomalies_is_silent_when_the_data_is_clean(tmp_path: Path) -> None:
    raise_for_anomalies(ValidationResult(anomalies_by_split={"train": {}, "eval": {}}, anomalies_path=tmp_path))


def test_format_anomalies_is_a_table_with_one_line_per_problem() -> None:
    anomalies = anomalies_pb2.Anomalies()
    info = anomalies.anomaly_info["fare"]
    info.reason.add(type=anomalies_pb2.AnomalyInfo.UNEXPECTED_DATA_TYPE, short_description="Unexpected data type",
                    description="Expected data of type: FLOAT but got STRING")
    info.reason.add(type=anomalies_pb2.AnomalyInfo.FLOAT_TYPE_SMALL_FLOAT, short_description="Out-of-range values",
                    description="Unexpectedly low values: -3<0")
    anomalies.dataset_anomaly_info.reason.add(short_description="Low num examples", description="0 < 1")
    lines = format_anomalies(anomalies).splitlines()
    assert [cell.strip() for cell in lines[0].split("|")] == ["feature", "short description", "long description"]
    assert [[cell.strip() for cell in line.split("|")] for line in lines[2:]] == [
        ["fare", "Unexpected data type", "Expected data of type: FLOAT but got STRING"],
        ["fare", "Out-of-range values", "Unexpectedly low values: -3<0"],
        ["(dataset)", "Low num examples", "0 < 1"],
    ]
    assert format_anomalies(anomalies_pb2.Anomalies()) == "No anomalies.\n"


def test_missing_statistics_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"Split-train/FeatureStats.pb: statistics file not found"):
        validate_statistics(tmp_path / "stats", CHECKED_IN_SCHEMA, tmp_path / "out", splits=("train",))
    with pytest.raises(DataError, match="schema file not found"):
        validate_statistics(tmp_path / "stats", tmp_path / "absent.pbtxt", tmp_path / "out")
