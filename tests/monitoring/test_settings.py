"""The thresholds file: the shipped one loads, and mistakes in a copy are named precisely."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from monitoring.settings import DEFAULT_THRESHOLDS_PATH, ThresholdsError, load_thresholds, thresholds_from_dict


def _shipped() -> dict:
    return tomllib.loads(DEFAULT_THRESHOLDS_PATH.read_text())


def test_the_shipped_thresholds_load_with_calendar_rules_and_defaults():
    thresholds = load_thresholds(DEFAULT_THRESHOLDS_PATH)
    assert thresholds.drift.for_feature("fare").threshold == thresholds.drift.numeric_js
    assert thresholds.drift.for_feature("payment_type").threshold == thresholds.drift.categorical_linf
    assert not thresholds.drift.for_feature("trip_start_timestamp").enabled
    assert thresholds.drift.for_feature("trip_start_hour").min_window_hours == 24
    assert thresholds.concept.min_labels >= 100
    assert thresholds.concept.window_labels <= 300 and thresholds.concept.min_sequence_labels < thresholds.concept.min_labels
    assert 0 < thresholds.performance.max_accuracy_drop < 0.1 and thresholds.performance.interval == 0.9
    assert thresholds.to_json()["source"] == str(DEFAULT_THRESHOLDS_PATH)


def test_the_environment_variable_picks_another_file(tmp_path, monkeypatch):
    path = tmp_path / "thresholds.toml"
    path.write_text(DEFAULT_THRESHOLDS_PATH.read_text().replace("max_fraction = 0.01", "max_fraction = 0.25"))
    monkeypatch.setenv("MLOPS_MONITORING_THRESHOLDS", str(path))
    assert load_thresholds().max_null_output_fraction == 0.25


@pytest.mark.parametrize("mutate, expected", [
    (lambda v: v["drift"]["features"].update(tips={"threshold": 0.2}), "'tips' is not a serving feature"),
    (lambda v: v["drift"]["features"].update(fare_usd={"threshold": 0.2}), "'fare_usd' is not a serving feature"),
    (lambda v: v["drift"].update(numeric_js=1.5), "numeric_js must be in [0.0, 1.0], got 1.5"),
    (lambda v: v["concept_drift"].update(min_labels="many"), "min_labels must be a number"),
    (lambda v: v["concept_drift"].pop("min_labels"), "min_labels is required"),
    (lambda v: v["concept_drift"].pop("cusum_threshold"), "cusum_threshold is required"),
    (lambda v: v["concept_drift"].update(window_labels=3), "window_labels must be in >= 10"),
    (lambda v: v["performance_estimate"].update(interval=1.5), "interval must be in [0.5, 0.999], got 1.5"),
    (lambda v: v["performance_estimate"].update(labels=3), "[performance_estimate] has unknown keys ['labels']"),
    (lambda v: v.update(alerts={}), "unknown sections ['alerts']"),
    (lambda v: v["drift"]["features"]["trip_start_hour"].update(min_hours=3), "unknown keys ['min_hours']"),
    (lambda v: v["drift"]["features"]["trip_start_timestamp"].update(enabled="no"), "enabled must be true or false"),
])
def test_a_bad_thresholds_file_names_the_key_and_what_was_expected(mutate, expected):
    values = _shipped()
    mutate(values)
    with pytest.raises(ThresholdsError) as caught:
        thresholds_from_dict(values, Path("/etc/thresholds.toml"))
    assert expected in str(caught.value)
    assert "/etc/thresholds.toml" in str(caught.value)


def test_a_missing_or_broken_file_is_reported(tmp_path):
    with pytest.raises(ThresholdsError, match="not found"):
        load_thresholds(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[drift\nnumeric_js = ")
    with pytest.raises(ThresholdsError, match="not valid TOML"):
        load_thresholds(broken)
