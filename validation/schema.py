"""The curated TFDV schema: what raw taxi data must look like before anything is trained on it.

`infer_schema` bootstraps a schema from statistics with TFDV, then `curate_schema` imposes the
project's conventions from transforms/features.py, so the result is reproducible and reviewable
rather than a snapshot of whatever one sample happened to contain. The checked-in
`data/taxi/schema.pbtxt` is that output for the 2013-2014 training data.

Ranges here are structural, deliberately wider than the clean job's valid ranges in features.py:
raw data still holds values the clean job removes (zero-second trips, 1,710-mile trips), and the
schema must pass them. What it catches is data that cannot be taxi trips at all: a unit or scale
error (milliseconds for seconds, cents for dollars), a latitude of 0, an hour of 99.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import tensorflow_data_validation as tfdv
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from beam_jobs.statistics import load_statistics
from core.atomic import write_text
from core.errors import DataError
from transforms.features import (
    CHICAGO_LATITUDE,
    CHICAGO_LONGITUDE,
    FARE_KEY,
    EXAMPLE_FEATURES,
    FEATURES_BY_NAME,
    LABEL_SOURCES,
    OBSERVED_LABEL_KEY,
    PAYMENT_TYPE_KEY,
    RAW_FEATURES,
    TIMESTAMP_KEY,
    TIPS_KEY,
    TRIP_MILES_KEY,
    TRIP_SECONDS_KEY,
    Feature,
    Kind,
)

TRAINING = "TRAINING"
SERVING = "SERVING"
ENVIRONMENTS = (TRAINING, SERVING)
# Features the model server never receives: present while training, absent while serving.
NOT_IN_SERVING = LABEL_SOURCES

# Drift comparators: starting points that the monitoring work tunes per feature.
# Jensen-Shannon divergence (0 = same distribution, 1 = disjoint) of the numeric histograms.
# Measured with these statistics on the shipped data: two random halves of 2013-2014 differ by
# <= 0.01 on calendar and community-area fields, ~0.05-0.10 on coordinates, fare and tips, and 0.23
# on trip_seconds (long tail: TFDV's histogram alignment is sensitive to outliers); 2015-2016 vs
# 2013-2014 gives fare 0.17, trip_miles 0.63, trip_seconds 0.23. So 0.1 flags real drift in
# trip_miles and fare but also noise in trip_seconds: tune per feature before alerting on it.
NUMERIC_DRIFT_JS_THRESHOLD = 0.1
# L-infinity distance between category frequencies: 0.1 = some value's share moved 10 points.
# Measured: halves 0.008 (payment_type, company); 2015-2016 vs 2013-2014 payment_type 0.11.
CATEGORICAL_DRIFT_LINF_THRESHOLD = 0.1
# No drift comparator: a later window's timestamps are disjoint from the baseline's by
# definition (divergence 1.0 between 2013-2014 and 2015-2016), so drift would always fire.
# Nor on the observed label: only production rows carry it, so a run with production data and one
# without always differ in it; the label's own change is concept drift, judged by monitoring.
NO_DRIFT_CHECK = (TIMESTAMP_KEY, OBSERVED_LABEL_KEY)

# Closed vocabularies: every value seen in the whole shipped CSV (2013-2016), not just the
# training years, so serving data from later years does not flag a known rare value.
CLOSED_VOCABULARIES: Mapping[str, tuple[str, ...]] = {
    PAYMENT_TYPE_KEY: ("Cash", "Credit Card", "Dispute", "No Charge", "Pcard", "Prcard", "Unknown"),
}
# Share of a closed-vocabulary feature's values that must be in its domain: a handful of new
# values is tolerated, a new payment method taking over is not.
MIN_DOMAIN_MASS = 0.99

_UNIX_2100 = 4_102_444_800  # seconds; a millisecond timestamp of any date after 1970-02 exceeds it
_LATITUDE_BOUNDS = (41.0, 43.0)
_LONGITUDE_BOUNDS = (-89.0, -87.0)
# Structural bounds where they differ from features.py's valid ranges (see the module docstring).
# Features not listed use their valid range from features.py, which for ids and calendar fields
# (community areas, hour, day, month) is already structural.
STRUCTURAL_BOUNDS: Mapping[str, tuple[float | None, float | None]] = {
    FARE_KEY: (0.0, 10_000.0),
    TIPS_KEY: (0.0, 10_000.0),
    TRIP_MILES_KEY: (0.0, 5_000.0),
    TRIP_SECONDS_KEY: (0, 200_000),
    TIMESTAMP_KEY: (0, _UNIX_2100),
    **{f.name: _LATITUDE_BOUNDS for f in RAW_FEATURES if (f.valid_min, f.valid_max) == CHICAGO_LATITUDE},
    **{f.name: _LONGITUDE_BOUNDS for f in RAW_FEATURES if (f.valid_min, f.valid_max) == CHICAGO_LONGITUDE},
}

log = logging.getLogger(__name__)

_SCHEMA_TYPES = {Kind.FLOAT: schema_pb2.FLOAT, Kind.INT: schema_pb2.INT, Kind.STRING: schema_pb2.BYTES}


def _check_names() -> None:
    """Fails at import when a table above names a feature that features.py does not define."""
    for table in (CLOSED_VOCABULARIES, STRUCTURAL_BOUNDS, dict.fromkeys(NOT_IN_SERVING + NO_DRIFT_CHECK)):
        unknown = sorted(set(table) - set(FEATURES_BY_NAME))
        if unknown:
            raise ImportError(f"validation.schema names features missing from transforms/features.py: {unknown}")


_check_names()


def bounds(feature: Feature) -> tuple[float | None, float | None]:
    """The schema's (min, max) for a numeric feature: structural bounds, else the valid range."""
    return STRUCTURAL_BOUNDS.get(feature.name, (feature.valid_min, feature.valid_max))


