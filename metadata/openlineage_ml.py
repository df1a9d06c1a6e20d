"""What the drift check's and the rollout's OpenLineage events carry beyond a step's (metadata/openlineage.py).

- `DriftCheck` (the monitoring run): inputs are, besides its ML Metadata inputs (the request log,
  the served model, the baseline statistics and schema), each request-log partition of the window
  (`<log_dir>/requests/date=YYYY-MM-DD`, named as ingest names the partitions it reads, so a
  lineage service sees the same traffic feed the check and a retraining); the COMPLETE event
  carries `mlops_drift_check`: every check with its score and limit, from the run's result.json.
- `Deploy` (canary, blue-green, rollback, and the approval's outcome): the input is the pushed
  model version; the output is the version served as stable afterwards, a dataset named by the
  gateway that serves it (namespace: its URL; name `v1/models/<model>/versions/<N>`, the TF Serving
  path that answers with exactly that version); the run carries `mlops_rollout`: the decision, the
  judged evidence (each observed share, the paired comparison) and the person's approval if any.
  A canary that was rolled back, held or left waiting for approval changed nothing served: no output.

The facets are in metadata/openlineage_facets.py, each with its JSON schema in docs/openlineage/.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from openlineage.client.event_v2 import InputDataset, OutputDataset, RunState
from openlineage.client.generated.dataset_version_dataset import DatasetVersionDatasetFacet

from metadata.openlineage_facets import (
    DATASET_NAMESPACE,
    PRODUCER,
    MlopsDriftCheckRunFacet,
    MlopsRolloutRunFacet,
    MlopsServedModelDatasetFacet,
    json_safe,
)

if TYPE_CHECKING:
    from metadata.recorder import StepRecord

DEFAULT_SERVING_NAMESPACE = "mlops-serving"  # a Deploy recorded without a gateway URL (not through the rollout tasks)
RESULT_FILE = "result.json"  # monitoring.results.RESULT_FILE, read as a file (metadata sits below monitoring)
# Decisions after which the Deploy's pushed version is the one served as stable.
SERVING_DECISIONS = frozenset({"promoted", "switched", "already_stable"})


@dataclasses.dataclass
class Extra:
    """What an execution type adds to a step's event."""

    facets: dict[str, Any] = dataclasses.field(default_factory=dict)
    inputs: list[InputDataset] = dataclasses.field(default_factory=list)
    outputs: list[OutputDataset] = dataclasses.field(default_factory=list)


# --- the drift check -------------------------------------------------------------------------


def request_log_partitions(log_dir: str, window_start: str, window_end: str) -> list[Path]:
    """The request-log partitions of [window_start, window_end) that exist, resolved as ingest records them."""
    start, end = dt.datetime.fromisoformat(window_start), dt.datetime.fromisoformat(window_end)
    last = (end - dt.timedelta(microseconds=1)).date()
    day, found = start.date(), []
    while day <= last:
        partition = Path(log_dir) / "requests" / f"date={day.isoformat()}"
        if partition.is_dir():
            found.append(partition.resolve())
        day += dt.timedelta(days=1)
    return found


def drift_check_extra(record: StepRecord, state: RunState, context: Any) -> Extra:
    from metadata.recorder import _flatten

    extra = Extra()
    for _, _, ref in _flatten(record.inputs):
        if ref.type_name == "PredictionLog" and {"window_start", "window_end"} <= set(ref.properties):
            extra.inputs += [InputDataset(namespace=DATASET_NAMESPACE, name=str(path)) for path in request_log_partitions(
                ref.uri, str(ref.properties["window_start"]), str(ref.properties["window_end"]))]
    result = record.outputs.get("result")
    if state == RunState.COMPLETE and result is not None:
        document_path = Path(result.uri) / RESULT_FILE
        document = json.loads(document_path.read_text()) if document_path.is_file() else {}
        props = result.properties
        extra.facets["mlops_drift_check"] = MlopsDriftCheckRunFacet(
            passed=bool(props.get("passed")), failedChecks=list(props.get("failed_checks") or []),
            checks=[{k: check[k] for k in ("name", "passed", "value", "threshold") if check.get(k) is not None}
                    for check in document.get("checks", [])],  # an unjudged check has no value (JSON null is dropped)
            modelName=str(props.get("model_name", "")), modelVersion=props.get("model_version"),
            windowStart=str(props.get("window_start", "")), windowEnd=str(props.get("window_end", "")),
            rows=int(props.get("rows") or 0), report=props.get("report"), producer=PRODUCER)
    return extra


# --- the rollout -----------------------------------------------------------------------------


def served_dataset_name(model_name: str, version: int) -> str:
    return f"v1/models/{model_name}/versions/{version}"


def deploy_extra(record: StepRecord, state: RunState, context: Any) -> Extra:
    """`context`: what the rollout task announced (metadata.openlineage.Announcement), or None."""
    results, parameters = record.results, record.parameters
    details = results.get("details") or {}
    evidence = {key: details[key] for key in ("observations", "paired", "evidence", "policy", "share", "stable", "previous_stable")
                if details.get(key) is not None}
    extra = Extra(facets={"mlops_rollout": MlopsRolloutRunFacet(
        action=str(parameters.get("action", "")), decision=results.get("decision"), modelVersion=results.get("version"),
        reasons=[str(r) for r in results.get("reasons") or []], evidence=json_safe(evidence),
        approval=json_safe(results.get("approval")), producer=PRODUCER)})
    pushed = record.inputs.get("pushed_model")
    served = (state == RunState.COMPLETE and pushed is not None and not isinstance(pushed, (list, tuple))
              and (results.get("decision") in SERVING_DECISIONS or parameters.get("action") == "rollback"))
    if served:
        model, version = str(pushed.properties.get("model_name")), int(pushed.properties["version"])
        gateway = getattr(context, "served_namespace", "") or DEFAULT_SERVING_NAMESPACE
        previous = details.get("previous_stable")
        extra.outputs.append(OutputDataset(namespace=gateway, name=served_dataset_name(model, version), facets={
            "version": DatasetVersionDatasetFacet(datasetVersion=str(version), producer=PRODUCER),
            "mlops_served_model": MlopsServedModelDatasetFacet(
                modelName=model, modelVersion=version, label="stable", gateway=gateway, pushedModel=pushed.uri,
                previousStable=int(previous) if previous is not None else None, producer=PRODUCER)}))
    return extra


EXTRAS: dict[str, Callable[[Any, RunState, Any], Extra]] = {"DriftCheck": drift_check_extra, "Deploy": deploy_extra}
