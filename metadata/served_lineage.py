"""What the gateway's logged requests lead to and come from, in ML Metadata's terms.

- `request_audit`: from a logged prediction to the model version that answered it (then as
  `queries.model_audit`), the degree it was answered in, the review of each of its cases
  (reviewer, answer, when; "cannot tell" and unanswered too), and whether it later trained a
  model as a labelled production row (`trained_on_request`).
- `data_audit`: everything derived from a dataset, down to models and the requests they served.

Split from metadata/queries.py, which answers the questions about models and runs.
Only ml_metadata and pyarrow are imported, so the CLI answers without loading TensorFlow.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any, Sequence

from ml_metadata.proto import metadata_store_pb2

from metadata.lineage import DOWNSTREAM, LineageNotFoundError, walk
from metadata.queries import _artifact_json, _Types, model_audit, training_chain
from metadata.recorder import properties_of
from metadata.review import reviews_of_request
from metadata.store import Store

Event = metadata_store_pb2.Event


def _log_files(log_dir: Path, kind: str) -> list[Path]:
    """The Parquet parts of one of the gateway's logs (`requests` or `feedback`), oldest day first."""
    folder = Path(log_dir) / kind
    return sorted(folder.glob("date=*/part-*.parquet")) if folder.is_dir() else []


def _logged_rows(log_dir: Path, kind: str, request_id: str) -> list[dict[str, Any]]:
    """The rows of `request_id` in one of the gateway's logs, timestamps as ISO strings."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    files = _log_files(log_dir, kind)
    if not files:
        return []
    table = ds.dataset([str(f) for f in files], format="parquet").to_table(filter=pc.field("request_id") == request_id)
    rows = table.to_pylist()
    for row in rows:
        if isinstance(row.get("timestamp"), dt.datetime):
            row["timestamp"] = row["timestamp"].isoformat()
    return rows


def find_logged_request(log_dir: Path, request_id: str) -> list[dict[str, Any]]:
    """Every logged row (instance, shadow copy) of `request_id`, read straight from the Parquet logs."""
    rows = _logged_rows(log_dir, "requests", request_id)
    return sorted(rows, key=lambda r: (bool(r.get("is_shadow")), r.get("instance_index", 0)))


def _feedback_for(log_dir: Path, request_id: str) -> list[dict[str, Any]]:
    return _logged_rows(log_dir, "feedback", request_id)


def requests_per_model(log_dir: Path) -> dict[tuple[str, int | None], dict[str, int]]:
    """(model, version) -> {"served": rows answered to clients, "shadow": shadow copies, "requests": distinct ids}."""
    import pyarrow.dataset as ds

    files = _log_files(log_dir, "requests")
    if not files:
        return {}
    table = ds.dataset([str(f) for f in files], format="parquet").to_table(
        columns=["request_id", "model_name", "model_version", "is_shadow"])
    counts: dict[tuple[str, int | None], dict[str, int]] = {}
    grouped = table.group_by(["model_name", "model_version", "is_shadow"]).aggregate(
        [("request_id", "count"), ("request_id", "count_distinct")])
    for row in grouped.to_pylist():
        key = (row["model_name"], row["model_version"])
        entry = counts.setdefault(key, {"served": 0, "shadow": 0, "requests": 0})
        if row["is_shadow"]:
            entry["shadow"] += row["request_id_count"]
        else:
            entry["served"] += row["request_id_count"]
            entry["requests"] += row["request_id_count_distinct"]
    return counts


def request_audit(store: Store, log_dir: Path, request_id: str, ledger_path: Path | None = None) -> dict[str, Any]:
    """A logged prediction, the model version that answered it, that model's audit, and what people said
    about it (`reviews`: every case of it, answered or not, from the ReviewRuns and the `ledger_path`)."""
    rows = find_logged_request(log_dir, request_id)
    if not rows:
        raise LineageNotFoundError(f"no request {request_id!r} in the prediction logs under {Path(log_dir) / 'requests'}")
    served = [r for r in rows if not r.get("is_shadow")] or rows
    models = sorted({(r["model_name"], r["model_version"]) for r in served}, key=str)
    audits = {}
    for name, version in models:
        if version is None:
            continue
        try:
            audits[f"{name}:{version}"] = model_audit(store, name, int(version))
        except LineageNotFoundError as err:
            audits[f"{name}:{version}"] = {"error": str(err)}
    feedback = _feedback_for(log_dir, request_id)
    return {"request_id": request_id, "rows": rows, "feedback": feedback,
            "models": [f"{n}:{v}" for n, v in models], "model_audits": audits,
            "reviews": reviews_of_request(store, request_id, ledger_path),
            "degrees": sorted({str(r.get("automation")) for r in served}),  # the degree of automation it was answered in
            "trained": trained_on_request(store, log_dir, [r for r in rows if not r.get("is_shadow")], feedback)}


def trained_on_request(store: Store, log_dir: Path, served: Sequence[dict[str, Any]],
                       feedback: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pushed models whose training read this request as a labelled production row.

    A model qualifies when its ingest execution read the request's log partition (a `PredictionLog`
    input, mlops/production_source.py), the request time is in that ingest's production window, and
    an instance had a label under its policy in the feedback received before the ingest ran. (The
    clean step may still have rejected the row, and a cap thins by request-id hash: `rows_capped`.)
    """
    from transforms.features import feedback_label

    served = [row for row in served if row.get("status_code") == 200]
    if not served:
        return []
    timestamp = str(served[0]["timestamp"])
    partition = str((Path(log_dir) / "requests" / f"date={timestamp[:10]}").resolve())
    logs = [a for a in store.get_artifacts_by_uri(partition) if a.type_id == store.type_id("PredictionLog")]
    readers = {e.execution_id for e in store.get_events_by_artifact_ids([a.id for a in logs]) if e.type == Event.INPUT}
    trained = []
    for pushed in store.get_artifacts_by_type("PushedModel") if readers else []:
        ingest = training_chain(store, pushed).executions.get("ingest")
        if ingest is None or ingest.id not in readers:
            continue
        parameters = properties_of(ingest).get("parameters") or {}
        window = (parameters.get("production_window_start"), parameters.get("production_window_end"))
        if not window[0] or not dt.datetime.fromisoformat(window[0]) <= dt.datetime.fromisoformat(timestamp) \
                < dt.datetime.fromisoformat(window[1]):
            continue
        known = sorted((f for f in feedback if dt.datetime.fromisoformat(str(f["timestamp"])).timestamp() * 1000
                        <= ingest.create_time_since_epoch), key=lambda f: str(f["timestamp"]))
        latest = {f["instance_index"]: f for f in known}
        labels = {index: feedback_label(f.get("ground_truth"), f.get("human_decision"), parameters.get("label_policy"))
                  for index, f in latest.items()}
        labelled = {index: {"label": label[0], "source": label[1], "by": latest[index]["source"]}
                    for index, label in labels.items() if label is not None}
        if labelled:
            props = properties_of(pushed)
            trained.append({"model": f"{props.get('model_name')}:{props.get('version')}", "ingest_execution": ingest.id,
                            "label_policy": parameters.get("label_policy"), "instances": labelled})
    return trained


