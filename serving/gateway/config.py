"""The gateway's settings: one typed, frozen object, validated before anything starts.

Sources, later ones winning: the defaults below, a TOML file (`[gateway]` table plus one
`[models.<name>]` table per model's initial routing policy), `MLOPS_GATEWAY_<FIELD>` environment
variables (e.g. `MLOPS_GATEWAY_ADMIN_TOKEN`, `MLOPS_GATEWAY_MODEL_SERVER_REST`), then explicit
overrides (command-line flags). Secrets such as the admin token belong in the environment, not in
a committed file.

Relative paths in the file are resolved against the file's folder, like `mlops.toml`, so the
gateway behaves the same from any working directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import socket
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Mapping

from core.errors import DataError

ENV_PREFIX = "MLOPS_GATEWAY_"

POLICIES = ("blue_green", "canary", "shadow")
AUTOMATION_MODES = ("shadow", "assist", "partial", "full")
UPSTREAM_PROTOCOLS = ("rest", "grpc")
LOG_FAILURE_POLICIES = ("refuse", "serve")
# Replicas disagree at most this long after an admin change.
MAX_POLICY_POLL_SECONDS = 30.0
# It goes into file names, between dashes.
REPLICA_ID = re.compile(r"[A-Za-z0-9_.]{1,40}")
# A short token is guessable; the admin API moves production traffic.
MIN_ADMIN_TOKEN_LENGTH = 16


class GatewayConfigError(DataError):
    """A gateway setting is missing, of the wrong type or out of range (the message names it)."""


@dataclasses.dataclass(frozen=True)
class ModelPolicy:
    """How one model's traffic is routed and how much the model decides on its own.

    `canary_share` is a fraction in [0, 1] (5 % is 0.05). `band` is the uncertainty band of
    `partial` automation: a probability inside [low, high] is referred to a human.
    """

    policy: str = "blue_green"
    canary_share: float = 0.0
    shadow_version: int | None = None
    automation: str = "full"
    band: tuple[float, float] = (0.4, 0.6)

    def __post_init__(self) -> None:
        check_policy_values(self.policy, self.canary_share, self.automation, self.band, self.shadow_version)
        object.__setattr__(self, "canary_share", float(self.canary_share))
        object.__setattr__(self, "band", (float(self.band[0]), float(self.band[1])))


def check_policy_values(policy: str, share: float, automation: str, band: Any, shadow_version: Any) -> None:
    """Shared by the config file and the admin API, so both reject the same values with the same words."""
    if policy not in POLICIES:
        raise GatewayConfigError(f"policy must be one of {list(POLICIES)}, got {policy!r}")
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= float(share) <= 1.0:
        raise GatewayConfigError(f"canary share must be a fraction in [0, 1] (5% is 0.05), got {share!r}")
    if automation not in AUTOMATION_MODES:
        raise GatewayConfigError(f"automation must be one of {list(AUTOMATION_MODES)}, got {automation!r}")
    if (
        not isinstance(band, (tuple, list))
        or len(band) != 2
        or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in band)
        or not 0.0 <= band[0] <= band[1] <= 1.0
    ):
        raise GatewayConfigError(f"band must be [low, high] with 0 <= low <= high <= 1, got {band!r}")
    if shadow_version is not None and (isinstance(shadow_version, bool) or not isinstance(shadow_version, int) or shadow_version < 0):
        raise GatewayConfigError(f"shadow version must be a non-negative integer or null, got {shadow_version!r}")
    if policy == "shadow" and shadow_version is None:
        raise GatewayConfigError("policy 'shadow' needs a shadow_version (the candidate that receives the copies)")


@dataclasses.dataclass(frozen=True)
class GatewaySettings:
    """Everything the gateway needs; `validate()` runs on construction."""

    host: str = "127.0.0.1"
    rest_port: int = 8000  # 0 picks a free port
    grpc_port: int = 8001  # 0 picks a free port
    model_server_rest: str = "http://127.0.0.1:8501"
    model_server_grpc: str = "127.0.0.1:8500"
    # How the gateway talks to the model server; REST is the faster of the two from Python here.
    upstream_protocol: str = "rest"
    model_config_file: Path | None = Path("var/serving/models.config")
    # How often models.config is re-read for label changes made by others (e.g. a push).
    config_poll_seconds: float = 1.0
    # How often the routing state file is checked for changes made by other replicas (one stat when
    # nothing changed): an admin change on one replica routes on every other within this interval
    # (plus one read of a small file). At most MAX_POLICY_POLL_SECONDS.
    policy_poll_seconds: float = 1.0
    # Names this replica in its log files (`part-<unix_ms>-<replica>-<hex8>.parquet`), so replicas
    # sharing a log directory are told apart; "" is the host name (a container's id in compose).
    replica_id: str = ""
    log_dir: Path = Path("var/logs/predictions")
    state_file: Path = Path("var/serving/gateway_state.json")
    admin_token: str = ""
    # Instead of admin_token: a file holding the token, re-read when it changes, so the token can be
    # rotated without a restart (write the new one to a temp file and rename it over this one).
    admin_token_file: Path | None = None
    # Both set: the REST (and admin) listener and the gRPC listener serve TLS with this PEM pair.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    max_body_bytes: int = 1_048_576
    max_instances: int = 1_000
    # Bounds only a host that does not answer: a refused connection fails at once whatever it is. 0.25 s
    # failed requests (503) when the gateway's process was starved on a loaded 2-core host (CI run
    # beside a pipeline); a connect on loopback or a LAN takes well under a millisecond.
    upstream_connect_timeout_s: float = 1.0
    upstream_timeout_s: float = 10.0
    # Keep-alive connections to the model server kept open between requests (more open under load).
    upstream_pool_size: int = 64
    # Calls in flight to one model version before new requests queue and go out merged into one
    # call when a slot frees (serving.gateway.upstream_batching); 0 sends every request on its own.
    upstream_max_in_flight: int = 2
    # The most rows one merged call carries (a single larger request still goes, alone).
    upstream_batch_max_rows: int = 256
    # The circuit opens after this many consecutive connection failures...
    breaker_failure_threshold: int = 3
    # ...and lets one probe request through after this long.
    breaker_reset_s: float = 1.0
    log_queue_rows: int = 50_000
    log_flush_rows: int = 10_000
    log_flush_seconds: float = 5.0
    # A request waits this long for room in a full log queue (or for its journal write), then fails
    # with 503 unlogged-and-unserved.
    log_backpressure_timeout_s: float = 5.0
    # Each log entry is written and fdatasynced to a write-ahead journal before the answer leaves,
    # so an answered request survives kill -9 and power loss (serving/log_writer.py). false: kept in
    # memory until its Parquet file, as before (a crash loses up to log_flush_seconds of requests).
    log_journal: bool = True
    # false: the answer waits for the journal write but not its fdatasync (safe from the gateway
    # dying, kill -9 included, not from a power cut); for disks with a slow fdatasync.
    log_fsync: bool = True
    # When the journal cannot be written (full or failing disk): "refuse" answers 503 naming the
    # log problem until the disk works again; "serve" answers anyway, the entry in memory only.
    log_failure: str = "refuse"
    # Policy canary: a request the canary answered is also asked of stable as a shadow copy (queued,
    # off the client's latency path; logged is_shadow, never returned, not counted as served), so
    # the canary judge compares the two on the canary's own requests (monitoring/paired.py).
    pair_canary: bool = True
    shadow_queue_size: int = 1_000
    shadow_workers: int = 4
    # Request ids kept in memory to validate feedback and for admin stats.
    recent_requests: int = 200_000
    stats_max_window_s: float = 3_600.0
    use_uvloop: bool = True
    models: Mapping[str, ModelPolicy] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", types.MappingProxyType(dict(self.models)))
        self.validate()

    def validate(self) -> None:
        for name in ("rest_port", "grpc_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65_535:
                raise GatewayConfigError(f"gateway.{name} must be in 0..65535 (0 = any free port), got {port}")
        if self.upstream_protocol not in UPSTREAM_PROTOCOLS:
            raise GatewayConfigError(f"gateway.upstream_protocol must be one of {list(UPSTREAM_PROTOCOLS)}, got {self.upstream_protocol!r}")
        if not self.model_server_rest.startswith(("http://", "https://")):
            raise GatewayConfigError(f"gateway.model_server_rest must be an http(s) URL, got {self.model_server_rest!r}")
        if ":" not in self.model_server_grpc:
            raise GatewayConfigError(f"gateway.model_server_grpc must be host:port, got {self.model_server_grpc!r}")
        if self.admin_token:
            check_admin_token(self.admin_token, "gateway.admin_token", " (set MLOPS_GATEWAY_ADMIN_TOKEN)")
        if self.admin_token and self.admin_token_file is not None:
            raise GatewayConfigError("set gateway.admin_token or gateway.admin_token_file, not both")
        if self.admin_token_file is not None:
            check_admin_token(read_admin_token(self.admin_token_file), f"the token in {self.admin_token_file}")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise GatewayConfigError("gateway.tls_cert_file and gateway.tls_key_file go together: set both or neither")
        for name in ("tls_cert_file", "tls_key_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise GatewayConfigError(f"gateway.{name}: no such file {path}")
        positive = (
            "max_body_bytes", "max_instances", "upstream_connect_timeout_s", "upstream_timeout_s", "upstream_pool_size",
            "breaker_failure_threshold", "breaker_reset_s", "log_queue_rows", "log_flush_rows", "log_flush_seconds",
            "log_backpressure_timeout_s", "shadow_queue_size", "shadow_workers", "recent_requests",
            "stats_max_window_s", "config_poll_seconds", "policy_poll_seconds", "upstream_batch_max_rows",
        )
        for name in positive:
            value = getattr(self, name)
            if not value > 0:
                raise GatewayConfigError(f"gateway.{name} must be > 0, got {value!r}")
        if self.policy_poll_seconds > MAX_POLICY_POLL_SECONDS:
            raise GatewayConfigError(f"gateway.policy_poll_seconds must be at most {MAX_POLICY_POLL_SECONDS} (replicas would "
                                     f"route differently that long after an admin change), got {self.policy_poll_seconds!r}")
        if self.replica_id and not REPLICA_ID.fullmatch(self.replica_id):
            raise GatewayConfigError(f"gateway.replica_id must be 1-40 letters, digits, '_' or '.', got {self.replica_id!r}")
        if self.log_failure not in LOG_FAILURE_POLICIES:
            raise GatewayConfigError(f"gateway.log_failure must be one of {list(LOG_FAILURE_POLICIES)}, got {self.log_failure!r}")
        if self.upstream_max_in_flight < 0:
            raise GatewayConfigError(
                f"gateway.upstream_max_in_flight must be >= 0 (0 = never merge requests), got {self.upstream_max_in_flight!r}"
            )
        if self.log_flush_rows > self.log_queue_rows:
            raise GatewayConfigError(
                f"gateway.log_flush_rows ({self.log_flush_rows}) must not exceed gateway.log_queue_rows ({self.log_queue_rows})"
            )
        for model_name, policy in self.models.items():
            if not isinstance(policy, ModelPolicy):
                raise GatewayConfigError(f"models.{model_name} must be a ModelPolicy, got {type(policy).__name__}")

    @property
    def replica_name(self) -> str:
        """`replica_id`, or the host name and process id (unique among replicas on one host or in containers)."""
        if self.replica_id:
            return self.replica_id
        host = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())[:30] or "host"
        return f"{host}.{os.getpid()}"

    @property
    def admin_enabled(self) -> bool:
        return bool(self.admin_token) or self.admin_token_file is not None

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None


def read_admin_token(path: Path) -> str:
    """The token in `path` (surrounding whitespace, e.g. the final newline, is not part of it)."""
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise GatewayConfigError(f"cannot read the admin token file {path}: {err}") from err


def check_admin_token(token: str, what: str, hint: str = "") -> None:
    if len(token) < MIN_ADMIN_TOKEN_LENGTH:  # the length only: the token itself is never in a message
        raise GatewayConfigError(f"{what} must have at least {MIN_ADMIN_TOKEN_LENGTH} characters{hint}, got {len(token)}")


def load_gateway_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> GatewaySettings:
    """Reads the TOML file (if any), then `MLOPS_GATEWAY_*` variables, then `overrides`; validates all of it."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    models: dict[str, ModelPolicy] = {}
    root = Path.cwd().resolve()
    if path is not None:
        config_file = Path(path).resolve()
        if not config_file.is_file():
            raise GatewayConfigError(f"gateway config file not found: {config_file}")
        try:
            document = tomllib.loads(config_file.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise GatewayConfigError(f"{config_file}: not valid TOML: {err}") from err
        root = config_file.parent
        unknown_tables = sorted(set(document) - {"gateway", "models"})
        if unknown_tables:
            raise GatewayConfigError(f"{config_file}: unknown tables {unknown_tables}; known: ['gateway', 'models']")
        values = {name: _coerce(name, value, f"{config_file} [gateway]") for name, value in document.get("gateway", {}).items()}
        models = {
            name: _model_policy(table, f"{config_file} [models.{name}]") for name, table in document.get("models", {}).items()
        }
    for name in _field_types():
        variable = ENV_PREFIX + name.upper()
        if name != "models" and variable in environ:
            values[name] = _coerce(name, environ[variable], f"environment variable {variable}", from_text=True)
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = _coerce(name, value, f"override {name}")
    for name, kind in _field_types().items():
        if name in values and _is_path(kind) and values[name] is not None:
            values[name] = _resolve(root, values[name])
    for field in dataclasses.fields(GatewaySettings):
        if field.name not in values and isinstance(field.default, Path):
            values[field.name] = _resolve(root, field.default)
    return GatewaySettings(models=models, **values)


def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(GatewaySettings)
    return {field.name: hints[field.name] for field in dataclasses.fields(GatewaySettings)}


def _is_path(kind: Any) -> bool:
    return kind is Path or Path in typing.get_args(kind)


def _coerce(name: str, value: Any, where: str, *, from_text: bool = False) -> Any:
    """Converts one setting to its field's type, or says which setting and what was expected."""
    kinds = _field_types()
    if name not in kinds or name == "models":
        known = sorted(k for k in kinds if k != "models")
        raise GatewayConfigError(f"{where}: unknown setting {name!r}; known: {known}")
    kind = kinds[name]
    optional = type(None) in typing.get_args(kind)
    base = next((k for k in typing.get_args(kind) if k is not type(None)), kind) if optional else kind
    if optional and (value is None or (from_text and value.strip().lower() in ("", "none", "null"))):
        return None
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if from_text and value.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                return value.strip().lower() in ("1", "true", "yes", "on")
            raise ValueError
        if base is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, int):
                return value
            if from_text:
                return int(value.strip())
            raise ValueError
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, (int, float)):
                return float(value)
            if from_text:
                return float(value.strip())
            raise ValueError
        if base is str:
            if isinstance(value, str):
                return value
            raise ValueError
        if base is Path:
            if isinstance(value, (str, os.PathLike)):
                return Path(value)
            raise ValueError
    except ValueError:
        pass
    else:
        return value
    expected = getattr(base, "__name__", str(base))
    raise GatewayConfigError(f"{where}: {name} must be {expected}{' or empty' if optional else ''}, got {value!r}")


