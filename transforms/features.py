"""The single definition of the taxi features: names, types, the label and encodings.

Training, serving, validation, drift checks and clients import from here; nobody
retypes a feature name. The module is deliberately free of TensorFlow imports so
that light processes (the CLI, the gateway, Airflow's DAG processor) can use it.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any, Mapping


class Kind(enum.Enum):
    FLOAT = "float"
    INT = "int"
    STRING = "string"


class OnInvalid(enum.Enum):
    """What the clean job does with a value outside a feature's valid range."""

    REJECT = "reject"  # the row goes to the rejected output with the reason
    CLIP = "clip"  # the value is clipped into the valid range
    NULL = "null"  # the value is treated as missing


@dataclasses.dataclass(frozen=True)
class Feature:
    name: str
    kind: Kind
    description: str
    required: bool = False  # a row missing it is rejected by the clean job
    valid_min: float | None = None
    valid_max: float | None = None
    on_invalid: OnInvalid = OnInvalid.REJECT
    # True when the model consumes the feature (some columns are only carried along).
    model_input: bool = True
    # False: a privacy decision; the value is never copied from the production request log into
    # training data (beam_jobs/served_source.py drops it; the row trains with the feature missing).
    retained: bool = True
    # A required feature that a row may lack when it has this one instead: `tips` is only the
    # source of the label, so a production row that carries its label directly needs no tips.
    required_unless: str | None = None

    def missing_in(self, row: Mapping[str, Any]) -> bool:
        """True when a row lacks this required feature and nothing stands in for it."""
        if not self.required or row.get(self.name) is not None:
            return False
        return self.required_unless is None or row.get(self.required_unless) is None

    def is_valid(self, value: float) -> bool:
        if self.valid_min is not None and value < self.valid_min:
            return False
        if self.valid_max is not None and value > self.valid_max:
            return False
        return True


# The Chicago area: a generous box around the city limits (city: 41.64..42.03 N, 87.52..87.94 W).
CHICAGO_LATITUDE = (41.60, 42.10)
CHICAGO_LONGITUDE = (-88.00, -87.50)

LABEL_KEY = "big_tipper"
# The label carried directly by a raw example (0/1), for rows that have no tips to derive it from:
# production requests labelled by ground truth or a human decision. Absent in CSV rows.
OBSERVED_LABEL_KEY = "observed_big_tipper"
# The raw features code refers to one by one (the others are only iterated over, via RAW_FEATURES).
TIPS_KEY = "tips"
FARE_KEY = "fare"
TIMESTAMP_KEY = "trip_start_timestamp"
TRIP_MILES_KEY = "trip_miles"
TRIP_SECONDS_KEY = "trip_seconds"
PAYMENT_TYPE_KEY = "payment_type"
COMPANY_KEY = "company"
HOUR_KEY = "trip_start_hour"
DAY_KEY = "trip_start_day"
MONTH_KEY = "trip_start_month"
PICKUP_COORDINATES = ("pickup_latitude", "pickup_longitude")
DROPOFF_COORDINATES = ("dropoff_latitude", "dropoff_longitude")
# Tips above this share of the fare make a trip a "big tipper".
BIG_TIPPER_SHARE = 0.2

# What the gateway decides for one served example (logged as `decision`), and what a person may
# answer instead. The positive decision is the label's name.
DECISION_BIG_TIPPER = LABEL_KEY
DECISION_NOT_BIG_TIPPER = "not_big_tipper"
DECISION_REFER_TO_HUMAN = "refer_to_human"  # partial automation: the model was unsure
DECISION_NONE = "none"  # shadow automation: the model answered, nobody acted on it
HUMAN_DECISIONS = (DECISION_BIG_TIPPER, DECISION_NOT_BIG_TIPPER)
DECISIONS = (*HUMAN_DECISIONS, DECISION_REFER_TO_HUMAN, DECISION_NONE)

# Which feedback on a served request is a label (config: data.label_policy). Ground truth always;
# a reviewer's decision only under POLICY_GROUND_TRUTH_OR_HUMAN, and never over ground truth.
POLICY_GROUND_TRUTH = "ground_truth"
POLICY_GROUND_TRUTH_OR_HUMAN = "ground_truth_or_human"
LABEL_POLICIES = (POLICY_GROUND_TRUTH, POLICY_GROUND_TRUTH_OR_HUMAN)
# Where a production row's label came from.
SOURCE_GROUND_TRUTH = "ground_truth"
SOURCE_HUMAN_DECISION = "human_decision"
HUMAN_DECISION_LABELS = {DECISION_BIG_TIPPER: 1, DECISION_NOT_BIG_TIPPER: 0}


def feedback_label(ground_truth: Any, human_decision: Any, policy: str) -> tuple[int, str] | None:
    """(label, source) of a served example's latest feedback under the policy, or None (no label)."""
    if ground_truth in (0, 1):
        return int(ground_truth), SOURCE_GROUND_TRUTH
    if policy == POLICY_GROUND_TRUTH_OR_HUMAN and human_decision in HUMAN_DECISION_LABELS:
        return HUMAN_DECISION_LABELS[human_decision], SOURCE_HUMAN_DECISION
    return None


