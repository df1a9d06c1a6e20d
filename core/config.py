"""The project's configuration: one typed object, read from a TOML file and validated at start.

Every path is explicit. Relative paths in the file are resolved against the file's folder, so a
config works the same from any working directory (and from Airflow tasks).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import tomllib
from pathlib import Path
from typing import Any, Mapping, Sequence

from core.version import PROJECT_ROOT

CONFIG_ENV_VAR = "MLOPS_CONFIG"
DEFAULT_CONFIG_NAME = "mlops.toml"


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type, or out of range."""


_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}


@dataclasses.dataclass(frozen=True)
class MetadataConfig:
    """Where ML Metadata lives: SQLite by default, or a PostgreSQL or MySQL/MariaDB server.

    MySQL users must authenticate with mysql_native_password: MLMD's bundled client speaks no
    other plugin (not MySQL 8's caching_sha2_password, not MariaDB's ed25519).
    """

    backend: str = "sqlite"  # sqlite | postgresql | mysql
    sqlite_path: Path = Path("var/mlmd/metadata.sqlite")
    host: str = "localhost"
    port: int = 0  # 0: the backend's standard port (PostgreSQL 5432, MySQL 3306)
    user: str = ""
    password: str = ""
    database: str = "mlmd"

    def __post_init__(self) -> None:
        if self.backend not in ("sqlite", "postgresql", "mysql"):
            raise ConfigError(f"metadata.backend must be sqlite, postgresql or mysql, got {self.backend!r}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"metadata.port must be in [0, 65535], got {self.port}")
        if self.port == 0:
            object.__setattr__(self, "port", _DEFAULT_PORTS.get(self.backend, 0))


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Hyperparameters of the wide-and-deep classifier."""

    learning_rate: float = 0.003
    hidden_units: tuple[int, ...] = (128, 64, 32)
    embedding_dim: int = 8
    batch_size: int = 40
    train_steps: int = 1000
    seed: int = 42

    def __post_init__(self) -> None:
        if not 0 < self.learning_rate < 1:
            raise ConfigError(f"training.learning_rate must be in (0, 1), got {self.learning_rate}")
        if not self.hidden_units or any(int(u) < 1 for u in self.hidden_units):
            raise ConfigError(f"training.hidden_units must be positive integers, got {self.hidden_units}")
        for name in ("batch_size", "train_steps", "embedding_dim"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"training.{name} must be >= 1, got {getattr(self, name)}")
        object.__setattr__(self, "hidden_units", tuple(int(u) for u in self.hidden_units))

    @property
    def budget_rows(self) -> int:
        """The rows one training run reads: `train_steps` batches of `batch_size` (a smaller split: all
        of them, for several epochs). Transform writes each split's first this many rows in training
        order as its head (beam_jobs/training_order.py)."""
        return self.train_steps * self.batch_size


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """When a model is blessed."""

    auc_floor: float = 0.85
    # A candidate may be at most this much AUC worse than the current model.
    auc_tolerance: float = 0.01
    decision_threshold: float = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.auc_floor <= 1:
            raise ConfigError(f"evaluation.auc_floor must be in [0, 1], got {self.auc_floor}")
        if not 0 <= self.auc_tolerance <= 1:
            raise ConfigError(f"evaluation.auc_tolerance must be in [0, 1], got {self.auc_tolerance}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The raw data and how it is split."""

    csv_path: Path = Path("data/taxi/data.csv")
    # Checked at load when the file is the shipped one; empty for a user's own CSV.
    expected_sha256: str = "cdaf0b5931442ef47693f408f25a37af710aca23fccb90a78f00930e89548805"
    schema_path: Path = Path("data/taxi/schema.pbtxt")
    # Train:eval = (buckets - eval_buckets):eval_buckets, by a hash of the row's content.
    hash_buckets: int = 3
    eval_buckets: int = 1
    # Ingest fails when more than this share of a column's values cannot be parsed.
    max_unparseable_fraction: float = 0.01
    # Validation fails the run when more than this share of the rows was rejected, all reasons
    # together, or for one reason (the reasons of beam_jobs/ingest.py and beam_jobs/clean.py). Under
    # the limits the run goes on and reports what was rejected. Set from the shipped data's history
    # with a margin: it rejects 2.9-3.4 % of the rows as out_of_range (windows 2013-15, 2013-17,
    # 2015-17) and nothing for any other reason.
    max_rejected_share: float = 0.10
    max_rejected_share_by_reason: Mapping[str, float] = dataclasses.field(default_factory=lambda: {
        "out_of_range": 0.07, "duplicate": 0.02, "missing_required": 0.02, "unparseable": 0.01,
        "unparseable_value": 0.02, "missing_timestamp": 0.01, "wrong_field_count": 0.01, "malformed_csv": 0.01,
    })
    # The schema's drift comparators applied to the cleaned data against the data the served model
    # trained on: "warn" records and reports what moved, "fail" stops the run, "off" skips it. Not
    # "fail" by default: a retraining after drift is meant to learn from data that moved.
    previous_data_check: str = "warn"
    # Production data as a second training source (beam_jobs/served_source.py): the gateway's request
    # log joined with its feedback. `production_data = false` is the privacy switch: nothing logged
    # is read. `production_logs_dir` is the gateway's --log-dir ("" = none configured; a run may
    # still name one with --production-logs).
    production_data: bool = True
    production_logs_dir: str = ""
    label_policy: str = "ground_truth"  # or "ground_truth_or_human": a reviewer's decision counts too
    production_window_days: int = 30  # requests of the last N UTC days, today included
    # Production rows may be at most this share of the examples (production + CSV window).
    max_production_share: float = 0.5
    # Only requests from this UTC day on (YYYY-MM-DD; "" = the whole window), e.g. the day the
    # served model's training window ended: a run's data policy sets it (mlops/data_policy.py).
    production_since: str = ""

    def __post_init__(self) -> None:
        if self.label_policy not in ("ground_truth", "ground_truth_or_human"):
            raise ConfigError(f"data.label_policy must be ground_truth or ground_truth_or_human, got {self.label_policy!r}")
        if self.production_window_days < 1:
            raise ConfigError(f"data.production_window_days must be >= 1, got {self.production_window_days}")
        if not 0.0 <= self.max_production_share < 1.0:
            raise ConfigError(f"data.max_production_share must be a share in [0, 1), got {self.max_production_share!r}")
        if self.production_since:
            try:
                dt.date.fromisoformat(self.production_since)
            except ValueError:
                raise ConfigError(f"data.production_since must be a date YYYY-MM-DD or empty, got {self.production_since!r}") from None
        if self.previous_data_check not in ("off", "warn", "fail"):
            raise ConfigError(f"data.previous_data_check must be off, warn or fail, got {self.previous_data_check!r}")
        if not 0 < self.eval_buckets < self.hash_buckets:
            raise ConfigError("data.eval_buckets must be between 1 and data.hash_buckets - 1")
        if not 0.0 <= self.max_rejected_share <= 1.0:
            raise ConfigError(f"data.max_rejected_share must be a share in [0, 1], got {self.max_rejected_share!r}")
        if not isinstance(self.max_rejected_share_by_reason, Mapping):
            raise ConfigError("data.max_rejected_share_by_reason must be a table of reason = share, "
                              f"got {self.max_rejected_share_by_reason!r}")
        for reason, share in self.max_rejected_share_by_reason.items():
            if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
                raise ConfigError(f"data.max_rejected_share_by_reason.{reason} must be a share in [0, 1], got {share!r}")


ROLLOUT_APPROVAL_MODES = ("none", "required")


# The [data] settings whose defaults are files shipped in the project: unset, they resolve against
# the project, not the config's folder.
SHIPPED_FILES = frozenset({("data", "csv_path"), ("data", "schema_path")})


def shipped_file(name: str) -> Path:
    """Where the [data] setting `name`'s shipped default lies, whatever config is loaded."""
    if ("data", name) not in SHIPPED_FILES:
        raise KeyError(f"[data] {name} is not a shipped file; shipped: {sorted(n for _, n in SHIPPED_FILES)}")
    return _resolve(PROJECT_ROOT, getattr(DataConfig, name))


@dataclasses.dataclass(frozen=True)
class ServingConfig:
    model_name: str = "taxi"
    # TF Serving's model base path is <model_base_dir>/<model_name>/<version>/.
    model_base_dir: Path = Path("var/serving/models")
    model_config_file: Path = Path("var/serving/models.config")
    rest_port: int = 8501
    grpc_port: int = 8500
    # Whether a person must approve a healthy canary before it becomes stable (the taxi_rollout
    # DAG's `approval` param overrides it per run): "none" promotes on the judged evidence alone,
    # "required" waits for an Approve in Airflow's Required Actions (no answer = rolled back).
    rollout_approval: str = "none"

    def __post_init__(self) -> None:
        if self.rollout_approval not in ROLLOUT_APPROVAL_MODES:
            raise ConfigError(f"serving.rollout_approval must be one of {list(ROLLOUT_APPROVAL_MODES)}, "
                              f"got {self.rollout_approval!r}")


AUTOMATION_DEGREES = ("shadow", "assist", "partial", "full")


@dataclasses.dataclass(frozen=True)
class AutomationConfig:
    """When a model has earned the next degree of automation, and when it must give one back.

    Each degree up is judged on the evidence gathered in the degree below it (reviewed cases of
    this model version there). mlops.toml's [automation] says why each number is what it is.
    """

    # Days of served requests (up to the end of the judged window) whose reviews count as evidence.
    window_days: int = 7
    # A slice with fewer reviewed cases than this is shown but not judged (its agreement is noise).
    min_slice_cases: int = 30
    # shadow -> assist
    assist_min_reviewed: int = 500
    assist_min_agreement: float = 0.90
    assist_min_slice_agreement: float = 0.80
    # assist -> partial (people changed at most this share of the suggestions)
    partial_min_reviewed: int = 1000
    partial_min_agreement: float = 0.93
    partial_min_slice_agreement: float = 0.85
    partial_max_override_rate: float = 0.07
    # partial -> full
    full_min_reviewed: int = 2000
    full_min_agreement: float = 0.97
    full_min_slice_agreement: float = 0.90
    full_max_referral_rate: float = 0.05
    # Below its degree's floor a model moves down one degree, without approval.
    assist_floor: float = 0.85
    partial_floor: float = 0.90
    full_floor: float = 0.93
    floor_min_reviewed: int = 100
    # In partial: when people agree this often with the model inside the band, narrow the band.
    band_narrowing_agreement: float = 0.95
    band_narrowing_min_cases: int = 200

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"automation.{field.name} must be a number, got {value!r}")
            if isinstance(field.default, float) and not 0.0 <= value <= 1.0:
                raise ConfigError(f"automation.{field.name} must be a share in [0, 1], got {value!r}")
            if isinstance(field.default, int) and value < 1:
                raise ConfigError(f"automation.{field.name} must be >= 1, got {value!r}")

    def up_rules(self, degree: str) -> dict[str, float]:
        """The thresholds a model serving in `degree` must meet to move to the next degree ({} for full)."""
        following = {"shadow": "assist", "assist": "partial", "partial": "full"}.get(degree)
        if following is None:
            return {}
        rules = {name.removeprefix(f"{following}_"): getattr(self, name) for name in
                 (f"{following}_min_reviewed", f"{following}_min_agreement", f"{following}_min_slice_agreement",
                  f"{following}_max_override_rate", f"{following}_max_referral_rate") if hasattr(self, name)}
        return rules

    def floor(self, degree: str) -> float | None:
        """The agreement under which a model serving in `degree` moves down (None for shadow)."""
        return getattr(self, f"{degree}_floor", None)


