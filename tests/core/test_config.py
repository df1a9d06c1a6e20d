"""The typed configuration: defaults, the checked-in file, and clear errors for bad values."""

from pathlib import Path

import pytest

from core.config import (
    IN_MEMORY_ARGS, BeamConfig, BeamOptionsForRows, ConfigError, config_from_dict, load_config, shipped_file,
)

ROOT = Path(__file__).resolve().parents[2]


def test_the_checked_in_config_loads_with_paths_resolved_against_its_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    config = load_config(ROOT / "mlops.toml")
    assert config.data.csv_path == ROOT / "data" / "taxi" / "data.csv"
    assert config.metadata.sqlite_path == ROOT / "var" / "mlmd" / "metadata.sqlite"
    assert config.serving.model_base_dir == ROOT / "var" / "serving" / "models"
    assert config.training.batch_size == 40 and config.training.train_steps == 1000
    # No beam_args: each Beam step's options come from the table, by the size of its input.
    assert config.beam_args is None
    assert config.beam.by_input_rows[-1].below is None
    assert all("--runner=DirectRunner" in entry.args for entry in config.beam.by_input_rows)
    assert config.steps_in_own_process_from_rows == 5_000_000
    assert config_from_dict({}, tmp_path).steps_in_own_process_from_rows == 5_000_000
    assert config.transform_beside_validation_from_rows == config_from_dict({}, tmp_path).transform_beside_validation_from_rows == 1_000_000


def test_a_config_of_ones_own_elsewhere_keeps_the_shipped_data_unless_it_names_other_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    own = tmp_path / "elsewhere" / "my.toml"
    own.parent.mkdir()
    own.write_text('pipeline_root = "root"\n[training]\ntrain_steps = 10\n')
    config = load_config(own)
    # Unset, the shipped files are the project's, not a data/ folder beside the config ...
    assert config.data.csv_path == ROOT / "data" / "taxi" / "data.csv" == shipped_file("csv_path")
    assert config.data.schema_path == ROOT / "data" / "taxi" / "schema.pbtxt" == shipped_file("schema_path")
    # ... while the state it writes stays beside the config.
    assert config.pipeline_root == own.parent / "root"
    assert config.metadata.sqlite_path == own.parent / "var" / "mlmd" / "metadata.sqlite"
    own.write_text('[data]\ncsv_path = "trips.csv"\nschema_path = "/abs/schema.pbtxt"\n')
    config = load_config(own)
    assert config.data.csv_path == own.parent / "trips.csv"
    assert config.data.schema_path == Path("/abs/schema.pbtxt")
    with pytest.raises(KeyError, match="not a shipped file"):
        shipped_file("production_logs_dir")


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
        ({"steps_in_own_process_from_rows": -1}, r"steps_in_own_process_from_rows must be a whole number of rows >= 0 \(0: always\), got -1"),
        ({"steps_in_own_process_from_rows": "5M"}, r"steps_in_own_process_from_rows must be .*got '5M'"),
        ({"steps_in_own_process_from_rows": True}, r"steps_in_own_process_from_rows must be .*got True"),
        ({"transform_beside_validation_from_rows": -5}, r"transform_beside_validation_from_rows must be a whole number of rows >= 0"),
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
    args = config.pipeline_args(config.beam_options(10))
    temp = tmp_path / "pipe" / "tmp" / "beam"
    assert args == ["--runner=DirectRunner", f"--temp_location={temp}"] and temp.is_dir()
    assert config.beam_args == ("--runner=DirectRunner",)  # the config itself is unchanged
    given = config.replace(beam_args=("--temp_location=gs://bucket/tmp",))
    assert given.pipeline_args() == ["--temp_location=gs://bucket/tmp"]


MULTI = ["--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing"]
THREADS = ["--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_threading"]
TABLE = {"by_input_rows": [{"below": 1000, "args": list(IN_MEMORY_ARGS)}, {"below": 500_000, "args": THREADS},
                           {"args": MULTI}]}


@pytest.mark.parametrize("rows, args, why", [
    (0, IN_MEMORY_ARGS, "0 rows < 1,000: in_memory x1"),
    (999, IN_MEMORY_ARGS, "999 rows < 1,000: in_memory x1"),
    (1000, THREADS, "1,000 rows < 500,000: multi_threading x2"),
    (500_000, MULTI, "500,000 rows >= 500,000: multi_processing x2"),
    (1_500_000, MULTI, "1,500,000 rows >= 500,000: multi_processing x2"),
    (None, IN_MEMORY_ARGS, "input rows unknown: the first entry, in_memory x1"),
])
def test_beam_options_are_chosen_by_input_rows_and_say_why(rows, args, why, tmp_path):
    choice = config_from_dict({"beam": TABLE}, tmp_path).beam_options(rows)
    assert choice.args == tuple(args) and choice.why == why
    assert choice.to_json() == {"args": list(args), "why": why}