def _curated_feature(feature: Feature, seen: Mapping[str, Sequence[str]]) -> schema_pb2.Feature:
    spec = schema_pb2.Feature(name=feature.name, type=_SCHEMA_TYPES[feature.kind])
    if feature.required and feature.required_unless is None:
        spec.presence.min_fraction = 1.0
        spec.presence.min_count = 1
    elif feature.required:
        # tips: absent from the production rows, which carry their observed label instead (the
        # clean job checks one of the two per row; a schema cannot say "or"), but a training set
        # without any tips has lost its reference data.
        spec.presence.min_count = 1
    else:
        # Optional features may be absent from a whole batch (pickup_census_tract is 100% missing).
        spec.presence.min_count = 0
    # Single-valued when present. value_count instead of shape: shape would demand presence.
    spec.value_count.min = 1
    spec.value_count.max = 1
    low, high = bounds(feature)
    if feature.kind is Kind.FLOAT and (low is not None or high is not None):
        if low is not None:
            spec.float_domain.min = float(low)
        if high is not None:
            spec.float_domain.max = float(high)
    elif feature.kind is Kind.INT and (low is not None or high is not None):
        if low is not None:
            spec.int_domain.min = int(low)
        if high is not None:
            spec.int_domain.max = int(high)
    elif feature.kind is Kind.STRING and feature.name in CLOSED_VOCABULARIES:
        # Inline string_domain keeps the whole contract of the feature in one block of the file.
        spec.string_domain.value.extend(sorted({*CLOSED_VOCABULARIES[feature.name], *seen.get(feature.name, ())}))
        spec.distribution_constraints.min_domain_mass = MIN_DOMAIN_MASS
    # No domain for open vocabularies (company): new companies are normal, not anomalies.
    if feature.name not in NO_DRIFT_CHECK:
        if feature.kind is Kind.STRING:
            spec.drift_comparator.infinity_norm.threshold = CATEGORICAL_DRIFT_LINF_THRESHOLD
        else:
            spec.drift_comparator.jensen_shannon_divergence.threshold = NUMERIC_DRIFT_JS_THRESHOLD
    if feature.name in NOT_IN_SERVING:
        spec.not_in_environment.append(SERVING)
    return spec


