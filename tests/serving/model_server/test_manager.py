"""The model manager without sockets: version policies, availability, labels, config checks and
warm-up. Real SavedModels throughout (the tiny contract model)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from tests.serving.contract.layout import install_version, model_entry

# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[float, Path]:
    from tests.serving.contract.layout import export_models

    return export_models(tmp_path_factory.mktemp("exports"), [1.0, -1.0])


def _config(*entries: Any) -> Any:
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    config.model_config_list.config.extend(entries)
    return config


@pytest.fixture
def manager() -> Iterator[Any]:
    from serving.model_server.manager import ModelManager

    created = ModelManager()
    yield created
    created.close()


def _states(manager: Any, name: str) -> dict[int, str]:
    return {s.version: s.state.name for s in manager.model_status(name)}


def _one_row() -> dict[str, np.ndarray]:
    from transforms.features import SERVING_FEATURES, Kind

    row: dict[str, np.ndarray] = {}
    for feature in SERVING_FEATURES:
        if feature.kind is Kind.FLOAT:
            row[feature.name] = np.asarray([10.0], dtype=np.float32)
        elif feature.kind is Kind.INT:
            row[feature.name] = np.asarray([3], dtype=np.int64)
        else:
            row[feature.name] = np.asarray([b"Credit Card"], dtype=object)
    return row


# --- version policies -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "served"),
    [
        ({}, [3]),
        ({"latest": 2}, [2, 3]),
        ({"specific": [1, 3]}, [1, 3]),
        ({"specific": [1, 9]}, [1]),
    ],
)
def test_version_policy_picks_the_served_versions(manager: Any, exported: dict, tmp_path: Path, policy: dict, served: list[int]) -> None:
    for version in (1, 2, 3):
        install_version(exported[1.0], tmp_path / "m", version)
    manager.reload_config(_config(model_entry("m", str(tmp_path / "m"), **policy)), initial=True)
    assert manager.available_versions("m") == served
    assert _states(manager, "m") == {v: "AVAILABLE" for v in served}
    assert manager.get_servable("m").version == max(served)


def test_all_policy_serves_every_version(manager: Any, exported: dict, tmp_path: Path) -> None:
    from tensorflow_serving.config import model_server_config_pb2

    for version in (4, 7):
        install_version(exported[1.0], tmp_path / "m", version)
    entry = model_server_config_pb2.ModelConfig(name="m", base_path=str(tmp_path / "m"), model_platform="tensorflow")
    entry.model_version_policy.all.SetInParent()
    manager.reload_config(_config(entry), initial=True)
    assert manager.available_versions("m") == [4, 7]
    assert [s.version for s in manager.model_status("m")] == [7, 4]  # highest first, like TF Serving


def test_new_version_replaces_old_only_once_loaded_and_status_keeps_history(manager: Any, exported: dict, tmp_path: Path) -> None:
    install_version(exported[1.0], tmp_path / "m", 1)
    manager.reload_config(_config(model_entry("m", str(tmp_path / "m"))), initial=True)
    old = manager.get_servable("m")
    install_version(exported[-1.0], tmp_path / "m", 2)
    manager.poll()
    assert manager.available_versions("m") == [2]
    assert _states(manager, "m") == {2: "AVAILABLE", 1: "END"}
    # A request that already held version 1 can still finish on it.
    _, outputs = old.predict("", _one_row())
    assert outputs["probability"].shape == (1,)


def test_failed_version_keeps_the_old_one_serving_and_is_retried_only_when_changed(
    manager: Any, exported: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    install_version(exported[1.0], tmp_path / "m", 1)
    manager.reload_config(_config(model_entry("m", str(tmp_path / "m"))), initial=True)
    broken = tmp_path / "m" / "2"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"\x0a\x03garbage")
    with caplog.at_level(logging.INFO, logger="serving.model_server.manager"):
        for _ in range(3):
            manager.poll()
    attempts = [r for r in caplog.records if r.getMessage().startswith("Loading servable version {name: m version: 2} from")]
    assert len(attempts) == 1, "an unchanged broken directory must not be reloaded on every poll"
    (status_2,) = manager.model_status("m", 2)
    assert status_2.state.name == "END" and status_2.error_code.name == "DATA_LOSS"
    assert str(broken) in status_2.error_message
    assert manager.available_versions("m") == [1]  # availability preserved

    shutil.rmtree(broken)
    install_version(exported[-1.0], tmp_path / "m", 2)
    manager.poll()
    assert manager.available_versions("m") == [2]
    assert manager.model_status("m", 2)[0].error_message == ""


def test_missing_saved_model_is_reported_with_tf_servings_message(manager: Any, tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    manager.reload_config(_config(model_entry("m", str(tmp_path / "m"))), initial=True)
    (status,) = manager.model_status("m")
    assert (status.state.name, status.error_code.name) == ("END", "NOT_FOUND")
    assert status.error_message == (
        f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {tmp_path / 'm' / '1'}"
    )


def test_removing_a_model_from_the_config_unloads_it(manager: Any, exported: dict, tmp_path: Path) -> None:
    from serving.status import ServingError

    install_version(exported[1.0], tmp_path / "a", 1)
    install_version(exported[1.0], tmp_path / "b", 1)
    manager.reload_config(_config(model_entry("a", str(tmp_path / "a")), model_entry("b", str(tmp_path / "b"))), initial=True)
    manager.reload_config(_config(model_entry("a", str(tmp_path / "a"))))
    with pytest.raises(ServingError, match=r"Servable not found for request: Latest\(b\)"):
        manager.get_servable("b")
    assert _states(manager, "b") == {1: "END"}
    assert manager.available_versions("a") == [1]


def test_adding_a_model_without_loadable_versions_is_reported_but_applied(manager: Any, exported: dict, tmp_path: Path) -> None:
    from serving.model_server.manager import ModelsUnavailableError

    install_version(exported[1.0], tmp_path / "a", 1)
    manager.reload_config(_config(model_entry("a", str(tmp_path / "a"))), initial=True)
    with pytest.raises(ModelsUnavailableError, match=r"1 model\(s\) did not become available: \{\{name: empty error: "):
        manager.reload_config(_config(model_entry("a", str(tmp_path / "a")), model_entry("empty", str(tmp_path / "none"))))
    assert [m.name for m in manager.config.model_config_list.config] == ["a", "empty"]
    install_version(exported[1.0], tmp_path / "none", 1)  # the versions arrive later: picked up by the poll
    manager.poll()
    assert manager.available_versions("empty") == [1]


# --- labels -----------------------------------------------------------------------------------


def test_labels_resolve_and_strict_mode_refuses_labels_on_unavailable_versions(manager: Any, exported: dict, tmp_path: Path) -> None:
    from serving.status import Code, ServingError

    install_version(exported[1.0], tmp_path / "m", 1)
    install_version(exported[-1.0], tmp_path / "m", 2)
    base = str(tmp_path / "m")
    # At start-up the labels are checked after loading: versions that loaded may be labelled.
    manager.reload_config(_config(model_entry("m", base, specific=[1, 2], labels={"stable": 1, "canary": 2})), initial=True)
    assert manager.get_servable("m", label="stable").version == 1
    assert manager.get_servable("m", label="canary").version == 2

    with pytest.raises(ServingError) as caught:
        manager.reload_config(_config(model_entry("m", base, specific=[1, 2, 3], labels={"stable": 1, "canary": 3})))
    assert caught.value.code == Code.FAILED_PRECONDITION
    assert caught.value.message == "Request to assign label to version 3 of model m, which is not currently available for inference"
    # Nothing changed: the old config and labels still hold.
    assert manager.labels("m") == {"stable": 1, "canary": 2}
    assert [m.name for m in manager.config.model_config_list.config] == ["m"]
    assert list(manager.config.model_config_list.config[0].model_version_policy.specific.versions) == [1, 2]


def test_startup_refuses_a_label_on_a_version_that_did_not_load(manager: Any, exported: dict, tmp_path: Path) -> None:
    from serving.status import ServingError

    install_version(exported[1.0], tmp_path / "m", 1)
    with pytest.raises(ServingError, match="label to version 5 of model m"):
        manager.reload_config(_config(model_entry("m", str(tmp_path / "m"), specific=[1, 5], labels={"next": 5})), initial=True)


def test_allow_flag_admits_new_labels_but_not_moving_one_onto_an_unavailable_version(exported: dict, tmp_path: Path) -> None:
    from serving.model_server.manager import ModelManager
    from serving.status import Code, ServingError

    manager = ModelManager(allow_version_labels_for_unavailable_models=True)
    try:
        install_version(exported[1.0], tmp_path / "m", 1)
        base = str(tmp_path / "m")
        manager.reload_config(_config(model_entry("m", base, specific=[1], labels={"stable": 1})), initial=True)
        manager.reload_config(_config(model_entry("m", base, specific=[1], labels={"stable": 1, "next": 4})))
        assert manager.labels("m") == {"stable": 1, "next": 4}
        with pytest.raises(ServingError) as caught:  # the label exists on a version that is not loaded
            manager.get_servable("m", label="next")
        assert (caught.value.code, caught.value.message) == (Code.NOT_FOUND, "Servable not found for request: Specific(m, 4)")
        with pytest.raises(ServingError) as caught:
            manager.reload_config(_config(model_entry("m", base, specific=[1], labels={"stable": 6, "next": 4})))
        assert caught.value.code == Code.FAILED_PRECONDITION
    finally:
        manager.close()


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([("m", "/abs/a"), ("m", "/abs/b")], "Illegal to list model m multiple times in config list"),
        ([("m", "relative")], "Expected model m to have an absolute path or URI; got base_path()=relative"),
    ],
)
def test_invalid_configs_are_refused_with_tf_servings_messages(manager: Any, entries: list, message: str) -> None:
    from serving.status import ServingError

    with pytest.raises(ServingError) as caught:
        manager.reload_config(_config(*(model_entry(n, p) for n, p in entries)))
    assert caught.value.message == message


def test_unsupported_platform_is_refused(manager: Any) -> None:
    from serving.status import ServingError

    entry = model_entry("m", "/abs/m")
    entry.model_platform = "pytorch"
    with pytest.raises(ServingError, match="Model m requests unsupported platform pytorch"):
        manager.reload_config(_config(entry))


# --- warm-up ----------------------------------------------------------------------------------


def _write_warmup(version_dir: Path, inputs: dict[str, np.ndarray]) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    from serving.model_server.tensors import array_to_tensor_proto

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    for alias, array in inputs.items():
        request.inputs[alias].CopyFrom(array_to_tensor_proto(array))
    record = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    (version_dir / "assets.extra").mkdir(exist_ok=True)
    with tf.io.TFRecordWriter(str(version_dir / "assets.extra" / "tf_serving_warmup_requests")) as writer:
        writer.write(record.SerializeToString())


def test_warmup_requests_are_replayed_and_a_failing_one_fails_the_load(manager: Any, exported: dict, tmp_path: Path) -> None:
    good = install_version(exported[1.0], tmp_path / "m", 1)
    _write_warmup(good, _one_row())
    bad = install_version(exported[1.0], tmp_path / "m", 2)
    wrong = _one_row()
    wrong["fare"] = np.asarray([1], dtype=np.int64)  # wrong dtype: the replay must fail
    _write_warmup(bad, wrong)
    manager.reload_config(_config(model_entry("m", str(tmp_path / "m"), specific=[1, 2])), initial=True)
    states = {s.version: s for s in manager.model_status("m")}
    assert states[1].state.name == "AVAILABLE"
    assert states[2].state.name == "END"
    assert "Failed to warm up model" in states[2].error_message and "float but int64" in states[2].error_message