_F, _I, _S = Kind.FLOAT, Kind.INT, Kind.STRING

RAW_FEATURES: tuple[Feature, ...] = (
    Feature("pickup_community_area", _I, "Community area of the pick-up (1-77)", valid_min=1, valid_max=77, on_invalid=OnInvalid.NULL),
    Feature(FARE_KEY, _F, "Fare in USD", required=True, valid_min=0.0, valid_max=1000.0),
    Feature(MONTH_KEY, _I, "Month the trip started (1-12)", required=True, valid_min=1, valid_max=12),
    Feature(HOUR_KEY, _I, "Hour of day the trip started (0-23)", required=True, valid_min=0, valid_max=23),
    Feature(DAY_KEY, _I, "Day of week the trip started (1=Sunday .. 7)", required=True, valid_min=1, valid_max=7),
    Feature(TIMESTAMP_KEY, _I, "Trip start, Unix seconds", required=True, valid_min=0, model_input=False),
    Feature(PICKUP_COORDINATES[0], _F, "Pick-up latitude", valid_min=CHICAGO_LATITUDE[0], valid_max=CHICAGO_LATITUDE[1]),
    Feature(PICKUP_COORDINATES[1], _F, "Pick-up longitude", valid_min=CHICAGO_LONGITUDE[0], valid_max=CHICAGO_LONGITUDE[1]),
    Feature(DROPOFF_COORDINATES[0], _F, "Drop-off latitude", valid_min=CHICAGO_LATITUDE[0], valid_max=CHICAGO_LATITUDE[1]),
    Feature(DROPOFF_COORDINATES[1], _F, "Drop-off longitude", valid_min=CHICAGO_LONGITUDE[0], valid_max=CHICAGO_LONGITUDE[1]),
    Feature(TRIP_MILES_KEY, _F, "Distance in miles", valid_min=0.0, valid_max=500.0, on_invalid=OnInvalid.NULL),
    # 100% missing in the shipped data: carried and validated, not fed to the model.
    Feature("pickup_census_tract", _I, "Census tract of the pick-up", model_input=False),
    Feature("dropoff_census_tract", _I, "Census tract of the drop-off"),
    Feature(PAYMENT_TYPE_KEY, _S, "How the trip was paid", required=True),
    Feature(COMPANY_KEY, _S, "Taxi company"),
    Feature(TRIP_SECONDS_KEY, _I, "Duration in seconds", valid_min=1, valid_max=86_400),
    Feature("dropoff_community_area", _I, "Community area of the drop-off (1-77)", valid_min=1, valid_max=77, on_invalid=OnInvalid.NULL),
    Feature(TIPS_KEY, _F, "Tip in USD (label source, absent at serving time)", required=True, valid_min=0.0, valid_max=1000.0, model_input=False, required_unless=OBSERVED_LABEL_KEY),
)
# Not a CSV column: the label of a production row, as ground truth or a counted human decision said
# it (beam_jobs/served_source.py writes it). preprocessing_fn uses it instead of deriving from tips.
OBSERVED_LABEL = Feature(OBSERVED_LABEL_KEY, _I, "The label as observed (1 = big tipper), for rows without tips",
                         valid_min=0, valid_max=1, model_input=False)

# The columns of a taxi CSV file.
RAW_COLUMNS: tuple[str, ...] = tuple(f.name for f in RAW_FEATURES)
# What a raw (and cleaned) tf.Example may hold: the CSV columns, and the observed label of a production row.
EXAMPLE_FEATURES: tuple[Feature, ...] = (*RAW_FEATURES, OBSERVED_LABEL)
EXAMPLE_COLUMNS: tuple[str, ...] = tuple(f.name for f in EXAMPLE_FEATURES)
FEATURES_BY_NAME: Mapping[str, Feature] = {f.name: f for f in EXAMPLE_FEATURES}
# Where a label comes from: derived from tips (CSV rows) or carried as observed (production rows).
LABEL_SOURCES: tuple[str, ...] = (TIPS_KEY, OBSERVED_LABEL_KEY)
# What a serving client sends: every raw column but the label sources.
SERVING_FEATURES: tuple[Feature, ...] = tuple(f for f in RAW_FEATURES if f.name not in LABEL_SOURCES)
SERVING_COLUMNS: tuple[str, ...] = tuple(f.name for f in SERVING_FEATURES)