def curate_schema(schema: schema_pb2.Schema) -> schema_pb2.Schema:
    """The schema with the conventions of transforms/features.py applied; the input is not changed.

    Types, presence, ranges, domains, drift comparators and environments all come from
    features.py and the tables above, so two inferences from different samples give the same
    schema. Features that features.py does not define are dropped (validation then reports them
    as new columns); features the sample never contained are added. A closed vocabulary is the
    shipped one plus the values the input's domain for it holds: a schema inferred from one's own
    data accepts that data's values (a payment type the sample never had), while any sample of
    the shipped data gives the shipped list. Everything else in the input (e.g. dataset-level
    constraints added by hand) is kept.
    """
    seen = {name: values for name in CLOSED_VOCABULARIES if (values := _domain_values(schema, name))}
    for name, values in seen.items():
        added = sorted(set(values) - set(CLOSED_VOCABULARIES[name]))
        if added:
            log.warning("curate_schema: %s: values the data has and the shipped vocabulary lacks, added: %s", name, added)
    dropped = sorted(f.name for f in schema.feature if f.name not in FEATURES_BY_NAME)
    if dropped:
        log.warning("curate_schema: dropping features that transforms/features.py does not define: %s", dropped)
    curated = schema_pb2.Schema()
    curated.CopyFrom(schema)
    del curated.feature[:]
    del curated.string_domain[:]  # inferred top-level domains; closed vocabularies are inlined
    curated.feature.extend(_curated_feature(f, seen) for f in EXAMPLE_FEATURES)
    del curated.default_environment[:]
    curated.default_environment.extend(ENVIRONMENTS)
    return curated


def _domain_values(schema: schema_pb2.Schema, name: str) -> list[str]:
    """The string values `schema` allows for feature `name`: its inline domain or the top-level one
    it names (TFDV's inference writes the latter); none when it has no string domain."""
    for feature in schema.feature:
        if feature.name != name:
            continue
        if feature.HasField("string_domain"):
            return list(feature.string_domain.value)
        if feature.HasField("domain"):
            return [value for domain in schema.string_domain if domain.name == feature.domain for value in domain.value]
    return []


def infer_schema(statistics_path: Path, output_path: Path) -> Path:
    """Bootstraps a schema from training statistics (FeatureStats.pb) and writes it, curated.

    TFDV's inference decides little that survives curation; it is kept so that a feature the
    data has and features.py lacks is noticed (logged as dropped; validation then reports it).
    """
    statistics = load_statistics(statistics_path)
    if not statistics.datasets or statistics.datasets[0].num_examples == 0:
        raise DataError(f"{statistics_path}: statistics of zero examples; cannot infer a schema")
    inferred = tfdv.infer_schema(statistics, infer_feature_shape=False)
    write_schema(curate_schema(inferred), output_path)
    return Path(output_path)


def load_schema(path: "str | Path") -> schema_pb2.Schema:
    """Reads a text-format Schema proto, with an error naming the file and the bad line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: schema file not found (expected a text-format tensorflow_metadata Schema)")
    try:
        return text_format.Parse(path.read_text(), schema_pb2.Schema())
    except text_format.ParseError as error:
        raise DataError(f"{path}: not a text-format Schema proto: {error}") from error


_HEADER = (
    "# Curated TFDV schema of the raw taxi features. Generated by validation.schema.infer_schema\n"
    "# (TFDV inference + curate_schema, from transforms/features.py), then reviewed.\n"
    "# Ranges are structural (catch unit errors and impossible values), not the clean job's ranges.\n"
    "# Drift thresholds are starting points for monitoring; see validation/schema.py for why.\n"
)


def write_schema(schema: schema_pb2.Schema, path: "str | Path") -> Path:
    """Writes a Schema as text, atomically, under a header that says where it comes from."""
    return write_text(path, _HEADER + text_format.MessageToString(schema))
