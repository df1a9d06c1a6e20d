"""The project's configuration: one typed object, read from a TOML file and validated at start.

Every path is explicit. Relative paths in the file are resolved against the file's folder, so a
config works the same from any working directory (and from Airflow tasks).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path
from typing import Any, Mapping

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

    def __post_init__(self) -> None:
        if self.label_policy not in ("ground_truth", "ground_truth_or_human"):
            raise ConfigError(f"data.label_policy must be ground_truth or ground_truth_or_human, got {self.label_policy!r}")
        if self.production_window_days < 1:
            raise ConfigError(f"data.production_window_days must be >= 1, got {self.production_window_days}")
        if not 0.0 <= self.max_production_share < 1.0:
            raise ConfigError(f"data.max_production_share must be a share in [0, 1), got {self.max_production_share!r}")
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


@dataclasses.dataclass(frozen=True)
class ServingConfig:
    model_name: str = "taxi"
    # TF Serving's model base path is <model_base_dir>/<model_name>/<version>/.
    model_base_dir: Path = Path("var/serving/models")
    model_config_file: Path = Path("var/serving/models.config")
    rest_port: int = 8501
    grpc_port: int = 8500


@dataclasses.dataclass(frozen=True)
class Config:
    root: Path
    pipeline_root: Path
    beam_args: tuple[str, ...]
    data: DataConfig
    training: TrainingConfig
    evaluation: EvaluationConfig
    serving: ServingConfig
    metadata: MetadataConfig
    pipeline_name: str = "taxi"

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)

    def pipeline_args(self) -> list[str]:
        """`beam_args` for a job run now: with a `--temp_location` below `pipeline_root` (created)
        unless the config names one, since Beam's file sinks and TFT stage their files there."""
        args = list(self.beam_args)
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
            kwargs[name] = _resolve(root, field.default)
    return cls(**kwargs)


def _resolve(root: Path, value: str | os.PathLike[str]) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (root / path).resolve()


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
    known = {"pipeline_name", "pipeline_root", "beam_args", "data", "training", "evaluation", "serving", "metadata"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"config has unknown keys {unknown}; known: {sorted(known)}")
    return Config(
        root=root,
        pipeline_name=str(values.get("pipeline_name", "taxi")),
        pipeline_root=_resolve(root, values.get("pipeline_root", "var/pipeline")),
        beam_args=tuple(values.get("beam_args", ("--runner=DirectRunner",))),
        data=_section(DataConfig, values.get("data", {}), root, "data"),
        training=_section(TrainingConfig, values.get("training", {}), root, "training"),
        evaluation=_section(EvaluationConfig, values.get("evaluation", {}), root, "evaluation"),
        serving=_section(ServingConfig, values.get("serving", {}), root, "serving"),
        metadata=_section(MetadataConfig, values.get("metadata", {}), root, "metadata"),
    )
