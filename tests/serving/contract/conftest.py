"""The contract suite's server: the embedded one by default, a real TF Serving when configured.

By default one embedded server is started for the whole session, in this process, on free
loopback ports, over the layout in `layout.py`. Set `TFSERVING_REST_URL` and/or
`TFSERVING_GRPC_TARGET` to run the same tests against a real `tensorflow_model_server` (see
layout.py for how to start it); tests that write versions or the config file then need
`TFSERVING_MODEL_BASE_PATH` (the layout root, writable from here) and, when the server sees that
directory under another path, `TFSERVING_SERVER_BASE_PATH`.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pytest
import requests

from tests.fixtures.polling import poll_until
from tests.serving.contract.clients import CallError, GrpcClient, RestClient
from tests.serving.contract.layout import (
    CONFIG_NAME,
    CONTRACT_MODEL,
    METRICS_PATH,
    WEIGHTS,
    export_models,
    install_version,
    model_entry,
    write_contract_layout,
)
from transforms.features import SERVING_FEATURES, Kind, missing_value, parse_value

# Weights of the models tests add themselves; any value gives a real, distinct model.
EXTRA_WEIGHTS = (0.5, 2.0)
POLL_SECONDS = 0.5  # the embedded server's poll intervals (TF Serving's flags take whole seconds)
WAIT_SECONDS = 90.0
# What a condition may raise while the server catches up (a model not listed yet, a version not
# seen yet, a connection refused): poll_until retries these; anything else fails at once.
CATCHING_UP = (CallError, KeyError, requests.RequestException)


@dataclasses.dataclass
class ServingTarget:
    rest_url: str | None
    grpc_target: str | None
    embedded: bool
    base_dir: Path | None  # the layout root as this process sees it (None: read-only target)
    server_base_dir: str | None  # the same directory as the server sees it
    metrics_path: str | None
    handle: Any = None  # the embedded server's handle

    @property
    def config_file(self) -> Path | None:
        return None if self.base_dir is None else self.base_dir / CONFIG_NAME


@pytest.fixture(scope="session")
def exported_models(tmp_path_factory: pytest.TempPathFactory) -> dict[float, Path]:
    """Real tiny SavedModels, one per weight, exported once for the session."""
    return export_models(tmp_path_factory.mktemp("tiny_exports"), sorted(set(WEIGHTS.values()) | set(EXTRA_WEIGHTS)))


@pytest.fixture(scope="session")
def serving_target(tmp_path_factory: pytest.TempPathFactory, exported_models: dict[float, Path]) -> Iterator[ServingTarget]:
    rest_url, grpc_target = os.environ.get("TFSERVING_REST_URL"), os.environ.get("TFSERVING_GRPC_TARGET")
    if rest_url or grpc_target:
        base = os.environ.get("TFSERVING_MODEL_BASE_PATH")
        yield ServingTarget(
            rest_url=rest_url,
            grpc_target=grpc_target,
            embedded=False,
            base_dir=Path(base) if base else None,
            server_base_dir=os.environ.get("TFSERVING_SERVER_BASE_PATH", base),
            metrics_path=os.environ.get("TFSERVING_METRICS_PATH", METRICS_PATH),
        )
        return

    from serving.model_server import start_model_server

    layout = write_contract_layout(tmp_path_factory.mktemp("model_base"), exported_models)
    handle = start_model_server(
        port=0,
        rest_api_port=0,
        host="127.0.0.1",
        model_config_file=layout.config_file,
        model_config_file_poll_wait_seconds=POLL_SECONDS,
        file_system_poll_wait_seconds=POLL_SECONDS,
        monitoring_config_file=layout.monitoring_file,
        # As docker-compose and layout.py start TF Serving: a new model may arrive with its labels.
        allow_version_labels_for_unavailable_models=True,
        rest_api_num_threads=4,
        grpc_max_threads=4,
    )
    try:
        yield ServingTarget(
            rest_url=handle.rest_url,
            grpc_target=handle.grpc_target,
            embedded=True,
            base_dir=layout.root,
            server_base_dir=layout.server_root,
            metrics_path=METRICS_PATH,
            handle=handle,
        )
    finally:
        handle.stop()


@pytest.fixture(scope="session")
def rest(serving_target: ServingTarget) -> RestClient:
    if not serving_target.rest_url:
        pytest.skip("no REST endpoint configured (TFSERVING_REST_URL)")
    return RestClient(serving_target.rest_url)


@pytest.fixture(scope="session")
def grpc_client(serving_target: ServingTarget) -> Iterator[GrpcClient]:
    if not serving_target.grpc_target:
        pytest.skip("no gRPC endpoint configured (TFSERVING_GRPC_TARGET)")
    client = GrpcClient(serving_target.grpc_target)
    yield client
    client.close()


@pytest.fixture(params=["rest", "grpc"])
def client(request: pytest.FixtureRequest) -> RestClient | GrpcClient:
    """Each test using it runs once over REST and once over gRPC."""
    return request.getfixturevalue("rest" if request.param == "rest" else "grpc_client")


@pytest.fixture
def embedded_only(serving_target: ServingTarget) -> None:
    if not serving_target.embedded:
        pytest.skip("checks a documented difference of the embedded server")


def serving_inputs(rows: Sequence[Mapping[str, str]]) -> dict[str, np.ndarray]:
    """Taxi CSV rows -> one array per serving input, missing values as the contract's sentinels."""
    columns: dict[str, list[Any]] = {f.name: [] for f in SERVING_FEATURES}
    for row in rows:
        for feature in SERVING_FEATURES:
            value = parse_value(feature, row.get(feature.name, ""))
            columns[feature.name].append(missing_value(feature.kind) if value is None else value)
    arrays: dict[str, np.ndarray] = {}
    for feature in SERVING_FEATURES:
        values = columns[feature.name]
        if feature.kind is Kind.FLOAT:
            arrays[feature.name] = np.asarray(values, dtype=np.float32)
        elif feature.kind is Kind.INT:
            arrays[feature.name] = np.asarray(values, dtype=np.int64)
        else:
            arrays[feature.name] = np.asarray([v.encode("utf-8") for v in values], dtype=object)
    return arrays


