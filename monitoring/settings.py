"""The monitoring thresholds: one TOML file (`monitoring/thresholds.toml`), typed and checked at load.

Thresholds live in their own file rather than in `mlops.toml` because they are tuned from
measurements (docs/MONITORING.md) and reviewed separately from the pipeline's settings. Every
feature name in the file must be a serving feature of transforms/features.py, so a renamed
feature fails at load instead of silently losing its threshold.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tomllib
from pathlib import Path
from typing import Any, Mapping

from core.errors import DataError
from transforms.features import SERVING_FEATURES, Kind

DEFAULT_THRESHOLDS_PATH = Path(__file__).resolve().parent / "thresholds.toml"
THRESHOLDS_ENV_VAR = "MLOPS_MONITORING_THRESHOLDS"
_SERVING_KINDS = {feature.name: feature.kind for feature in SERVING_FEATURES}


class ThresholdsError(DataError):
    """The thresholds file is missing, not TOML, or has an unknown key or a value out of range."""


@dataclasses.dataclass(frozen=True)
class FeatureComparison:
    """How one feature is compared between two distributions (drift or skew)."""

    enabled: bool
    threshold: float  # JS divergence (numeric) or L-infinity distance (categorical)
    # Calendar features are compared only when the window covers their cycle: an hourly window
    # holds one hour of day by construction, which is not drift.
    min_window_hours: float = 0.0


@dataclasses.dataclass(frozen=True)
class ComparatorThresholds:
    numeric_js: float
    categorical_linf: float
    features: Mapping[str, FeatureComparison]

    def for_feature(self, name: str) -> FeatureComparison:
        if name in self.features:
            return self.features[name]
        default = self.categorical_linf if _SERVING_KINDS[name] is Kind.STRING else self.numeric_js
        return FeatureComparison(enabled=True, threshold=default)


@dataclasses.dataclass(frozen=True)
class MissingValueThresholds:
    # A feature fails when its missing rate exceeds the training rate by more than this.
    margin: float
    features: Mapping[str, float]  # per-feature margin overrides

    def margin_for(self, name: str) -> float:
        return self.features.get(name, self.margin)


@dataclasses.dataclass(frozen=True)
class ConceptDriftThresholds:
    min_labels: int
    window_days: float
    max_auc_drop: float
    max_accuracy_drop: float
    max_ece_increase: float
    calibration_bins: int
    # The sequential detectors (monitoring/sequential.py), on labelled requests in request-time order.
    min_sequence_labels: int  # below this many labels they do not judge
    window_labels: int  # the recent window: the last this many labels
    window_z: float  # it fails when their excess loss is this many standard deviations above zero
    cusum_slack: float  # per-label allowance (in standard deviations) the cumulative sum must beat
    cusum_threshold: float  # it fails when the cumulative sum exceeds this


@dataclasses.dataclass(frozen=True)
class PerformanceEstimateThresholds:
    min_rows: int  # below this many scored requests the estimate does not judge
    max_auc_drop: float  # fails when the estimated AUC is this much below the evaluation's
    max_accuracy_drop: float
    interval: float  # coverage of the interval reported around each estimate (0.9 = 5th to 95th percentile)


@dataclasses.dataclass(frozen=True)
class PairedThresholds:
    """Candidate vs stable on the same requests (monitoring/paired.py); the canary judge stops on a divergence."""

    min_pairs: int  # below this many paired requests the comparison does not judge
    min_slice_pairs: int  # a slice value is judged from this many pairs
    max_disagreement: float  # share of requests whose decisions differ, over all pairs
    max_slice_disagreement: float  # the same within one slice value


@dataclasses.dataclass(frozen=True)
class MonitoringThresholds:
    source: Path
    min_rows: int
    drift: ComparatorThresholds
    skew: ComparatorThresholds
    missing_values: MissingValueThresholds
    max_null_output_fraction: float
    prediction_js: float
    concept: ConceptDriftThresholds
    performance: PerformanceEstimateThresholds
    paired: PairedThresholds

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (written into each result.json)."""
        value = dataclasses.asdict(self)
        value["source"] = str(self.source)
        return value

    def fingerprint(self) -> str:
        """sha256 of the values (not the file's text): recorded with each check to tell settings apart."""
        values = {k: v for k, v in self.to_json().items() if k != "source"}
        return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _section(values: Mapping[str, Any], name: str, known: set[str], where: Path) -> Mapping[str, Any]:
    section = values.get(name, {})
    if not isinstance(section, Mapping):
        raise ThresholdsError(f"{where}: [{name}] must be a table, got {type(section).__name__}")
    unknown = sorted(set(section) - known)
    if unknown:
        raise ThresholdsError(f"{where}: [{name}] has unknown keys {unknown}; known: {sorted(known)}")
    return section