@dataclasses.dataclass(frozen=True)
class ReviewConfig:
    """Which served predictions a person reviews (monitoring/review_queue.py, the taxi_review DAG).

    Every `refer_to_human` answer is reviewed; the rates sample the other answers, by a hash of the
    request id, so a re-run picks the same requests. The reasons for the numbers are in mlops.toml.
    """

    # Share of requests answered in each degree that a person reviews besides the referrals.
    sample_rate_shadow: float = 0.05
    sample_rate_assist: float = 0.05
    # Share of confident answers in `full` reviewed as an audit.
    audit_rate_full: float = 0.01
    # At most this many new cases per run, oldest first; the rest wait for the next run.
    max_open_cases: int = 20
    # A case nobody answers within this time is closed as unanswered (never guessed).
    response_timeout_minutes: float = 60.0
    # Requests logged within this many hours before a run are candidates (without an explicit window).
    lookback_hours: float = 24.0

    def __post_init__(self) -> None:
        for name in ("sample_rate_shadow", "sample_rate_assist", "audit_rate_full"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"review.{name} must be a share in [0, 1], got {value!r}")
        if self.max_open_cases < 1:
            raise ConfigError(f"review.max_open_cases must be >= 1, got {self.max_open_cases!r}")
        for name in ("response_timeout_minutes", "lookback_hours"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"review.{name} must be > 0, got {getattr(self, name)!r}")


