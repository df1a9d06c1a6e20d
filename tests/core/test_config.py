"""The typed configuration: defaults, the checked-in file, and clear errors for bad values."""

from pathlib import Path

import pytest

from core.config import ConfigError, config_from_dict, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_the_checked_in_config_loads_with_paths_resolved_against_its_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    config = load_config(ROOT / "mlops.toml")
    assert config.data.csv_path == ROOT / "data" / "taxi" / "data.csv"
    assert config.metadata.sqlite_path == ROOT / "var" / "mlmd" / "metadata.sqlite"
    assert config.serving.model_base_dir == ROOT / "var" / "serving" / "models"
    assert config.training.batch_size == 40 and config.training.train_steps == 1000
    assert "--runner=DirectRunner" in config.beam_args


@pytest.mark.parametrize(
    "values, message",
    [
        ({"training": {"learning_rate": 5.0}}, "training.learning_rate must be in"),
        ({"training": {"batch_size": 0}}, "training.batch_size must be >= 1"),
        ({"training": {"hidden_units": []}}, "training.hidden_units"),
        ({"training": {"learning_rat": 0.1}}, r"\[training\] has unknown keys \['learning_rat'\]"),
        ({"evaluation": {"auc_floor": "high"}}, r"\[evaluation\] auc_floor must be float"),
        ({"metadata": {"backend": "oracle"}}, "metadata.backend must be sqlite, postgresql or mysql"),
        ({"metadata": {"backend": "mysql", "port": 70000}}, r"metadata.port must be in \[0, 65535\]"),
        ({"data": {"eval_buckets": 3}}, "data.eval_buckets"),
        ({"data": {"production_since": "yesterday"}}, "data.production_since must be a date YYYY-MM-DD or empty"),
        ({"colour": "blue"}, r"config has unknown keys \['colour'\]"),
    ],
)
def test_bad_values_are_rejected_naming_the_key(values, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(values, tmp_path)


@pytest.mark.parametrize("backend, port", [("postgresql", 5432), ("mysql", 3306)])
def test_a_server_backend_without_a_port_uses_its_standard_port(backend, port, tmp_path):
    assert config_from_dict({"metadata": {"backend": backend}}, tmp_path).metadata.port == port
    assert config_from_dict({"metadata": {"backend": backend, "port": 6000}}, tmp_path).metadata.port == 6000


def test_a_missing_or_broken_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[training\nlearning_rate = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)


def test_environment_variable_selects_the_file(tmp_path, monkeypatch):
    custom = tmp_path / "custom.toml"
    custom.write_text('pipeline_root = "elsewhere"\n[training]\ntrain_steps = 7\n')
    monkeypatch.setenv("MLOPS_CONFIG", str(custom))
    config = load_config()
    assert config.training.train_steps == 7
    assert config.pipeline_root == tmp_path / "elsewhere"


def test_pipeline_args_add_a_temp_location_below_the_pipeline_root_unless_one_is_given(tmp_path):
    config = config_from_dict({"pipeline_root": "pipe", "beam_args": ["--runner=DirectRunner"]}, tmp_path)
    args = config.pipeline_args()
    temp = tmp_path / "pipe" / "tmp" / "beam"
    assert args == ["--runner=DirectRunner", f"--temp_location={temp}"] and temp.is_dir()
    assert config.beam_args == ("--runner=DirectRunner",)  # the config itself is unchanged
    given = config.replace(beam_args=("--temp_location=gs://bucket/tmp",))
    assert given.pipeline_args() == ["--temp_location=gs://bucket/tmp"]