def _number(section: Mapping[str, Any], key: str, where: str, low: float, high: float | None = None) -> float:
    if key not in section:
        raise ThresholdsError(f"{where}: {key} is required")
    value = section[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ThresholdsError(f"{where}: {key} must be a number, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ThresholdsError(f"{where}: {key} must be in {bound}, got {value}")
    return float(value)


def _feature_name(name: str, where: str) -> str:
    if name not in _SERVING_KINDS:
        raise ThresholdsError(f"{where}: {name!r} is not a serving feature of transforms/features.py "
                              f"(known: {', '.join(sorted(_SERVING_KINDS))})")
    return name


def _comparator(values: Mapping[str, Any], name: str, where: Path) -> ComparatorThresholds:
    section = _section(values, name, {"numeric_js", "categorical_linf", "features"}, where)
    numeric_js = _number(section, "numeric_js", f"{where} [{name}]", 0.0, 1.0)
    categorical_linf = _number(section, "categorical_linf", f"{where} [{name}]", 0.0, 1.0)
    features: dict[str, FeatureComparison] = {}
    for feature, spec in dict(section.get("features", {})).items():
        context = f"{where} [{name}.features.{feature}]"
        _feature_name(feature, context)
        unknown = sorted(set(spec) - {"enabled", "threshold", "min_window_hours", "why"})
        if unknown:
            raise ThresholdsError(f"{context}: unknown keys {unknown}; known: enabled, threshold, min_window_hours, why")
        default = categorical_linf if _SERVING_KINDS[feature] is Kind.STRING else numeric_js
        enabled = spec.get("enabled", True)
        if not isinstance(enabled, bool):
            raise ThresholdsError(f"{context}: enabled must be true or false, got {enabled!r}")
        features[feature] = FeatureComparison(
            enabled=enabled,
            threshold=_number(spec, "threshold", context, 0.0, 1.0) if "threshold" in spec else default,
            min_window_hours=_number(spec, "min_window_hours", context, 0.0) if "min_window_hours" in spec else 0.0,
        )
    return ComparatorThresholds(numeric_js, categorical_linf, features)


def thresholds_from_dict(values: Mapping[str, Any], source: Path) -> MonitoringThresholds:
    known = {"window", "drift", "skew", "missing_values", "null_outputs", "prediction_drift", "concept_drift",
             "performance_estimate", "paired"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ThresholdsError(f"{source}: unknown sections {unknown}; known: {sorted(known)}")
    window = _section(values, "window", {"min_rows"}, source)
    missing = _section(values, "missing_values", {"margin", "features"}, source)
    nulls = _section(values, "null_outputs", {"max_fraction"}, source)
    predictions = _section(values, "prediction_drift", {"js"}, source)
    concept = _section(values, "concept_drift", {"min_labels", "window_days", "max_auc_drop", "max_accuracy_drop",
                                                 "max_ece_increase", "calibration_bins", "min_sequence_labels",
                                                 "window_labels", "window_z", "cusum_slack", "cusum_threshold"}, source)
    performance = _section(values, "performance_estimate", {"min_rows", "max_auc_drop", "max_accuracy_drop", "interval"},
                           source)
    paired = _section(values, "paired", {"min_pairs", "min_slice_pairs", "max_disagreement", "max_slice_disagreement"},
                      source)
    missing_features = {
        _feature_name(name, f"{source} [missing_values.features]"): _number({"margin": margin}, "margin",
                                                                            f"{source} [missing_values.features.{name}]", 0.0, 1.0)
        for name, margin in dict(missing.get("features", {})).items()
    }
    return MonitoringThresholds(
        source=source,
        min_rows=int(_number(window, "min_rows", f"{source} [window]", 1)),
        drift=_comparator(values, "drift", source),
        skew=_comparator(values, "skew", source),
        missing_values=MissingValueThresholds(_number(missing, "margin", f"{source} [missing_values]", 0.0, 1.0), missing_features),
        max_null_output_fraction=_number(nulls, "max_fraction", f"{source} [null_outputs]", 0.0, 1.0),
        prediction_js=_number(predictions, "js", f"{source} [prediction_drift]", 0.0, 1.0),
        concept=ConceptDriftThresholds(
            min_labels=int(_number(concept, "min_labels", f"{source} [concept_drift]", 1)),
            window_days=_number(concept, "window_days", f"{source} [concept_drift]", 0.0),
            max_auc_drop=_number(concept, "max_auc_drop", f"{source} [concept_drift]", 0.0, 1.0),
            max_accuracy_drop=_number(concept, "max_accuracy_drop", f"{source} [concept_drift]", 0.0, 1.0),
            max_ece_increase=_number(concept, "max_ece_increase", f"{source} [concept_drift]", 0.0, 1.0),
            calibration_bins=int(_number(concept, "calibration_bins", f"{source} [concept_drift]", 2, 100)),
            min_sequence_labels=int(_number(concept, "min_sequence_labels", f"{source} [concept_drift]", 1)),
            window_labels=int(_number(concept, "window_labels", f"{source} [concept_drift]", 10)),
            window_z=_number(concept, "window_z", f"{source} [concept_drift]", 0.0),
            cusum_slack=_number(concept, "cusum_slack", f"{source} [concept_drift]", 0.0),
            cusum_threshold=_number(concept, "cusum_threshold", f"{source} [concept_drift]", 0.0),
        ),
        performance=PerformanceEstimateThresholds(
            min_rows=int(_number(performance, "min_rows", f"{source} [performance_estimate]", 1)),
            max_auc_drop=_number(performance, "max_auc_drop", f"{source} [performance_estimate]", 0.0, 1.0),
            max_accuracy_drop=_number(performance, "max_accuracy_drop", f"{source} [performance_estimate]", 0.0, 1.0),
            interval=_number(performance, "interval", f"{source} [performance_estimate]", 0.5, 0.999),
        ),
        paired=PairedThresholds(
            min_pairs=int(_number(paired, "min_pairs", f"{source} [paired]", 1)),
            min_slice_pairs=int(_number(paired, "min_slice_pairs", f"{source} [paired]", 1)),
            max_disagreement=_number(paired, "max_disagreement", f"{source} [paired]", 0.0, 1.0),
            max_slice_disagreement=_number(paired, "max_slice_disagreement", f"{source} [paired]", 0.0, 1.0),
        ),
    )


def load_thresholds(path: str | os.PathLike[str] | None = None) -> MonitoringThresholds:
    """Reads `path`, else $MLOPS_MONITORING_THRESHOLDS, else the packaged monitoring/thresholds.toml."""
    source = Path(path or os.environ.get(THRESHOLDS_ENV_VAR) or DEFAULT_THRESHOLDS_PATH).resolve()
    if not source.is_file():
        raise ThresholdsError(f"monitoring thresholds file not found: {source}")
    try:
        values = tomllib.loads(source.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ThresholdsError(f"{source}: not valid TOML: {err}") from None
    return thresholds_from_dict(values, source)
