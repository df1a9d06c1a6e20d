"""Statistics checked against the curated schema, with anomaly reports people can act on.

Per split, TFDV's `Anomalies` proto is kept as TFX names it (`Split-<split>/SchemaDiff.pb`) so
TFX tooling can read it, and `anomalies.txt` says the same in a table: feature, what is wrong,
and TFDV's longer explanation.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import anomalies_pb2

from beam_jobs.example_codec import SPLITS, split_dir
from beam_jobs.statistics import load_statistics, statistics_path
from core.atomic import write_bytes, write_text
from core.errors import DataError, SchemaAnomaliesError
from validation.schema import TRAINING, load_schema

ANOMALIES_FILE_NAME = "SchemaDiff.pb"
REPORT_FILE_NAME = "anomalies.txt"
# Key for anomalies about the dataset as a whole (e.g. its number of examples), not one feature.
DATASET_KEY = "(dataset)"


@dataclasses.dataclass(frozen=True)
class ValidationResult:
    """What validation found: every validated split is a key, with an empty dict when clean."""

    anomalies_by_split: dict[str, dict[str, str]]  # split -> feature -> human-readable description
    anomalies_path: Path  # directory with Split-<split>/SchemaDiff.pb and anomalies.txt
    # split -> feature -> description, of the schema's drift comparators against the previous data
    # (empty when there was nothing to compare with). Not in anomalies_by_split: the caller decides.
    drift_by_split: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(self.anomalies_by_split.values())

    @property
    def num_anomalies(self) -> int:
        return sum(len(found) for found in self.anomalies_by_split.values())


def _reasons(info: anomalies_pb2.AnomalyInfo) -> list[tuple[str, str]]:
    """(short, long) descriptions of one feature's anomaly, one per reason TFDV found."""
    reasons = [(r.short_description.strip(), r.description.strip()) for r in info.reason]
    return reasons or [(info.short_description.strip(), info.description.strip())]


def anomalies_by_feature(anomalies: anomalies_pb2.Anomalies) -> dict[str, str]:
    """Feature name -> "short description: long description" (reasons joined by "; ")."""
    found: dict[str, str] = {}
    items = sorted(anomalies.anomaly_info.items())
    if anomalies.HasField("dataset_anomaly_info"):
        items.append((DATASET_KEY, anomalies.dataset_anomaly_info))
    for feature, info in items:
        found[feature] = "; ".join(f"{short}: {long}" if long else short for short, long in _reasons(info))
    return found


def format_anomalies(anomalies: anomalies_pb2.Anomalies) -> str:
    """A plain-text table, one line per problem: feature | short description | long description."""
    rows = [
        (feature, short, long)
        for feature, info in sorted(anomalies.anomaly_info.items())
        for short, long in _reasons(info)
    ]
    if anomalies.HasField("dataset_anomaly_info"):
        rows.extend((DATASET_KEY, short, long) for short, long in _reasons(anomalies.dataset_anomaly_info))
    if not rows:
        return "No anomalies.\n"
    header = ("feature", "short description", "long description")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(2)]
    lines = [f"{header[0]:<{widths[0]}} | {header[1]:<{widths[1]}} | {header[2]}"]
    lines.append(f"{'-' * widths[0]}-+-{'-' * widths[1]}-+-{'-' * len(header[2])}")
    lines.extend(f"{feature:<{widths[0]}} | {short:<{widths[1]}} | {long}" for feature, short, long in rows)
    return "\n".join(lines) + "\n"