# --- Encodings used by preprocessing_fn (the only place they are defined) ---
DENSE_FLOAT_FEATURES = (FARE_KEY, TRIP_MILES_KEY, TRIP_SECONDS_KEY)
# Numerics that get a log1p before scaling: long-tailed money, distance and time.
LOG_SCALED_FEATURES = (FARE_KEY, TRIP_MILES_KEY, TRIP_SECONDS_KEY)
BUCKET_FEATURES = (*PICKUP_COORDINATES, *DROPOFF_COORDINATES)
FEATURE_BUCKET_COUNT = 10
VOCAB_FEATURES = (PAYMENT_TYPE_KEY, COMPANY_KEY, "dropoff_census_tract")
VOCAB_SIZE = 1000
OOV_SIZE = 10
# Integer categoricals: one id per value of the feature's valid range, plus 0 for missing or out of
# range (see transforms.preprocessing.categorical_id_count).
CATEGORICAL_FEATURES: tuple[str, ...] = (
    HOUR_KEY,
    DAY_KEY,
    MONTH_KEY,
    "pickup_community_area",
    "dropoff_community_area",
)
# The features whose values split traffic into slices people recognise: where monitoring looks for the
# part of the traffic a change sits in.
SLICE_FEATURES: tuple[str, ...] = (PAYMENT_TYPE_KEY, HOUR_KEY, COMPANY_KEY, DAY_KEY)
# Hour-of-day buckets used for the wide part and evaluation slices.
HOUR_BUCKETS = ((0, 6, "night"), (6, 12, "morning"), (12, 18, "afternoon"), (18, 24, "evening"))

# Serving-side sentinels for a missing value: a JSON client sends null, the gateway and
# client send these, and the serving signature turns them back into "missing".
MISSING_FLOAT = float("nan")
MISSING_INT = -1
MISSING_STRING = ""


def transformed_name(key: str) -> str:
    return f"{key}_xf"


def hour_bucket(hour: int) -> str:
    for low, high, name in HOUR_BUCKETS:
        if low <= hour < high:
            return name
    raise ValueError(f"{HOUR_KEY} must be in 0..23, got {hour!r}")


def is_big_tipper(tips: Any, fare: Any) -> Any:
    """The label rule, on numbers or element-wise on numpy arrays and pandas Series."""
    return tips > BIG_TIPPER_SHARE * fare


def retained_features(features: "tuple[Feature, ...]" = EXAMPLE_FEATURES) -> tuple[Feature, ...]:
    """The features that may be copied from production logs into training data (`retained=True`)."""
    return tuple(f for f in features if f.retained)


def missing_value(kind: Kind) -> Any:
    return {Kind.FLOAT: MISSING_FLOAT, Kind.INT: MISSING_INT, Kind.STRING: MISSING_STRING}[kind]


def is_missing(value: Any) -> bool:
    """True for None and for the serving sentinel of any kind."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, bytes):
        return value == b""
    if isinstance(value, str):
        return value == MISSING_STRING
    if isinstance(value, int):
        return value == MISSING_INT
    return False


# What a tf.Example and a serving tensor hold: float32 and int64. A value beyond them would become
# an infinity or fail to encode far from where it came in, so every entry point checks it first.
FLOAT32_MAX = 3.4028234663852886e38
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
EXPECTED_BY_KIND = {Kind.FLOAT: "a finite number", Kind.INT: "an integer", Kind.STRING: "text"}


def fit_problem(kind: Kind, value: Any) -> str | None:
    """Why a parsed number does not fit its feature's stored type (float32, int64), or None if it does."""
    if kind is Kind.FLOAT:
        if not math.isfinite(value):
            return f"expected a finite number, got {value!r}"
        if abs(value) > FLOAT32_MAX:
            return f"{value!r:.40} does not fit a float32 (magnitude at most {FLOAT32_MAX:.4g})"
    elif kind is Kind.INT and not INT64_MIN <= value <= INT64_MAX:
        return f"{value!r:.40} does not fit a 64-bit integer"
    return None


def parse_value(feature: Feature, text: str) -> Any:
    """Parses one CSV cell. '' is missing (None); a cell that is not of the feature's kind, or does not
    fit its stored type (float32, int64), raises ValueError saying what was expected."""
    text = text.strip()
    if text == "":
        return None
    if feature.kind is Kind.STRING:
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # bytes that were not UTF-8, kept as surrogate escapes
                raise ValueError("expected UTF-8 text") from None
        return text
    # Python's float() and int() also take "1_000" and non-ASCII digits; a CSV number does not.
    if not text.isascii() or "_" in text:
        raise ValueError(f"expected {EXPECTED_BY_KIND[feature.kind]}")
    if feature.kind is Kind.FLOAT:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"expected {EXPECTED_BY_KIND[feature.kind]}") from None
    else:
        value = _parse_int(text)
    problem = fit_problem(feature.kind, value)
    if problem is not None:
        raise ValueError(problem)
    return value


def _parse_int(text: str) -> int:
    # Integers sometimes arrive as "12.0" from spreadsheets: accept exact integral floats only.
    try:
        return int(text)
    except ValueError:
        pass
    try:
        as_float = float(text)
    except ValueError:
        raise ValueError("expected an integer") from None
    if not math.isfinite(as_float) or not as_float.is_integer():
        raise ValueError("expected an integer")
    return int(as_float)