IN_MEMORY_ARGS = ("--runner=DirectRunner", "--direct_num_workers=1", "--direct_running_mode=in_memory")


@dataclasses.dataclass(frozen=True)
class BeamChoice:
    """The Beam options one job runs with, and why (recorded with the step, shown in its summary)."""

    args: tuple[str, ...]
    why: str

    def to_json(self) -> dict[str, Any]:
        return {"args": list(self.args), "why": self.why}


@dataclasses.dataclass(frozen=True)
class BeamOptionsForRows:
    """One entry of `[[beam.by_input_rows]]`: inputs of fewer than `below` rows run with `args`;
    the last entry has no bound (every larger input)."""

    args: tuple[str, ...]
    below: int | None = None


def _beam_label(args: Sequence[str]) -> str:
    """`multi_processing x2` for the DirectRunner's modes, else the flags themselves."""
    flags = dict(arg.removeprefix("--").partition("=")[::2] for arg in args if arg.startswith("--"))
    if flags.get("runner", "DirectRunner") == "DirectRunner" and "direct_running_mode" in flags:
        return f"{flags['direct_running_mode']} x{flags.get('direct_num_workers', '1')}"
    return " ".join(args)


def beam_flags(value: Any, name: str, *, allow_empty: bool = False, error: type[Exception] = ConfigError) -> tuple[str, ...]:
    """Beam options as a command line takes them: a list of non-empty strings, the first a flag
    (`--name[=value]`; a value may follow its flag as the next string). The one check for every
    place options are given (the config's `beam_args` and `[[beam.by_input_rows]]`, the training
    DAG's `beam_args` param); which flags a runner knows stays Beam's to judge when the job starts."""
    kind = "list" if allow_empty else "non-empty list"
    if (not isinstance(value, (list, tuple)) or not all(isinstance(arg, str) and arg for arg in value)
            or (not value and not allow_empty) or (value and not value[0].startswith("--"))):
        raise error(f"{name} must be a {kind} of Beam flags like '--runner=DirectRunner', got {value!r}")
    return tuple(value)


