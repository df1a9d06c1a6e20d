"""Connecting to ML Metadata, with the artifact/execution/context types this project records.

SQLite allows one writer at a time: every store call retries when the database is locked, so
two processes (two Airflow tasks, a pipeline and the gateway) can write at once.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from ml_metadata import errors
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from core.config import MetadataConfig

log = logging.getLogger(__name__)
T = TypeVar("T")

STRING = metadata_store_pb2.STRING
INT = metadata_store_pb2.INT
DOUBLE = metadata_store_pb2.DOUBLE

# Artifact types: name -> typed properties (anything else goes into custom properties).
ARTIFACT_TYPES: dict[str, dict[str, int]] = {
    "RawData": {"sha256": STRING, "window_start": STRING, "window_end": STRING, "rows": INT},
    "Examples": {"split_names": STRING, "rows": INT},
    "ExampleStatistics": {"split_names": STRING},
    "Schema": {"sha256": STRING},
    "ExampleAnomalies": {"num_anomalies": INT},
    "IngestRejectedRows": {"rows": INT},
    "CleanedExamples": {"split_names": STRING, "rows": INT},
    "RejectedRows": {"rows": INT},
    "TransformGraph": {},
    "TransformedExamples": {"split_names": STRING, "rows": INT},
    "Model": {"fingerprint": STRING},
    "ModelEvaluation": {"auc": DOUBLE},
    "ModelBlessing": {"blessed": INT},
    "PushedModel": {"model_name": STRING, "version": INT},
    # Written by serving and monitoring.
    "PredictionLog": {"window_start": STRING, "window_end": STRING, "rows": INT},
    # A feedback partition read as training labels (mlops/production_source.py).
    "FeedbackLog": {"fingerprint": STRING, "files": INT},
    "DriftCheckResult": {"passed": INT},
    "BatchPredictions": {"rows": INT, "model_version": INT},
    # A review run's cases as closed (metadata/review.py).
    "ReviewCases": {"cases": INT},
}

EXECUTION_PROPERTIES = {
    "parameters": STRING,  # JSON
    "code_version": STRING,
    "fingerprint": STRING,
    "error": STRING,
}
EXECUTION_TYPES = ("Ingest", "Validate", "Clean", "Transform", "Train", "Evaluate", "Push", "Deploy", "DriftCheck", "Serve",
                   "BatchPredict", "RetrainingDecision",
                   "AutomationChange", "ReviewRun")

CONTEXT_TYPES: dict[str, dict[str, int]] = {
    "Pipeline": {},
    "PipelineRun": {
        "pipeline_name": STRING,
        "trigger_kind": STRING,  # manual | schedule | drift_check | cli | test | review
        "trigger": STRING,  # JSON: who or what triggered the run, with its evidence
        "airflow_dag_id": STRING,
        "airflow_run_id": STRING,
    },
}

_TRANSIENT_MARKERS = ("database is locked", "database table is locked", "busy", "deadlock", "try restarting transaction")


def _is_transient(err: Exception) -> bool:
    text = str(err).lower()
    return isinstance(err, (errors.AbortedError, errors.UnavailableError, errors.InternalError, errors.UnknownError)) and any(
        marker in text for marker in _TRANSIENT_MARKERS
    )


def retry_transient(fn: Callable[..., T], attempts: int = 40) -> Callable[..., T]:
    """Retries a store call that failed because another writer holds the database."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        delay = 0.02
        for attempt in range(1, attempts + 1):
            try:
                return fn(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - narrowed by _is_transient
                if attempt == attempts or not _is_transient(err):
                    raise
                log.debug("metadata store busy (%s); retry %d", err, attempt)
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 1.6, 1.0)
        raise AssertionError("unreachable")

    return wrapper


class Store:
    """A MetadataStore whose every call retries on a transient lock, with the project's types."""

    def __init__(self, raw: metadata_store.MetadataStore, description: str) -> None:
        self._raw = raw
        self.description = description
        self.type_ids: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._raw, name)
        return retry_transient(attr) if callable(attr) else attr

    def type_id(self, name: str) -> int:
        return self.type_ids[name]


def connection_config(config: MetadataConfig) -> metadata_store_pb2.ConnectionConfig:
    connection = metadata_store_pb2.ConnectionConfig()
    if config.backend == "sqlite":
        Path(config.sqlite_path).parent.mkdir(parents=True, exist_ok=True)
        connection.sqlite.filename_uri = str(config.sqlite_path)
        connection.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    elif config.backend == "postgresql":
        pg = connection.postgresql
        pg.host = config.host
        pg.port = str(config.port)
        pg.user = config.user
        # An empty string counts as "set" in the proto and would stop libpq reading PGPASSWORD.
        if config.password:
            pg.password = config.password
        pg.dbname = config.database
    else:
        my = connection.mysql
        my.host = config.host
        my.port = config.port
        my.user = config.user
        if config.password:
            my.password = config.password
        my.database = config.database
    return connection


def describe(config: MetadataConfig) -> str:
    if config.backend == "sqlite":
        return f"sqlite:{config.sqlite_path}"
    return f"{config.backend}://{config.user}@{config.host}:{config.port}/{config.database}"


def connect(config: MetadataConfig) -> Store:
    """Opens (creating if needed) the store and registers the project's types."""
    connection = connection_config(config)
    raw = retry_transient(metadata_store.MetadataStore)(connection, enable_upgrade_migration=True)
    store = Store(raw, describe(config))
    _ensure_types(store)
    return store


def _ensure_types(store: Store) -> None:
    for name, properties in ARTIFACT_TYPES.items():
        artifact_type = metadata_store_pb2.ArtifactType(name=name)
        for key, value_type in properties.items():
            artifact_type.properties[key] = value_type
        store.type_ids[name] = store.put_artifact_type(artifact_type, can_add_fields=True)
    for name in EXECUTION_TYPES:
        execution_type = metadata_store_pb2.ExecutionType(name=name)
        for key, value_type in EXECUTION_PROPERTIES.items():
            execution_type.properties[key] = value_type
        store.type_ids[name] = store.put_execution_type(execution_type, can_add_fields=True)
    for name, properties in CONTEXT_TYPES.items():
        context_type = metadata_store_pb2.ContextType(name=name)
        for key, value_type in properties.items():
            context_type.properties[key] = value_type
        store.type_ids[name] = store.put_context_type(context_type, can_add_fields=True)
