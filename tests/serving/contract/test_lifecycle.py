"""Versions and labels changing under a running server: what a rollout relies on.

Each test adds its own model to the repository (real version directories, a locked atomic
`models.config` write), so the shared `taxi` model is never disturbed.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

from tests.fixtures.polling import poll_until
from tests.serving.contract.clients import CallError, GrpcClient, RestClient
from tests.serving.contract.conftest import CATCHING_UP, WAIT_SECONDS, ModelRepository

pytestmark = pytest.mark.timeout(600)


def _probabilities(client: RestClient | GrpcClient, name: str, inputs: dict, **spec: Any) -> np.ndarray:
    return np.asarray(client.predict(name, inputs, **spec)["probability"], dtype=np.float32)


def test_new_version_appears_only_after_it_is_fully_written(repository: ModelRepository, rest: RestClient, taxi_inputs: dict) -> None:
    name = repository.unique_name("rollout")
    repository.add_model(name, {1: 1.0}, latest=1)
    before = _probabilities(rest, name, taxi_inputs)

    # Half-written versions live in a hidden directory; the server must not notice them.
    seen_during_copy: list[list[int]] = []
    copying = threading.Thread(target=repository.install, args=(name, 2, 2.0), kwargs={"seconds_per_file": 0.4})
    copying.start()
    while copying.is_alive():
        seen_during_copy.append([s.version for s in rest.status(name)])
        np.testing.assert_array_equal(_probabilities(rest, name, taxi_inputs), before)
        time.sleep(0.2)  # samples the server while the copy goes on: time passes, nothing is awaited
    copying.join()
    assert len(seen_during_copy) >= 3, "the copy was too fast to observe"
    assert all(versions == [1] for versions in seen_during_copy), seen_during_copy

    repository.wait_available(name, {2})
    after = _probabilities(rest, name, taxi_inputs)
    assert not np.allclose(after, before)
    # latest {num_versions: 1}: version 1 is dropped once 2 is available.
    poll_until(lambda: repository.states(name)[1].state == "END", "version 1 to be unloaded",
               timeout=WAIT_SECONDS, retry_on=CATCHING_UP)
    with pytest.raises(CallError) as caught:
        rest.predict(name, taxi_inputs, version=1)
    assert (caught.value.http_status, caught.value.message) == (404, f"Servable not found for request: Specific({name}, 1)")


def test_directories_that_are_not_integers_are_never_loaded(repository: ModelRepository, rest: RestClient) -> None:
    name = repository.unique_name("names")
    repository.add_model(name, {3: 1.0}, latest=1)
    root = repository.model_root(name)
    for odd in ("latest", "4a", ".tmp-5", "v6"):
        (root / odd).mkdir()
        (root / odd / "saved_model.pb").write_bytes(b"not a model")
    time.sleep(2.5)  # proves a negative: several poll intervals pass and none of them is loaded
    assert [s.version for s in rest.status(name)] == [3]
    assert rest.status(name)[0].state == "AVAILABLE"


def test_version_is_unloaded_when_the_policy_drops_it(repository: ModelRepository, client: RestClient | GrpcClient, taxi_inputs: dict) -> None:
    name = repository.unique_name("policy")
    repository.add_model(name, {1: 1.0, 2: 2.0}, specific=[1, 2])
    assert {s.version for s in client.status(name)} == {1, 2}

    repository.set_entry(name, specific=[2])
    poll_until(lambda: repository.states(name)[1].state == "END", "version 1 to be unloaded",
               timeout=WAIT_SECONDS, retry_on=CATCHING_UP)
    assert repository.states(name)[2].state == "AVAILABLE"
    with pytest.raises(CallError) as caught:
        client.predict(name, taxi_inputs, version=1)
    assert caught.value.code == "NOT_FOUND"
    assert client.predict(name, taxi_inputs, version=2)["probability"].shape == (len(taxi_inputs["fare"]),)


def test_labels_move_when_the_config_file_changes(repository: ModelRepository, client: RestClient | GrpcClient, taxi_inputs: dict) -> None:
    name = repository.unique_name("labels")
    repository.add_model(name, {1: 1.0, 2: 2.0}, specific=[1, 2], labels={"stable": 1, "canary": 2})
    v1 = _probabilities(client, name, taxi_inputs, version=1)
    v2 = _probabilities(client, name, taxi_inputs, version=2)
    np.testing.assert_array_equal(_probabilities(client, name, taxi_inputs, label="stable"), v1)

    repository.set_entry(name, specific=[1, 2], labels={"stable": 2, "canary": 1})
    poll_until(
        lambda: np.array_equal(_probabilities(client, name, taxi_inputs, label="stable"), v2),
        "label stable to move to version 2",
        timeout=WAIT_SECONDS,
        retry_on=CATCHING_UP,
    )
    np.testing.assert_array_equal(_probabilities(client, name, taxi_inputs, label="canary"), v1)
    # No restart, no reload of the versions themselves.
    assert all(s.state == "AVAILABLE" for s in client.status(name))


def test_a_broken_version_does_not_take_the_server_down(repository: ModelRepository, rest: RestClient, taxi_inputs: dict, serving_target: Any) -> None:
    name = repository.unique_name("broken")
    repository.add_model(name, {1: 1.0}, latest=1)
    good = _probabilities(rest, name, taxi_inputs)

    root = repository.model_root(name)
    staging = root / ".tmp-broken"
    (staging / "variables").mkdir(parents=True)
    (staging / "saved_model.pb").write_bytes(b"\x08\x01 this is not a SavedModel")
    staging.rename(root / "2")

    # The newer version is aspired but cannot load: the old one keeps serving (availability first).
    poll_until(lambda: 2 in repository.states(name) and repository.states(name)[2].state != "START",
               "version 2 to be tried", timeout=WAIT_SECONDS, retry_on=CATCHING_UP)
    if serving_target.embedded:
        poll_until(lambda: repository.states(name)[2].state == "END", "version 2 to fail to load",
                   timeout=WAIT_SECONDS, retry_on=CATCHING_UP)
    else:
        time.sleep(1.5)  # TF Serving retries for minutes: let poll intervals pass to show 2 never takes over
    states = repository.states(name)
    assert states[1].state == "AVAILABLE"
    assert states[2].state != "AVAILABLE"
    np.testing.assert_array_equal(_probabilities(rest, name, taxi_inputs), good)
    if serving_target.embedded:  # TF Serving retries for minutes before giving up
        assert states[2].state == "END"
        assert states[2].error_code != "OK" and "SavedModel" in states[2].error_message

    # Replacing the broken directory with a good model is picked up without a restart.
    (root / "2").rename(root / ".tmp-trash")
    repository.install(name, 2, 2.0)
    if serving_target.embedded:
        repository.wait_available(name, {2})
        assert not np.allclose(_probabilities(rest, name, taxi_inputs), good)


def test_reload_config_rpc_rejects_a_label_on_an_unavailable_version(repository: ModelRepository, grpc_client: GrpcClient) -> None:
    from tests.serving.contract.layout import model_entry

    name = repository.unique_name("rpc")
    repository.add_model(name, {1: 1.0}, specific=[1], labels={"stable": 1})
    config = _current_config(repository)
    entry = next(m for m in config.model_config_list.config if m.name == name)
    entry.version_labels["stable"] = 9  # an existing label moved onto a version nobody loaded
    with pytest.raises(CallError) as caught:
        grpc_client.reload_config(config)
    assert caught.value.code == "FAILED_PRECONDITION"
    assert caught.value.message == (
        f"Request to assign label to version 9 of model {name}, which is not currently available for inference"
    )
    bad = _current_config(repository)
    bad.model_config_list.config.append(model_entry(name + "_rel", "relative/path"))
    with pytest.raises(CallError) as caught:
        grpc_client.reload_config(bad)
    assert caught.value.code == "INVALID_ARGUMENT"
    assert "to have an absolute path or URI; got base_path()=relative/path" in caught.value.message


@pytest.mark.usefixtures("embedded_only")
def test_reload_config_rpc_moves_labels_in_memory(repository: ModelRepository, grpc_client: GrpcClient, taxi_inputs: dict) -> None:
    """HandleReloadConfigRequest applies a config without touching the file (kept until it changes)."""
    name = repository.unique_name("rpcmove")
    repository.add_model(name, {1: 1.0, 2: 2.0}, specific=[1, 2], labels={"stable": 1})
    v2 = _probabilities(grpc_client, name, taxi_inputs, version=2)
    config = _current_config(repository)
    next(m for m in config.model_config_list.config if m.name == name).version_labels["stable"] = 2
    response = grpc_client.reload_config(config)
    assert response.status.error_code == 0
    np.testing.assert_array_equal(_probabilities(grpc_client, name, taxi_inputs, label="stable"), v2)


def _current_config(repository: ModelRepository) -> Any:
    from serving.model_config import read_model_config

    assert repository.target.config_file is not None
    return read_model_config(repository.target.config_file)