@dataclasses.dataclass(frozen=True)
class BeamConfig:
    """Beam options by the size of a job's input, used when the config sets no `beam_args`.

    Sizes are rows of the step's input (mlops/steps.py says which count each step uses). The
    entries are sorted by `below`; only the last is unbounded. Which flags a runner knows is
    Beam's to judge when the job starts: here only the table's shape is checked.
    """

    by_input_rows: tuple[BeamOptionsForRows, ...] = (BeamOptionsForRows(IN_MEMORY_ARGS),)

    def __post_init__(self) -> None:
        if not self.by_input_rows:
            raise ConfigError("beam.by_input_rows must have at least one entry (the last one without `below`)")
        previous = 0
        for index, entry in enumerate(self.by_input_rows):
            name = f"beam.by_input_rows[{index}]"
            beam_flags(list(entry.args), f"{name}.args")
            last = index == len(self.by_input_rows) - 1
            if last and entry.below is not None:
                raise ConfigError(f"{name}: the last entry must have no `below` (it takes every larger input), "
                                  f"got below = {entry.below!r}")
            if not last and (isinstance(entry.below, bool) or not isinstance(entry.below, int) or entry.below <= previous):
                raise ConfigError(f"{name}.below must be a row count > {previous:,} (the entries are sorted by size, "
                                  f"only the last is unbounded), got {entry.below!r}")
            previous = entry.below or previous

    def choose(self, rows: int | None) -> BeamChoice:
        """The entry for an input of `rows` rows (None = unknown: the first, smallest inputs' entry)."""
        entries = self.by_input_rows
        if rows is None:
            return BeamChoice(entries[0].args, f"input rows unknown: the first entry, {_beam_label(entries[0].args)}")
        for index, entry in enumerate(entries):
            label = _beam_label(entry.args)
            if entry.below is not None and rows < entry.below:
                return BeamChoice(entry.args, f"{rows:,} rows < {entry.below:,}: {label}")
            if entry.below is None:
                bound = entries[index - 1].below if index else None
                return BeamChoice(entry.args, f"{rows:,} rows >= {bound:,}: {label}" if bound else
                                  f"{rows:,} rows (one entry for every size): {label}")
        raise AssertionError("the last entry is unbounded")  # checked in __post_init__


