"""The project's own OpenLineage facets, each with its JSON schema in docs/openlineage/ (its `_schemaURL`),
and what every event of the project shares: producer, dataset namespace, strict JSON values.

metadata/openlineage.py builds the events of every step; metadata/openlineage_ml.py adds the drift
check's and the rollout's facets and datasets.
"""

from __future__ import annotations

import math
from typing import Any

import attr
from openlineage.client.generated.base import DatasetFacet, RunFacet

DATASET_NAMESPACE = "file"
PRODUCER = "https://github.com/mlops-suite/mlops-suite/blob/main/metadata/openlineage.py"
SCHEMA_BASE = "https://github.com/mlops-suite/mlops-suite/blob/main/docs/openlineage"


def json_safe(value: Any) -> Any:
    """Strict JSON: keys as strings, NaN and infinities as null, anything else unknown as its str()."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


class SchemaInDocs:
    """A facet whose JSON schema is docs/openlineage/<class name>.json (its `_schemaURL`)."""

    @classmethod
    def _get_schema(cls) -> str:
        return f"{SCHEMA_BASE}/{cls.__name__}.json#/$defs/{cls.__name__}"


@attr.define
class MlopsArtifactDatasetFacet(SchemaInDocs, DatasetFacet):
    """The ML Metadata artifact behind a dataset: its type, id and recorded properties."""

    artifactType: str  # noqa: N815 - OpenLineage's field style
    artifactId: int  # noqa: N815
    properties: dict[str, Any] = attr.field(factory=dict)


@attr.define
class MlopsExecutionRunFacet(SchemaInDocs, RunFacet):
    """The ML Metadata execution of a step: what ran, on what parameters and code, and what it found."""

    executionType: str  # noqa: N815
    executionId: int  # noqa: N815
    pipelineRun: str  # noqa: N815
    fingerprint: str
    codeVersion: str  # noqa: N815
    parameters: dict[str, Any] = attr.field(factory=dict)
    results: dict[str, Any] = attr.field(factory=dict)
    cachedFrom: int | None = attr.field(default=None)  # noqa: N815
    trigger: dict[str, Any] = attr.field(factory=dict)
    airflow: dict[str, str] = attr.field(factory=dict)


@attr.define
class MlopsDriftCheckRunFacet(SchemaInDocs, RunFacet):
    """A monitoring run's verdict: each check of the served requests against the training baseline."""

    passed: bool
    failedChecks: list[str]  # noqa: N815 - OpenLineage's field style
    checks: list[dict[str, Any]]  # name, passed, value (the worst score), threshold
    modelName: str  # noqa: N815
    windowStart: str  # noqa: N815
    windowEnd: str  # noqa: N815
    rows: int
    modelVersion: int | None = attr.field(default=None)  # noqa: N815
    report: str | None = attr.field(default=None)


@attr.define
class MlopsRolloutRunFacet(SchemaInDocs, RunFacet):
    """A rollout's decision and what it was judged on."""

    action: str  # canary | blue_green | rollback (the approval's outcome: canary)
    # promoted | switched | already_stable | rolled_back | held_for_approval | awaiting_approval; None (absent) on START
    decision: str | None = attr.field(default=None)
    modelVersion: int | None = attr.field(default=None)  # noqa: N815
    reasons: list[str] = attr.field(factory=list)
    evidence: dict[str, Any] = attr.field(factory=dict)  # observed shares, the paired comparison, ...
    approval: dict[str, Any] | None = attr.field(default=None)  # decision, responded_by, responded_at, ...


@attr.define
class MlopsServedModelDatasetFacet(SchemaInDocs, DatasetFacet):
    """A model version as a gateway serves it."""

    modelName: str  # noqa: N815
    modelVersion: int  # noqa: N815
    label: str  # stable
    gateway: str
    pushedModel: str  # noqa: N815 - the pushed version's directory (the dataset the push job wrote)
    previousStable: int | None = attr.field(default=None)  # noqa: N815