def validate_statistics(
    statistics_dir: Path,
    schema_path: Path,
    output_dir: Path,
    *,
    splits: Sequence[str] = SPLITS,
    environment: str = TRAINING,
    previous_statistics_dir: Path | None = None,
) -> ValidationResult:
    """Validates each split's FeatureStats.pb against the schema in `environment`.

    Writes `output_dir/Split-<split>/SchemaDiff.pb` (binary Anomalies) and
    `output_dir/anomalies.txt`, and returns what was found. Anomalies are results, not errors:
    the caller decides whether to stop (see `raise_for_anomalies`). Missing or unreadable
    statistics or schema raise DataError.

    With `previous_statistics_dir` (statistics of the data an earlier model trained on), the schema's
    drift comparators are applied to each split against the same split there; what they find is
    `drift_by_split`, apart from the schema anomalies (SchemaDiff.pb holds both, as TFDV writes it).
    """
    if not splits:
        raise DataError("validate: no splits given")
    schema = load_schema(schema_path)
    if schema.default_environment and environment not in schema.default_environment:
        raise DataError(
            f"{schema_path}: environment {environment!r} is not one of the schema's environments "
            f"{list(schema.default_environment)}"
        )
    output_dir = Path(output_dir)
    found: dict[str, dict[str, str]] = {}
    drift: dict[str, dict[str, str]] = {}
    sections: list[str] = []
    for split in splits:
        statistics = load_statistics(statistics_path(statistics_dir, split))
        previous = None
        if previous_statistics_dir is not None and statistics_path(previous_statistics_dir, split).is_file():
            previous = load_statistics(statistics_path(previous_statistics_dir, split))
        anomalies = tfdv.validate_statistics(statistics, schema, environment=environment, previous_statistics=previous)
        write_bytes(split_dir(output_dir, split) / ANOMALIES_FILE_NAME, anomalies.SerializeToString())
        schema_part, drift_part = split_comparator_anomalies(anomalies)
        found[split] = anomalies_by_feature(schema_part)
        if previous is not None:
            drift[split] = anomalies_by_feature(drift_part)
        examples = statistics.datasets[0].num_examples if statistics.datasets else 0
        sections.append(
            f"== split {split!r}: {_count(len(found[split]), 'anomaly', 'anomalies')} in {examples} examples "
            f"(schema {schema_path}, environment {environment})\n{format_anomalies(anomalies)}"
        )
    write_text(output_dir / REPORT_FILE_NAME, "\n".join(sections))
    return ValidationResult(anomalies_by_split=found, anomalies_path=output_dir, drift_by_split=drift)


_COMPARATOR_TYPES = frozenset(value for name, value in anomalies_pb2.AnomalyInfo.Type.items() if name.startswith("COMPARATOR_"))


def split_comparator_anomalies(anomalies: anomalies_pb2.Anomalies) -> tuple[anomalies_pb2.Anomalies, anomalies_pb2.Anomalies]:
    """(schema anomalies, drift/skew comparator anomalies): the reasons of each feature sorted into two."""
    schema_part, drift_part = anomalies_pb2.Anomalies(), anomalies_pb2.Anomalies()
    for part in (schema_part, drift_part):
        part.baseline.CopyFrom(anomalies.baseline)
    for feature, info in anomalies.anomaly_info.items():
        for part, keep in ((schema_part, False), (drift_part, True)):
            reasons = [reason for reason in info.reason if (reason.type in _COMPARATOR_TYPES) == keep]
            if reasons:
                target = part.anomaly_info[feature]
                target.CopyFrom(info)
                del target.reason[:]
                target.reason.extend(reasons)
                target.short_description = reasons[0].short_description if len(reasons) == 1 else target.short_description
                target.description = reasons[0].description if len(reasons) == 1 else target.description
    if anomalies.HasField("dataset_anomaly_info"):
        schema_part.dataset_anomaly_info.CopyFrom(anomalies.dataset_anomaly_info)
    return schema_part, drift_part


def _count(number: int, singular: str, plural: str) -> str:
    return f"{number} {singular if number == 1 else plural}"


def load_anomalies(path: "str | Path") -> anomalies_pb2.Anomalies:
    """Reads a binary Anomalies proto (a split's SchemaDiff.pb)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: anomalies file not found (expected a binary Anomalies proto)")
    return anomalies_pb2.Anomalies.FromString(path.read_bytes())


def raise_for_anomalies(result: ValidationResult) -> None:
    """Raises SchemaAnomaliesError naming each anomalous feature and its problem; no-op when ok.

    The report attached to the error is the anomalies.txt table, for logs and UIs.
    """
    if result.ok:
        return
    lines = []
    for split, found in result.anomalies_by_split.items():
        if found:
            problems = "; ".join(f"{feature}: {text}" for feature, text in found.items())
            lines.append(f"validate: {_count(len(found), 'anomaly', 'anomalies')} in split {split!r}: {problems}")
    report_path = Path(result.anomalies_path) / REPORT_FILE_NAME
    report = report_path.read_text() if report_path.is_file() else "\n".join(lines)
    raise SchemaAnomaliesError("\n".join(lines) + f"\n(report: {report_path})", report)