def _beam_section(values: Any) -> BeamConfig:
    if not isinstance(values, Mapping):
        raise ConfigError(f"[beam] must be a table, got {values!r}")
    unknown = sorted(set(values) - {"by_input_rows"})
    if unknown:
        raise ConfigError(f"[beam] has unknown keys {unknown}; known: ['by_input_rows']")
    if "by_input_rows" not in values:
        return BeamConfig()
    entries = values["by_input_rows"]
    if not isinstance(entries, list) or not all(isinstance(entry, Mapping) for entry in entries):
        raise ConfigError("beam.by_input_rows must be an array of tables ([[beam.by_input_rows]] with below and args)")
    rows = []
    for index, entry in enumerate(entries):
        extra = sorted(set(entry) - {"below", "args"})
        if extra:
            raise ConfigError(f"beam.by_input_rows[{index}] has unknown keys {extra}; known: ['args', 'below']")
        rows.append(BeamOptionsForRows(beam_flags(entry.get("args", ()), f"beam.by_input_rows[{index}].args"), entry.get("below")))
    return BeamConfig(tuple(rows))


# Why 5M (docs/SCALE.md "Steps in processes of their own"): at 1.5M rows the one process peaks at
# 1.12 GiB (each step alone: up to 0.95), well inside the 2 GiB aim, and a process per step would add
# its start-up to every run; at 15M the one process carried transform's leftover heap into train
# (1.77 GiB against 1.08 in its own process).
STEPS_IN_OWN_PROCESS_FROM_ROWS = 5_000_000
# Why 1M (docs/SCALE.md "Session 12"): at 1.5M rows on 2 cores the two steps took 54-67 s
# together instead of 95-114 in turn; 150k and 15k rows gain ~4 s on an idle 2-core machine too,
# which the default does not impose on every test run yet; on one core the two always run in turn.
TRANSFORM_BESIDE_VALIDATION_FROM_ROWS = 1_000_000


@dataclasses.dataclass(frozen=True)
class Config:
    root: Path
    pipeline_root: Path
    # Set: every Beam job runs with these, whatever its input size. None: `beam` chooses by size.
    beam_args: tuple[str, ...] | None
    data: DataConfig
    training: TrainingConfig
    evaluation: EvaluationConfig
    serving: ServingConfig
    metadata: MetadataConfig
    pipeline_name: str = "taxi"
    automation: AutomationConfig = AutomationConfig()
    review: ReviewConfig = ReviewConfig()
    beam: BeamConfig = BeamConfig()
    # `mlops pipeline run` runs every step after ingest in a process of its own (as Airflow's tasks
    # run) when ingest wrote at least this many rows, else all in the command's process (mlops.toml).
    steps_in_own_process_from_rows: int = STEPS_IN_OWN_PROCESS_FROM_ROWS
    # `mlops pipeline run` starts transform's Beam job in a process of its own while validation runs
    # when clean kept at least this many rows; the Transform step adopts its output once validation
    # passed, and discards it otherwise (mlops.toml).
    transform_beside_validation_from_rows: int = TRANSFORM_BESIDE_VALIDATION_FROM_ROWS

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)

    def beam_options(self, rows: int | None = None) -> BeamChoice:
        """The Beam options for a job reading `rows` rows: `beam_args` when set (it always wins),
        else the `[[beam.by_input_rows]]` entry for that size."""
        if self.beam_args is not None:
            return BeamChoice(tuple(self.beam_args), f"beam_args set explicitly: {_beam_label(self.beam_args)}")
        return self.beam.choose(rows)

    def pipeline_args(self, choice: BeamChoice | None = None) -> list[str]:
        """The chosen Beam options (default: `beam_options()` of an input of unknown size) for a job
        run now: with a `--temp_location` below `pipeline_root` (created) unless they name one, since
        Beam's file sinks and TFT stage their files there."""
        args = list((choice or self.beam_options()).args)
        if not any(arg.startswith("--temp_location") for arg in args):
            temp = self.pipeline_root / "tmp" / "beam"
            temp.mkdir(parents=True, exist_ok=True)
            args.append(f"--temp_location={temp}")
        return args


