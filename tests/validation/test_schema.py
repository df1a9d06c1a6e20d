"""The curated schema: real shipped data passes it, and it follows transforms/features.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tensorflow_metadata.proto.v0 import schema_pb2

from beam_jobs.statistics import generate_statistics
from core.errors import DataError
from tests.validation.helpers import CHECKED_IN_SCHEMA, trip_year, write_rows
from transforms.features import EXAMPLE_FEATURES, RAW_FEATURES, TIPS_KEY, Kind
from validation import schema as schema_lib
from validation.validate import validate_statistics

_KIND_TO_TYPE = {Kind.FLOAT: schema_pb2.FLOAT, Kind.INT: schema_pb2.INT, Kind.STRING: schema_pb2.BYTES}


@pytest.fixture(scope="module")
def real_statistics(tmp_path_factory: pytest.TempPathFactory, training_rows: list[dict[str, Any]],
                    typed_rows: list[dict[str, Any]]) -> Path:
    """Statistics of real trips: training years, later years, and later years as served (no tips)."""
    root = tmp_path_factory.mktemp("real")
    later = [row for row in typed_rows if trip_year(row) >= 2015][:2000]
    assert len(training_rows) == 3000 and len(later) == 2000
    write_rows(root / "examples", "train", training_rows)
    write_rows(root / "examples", "later", later)
    write_rows(root / "examples", "served", ({k: v for k, v in r.items() if k != TIPS_KEY} for r in later))
    generate_statistics(root / "examples", root / "statistics", splits=("train", "later", "served"))
    return root / "statistics"


def test_the_checked_in_schema_passes_real_training_and_later_data(real_statistics: Path, tmp_path: Path) -> None:
    result = validate_statistics(real_statistics, CHECKED_IN_SCHEMA, tmp_path, splits=("train", "later"))
    assert result.anomalies_by_split == {"train": {}, "later": {}}
    assert result.ok


def test_serving_data_must_not_carry_the_label_source(real_statistics: Path, tmp_path: Path) -> None:
    served = validate_statistics(real_statistics, CHECKED_IN_SCHEMA, tmp_path / "a", splits=("served",),
                                 environment=schema_lib.SERVING)
    assert served.ok
    # Training data in the serving environment: tips must not be there.
    leaked = validate_statistics(real_statistics, CHECKED_IN_SCHEMA, tmp_path / "b", splits=("later",),
                                 environment=schema_lib.SERVING)
    assert list(leaked.anomalies_by_split["later"]) == [TIPS_KEY]
    assert "not in the environment SERVING" in leaked.anomalies_by_split["later"][TIPS_KEY]
    # Serving data in the training environment: the required label source is missing.
    missing = validate_statistics(real_statistics, CHECKED_IN_SCHEMA, tmp_path / "c", splits=("served",))
    assert list(missing.anomalies_by_split["served"]) == [TIPS_KEY]


def test_infer_schema_on_training_data_reproduces_the_checked_in_schema(real_statistics: Path, tmp_path: Path) -> None:
    written = schema_lib.infer_schema(real_statistics / "Split-train" / "FeatureStats.pb", tmp_path / "schema.pbtxt")
    assert schema_lib.load_schema(written) == schema_lib.load_schema(CHECKED_IN_SCHEMA)


def test_the_checked_in_schema_follows_features_py() -> None:
    schema = schema_lib.load_schema(CHECKED_IN_SCHEMA)
    by_name = {f.name: f for f in schema.feature}
    assert list(by_name) == [f.name for f in EXAMPLE_FEATURES]
    for feature in EXAMPLE_FEATURES:
        spec = by_name[feature.name]
        assert spec.type == _KIND_TO_TYPE[feature.kind], feature.name
        # tips is required unless a row carries its observed label: the clean job checks that per row.
        assert (spec.presence.min_fraction == 1.0) == (feature.required and feature.required_unless is None), feature.name
        low, high = schema_lib.bounds(feature)
        domain = spec.WhichOneof("domain_info")
        if feature.kind is not Kind.STRING and (low, high) != (None, None):
            numeric = spec.int_domain if feature.kind is Kind.INT else spec.float_domain
            if low is not None:
                assert numeric.min == low, feature.name
            if high is not None:
                assert numeric.max == high, feature.name
        assert domain != "domain", feature.name  # no reference to a top-level domain
    payment = by_name["payment_type"]
    assert sorted(payment.string_domain.value) == [
        "Cash", "Credit Card", "Dispute", "No Charge", "Pcard", "Prcard", "Unknown"]
    assert payment.distribution_constraints.min_domain_mass == pytest.approx(0.99)
    assert payment.drift_comparator.infinity_norm.threshold == pytest.approx(0.1)
    assert by_name["company"].WhichOneof("domain_info") is None
    assert by_name["company"].drift_comparator.infinity_norm.threshold == pytest.approx(0.1)
    assert by_name["fare"].drift_comparator.jensen_shannon_divergence.threshold == pytest.approx(0.1)
    assert not by_name["trip_start_timestamp"].HasField("drift_comparator")
    assert list(by_name[TIPS_KEY].not_in_environment) == ["SERVING"]
    assert list(schema.default_environment) == ["TRAINING", "SERVING"]
    assert not schema.string_domain


def test_structural_ranges_are_wider_than_the_clean_jobs_ranges() -> None:
    """The schema must pass raw values the clean job later removes, so it never trims outliers."""
    for feature in RAW_FEATURES:
        low, high = schema_lib.bounds(feature)
        if feature.valid_min is not None:
            assert low is not None and low <= feature.valid_min, feature.name
        if feature.valid_max is not None:
            assert high is not None and high >= feature.valid_max, feature.name


def test_curate_schema_makes_the_features_py_contract_whatever_was_inferred() -> None:
    inferred = schema_pb2.Schema()
    inferred.feature.add(name="fare", type=schema_pb2.BYTES)  # wrong type from a bad sample
    inferred.feature.add(name="surge_multiplier", type=schema_pb2.FLOAT)  # not a declared feature
    company = inferred.feature.add(name="company", type=schema_pb2.BYTES, domain="company")
    inferred.string_domain.add(name="company", value=["Flash Cab"])
    company.presence.min_count = 1

    curated = schema_lib.curate_schema(inferred)

    names = [f.name for f in curated.feature]
    assert names == [f.name for f in EXAMPLE_FEATURES]  # unknown dropped, never-seen added
    by_name = {f.name: f for f in curated.feature}
    assert by_name["fare"].type == schema_pb2.FLOAT
    assert by_name["company"].WhichOneof("domain_info") is None
    assert not curated.string_domain
    assert [f.name for f in inferred.feature] == ["fare", "surge_multiplier", "company"]  # input untouched


def test_a_closed_vocabulary_keeps_the_values_the_inferred_domain_holds() -> None:
    """A schema inferred from one's own data accepts its values; the shipped list is never narrowed."""
    shipped = schema_lib.CLOSED_VOCABULARIES["payment_type"]
    inferred = schema_pb2.Schema()
    inferred.feature.add(name="payment_type", type=schema_pb2.BYTES, domain="payment_type")
    inferred.string_domain.add(name="payment_type", value=["Cash", "Mobile"])  # as TFDV's inference writes it
    by_name = {f.name: f for f in schema_lib.curate_schema(inferred).feature}
    assert list(by_name["payment_type"].string_domain.value) == sorted({*shipped, "Mobile"})

    inline = schema_pb2.Schema()
    inline.feature.add(name="payment_type", type=schema_pb2.BYTES).string_domain.value.extend(["Way2ride"])
    by_name = {f.name: f for f in schema_lib.curate_schema(inline).feature}
    assert "Way2ride" in by_name["payment_type"].string_domain.value

    without_domain = schema_pb2.Schema()
    without_domain.feature.add(name="payment_type", type=schema_pb2.BYTES)
    by_name = {f.name: f for f in schema_lib.curate_schema(without_domain).feature}
    assert list(by_name["payment_type"].string_domain.value) == sorted(shipped)