# --- datasets --------------------------------------------------------------------------------


def _matching_artifacts(store: Store, uri: str) -> list[metadata_store_pb2.Artifact]:
    candidates = {uri, os.path.abspath(uri), str(Path(uri).expanduser().resolve()), uri.rstrip("/")}
    found: dict[int, metadata_store_pb2.Artifact] = {}
    for candidate in candidates:
        for artifact in store.get_artifacts_by_uri(candidate):
            found[artifact.id] = artifact
    return sorted(found.values(), key=lambda a: a.id)


def data_audit(store: Store, uri: str, log_dir: Path | None = None) -> dict[str, Any]:
    """Everything derived from the dataset at `uri`: examples, statistics, models, pushes, and requests served."""
    starting = _matching_artifacts(store, uri)
    if not starting:
        known = sorted({a.uri for a in store.get_artifacts_by_type("RawData")})
        raise LineageNotFoundError(f"no artifact with uri {uri!r} in ML Metadata ({store.description}); "
                                   f"known datasets: {', '.join(known) or 'none'}")
    types = _Types(store)
    graph = walk(store, [a.id for a in starting], DOWNSTREAM)
    # A downstream walk also passes through evaluations that used an *older* model as baseline:
    # keep only models whose own training chain reaches this dataset.
    starting_ids = {a.id for a in starting}
    pushed = []
    for artifact in store.get_artifacts_by_id([a["id"] for a in graph.artifacts_of_type("PushedModel")]):
        chain_ids = {a.id for a in training_chain(store, artifact).artifacts.values()}
        if chain_ids & starting_ids:
            pushed.append(artifact)
    served = requests_per_model(log_dir) if log_dir is not None else {}
    models = []
    for artifact in sorted(pushed, key=lambda a: a.id):
        props = properties_of(artifact)
        key = (props.get("model_name"), props.get("version"))
        models.append({"name": key[0], "version": key[1], "artifact_id": artifact.id, "uri": artifact.uri,
                       "pushed_at": props.get("pushed_at"),
                       "requests": served.get(key, {"served": 0, "shadow": 0, "requests": 0})})
    derived: dict[str, list[dict[str, Any]]] = {}
    for node in sorted(graph.artifacts.values(), key=lambda a: a["id"]):
        if node["id"] in starting_ids:
            continue
        derived.setdefault(node["type"], []).append({"id": node["id"], "uri": node["uri"], "properties": node["properties"]})
    runs = sorted({(e.get("run") or {}).get("name", "") for e in graph.executions.values()} - {""})
    return {"uri": uri, "artifacts": [_artifact_json(a, types) for a in starting], "derived": derived,
            "models": models, "runs": runs, "log_dir": str(log_dir) if log_dir else None, "graph": graph}
