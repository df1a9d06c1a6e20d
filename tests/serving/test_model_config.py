"""TF Serving's models.config: round trip, label validation, atomic locked updates."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from serving import model_config as mc

CONFIG_TEXT = """
model_config_list {
  config {
    name: "taxi"
    base_path: "/models/taxi"
    model_platform: "tensorflow"
    model_version_policy { specific { versions: 42 versions: 43 } }
    version_labels { key: "stable" value: 42 }
    version_labels { key: "canary" value: 43 }
  }
}
"""


def test_reads_the_documented_config_and_round_trips(tmp_path: Path) -> None:
    source = tmp_path / "models.config"
    source.write_text(CONFIG_TEXT)
    config = mc.read_model_config(source)
    assert mc.served_versions(config, "taxi") == [42, 43]
    assert mc.labels(config, "taxi") == {"stable": 42, "canary": 43}
    assert mc.get_model(config, "taxi").base_path == "/models/taxi"

    copy = tmp_path / "copy" / "models.config"
    mc.write_model_config(config, copy)
    assert mc.read_model_config(copy) == config
    assert not [p for p in copy.parent.iterdir() if p.name != "models.config"], "temp file left behind"


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    broken = tmp_path / "models.config"
    broken.write_text('model_config_list {\n  config {\n    name: "taxi"\n    base_pth: "/m"\n  }\n}\n')
    with pytest.raises(mc.ModelConfigError, match=rf"{broken}:4:\d+: .*base_pth"):
        mc.read_model_config(broken)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(mc.ModelConfigError, match="model config file not found"):
        mc.read_model_config(tmp_path / "absent.config")


def test_label_on_unserved_version_is_rejected_naming_label_and_version(tmp_path: Path) -> None:
    config = mc.ModelServerConfig()
    mc.ensure_model(config, "taxi", tmp_path / "taxi")
    mc.set_served_versions(config, "taxi", [1, 2])
    with pytest.raises(mc.ModelConfigError, match=r"label 'canary' points at version 3, which is not served \(served versions: \[1, 2\]\)"):
        mc.set_label(config, "taxi", "canary", 3)
    assert mc.labels(config, "taxi") == {}

    # A hand-edited file with the same mistake is refused at read, as TF Serving would at start.
    bad = tmp_path / "models.config"
    bad.write_text(CONFIG_TEXT.replace("value: 43", "value: 44"))
    with pytest.raises(mc.ModelConfigError, match=r"label 'canary' points at version 44"):
        mc.read_model_config(bad)


def test_cannot_stop_serving_a_labelled_version() -> None:
    config = mc.ModelServerConfig()
    mc.ensure_model(config, "taxi", "/models/taxi")
    mc.set_served_versions(config, "taxi", [1, 2])
    mc.set_label(config, "taxi", "stable", 1)
    with pytest.raises(mc.ModelConfigError, match=r"cannot stop serving version 1: label 'stable' points at it"):
        mc.set_served_versions(config, "taxi", [2])
    mc.remove_label(config, "taxi", "stable")
    mc.remove_label(config, "taxi", "stable")  # idempotent
    mc.set_served_versions(config, "taxi", [2, 2])
    assert mc.served_versions(config, "taxi") == [2]


def test_write_refuses_an_inconsistent_config_and_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "models.config"
    path.write_text(CONFIG_TEXT)
    config = mc.read_model_config(path)
    mc.get_model(config, "taxi").version_labels["canary"] = 99  # bypasses set_label's check
    with pytest.raises(mc.ModelConfigError, match="label 'canary' points at version 99"):
        mc.write_model_config(config, path)
    assert path.read_text() == CONFIG_TEXT


def test_ensure_model_adds_once_and_refuses_another_base_path(tmp_path: Path) -> None:
    config = mc.ModelServerConfig()
    first = mc.ensure_model(config, "taxi", tmp_path / "taxi")
    assert first.model_platform == "tensorflow"
    assert mc.served_versions(config, "taxi") == []
    mc.ensure_model(config, "taxi", tmp_path / "taxi")
    assert len(config.model_config_list.config) == 1
    with pytest.raises(mc.ModelConfigError, match="refusing to repoint"):
        mc.ensure_model(config, "taxi", tmp_path / "elsewhere")
    with pytest.raises(mc.ModelConfigError, match="model 'other' is not in the model config"):
        mc.labels(config, "other")
    with pytest.raises(mc.ModelConfigError, match="label 'a/b' is not usable"):
        mc.set_label(config, "taxi", "a/b", 1)


def test_latest_policy_serves_highest_directory_on_disk(tmp_path: Path) -> None:
    for version in ("1", "3", "10", ".tmp-11-ab", "notes"):
        (tmp_path / "taxi" / version).mkdir(parents=True)
    config = mc.ModelServerConfig()
    model = mc.ensure_model(config, "taxi", tmp_path / "taxi")
    model.model_version_policy.Clear()  # TF Serving's default: latest, one version
    assert mc.served_versions(config, "taxi") == [10]
    model.model_version_policy.latest.num_versions = 2
    assert mc.served_versions(config, "taxi") == [3, 10]
    model.model_version_policy.all.SetInParent()
    assert mc.served_versions(config, "taxi") == [1, 3, 10]


def test_concurrent_updates_under_the_lock_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "models.config"
    config = mc.ModelServerConfig()
    mc.ensure_model(config, "taxi", tmp_path / "taxi")
    mc.write_model_config(config, path)

    def add_version(version: int) -> None:
        def add(config: mc.ModelServerConfig) -> None:
            mc.set_served_versions(config, "taxi", [*mc.served_versions(config, "taxi"), version])

        mc.update_model_config(path, add)

    threads = [threading.Thread(target=add_version, args=(v,)) for v in range(1, 21)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert mc.served_versions(mc.read_model_config(path), "taxi") == list(range(1, 21))


def test_update_that_fails_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "models.config"
    path.write_text(CONFIG_TEXT)

    def bad_edit(config: mc.ModelServerConfig) -> None:
        mc.set_served_versions(config, "taxi", [42, 43, 44])
        mc.set_label(config, "taxi", "canary", 45)

    with pytest.raises(mc.ModelConfigError, match="label 'canary' points at version 45"):
        mc.update_model_config(path, bad_edit)
    assert path.read_text() == CONFIG_TEXT