def _section(cls: type, values: Mapping[str, Any], root: Path, section: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"[{section}] has unknown keys {unknown}; known: {sorted(fields)}")
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        default = fields[name].default
        if isinstance(default, Path):
            value = _resolve(root, value)
        elif isinstance(default, tuple):
            value = tuple(value)
        elif isinstance(default, bool) or default is None:
            pass
        elif isinstance(default, (int, float, str)) and not isinstance(value, type(default)):
            if isinstance(default, float) and isinstance(value, int):
                value = float(value)
            else:
                raise ConfigError(
                    f"[{section}] {name} must be {type(default).__name__}, got {type(value).__name__} {value!r}"
                )
        kwargs[name] = value
    for name, field in fields.items():
        if name not in kwargs and isinstance(field.default, Path):
            # Unset, the shipped data is the project's own files wherever the config file lies (a
            # config of one's own in another folder still trains on the sample); state (var/...)
            # stays beside the config.
            kwargs[name] = _resolve(PROJECT_ROOT if (section, name) in SHIPPED_FILES else root, field.default)
    return cls(**kwargs)


def _resolve(root: Path, value: str | os.PathLike[str]) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (root / path).resolve()


def _beam_args(value: Any) -> tuple[str, ...] | None:
    # Empty on purpose is allowed: Beam's own defaults.
    return None if value is None else beam_flags(value, "beam_args", allow_empty=True)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Loads the config file: `path`, else $MLOPS_CONFIG, else ./mlops.toml, else defaults."""
    if path is None:
        path = os.environ.get(CONFIG_ENV_VAR) or None
    if path is None and Path(DEFAULT_CONFIG_NAME).is_file():
        path = DEFAULT_CONFIG_NAME
    values: dict[str, Any] = {}
    root = Path.cwd().resolve()
    if path is not None:
        config_file = Path(path).resolve()
        if not config_file.is_file():
            raise ConfigError(f"config file not found: {config_file}")
        try:
            values = tomllib.loads(config_file.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{config_file}: not valid TOML: {err}") from err
        root = config_file.parent
    return config_from_dict(values, root)


def config_from_dict(values: Mapping[str, Any], root: Path) -> Config:
    known = {"pipeline_name", "pipeline_root", "beam_args", "beam", "data", "training", "evaluation", "serving", "metadata",
             "automation", "review", "steps_in_own_process_from_rows", "transform_beside_validation_from_rows"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"config has unknown keys {unknown}; known: {sorted(known)}")
    return Config(
        root=root,
        pipeline_name=str(values.get("pipeline_name", "taxi")),
        pipeline_root=_resolve(root, values.get("pipeline_root", "var/pipeline")),
        beam_args=_beam_args(values.get("beam_args")),
        beam=_beam_section(values.get("beam", {})),
        data=_section(DataConfig, values.get("data", {}), root, "data"),
        training=_section(TrainingConfig, values.get("training", {}), root, "training"),
        evaluation=_section(EvaluationConfig, values.get("evaluation", {}), root, "evaluation"),
        serving=_section(ServingConfig, values.get("serving", {}), root, "serving"),
        metadata=_section(MetadataConfig, values.get("metadata", {}), root, "metadata"),
        automation=_section(AutomationConfig, values.get("automation", {}), root, "automation"),
        review=_section(ReviewConfig, values.get("review", {}), root, "review"),
        steps_in_own_process_from_rows=_row_count(values.get("steps_in_own_process_from_rows", STEPS_IN_OWN_PROCESS_FROM_ROWS),
                                                  "steps_in_own_process_from_rows"),
        transform_beside_validation_from_rows=_row_count(
            values.get("transform_beside_validation_from_rows", TRANSFORM_BESIDE_VALIDATION_FROM_ROWS),
            "transform_beside_validation_from_rows"),
    )


def _row_count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be a whole number of rows >= 0 (0: always), got {value!r}")
    return value