def test_explicit_beam_args_win_over_the_table_at_every_size(tmp_path):
    config = config_from_dict({"beam_args": ["--runner=PortableRunner", "--job_endpoint=localhost:1"], "beam": TABLE}, tmp_path)
    for rows in (None, 10, 10_000_000):
        choice = config.beam_options(rows)
        assert choice.args == ("--runner=PortableRunner", "--job_endpoint=localhost:1")
        assert choice.why == "beam_args set explicitly: --runner=PortableRunner --job_endpoint=localhost:1"
    # An empty list is explicit too: Beam's own defaults, whatever the size.
    assert config_from_dict({"beam_args": [], "beam": TABLE}, tmp_path).beam_options(10**7).args == ()
    # A value may follow its flag, as on a command line.
    split_form = ["--direct_num_workers", "2", "--direct_running_mode=multi_processing"]
    assert config_from_dict({"beam_args": split_form}, tmp_path).beam_options(5).args == tuple(split_form)
    # What a command line or a DAG param gives replaces the config's, and wins the same way.
    assert config_from_dict({"beam": TABLE}, tmp_path).replace(beam_args=tuple(MULTI)).beam_options(5).args == tuple(MULTI)


def test_one_unbounded_entry_serves_every_size_and_without_a_table_in_memory_is_the_default(tmp_path):
    assert config_from_dict({}, tmp_path).beam_options(10**9).why == "1,000,000,000 rows (one entry for every size): in_memory x1"
    assert config_from_dict({}, tmp_path).beam == BeamConfig((BeamOptionsForRows(IN_MEMORY_ARGS),))
    other = config_from_dict({"beam": {"by_input_rows": [{"args": ["--runner=FlinkRunner"]}]}}, tmp_path)
    assert other.beam_options(3).why == "3 rows (one entry for every size): --runner=FlinkRunner"


def _table(*entries):
    return {"beam": {"by_input_rows": list(entries)}}


@pytest.mark.parametrize("values, message", [
    (_table({"below": 500, "args": MULTI}, {"below": 100, "args": MULTI}, {"args": MULTI}),
     r"beam.by_input_rows\[1\].below must be a row count > 500 \(the entries are sorted by size"),
    (_table({"below": 100, "args": MULTI}, {"below": 100, "args": MULTI}, {"args": MULTI}),
     r"beam.by_input_rows\[1\].below must be a row count > 100"),
    (_table({"below": 0, "args": MULTI}, {"args": MULTI}), r"beam.by_input_rows\[0\].below must be a row count > 0"),
    (_table({"below": "1M", "args": MULTI}, {"args": MULTI}), r"beam.by_input_rows\[0\].below must be a row count"),
    (_table({"args": MULTI}, {"args": MULTI}), r"beam.by_input_rows\[0\].below must be a row count > 0 .* got None"),
    (_table({"below": 100, "args": MULTI}), r"beam.by_input_rows\[0\]: the last entry must have no `below`"),
    (_table({"below": 100, "args": []}, {"args": MULTI}), r"beam.by_input_rows\[0\].args must be a non-empty list"),
    (_table({"below": 100, "args": MULTI}, {}), r"beam.by_input_rows\[1\].args must be a non-empty list"),
    (_table({"args": ["--runner=DirectRunner", 2]}), r"beam.by_input_rows\[0\].args must be a non-empty list of Beam flags"),
    (_table({"args": "--runner=DirectRunner"}), r"beam.by_input_rows\[0\].args must be a non-empty list of Beam flags"),
    (_table({"args": MULTI, "upto": 5}), r"beam.by_input_rows\[0\] has unknown keys \['upto'\]"),
    (_table(), "beam.by_input_rows must have at least one entry"),
    ({"beam": {"by_input_rows": {"args": MULTI}}}, r"beam.by_input_rows must be an array of tables"),
    ({"beam": {"by_rows": []}}, r"\[beam\] has unknown keys \['by_rows'\]"),
    ({"beam_args": "--runner=DirectRunner"}, "beam_args must be a list of Beam flags"),
    ({"beam_args": ["runner=DirectRunner"]}, "beam_args must be a list of Beam flags like '--runner=DirectRunner'"),
    ({"beam_args": ["--runner=DirectRunner", ""]}, "beam_args must be a list of Beam flags"),
])
def test_a_bad_beam_table_is_refused_naming_the_entry_and_the_rule(values, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(values, tmp_path)


def test_unknown_runner_flags_are_left_to_beam(tmp_path):
    config = config_from_dict(_table({"args": ["--no_such_flag=1"]}), tmp_path)
    assert config.pipeline_args(config.beam_options(1))[0] == "--no_such_flag=1"