def test_write_schema_is_atomic_and_round_trips(tmp_path: Path) -> None:
    schema = schema_lib.load_schema(CHECKED_IN_SCHEMA)
    target = tmp_path / "nested" / "schema.pbtxt"
    schema_lib.write_schema(schema, target)
    schema_lib.write_schema(schema, target)  # replacing an existing file
    assert schema_lib.load_schema(target) == schema
    assert [p.name for p in target.parent.iterdir()] == ["schema.pbtxt"]  # no temp files left
    assert target.read_text().startswith("# Curated TFDV schema")


def test_bad_schema_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="schema file not found"):
        schema_lib.load_schema(tmp_path / "absent.pbtxt")
    broken = tmp_path / "broken.pbtxt"
    broken.write_text('feature { name: "fare" typo: FLOAT }\n')
    with pytest.raises(DataError, match=f"{broken}: not a text-format Schema proto: 1:"):
        schema_lib.load_schema(broken)


def test_an_unknown_environment_is_refused(real_statistics: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"environment 'TRAINNG' is not one of the schema's environments"):
        validate_statistics(real_statistics, CHECKED_IN_SCHEMA, tmp_path, splits=("train",), environment="TRAINNG")


def test_the_drift_comparators_flag_the_real_change_between_periods(real_statistics: Path) -> None:
    """2015-2016 trips are much longer in miles than 2013-2014 ones; the same period never drifts."""
    import tensorflow_data_validation as tfdv

    from beam_jobs.statistics import load_statistics

    schema = schema_lib.load_schema(CHECKED_IN_SCHEMA)
    train = load_statistics(real_statistics / "Split-train" / "FeatureStats.pb")
    later = load_statistics(real_statistics / "Split-later" / "FeatureStats.pb")

    drifted = tfdv.validate_statistics(later, schema, previous_statistics=train)
    measured = {".".join(info.path.step): info.drift_measurements[0].value for info in drifted.drift_skew_info}
    assert "trip_miles" in drifted.anomaly_info
    assert "High approximate Jensen-Shannon divergence" in drifted.anomaly_info["trip_miles"].short_description
    assert measured["trip_miles"] > 0.3
    assert "trip_start_timestamp" not in measured  # always disjoint across periods: not compared

    same = tfdv.validate_statistics(train, schema, previous_statistics=train)
    assert dict(same.anomaly_info) == {}
    assert {".".join(info.path.step) for info in same.drift_skew_info} >= {"trip_miles", "payment_type", "company"}