@pytest.fixture(scope="session")
def taxi_inputs(taxi_rows: list[dict[str, str]]) -> dict[str, np.ndarray]:
    """32 real trips (with their missing values) as serving inputs."""
    return serving_inputs(taxi_rows[:32])


@pytest.fixture(scope="session")
def local_signatures(exported_models: dict[float, Path]) -> Callable[[int, str], Any]:
    """The contract model's versions loaded in this process: the reference for predictions."""
    import tensorflow as tf

    loaded = {version: tf.saved_model.load(str(exported_models[weight])) for version, weight in WEIGHTS.items()}

    def signature(version: int, name: str = "serving_default") -> Any:
        return loaded[version].signatures[name]

    return signature


def local_predict(signature: Any, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    import tensorflow as tf

    return {k: v.numpy() for k, v in signature(**{k: tf.constant(v) for k, v in inputs.items()}).items()}


class ModelRepository:
    """Adds and edits models of the target's repository the way a deployment does (atomic version
    directories, locked atomic config writes), and removes them again after the test."""

    _counter = itertools.count(1)

    def __init__(self, target: ServingTarget, exported: Mapping[float, Path], rest: RestClient | None, grpc_client: GrpcClient | None) -> None:
        assert target.base_dir is not None and target.server_base_dir is not None
        self.target = target
        self.exported = exported
        self.status_client = rest or grpc_client
        self._added: list[str] = []

    def unique_name(self, stem: str) -> str:
        return f"{stem}_{os.getpid()}_{next(self._counter)}"

    def model_root(self, name: str) -> Path:
        assert self.target.base_dir is not None
        return self.target.base_dir / name

    def install(self, name: str, version: int, weight: float, *, seconds_per_file: float = 0.0) -> Path:
        return install_version(self.exported[weight], self.model_root(name), version, seconds_per_file=seconds_per_file)

    def set_entry(self, name: str, **policy: Any) -> None:
        """Adds or replaces model `name` in models.config (policy: specific=/latest=/labels=)."""
        from serving.model_config import update_model_config

        entry = model_entry(name, f"{self.target.server_base_dir}/{name}", **policy)

        def edit(config: Any) -> None:
            models = config.model_config_list.config
            for index, existing in enumerate(models):
                if existing.name == name:
                    models[index].CopyFrom(entry)
                    return
            models.append(entry)

        assert self.target.config_file is not None
        update_model_config(self.target.config_file, edit)
        if name not in self._added:
            self._added.append(name)

    def remove_entry(self, name: str) -> None:
        from serving.model_config import update_model_config

        def edit(config: Any) -> None:
            kept = [m for m in config.model_config_list.config if m.name != name]
            del config.model_config_list.config[:]
            config.model_config_list.config.extend(kept)

        assert self.target.config_file is not None
        update_model_config(self.target.config_file, edit)

    def add_model(self, name: str, versions: Mapping[int, float], **policy: Any) -> None:
        """Installs the versions, lists the model in the config, waits until they are AVAILABLE."""
        for version, weight in versions.items():
            self.install(name, version, weight)
        self.set_entry(name, **policy)
        expected = set(policy["specific"]) if policy.get("specific") else set(sorted(versions)[-(policy.get("latest") or 1):])
        self.wait_available(name, expected)

    def states(self, name: str) -> dict[int, Any]:
        assert self.status_client is not None
        return {s.version: s for s in self.status_client.status(name)}

    def wait_available(self, name: str, versions: set[int]) -> None:
        def available() -> bool:
            rejected = self.target.handle.last_config_error if self.target.handle is not None else None
            if rejected:  # the embedded server says why; no point waiting for the timeout
                raise AssertionError(f"the server rejected the config: {rejected}")
            states = self.states(name)
            return all(v in states and states[v].state == "AVAILABLE" for v in versions)

        poll_until(available, f"versions {sorted(versions)} of {name} to become AVAILABLE",
                   timeout=WAIT_SECONDS, retry_on=CATCHING_UP)

    def cleanup(self) -> None:
        for name in self._added:
            try:
                self.remove_entry(name)
            finally:
                shutil.rmtree(self.model_root(name), ignore_errors=True)


@pytest.fixture
def repository(
    request: pytest.FixtureRequest, serving_target: ServingTarget, exported_models: dict[float, Path]
) -> Iterator[ModelRepository]:
    """A writable repository on the target (skips when the target's base path is not configured)."""
    if serving_target.base_dir is None:
        pytest.skip("writes into the model base path: set TFSERVING_MODEL_BASE_PATH")
    rest = RestClient(serving_target.rest_url) if serving_target.rest_url else None
    grpc_client = GrpcClient(serving_target.grpc_target) if serving_target.grpc_target else None
    repo = ModelRepository(serving_target, exported_models, rest, grpc_client)
    try:
        yield repo
    finally:
        repo.cleanup()
        if grpc_client is not None:
            grpc_client.close()


__all__ = ["CATCHING_UP", "CONTRACT_MODEL", "WAIT_SECONDS", "ModelRepository", "ServingTarget", "local_predict", "serving_inputs"]