def _model_policy(table: Any, where: str) -> ModelPolicy:
    if not isinstance(table, Mapping):
        raise GatewayConfigError(f"{where}: must be a table, got {table!r}")
    known = {field.name for field in dataclasses.fields(ModelPolicy)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise GatewayConfigError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
    values = dict(table)
    if "band" in values:
        band = values["band"]
        if not isinstance(band, list) or len(band) != 2:
            raise GatewayConfigError(f"{where}: band must be [low, high], got {band!r}")
        values["band"] = tuple(band)
    try:
        return ModelPolicy(**values)
    except GatewayConfigError as err:
        raise GatewayConfigError(f"{where}: {err}") from None


def _resolve(root: Path, value: str | os.PathLike[str]) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (root / path).resolve()


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags that override the config file (shared with `mlops gateway` / `mlops serve`)."""
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--rest-port", type=int, help="REST port (0 = a free port)")
    parser.add_argument("--grpc-port", type=int, help="gRPC port (0 = a free port)")
    parser.add_argument("--model-server-rest", help="model server REST URL, e.g. http://127.0.0.1:8501")
    parser.add_argument("--model-server-grpc", help="model server gRPC target, e.g. 127.0.0.1:8500")
    parser.add_argument("--upstream-protocol", choices=("rest", "grpc"), help="how to call the model server")
    parser.add_argument("--model-config-file", help="TF Serving models.config with the stable/canary labels")
    parser.add_argument("--log-dir", help="prediction log directory")
    parser.add_argument("--state-file", help="where routing policies persist")
    parser.add_argument("--admin-token-file", help="file holding the admin token, re-read when it changes (rotation)")
    parser.add_argument("--tls-cert-file", help="PEM certificate (chain): serve REST and gRPC over TLS")
    parser.add_argument("--tls-key-file", help="PEM private key of --tls-cert-file")
    parser.add_argument("--log-failure", choices=LOG_FAILURE_POLICIES,
                        help="when the prediction log cannot be written: refuse (503, default) or serve unlogged")


def settings_overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = ("host", "rest_port", "grpc_port", "model_server_rest", "model_server_grpc", "upstream_protocol",
             "model_config_file", "log_dir", "state_file", "log_failure", "admin_token_file", "tls_cert_file", "tls_key_file")
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
